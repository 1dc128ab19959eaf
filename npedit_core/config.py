"""One dataclass schema for NP-Edit: defaults here, then a YAML file, then `key.sub=value` overrides.

Every default lives in this file (nodes and CLI read them from here). Unknown keys are errors that
name the key and suggest the nearest valid one; values are type-checked against the field types.
Numbers are the re-implementation's (method.md); see each field's comment.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import NPEditError
from .judges.prompts import QuestionTemplates
from .losses import DEFAULT_CFG


@dataclass
class ModelConfig:
    backbone: Literal["flux2_klein", "z_image"] = "flux2_klein"
    path: str | None = None  # local diffusers folder; None builds tiny random components (tests, demo)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    tiny_seed: int = 0


@dataclass
class JudgeConfig:
    family: Literal["qwen2_5_vl", "qwen3_vl", "internvl"] = "qwen2_5_vl"
    path: str | None = None  # local model folder; None builds a tiny random judge
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    yes_token: str = "Yes"
    no_token: str = "No"
    questions: QuestionTemplates = field(default_factory=QuestionTemplates)


@dataclass
class SamplerConfig:
    steps: int = 4  # inference steps (8 for subject-driven customisation)
    shift: float = 6.0  # time shift: 4 steps -> [1.0, 0.9474, 0.8571, 0.6667]
    eta: float = 1.0  # step noise: 1 = re-impl. (renoise: all fresh; ddim: its SDE share), 0 = deterministic Euler
    # Between-step update at inference (sampler.py): "renoise" (fresh noise, the re-impl.'s training unroll),
    # "ddim" (the re-impl.'s inference step), "auto" = the editor export's own (ddim for its published
    # checkpoint), else renoise. The training unroll always re-noises.
    step: Literal["auto", "renoise", "ddim"] = "auto"


@dataclass
class CriticConfig:
    # DMD critic realism score (critic.py): teacher vs fake-score disagreement at these fixed times,
    # each with noise drawn from `seed`, the teacher under CFG `guidance` (the training default).
    times: tuple[float, ...] = (0.25, 0.5, 0.75)
    seed: int = 0
    guidance: float = DEFAULT_CFG


@dataclass
class RefineConfig:
    # Test-time refinement (refine.py): Adam on an edit's latents under the training objective
    # (weights: loss.w_vlm, loss.w_dmd). lr is in normalised-latent units per step (Adam's step size).
    steps: int = 8
    lr: float = 0.02
    seed: int = 0


@dataclass
class LossConfig:
    w_vlm: float = 0.02
    w_dmd: float = 1.0
    w_do_nothing: float = 1.0  # per sample: each term counts its rows / batch size (losses.batch_share)
    do_nothing_prob: float = 0.01  # chance that the instruction becomes "do nothing."
    logit_scale_start: float = 0.1  # judge-logit scale ramps from start to end over ramp_steps
    logit_scale_end: float = 1.0
    logit_scale_ramp_steps: int = 2000
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    negative_prompt: str = "low quality, artifacts"
    identity_question: bool = True  # ablation: ask only the edit-verification question
    fake_updates: int = 5  # fake-score updates per editor update (two-time-scale rule)
    # Warm-up times (losses.warmup_loss): "uniform" = the re-impl.'s t ~ U(0, 1), time-shifted, loss weighted
    # by the logit-normal density at the shifted t; "logit_normal" = t = sigmoid(N(0, 1)), shifted, unweighted.
    warmup_times: Literal["uniform", "logit_normal"] = "uniform"
    # Share of each warm-up batch trained text-to-image (no reference) instead of copying (losses.warmup_loss).
    # 0 = the re-implementation. Copying alone erodes drawing from text: measured in the micro-world.
    warmup_t2i_share: float = 0.0
    # The unroll length k ~ U{1..sampler.steps} (4 steps: a 1-step unroll 25 % of the time).


@dataclass
class OptimConfig:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.0, 0.9)
    weight_decay: float = 0.0  # applied to matrices only (ndim > 1), as the re-impl.'s parameter groups
    grad_clip: float = 2.0
    fake_lr: float = 2e-5
    # Learning rate per editor step (trainer.learning_rate): linear from ~0 over warmup_steps, then constant
    # or a cosine down to min_lr at train.steps; lr and fake_lr follow the same curve.
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0  # the cosine's end, in the units of lr (fake_lr ends at the same fraction)
    # Skip an update whose gradient norm (before clipping) exceeds this, from grad_spike_start_step on
    # (re-impl.: 300 from step 0 in the NP-Edit stage, 100 from step 1000 in the warm-up); null: no guard.
    grad_spike_threshold: float | None = 300.0
    grad_spike_start_step: int = 0


@dataclass
class LoraConfig:
    enabled: bool = True  # False = full fine-tune with separate editor / fake / teacher weights
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0


@dataclass
class DataConfig:
    manifest: str | None = None  # JSONL or CSV; None = the built-in demo photos (data.demo_manifest)
    image_root: str | None = None  # image paths in the manifest are relative to this folder
    resolution: int = 512  # target pixel area is resolution**2, split into aspect buckets
    num_workers: int = 0


@dataclass
class TrainConfig:
    stage: Literal["warmup", "npedit"] = "npedit"
    run_dir: str = "runs/default"
    steps: int = 14000
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    text_dropout: float = 0.0  # chance that the editor's text becomes "" (re-impl.: 0.1 in its warm-up file, never applied)
    # Stop (with an error, no save) after this many skipped editor updates in a row (non-finite or spiking).
    max_skipped_steps: int = 20
    allow_config_change: bool = False  # resume although keys that change the result differ (checkpoint.py)
    gradient_checkpointing: bool = True
    log_every: int = 10
    save_every: int = 500
    preview_every: int = 500
    keep_checkpoints: int = 2
    init_from: str | None = None  # warm-up checkpoint or export to start the npedit stage from
    offload_text_encoder: bool = False  # keep the text encoder on the CPU between (cached) encodings
    offload_judge: bool = False  # keep the judge on the CPU outside the editor update (fake updates, saves)
    tensorboard: bool = False  # also log metrics to RUN/tensorboard (needs the tensorboard package)
    fsdp: bool = False  # full fine-tune on several processes: FSDP2-shard editor, fake score and teacher


@dataclass
class NPEditConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --- building from dicts, files and overrides ----------------------------------------------------


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, strictly: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise NPEditError(f"config {prefix or 'root'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise NPEditError(f"unknown config key '{prefix}{key}'{_suggest(key, fields, prefix)}")
        kwargs[key] = _convert(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    """The config as plain nested dicts/lists (tuples become lists), ready for YAML."""
    return _plain(dataclasses.asdict(config))


def load_config(path: str | Path | list | None = None, overrides: list[str] = (), cls: type = NPEditConfig) -> Any:
    """Defaults, then the YAML file(s) at `path` (a list: each later file overrides the earlier ones,
    key by key), then `key.sub=value` overrides (values parsed as YAML)."""
    data: dict = {}
    for file in [] if path is None else [path] if isinstance(path, (str, Path)) else list(path):
        file = Path(file)
        if not file.is_file():
            raise NPEditError(f"config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise NPEditError(f"config file {file}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise NPEditError(f"config file {file}: expected a mapping of sections, got {type(loaded).__name__}")
        _merge(data, loaded)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise NPEditError(f"override {item!r}: expected key.sub=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise NPEditError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    config = from_dict(cls, data)
    if isinstance(config, NPEditConfig):
        check_ranges(config)
    return config


def _at_least(low):
    return lambda v: v >= low, f"must be at least {low}"


_POSITIVE = (lambda v: v > 0, "must be positive")
_NON_NEGATIVE = (lambda v: v >= 0, "must not be negative")
_FRACTION = (lambda v: 0 <= v <= 1, "must lie in [0, 1]")
_OPEN_UNIT = (lambda v: 0 < v < 1, "must lie strictly between 0 and 1")
#: key -> (test, what it needs); numbers must also be finite. Checked after every load (check_ranges).
RANGES = {
    "sampler.steps": _at_least(1), "sampler.shift": _POSITIVE, "sampler.eta": _FRACTION,
    "critic.times": _OPEN_UNIT, "critic.guidance": _NON_NEGATIVE,
    "refine.steps": _at_least(1), "refine.lr": _POSITIVE,
    "loss.w_vlm": _NON_NEGATIVE, "loss.w_dmd": _NON_NEGATIVE, "loss.w_do_nothing": _NON_NEGATIVE,
    "loss.do_nothing_prob": _FRACTION, "loss.logit_scale_start": _NON_NEGATIVE, "loss.logit_scale_end": _NON_NEGATIVE,
    "loss.warmup_t2i_share": _FRACTION, "loss.logit_scale_ramp_steps": _NON_NEGATIVE, "loss.dmd_t_min": _OPEN_UNIT, "loss.dmd_t_max": _OPEN_UNIT,
    "loss.fake_updates": _NON_NEGATIVE,
    "optim.lr": _POSITIVE, "optim.fake_lr": _POSITIVE, "optim.betas": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    "optim.weight_decay": _NON_NEGATIVE, "optim.grad_clip": _POSITIVE, "optim.warmup_steps": _NON_NEGATIVE,
    "optim.min_lr": _NON_NEGATIVE, "optim.grad_spike_threshold": _POSITIVE, "optim.grad_spike_start_step": _NON_NEGATIVE,
    "lora.rank": _at_least(1), "lora.alpha": _POSITIVE, "lora.dropout": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    "data.resolution": _at_least(16), "data.num_workers": _NON_NEGATIVE,
    "train.steps": _at_least(1), "train.batch_size": _at_least(1), "train.grad_accum": _at_least(1),
    "train.log_every": _at_least(1), "train.save_every": _at_least(1), "train.preview_every": _NON_NEGATIVE,
    "train.keep_checkpoints": _at_least(1), "train.text_dropout": _FRACTION, "train.max_skipped_steps": _at_least(1),
}


def check_ranges(config: "NPEditConfig") -> None:
    """Every number in range (RANGES) and finite; a one-line error naming the key otherwise."""
    for key, (ok, need) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        for v in value if isinstance(value, tuple) else [value]:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise NPEditError(f"config {key}: must be a finite number, got {v}")
            if not ok(v):
                raise NPEditError(f"config {key}: {need}, got {v}")
    if config.loss.dmd_t_min > config.loss.dmd_t_max:
        raise NPEditError(f"config loss.dmd_t_min: must not exceed loss.dmd_t_max ({config.loss.dmd_t_max}), "
                          f"got {config.loss.dmd_t_min}")
    if config.optim.min_lr > config.optim.lr:
        raise NPEditError(f"config optim.min_lr: must not exceed optim.lr ({config.optim.lr}), got {config.optim.min_lr}")


def _merge(base: dict, update: dict) -> None:
    """Deep-merge `update` into `base` in place: sections merge, values replace."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _suggest(key: str, fields: dict, prefix: str) -> str:
    near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{near[0]}'?" if near else f" (valid: {', '.join(fields)})"


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except NPEditError as exc:
                errors.append(str(exc))
        raise NPEditError(errors[0])
    if origin is Literal:
        if value not in args:
            raise NPEditError(f"config {key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise NPEditError(f"config {key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise NPEditError(f"config {key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, key) for a, v in zip(args, value))
        item = args[0] if args else Any
        return origin(_convert(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise NPEditError(f"config {key}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1] if args else Any, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string: accept any string that is a float literal.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NPEditError(f"config {key}: expected a number, got {value!r}")
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise NPEditError(f"config {key}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise NPEditError(f"config {key}: expected an integer, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise NPEditError(f"config {key}: expected a string, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

"""Build backbones and judges: from a config (real local weights, or tiny random ones) or from model files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import Backbone, backbone_class
from .config import JudgeConfig, ModelConfig
from .errors import CheckpointError, NPEditError
from .judges import Judge, judge_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_backbone(cfg: ModelConfig, device: torch.device | str = "cpu") -> Backbone:
    """`cfg.path` set: load real weights from that local folder; unset: tiny random components (fp32)."""
    cls = backbone_class(cfg.backbone)
    if cfg.path is None:
        backbone = cls.tiny(seed=cfg.tiny_seed).to(device)
    else:
        backbone = cls.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], device=device)
    backbone.freeze_frozen_parts()
    return backbone


def build_judge(cfg: JudgeConfig, device: torch.device | str = "cpu", seed: int = 0) -> Judge:
    """`cfg.path` set: load the real VLM from that local folder; unset: a tiny random judge (fp32)."""
    cls = judge_class(cfg.family)
    if cfg.path is None:
        judge = cls.tiny(seed=seed).to(device)
    else:
        judge = cls.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], device=device)
    judge.set_answer_words(cfg.yes_token, cfg.no_token)
    return judge


#: config.json `model_type` -> judge family, to recognise a VLM folder without asking.
JUDGE_MODEL_TYPES = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "internvl": "internvl"}


def load_backbone(
    family: str,
    model: str | Path,
    text_encoder: str | Path | None = None,
    vae: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str = "bfloat16",
    device: torch.device | str = "cpu",
) -> Backbone:
    """A base backbone from local files: a diffusers folder, or a transformer file plus text encoder and VAE files.

    `model` a folder: every part comes from it (text_encoder / vae / tokenizer must be None). `model` a
    single .safetensors transformer (ComfyUI `diffusion_models`): `text_encoder` and `vae` files are
    required and `tokenizer` names a tokenizer folder (None: the family's default). Never downloads.
    """
    if dtype not in DTYPES:
        raise NPEditError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    cls = backbone_class(family)
    model = Path(model)
    if model.is_dir():
        extra = [name for name, value in (("text_encoder", text_encoder), ("vae", vae), ("tokenizer", tokenizer)) if value]
        if extra:
            raise NPEditError(f"{', '.join(extra)}: {model} is a diffusers folder with its own parts; leave them unset")
        backbone = cls.from_pretrained(str(model), dtype=DTYPES[dtype], device=device)
    else:
        missing = [name for name, value in (("text_encoder", text_encoder), ("vae", vae)) if not value]
        if missing:
            raise NPEditError(f"{' and '.join(missing)}: {model.name} is a single transformer file; "
                              "choose the matching text encoder and VAE files too")
        if family == "flux2_klein":
            backbone = cls.from_single_files(model, vae, text_encoder, tokenizer, dtype=DTYPES[dtype], device=device)
        else:
            backbone = cls.from_pretrained(str(model), dtype=DTYPES[dtype], device=device, text_encoder=str(text_encoder),
                                           vae=str(vae), tokenizer=None if tokenizer is None else str(tokenizer))
    backbone.freeze_frozen_parts()
    return backbone


def judge_family_of(path: str | Path) -> str:
    """The judge family of a VLM folder, from the `model_type` in its config.json."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"judge: cannot read {config} ({err})") from None
    if model_type not in JUDGE_MODEL_TYPES:
        raise NPEditError(f"judge: {path} holds a {model_type!r} model; supported model types: "
                          f"{', '.join(JUDGE_MODEL_TYPES)} (or choose the family by hand)")
    return JUDGE_MODEL_TYPES[model_type]


def load_judge(path: str | Path, family: str = "auto", dtype: str = "bfloat16", device: torch.device | str = "cpu",
               yes_token: str = JudgeConfig.yes_token, no_token: str = JudgeConfig.no_token) -> Judge:
    """A real VLM judge from a local folder; family "auto" reads it from config.json."""
    if dtype not in DTYPES:
        raise NPEditError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    family = judge_family_of(path) if family == "auto" else family
    judge = judge_class(family).from_pretrained(str(path), dtype=DTYPES[dtype], device=device)
    judge.set_answer_words(yes_token, no_token)
    return judge

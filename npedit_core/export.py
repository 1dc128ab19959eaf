"""Trained editor -> one safetensors file, and back onto a backbone (the nodes and `edit` load these).

Two formats, told apart by the file's metadata (`npedit_format`):
- "lora": the editor adapter in peft's key layout without the adapter name
  (`<module>.lora_A.weight`, `<module>.lora_B.weight`), with rank, alpha and target modules;
- "full": the editor transformer's whole state dict (full fine-tunes).
Metadata also records the backbone family, so loading onto the wrong family is a clear error.
The fake score exports the same way (`role="fake"`) for the DMD critic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .backbones.base import Backbone
from .checkpoint import latest_checkpoint, load_checkpoint, write_failure
from .errors import CheckpointError
from .lora_formats import to_comfyui_lora

ADAPTER_NAME = "editor"


def export_checkpoint(source: str | Path, out: str | Path, role: str = "editor", layout: str = "npedit") -> Path:
    """Write the `role` ("editor" or "fake") weights of a run directory or checkpoint file to `out`.

    layout "npedit" (default) is what the nodes and `edit` load; "comfyui" writes what ComfyUI's own loaders
    read: a LoRA run as a LoRA in the key layout of its LoRA loader for the base model (lora_formats.py), a
    full fine-tune as a diffusion model in the family's original keys (`to_comfyui_model`).
    """
    source = Path(source)
    ckpt = latest_checkpoint(source) if source.is_dir() else source
    if ckpt is None:
        raise CheckpointError(f"no checkpoint found in run directory {source}")
    state = load_checkpoint(ckpt)
    cfg = state["config"]
    weights = state[role]
    meta = {"npedit_format": "lora" if cfg["lora"]["enabled"] else "full", "backbone": cfg["model"]["backbone"],
            "role": role, "step": str(state["step"]), "stage": state["stage"]}
    if cfg.get("sampler", {}).get("step", "auto") != "auto":  # a run configured for one sampler step records it
        meta["sampler_step"] = cfg["sampler"]["step"]
    if meta["npedit_format"] == "lora":
        marker = f".{role}."
        weights = {k.replace(marker, "."): v for k, v in weights.items()}
        targets = sorted({k.rsplit(".lora_", 1)[0] for k in weights})  # full module paths: exact matches
        meta.update(rank=str(cfg["lora"]["rank"]), alpha=str(cfg["lora"]["alpha"]), target_modules=json.dumps(targets))
    if layout == "comfyui" and meta["npedit_format"] == "lora":
        weights = to_comfyui_lora(weights, meta["backbone"], float(meta["alpha"]))
        meta = {"npedit_format": "comfyui_lora", "backbone": meta["backbone"], "role": role, "step": meta["step"]}
    elif layout == "comfyui":
        weights, meta = to_comfyui_model(weights, meta, ckpt)
    elif layout != "npedit":
        raise CheckpointError(f"unknown export layout {layout!r}; expected 'npedit' or 'comfyui'")
    return write_safetensors(weights, out, meta)


def to_comfyui_model(weights: dict[str, torch.Tensor], meta: dict[str, str], source) -> tuple[dict, dict]:
    """A full editor (diffusers names) as a diffusion-model file for ComfyUI's Load Diffusion Model (UNETLoader).

    Z-Image: the original Z-Image keys; FLUX.2-klein: the BFL keys. The metadata keeps what NP-Edit knows
    about the editor (ComfyUI ignores it); `read_export` refuses the file with a hint.
    """
    from .backbones.flux2_klein import transformer_state_dict_to_bfl
    from .backbones.z_image import transformer_state_dict_to_original

    convert = {"z_image": transformer_state_dict_to_original, "flux2_klein": transformer_state_dict_to_bfl}
    if meta["backbone"] not in convert:
        raise CheckpointError(f"{source}: no ComfyUI layout for a {meta['backbone']} editor")
    return convert[meta["backbone"]](weights), {**meta, "npedit_format": "comfyui_model"}


def write_safetensors(weights: dict[str, torch.Tensor], out: str | Path, meta: dict[str, str]) -> Path:
    """Write `weights` to `out` atomically, with the permissions of any other new file (umask), or a one-line error.

    safetensors creates its file with mode 0600; a full or read-only disk raises its own error types.
    Either way the temporary file is removed and the error names `out` and the space left.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp.replace(out)
    except Exception as exc:  # OSError, safetensors' SafetensorError, ...
        raise write_failure(str(out), tmp, exc) from None
    return out


def read_export(path: str | Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(weights, metadata) of an export; `tensors=False` reads the metadata only (weights is then empty)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"editor weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            weights = {k: handle.get_tensor(k) for k in handle.keys()} if tensors else {}
    except Exception as exc:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or a legacy pickle
            raise CheckpointError(f"{path} is a torch pickle (a training checkpoint?), not an NP-Edit export: export "
                                  "it with `python -m train_cli export RUN_DIR_OR_CHECKPOINT -o editor.safetensors`") from None
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); NP-Edit loads the files "
                              "`python -m train_cli export` writes") from None
    if meta.get("npedit_format") == "comfyui_lora":
        raise CheckpointError(f"{path} is a ComfyUI-layout LoRA: load it with ComfyUI's LoRA loader, or export again without --layout comfyui")
    if meta.get("npedit_format") == "comfyui_model":
        raise CheckpointError(f"{path} is a ComfyUI diffusion model: load it with ComfyUI's Load Diffusion Model "
                              "(models/diffusion_models/), or export/convert again without --layout comfyui")
    if meta.get("npedit_format") not in ("lora", "full"):
        raise CheckpointError(f"{path} is not an NP-Edit export (no npedit_format metadata)")
    return weights, meta


def load_editor(backbone: Backbone, path: str | Path, role: str = "editor", adapter_name: str = ADAPTER_NAME) -> Backbone:
    """Apply an exported editor to `backbone` in place (LoRA attached as adapter `adapter_name`, or full weights).

    `role` is the role the file must hold ("editor", or "fake" for the DMD critic's fake score); a
    file exported with the other role is a clear error, not a silently wrong model.
    """
    weights, meta = read_export(path)
    if meta.get("backbone") != backbone.family:
        raise CheckpointError(f"{path} was trained on '{meta.get('backbone')}', not '{backbone.family}'")
    if meta.get("role", "editor") != role:
        raise CheckpointError(
            f"{path} holds the '{meta.get('role')}' weights, not the '{role}' weights "
            f"(export them with `python -m train_cli export RUN --out OUT --role {role}`)"
        )
    if role == "editor":  # the sampler step it was made for ("ddim": the re-implementation's); sampler.resolve_step
        backbone.sampler_step = meta.get("sampler_step")
    transformer = backbone.transformer
    if meta["npedit_format"] == "full":
        result = transformer.load_state_dict(weights, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path} does not fit the transformer: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return backbone
    from peft import LoraConfig

    config = LoraConfig(r=int(meta["rank"]), lora_alpha=float(meta["alpha"]), target_modules=json.loads(meta["target_modules"]))
    transformer.add_adapter(config, adapter_name=adapter_name)
    params = dict(transformer.named_parameters())
    named = {k.replace(".lora_A.", f".lora_A.{adapter_name}.").replace(".lora_B.", f".lora_B.{adapter_name}."): v
             for k, v in weights.items()}
    expected = {n for n in params if f".{adapter_name}." in n}
    if set(named) != expected:
        missing, unexpected = sorted(expected - set(named)), sorted(set(named) - expected)
        raise CheckpointError(f"{path} does not fit the transformer: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, value in named.items():
            params[name].copy_(value)
    transformer.set_adapter(adapter_name)
    transformer.requires_grad_(False)
    return backbone

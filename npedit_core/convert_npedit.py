"""The published NP-Edit checkpoint (`zimage_npedit_internvl.pt`) -> this project's Z-Image editor export.

Layout of the published file, derived from the re-implementation's code (github.com/nupurkmr9/npedit):
- `models/zimage_denoiser.py`: `ZImageDenoiser(nn.Module)` holds the diffusers
  `ZImageTransformer2DModel` as `self.transformer` and has no other parameters or buffers (its
  reference-frame conditioning only rebinds the blocks' `forward`; `_adaln_ctx` is a plain dict; the
  FlashAttention-4 processor has no weights). Its state-dict keys are therefore
  `transformer.<diffusers ZImageTransformer2DModel key>`.
- `scripts/edit.py` loads the file with `torch.load(ckpt)` and
  `latent_fm.denoiser.load_state_dict(state_dict, strict=True)`: the .pt holds that raw state dict (no
  {'model': ...} wrapper); weights are bf16 (config `denoiser.params.dtype: bf16`).
- Training checkpoints are FSDP2 distributed checkpoints (`utils/ckpt.py`: `dcp.save({"model": ...,
  "ema": ..., "optimizer": ...})` into `step_XXXXXXXX/`), whose "model" entry has the same key names.
So we accept, to be safe: a raw state dict; a dict wrapping it under "model", "ema", "state_dict" or
"module"; keys with wrapper prefixes (`module.`, `_orig_mod.`, `_fsdp_wrapped_module.`,
`_checkpoint_wrapped_module.`) anywhere in the path; and a DCP folder (read with torch's
`dcp_to_torch_save`, taking its "model" entry). The base model is Tongyi-MAI/Z-Image (not Turbo), same
architecture. The result is an NP-Edit "full" export (`npedit_format=full`, `backbone=z_image`,
`role=editor`) that `export.load_editor` applies to a Z-Image backbone. Every key and shape is checked
against the transformer; any mismatch is a `CheckpointError` listing the unmatched keys.

Text encoding: the re-implementation applies the Qwen3 chat template with `enable_thinking=False`;
build the backbone with `enable_thinking=False` (`ZImageBackbone.from_pretrained(..., enable_thinking=False)`)
to match its training exactly. Sampler: 4 steps on [1.0, 0.9474, 0.8571, 0.6667] with eta 1, no CFG,
and its "ddim" step (sampler.py), which keeps part of the predicted noise between steps: the export
records `sampler_step=ddim`, so `edit` and the nodes use that step with it (sampler.step=auto).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch
from .errors import CheckpointError, NPEditError
from .export import to_comfyui_model, write_safetensors

#: Prefix of the transformer inside the re-implementation's `ZImageDenoiser`.
DENOISER_PREFIX = "transformer."
#: Wrapper path segments that FSDP / torch.compile / DDP / activation checkpointing insert into key names.
WRAPPER_SEGMENTS = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
_WRAPPER_RE = re.compile(r"(^|\.)(?:" + "|".join(re.escape(s[:-1]) for s in WRAPPER_SEGMENTS) + r")\.")
WRAPPER_KEYS = ("model", "ema", "state_dict", "module")


def read_published_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a published/re-implementation checkpoint (.pt file or DCP folder), wrappers removed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{path} is a folder but not a torch distributed checkpoint (no .metadata)")
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "full.pt"
            dcp_to_torch_save(str(path), str(out))
            obj = torch.load(out, map_location="cpu", weights_only=True)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    # Unwrap {'model': {...}} and similar (the DCP layout and common training-script wrappers).
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(k for k in obj if k not in tensors)
    if others:
        raise CheckpointError(f"{path}: entries that are not tensors: {others[:10]}")
    return {_WRAPPER_RE.sub(r"\1", k): v for k, v in tensors.items()}


def to_transformer_keys(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip the denoiser's `transformer.` prefix; keys without it are an error that lists them."""
    outside = sorted(k for k in state if not k.startswith(DENOISER_PREFIX))
    if outside:
        raise CheckpointError(f"{path}: {len(outside)} keys are not under the denoiser's '{DENOISER_PREFIX}' "
                              f"(not a ZImageDenoiser state dict?): {outside[:20]}")
    return {k[len(DENOISER_PREFIX):]: v for k, v in state.items()}


def reference_shapes(reference=None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the Z-Image transformer the weights must fit.

    reference: None (the real Z-Image config, built on the meta device), a config dict, a transformer
    module, or a diffusers folder / `transformer/` folder holding a config.json.
    """
    from diffusers import ZImageTransformer2DModel

    if isinstance(reference, torch.nn.Module):
        return {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if reference is None or isinstance(reference, dict):
        from .backbones.z_image import Z_IMAGE_TURBO_TRANSFORMER_CONFIG  # Z-Image and Z-Image-Turbo share it

        config = dict(reference or Z_IMAGE_TURBO_TRANSFORMER_CONFIG)
    else:
        folder = Path(reference)
        folder = folder / "transformer" if (folder / "transformer" / "config.json").is_file() else folder
        if not (folder / "config.json").is_file():
            raise NPEditError(f"reference: no config.json in {folder}")
        config = dict(ZImageTransformer2DModel.load_config(str(folder)))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_fit(weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: str | Path) -> None:
    """CheckpointError listing every missing, unexpected and wrongly shaped key."""
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes))
    wrong = sorted(f"{k} {tuple(weights[k].shape)} != {shapes[k]}" for k in set(weights) & set(shapes)
                   if tuple(weights[k].shape) != shapes[k])
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" ... and {len(keys) - 30} more" if len(keys) > 30 else ""
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:30])}{more}")
        raise CheckpointError(f"{path} does not fit the Z-Image transformer: " + "; ".join(parts))


def convert_npedit_checkpoint(src: str | Path, out: str | Path, reference=None, dtype: str | None = None,
                              layout: str = "npedit") -> Path:
    """Write `src` (the published `zimage_npedit_internvl.pt`, or a re-implementation checkpoint) as an NP-Edit export.

    layout "comfyui": a Z-Image diffusion model in the original keys instead, for ComfyUI's Load Diffusion
    Model; it edits through core nodes with the pack's Z-Image Reference node and the Step Sampler on "ddim".

    reference: what the weights must fit (see `reference_shapes`; default: the real Z-Image config).
    dtype: "bfloat16" / "float16" / "float32" to cast, None keeps the file's (bf16 for the published one).
    Returns `out`, a safetensors file for `export.load_editor` / `edit --editor` / the nodes.
    """
    weights = to_transformer_keys(read_published_state_dict(src), src)
    check_fit(weights, reference_shapes(reference), src)
    if dtype is not None:
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise NPEditError(f"dtype: {dtype!r} is not one of {', '.join(dtypes)}")
        weights = {k: v.to(dtypes[dtype]) if v.is_floating_point() else v for k, v in weights.items()}
    meta = {"npedit_format": "full", "backbone": "z_image", "role": "editor", "step": "0", "stage": "npedit",
            "source": f"nupurkmr9/npedit {Path(src).name}", "enable_thinking": "false",
            "sampler_step": "ddim"}  # its inference step (sampler.py); `edit` and the nodes pick it up
    if layout == "comfyui":
        weights, meta = to_comfyui_model(weights, meta, src)
    elif layout != "npedit":
        raise NPEditError(f"layout: {layout!r} is not one of npedit, comfyui")
    return write_safetensors(weights, out, meta)


def load_published_editor(backbone, src: str | Path):
    """Load the published checkpoint straight into a `ZImageBackbone` (no export file); returns the backbone."""
    weights = to_transformer_keys(read_published_state_dict(src), src)
    check_fit(weights, reference_shapes(backbone.transformer), src)
    result = backbone.transformer.load_state_dict(weights, strict=True)
    del result
    backbone.enable_thinking = False  # the re-implementation's text template (see the module docstring)
    backbone.sampler_step = "ddim"  # and its inference step (sampler.py)
    return backbone

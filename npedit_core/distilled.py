"""Is the configured base model step/guidance-distilled? Then it cannot be DMD's teacher (method.md 2.3).

DMD's real score is the pretrained model with classifier-free guidance at every t. Distilled models
(FLUX.2 [klein] 4B/9B, Z-Image-Turbo) were trained to sample in a few steps without CFG: their
conditional and unconditional predictions are not those of a diffusion model, so CFG 3.5 / 7.5 on them
pulls the editor towards something else. Train on the undistilled bases (FLUX.2-klein-base-4B,
Apache-2.0, the one its makers recommend for fine-tuning; Z-Image, not Turbo).

What the files tell (checked in this order):
- FLUX.2 [klein] diffusers folders: `model_index.json` has `"is_distilled": true` (diffusers'
  Flux2KleinPipeline turns CFG off for such models); the transformer config is the same for both.
- Z-Image folders: no flag; the scheduler's `shift` is 3.0 in Z-Image-Turbo and 6.0 in Z-Image.
- Names, for single files and folders: "turbo", "schnell", "lightning", "distill" anywhere; a klein
  4B/9B name without "base" (BFL's own files: flux-2-klein-4b.safetensors vs flux-2-klein-base-4b...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .config import ModelConfig

DISTILLED_WORDS = ("turbo", "schnell", "lightning", "distill")
KLEIN_NAME = re.compile(r"klein[-_.]?(4|9)b", re.IGNORECASE)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def distilled_evidence(cfg: ModelConfig) -> str | None:
    """Why `cfg.path` looks like a distilled model (one phrase naming the file or name), or None."""
    if cfg.path is None:
        return None
    path = Path(cfg.path)
    if path.is_dir():
        index = _json(path / "model_index.json")
        if index.get("is_distilled") is True:
            return f"{path / 'model_index.json'} says is_distilled: true"
        shift = _json(path / "scheduler" / "scheduler_config.json").get("shift")
        if cfg.backbone == "z_image" and shift == 3.0:
            return f"{path / 'scheduler' / 'scheduler_config.json'} has shift 3.0 (Z-Image-Turbo's; Z-Image's is 6.0)"
    name = path.name.lower()
    word = next((w for w in DISTILLED_WORDS if w in name), None)
    if word:
        return f"its name {path.name!r} says {word!r}"
    if cfg.backbone == "flux2_klein" and KLEIN_NAME.search(name) and "base" not in name:
        return f"its name {path.name!r} is a distilled FLUX.2 [klein] (the undistilled ones are named klein-base)"
    return None


def distilled_warning(cfg: ModelConfig) -> str | None:
    """The one-line warning that `check-config` and `train` print, or None."""
    evidence = distilled_evidence(cfg)
    if evidence is None:
        return None
    return (f"warning: model.path {cfg.path} looks step/guidance-distilled ({evidence}); the DMD teacher needs "
            "an undistilled base with CFG at every t, e.g. FLUX.2-klein-base-4B or Z-Image (not Turbo)")

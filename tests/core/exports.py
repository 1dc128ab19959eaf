"""Write real `export.py` files (editor or fake score) from a tiny backbone without running the trainer.

A checkpoint dict with the trainer's layout is built from `roles.make_roles` with randomly nudged
weights (standing in for training), saved, and passed through `export_checkpoint`, so the files have
exactly the format `train_cli export` writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from npedit_core.backbones.base import Backbone
from npedit_core.config import load_config, to_dict
from npedit_core.export import export_checkpoint
from npedit_core.roles import make_roles


def write_exports(backbone: Backbone, folder: Path, lora: bool = True, scale: float = 0.05, seed: int = 0,
                  comfyui: bool = False) -> dict[str, Path]:
    """Export nudged editor and fake weights of `backbone` (modified in place: give it a throwaway copy).

    Returns {"editor": path, "fake": path} (+ "editor_comfyui": the editor in `--layout comfyui`, when asked).
    LoRA rank 4; `scale` is the std of the random nudge.
    """
    cfg = load_config(None, [f"model.backbone={backbone.family}", f"lora.enabled={str(lora).lower()}",
                             "lora.rank=4", "lora.alpha=4"])
    roles = make_roles(backbone, lora=lora, rank=4, alpha=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in roles.editor_parameters() + roles.fake_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    state = {"config": to_dict(cfg), "editor": roles.editor_state_dict(), "fake": roles.fake_state_dict(),
             "step": 1, "stage": "npedit"}
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "step-00000001.pt"
    torch.save(state, ckpt)
    out = {role: export_checkpoint(ckpt, folder / f"{role}.safetensors", role=role) for role in ("editor", "fake")}
    if comfyui:
        out["editor_comfyui"] = export_checkpoint(ckpt, folder / "editor_comfyui.safetensors", layout="comfyui")
    ckpt.unlink()
    return out

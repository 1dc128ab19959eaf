"""Edit image files with a base backbone plus exported NP-Edit weights (the CLI's `edit`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import load_config
from .errors import NPEditError
from .export import load_editor
from .models import build_backbone
from .previews import to_pil
from .sampler import edit_images


def read_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """An image file as float (1, C, H, W) in [0, 1] (EXIF orientation applied); names the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise NPEditError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            array = np.asarray(ImageOps.exif_transpose(im).convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise NPEditError(f"cannot read image {path}: {exc}") from None
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def edit_files(
    images: list[str],
    instructions: list[str],
    out_dir: str,
    editor: str | None = None,
    config_path: str | None = None,
    overrides: list[str] = (),
    seed: int = 0,
    masks: list[str] | None = None,
) -> list[Path]:
    """Edit each file (its own size kept) and write `<out_dir>/<stem>_edited.png`; returns the paths."""
    if len(instructions) not in (1, len(images)):
        raise NPEditError(f"--instruction: give one, or one per image ({len(images)}), not {len(instructions)}")
    if masks and len(masks) != len(images):
        raise NPEditError(f"--mask: give one mask per image ({len(images)}), not {len(masks)}")
    cfg = load_config(config_path, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(cfg.model, device)
    if editor:
        load_editor(backbone, editor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(images):
        image = read_image(path)
        mask = read_image(masks[i], "L")[:, 0] if masks else None
        result = edit_images(
            backbone, image, instructions[i if len(instructions) > 1 else 0], seeds=seed + i,
            steps=cfg.sampler.steps, shift=cfg.sampler.shift, eta=cfg.sampler.eta, step=cfg.sampler.step, mask=mask,
        )
        target = out / f"{Path(path).stem}_edited.png"
        to_pil(result).save(target)
        written.append(target)
    return written

"""Edit image files with a base backbone plus exported NP-Edit weights (the CLI's `edit`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import load_config
from .data.buckets import to_rgb
from .errors import NPEditError
from .export import load_editor
from .models import build_backbone
from .previews import to_pil
from .sampler import edit_images


def read_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """An image file as float (1, C, H, W) in [0, 1] (EXIF orientation applied); names the file on failure.

    RGB images follow training's rule (`data.buckets.to_rgb`): 16-bit scaled, transparency onto white.
    """
    path = _image_file(path, "image")
    try:
        with Image.open(path) as im:
            im = to_rgb(ImageOps.exif_transpose(im))
            array = np.asarray(im if mode == "RGB" else im.convert(mode), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise NPEditError(f"cannot read image {path}: {exc}") from None
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _image_file(path: str | Path, what: str) -> Path:
    """`path` if it is a file; a folder or a missing path is a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        raise NPEditError(f"{what} {path} is a directory; give image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise NPEditError(f"{what} not found: {path}")
    return path


def check_image_file(path: str | Path, what: str = "image") -> None:
    """Decode `path` once (then drop it): a missing file, a folder, a non-image or a truncated one is a one-line error."""
    path = _image_file(path, what)
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NPEditError(f"{what} {path}: cannot read it ({exc})") from None


def output_paths(images: list[str], out_dir: str | Path) -> list[Path]:
    """`<out_dir>/<stem>_edited.png` per input; inputs with the same stem (a/x.png, b/x.png) get -2, -3, ..."""
    taken: set[str] = set()
    paths = []
    for image in images:
        stem, n = Path(image).stem, 1
        name = f"{stem}_edited.png"
        while name in taken:
            n += 1
            name = f"{stem}-{n}_edited.png"
        taken.add(name)
        paths.append(Path(out_dir) / name)
    return paths


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
    """Edit each file (its own size kept) and write `output_paths(images, out_dir)`; returns the paths.

    Every input (images, masks, instructions, config, editor file) is checked before a model loads.
    """
    if len(instructions) not in (1, len(images)):
        raise NPEditError(f"--instruction: give one, or one per image ({len(images)}), not {len(instructions)}")
    if masks and len(masks) != len(images):
        raise NPEditError(f"--mask: give one mask per image ({len(images)}), not {len(masks)}")
    for i, text in enumerate(instructions):
        if not text.strip():
            raise NPEditError(f"--instruction {i + 1}: empty; describe the edit to make")
    for path in images:
        check_image_file(path)
    for path in masks or []:
        check_image_file(path, "mask")
    if editor and not Path(editor).is_file():
        raise NPEditError(f"--editor not found: {editor}")
    cfg = load_config(config_path, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(cfg.model, device)
    if editor:
        load_editor(backbone, editor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (path, target) in enumerate(zip(images, output_paths(images, out))):
        image = read_image(path)
        mask = read_image(masks[i], "L")[:, 0] if masks else None
        result = edit_images(
            backbone, image, instructions[i if len(instructions) > 1 else 0], seeds=seed + i,
            steps=cfg.sampler.steps, shift=cfg.sampler.shift, eta=cfg.sampler.eta, step=cfg.sampler.step, mask=mask,
        )
        to_pil(result).save(target)
        written.append(target)
    return written

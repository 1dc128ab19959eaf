"""Before/after preview grids: one row per example, the input on the left and its edit(s) to the right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> RGB PIL image."""
    image = image.detach().float().cpu()
    if image.ndim == 4:
        image = image[0]
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def save_preview_grid(path: str | Path, inputs: list[torch.Tensor], *outputs: list[torch.Tensor], pad: int = 4) -> Path:
    """Write a grid PNG: row i = inputs[i], outputs[0][i], outputs[1][i], ...; each cell keeps its size."""
    rows = [[to_pil(inputs[i])] + [to_pil(col[i]) for col in outputs] for i in range(len(inputs))]
    width = max(sum(c.width for c in r) + pad * (len(r) + 1) for r in rows)
    height = sum(max(c.height for c in r) for r in rows) + pad * (len(rows) + 1)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    y = pad
    for row in rows:
        x = pad
        for cell in row:
            grid.paste(cell, (x, y))
            x += cell.width + pad
        y += max(c.height for c in row) + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
    return path

"""Image tensors at the boundary: validation, working size, exact restore and mask blend-back.

Convention inside the core: images are float tensors (B, 3, H, W) with values in [0, 1].
ComfyUI's IMAGE layout (B, H, W, C) is converted by the nodes, not here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import NPEditError

# Values a little outside [0, 1] come from lossy resampling upstream; more than this is a wrong range.
_RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate a (B, 3, H, W) float batch in [0, 1] and return it unchanged.

    Raises `NPEditError` naming `name` for a non-tensor, wrong rank, channel count, dtype, empty
    batch, non-finite values or values outside [0, 1] (e.g. an image in [-1, 1] or [0, 255]).
    """
    if not isinstance(images, torch.Tensor):
        raise NPEditError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise NPEditError(f"{name}: expected shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise NPEditError(f"{name}: empty tensor of shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise NPEditError(f"{name}: expected a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise NPEditError(f"{name}: contains NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise NPEditError(f"{name}: values must lie in [0, 1], found range [{lo:.3g}, {hi:.3g}]")
    return images


def check_mask(mask: torch.Tensor, batch: int, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """Validate a mask of shape (B, H, W) or (B, 1, H, W) in [0, 1] and return it as (B, 1, H, W).

    A batch of one is broadcast to `batch`; any other size mismatch is an error (no silent resize).
    """
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        raise NPEditError(f"{name}: expected a floating-point tensor in [0, 1]")
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise NPEditError(f"{name}: expected shape (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if tuple(mask.shape[2:]) != (height, width):
        raise NPEditError(f"{name}: size {tuple(mask.shape[2:])} does not match the image size {(height, width)}")
    if mask.shape[0] not in (1, batch):
        raise NPEditError(f"{name}: batch of {mask.shape[0]} masks for {batch} images")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise NPEditError(f"{name}: values must lie in [0, 1]")
    return mask.expand(batch, -1, -1, -1)


def working_size(height: int, width: int, multiple: int, max_area: int | None = None) -> tuple[int, int]:
    """The size the backbone runs at: each side a multiple of `multiple`, aspect kept as close as possible.

    With `max_area` the image is first scaled down (never up) to at most that many pixels.
    Each side is rounded to the nearest multiple (at least one multiple), so the distortion of the
    aspect ratio is at most half a multiple per side; `restore_size` undoes it exactly at the output.
    """
    scale = 1.0
    if max_area is not None and height * width > max_area:
        scale = math.sqrt(max_area / (height * width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Differentiable antialiased bicubic resize of (B, C, H, W) to `size`, clamped to [0, 1]; a no-op at equal size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1)


def blend_mask(edited: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the edit back onto the original where `mask` (B, 1, H, W) is 1.

    Pixels where the mask is exactly 0 are copied from `original` bit for bit (torch.where, not a
    lerp, because `a * 1 + b * 0` is not always exactly `a` in floating point).
    """
    blended = original + (edited - original) * mask
    return torch.where(mask == 0, original, blended)

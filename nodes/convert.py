"""Checks and conversions at the ComfyUI boundary: IMAGE (B, H, W, C) <-> (B, 3, H, W), MASK, widget text."""

from __future__ import annotations

import torch

from ..npedit_core.errors import NPEditError


def image_to_core(image, name: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, 3) float in [0, 1] -> (B, 3, H, W); other layouts raise naming `name`."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise NPEditError(f"{name}: expected an IMAGE batch (B, H, W, C), got {shape}")
    if image.shape[-1] != 3:
        raise NPEditError(f"{name}: expected 3 colour channels (RGB), got {image.shape[-1]}; "
                          "convert RGBA or greyscale images to RGB first")
    return image.movedim(-1, 1)


def image_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> a ComfyUI IMAGE (B, H, W, 3) float32 on the CPU."""
    return images.detach().movedim(1, -1).float().cpu().contiguous()


def mask_to_core(mask, name: str = "mask") -> torch.Tensor | None:
    """A ComfyUI MASK (B, H, W) or (H, W) -> (B, H, W) float; None passes through."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise NPEditError(f"{name}: expected a MASK (B, H, W), got {shape}")
    return (mask[None] if mask.ndim == 2 else mask).float()


def require_text(value, name: str, hint: str) -> bool | str:
    """For `validate_inputs`: text typed into a widget must not be empty (ComfyUI answers HTTP 400 naming `name`).

    A linked input is not known at validation time (None) and is checked by the core when the node runs.
    """
    if value is not None and not str(value).strip():
        return f"{name}: empty; {hint}"
    return True


def check_choices(node, **values) -> bool | str:
    """For `validate_inputs`: each combo value must be one of the node's current options.

    ComfyUI 0.3.75 does not check V3 combo values itself (its check looks for V1 option lists), so
    without this a mistyped or missing model name would only fail once the graph runs.
    """
    options = {i.id: i.options for i in node.define_schema().inputs if getattr(i, "options", None) is not None}
    for name, value in values.items():
        if value is not None and name in options and value not in options[name]:
            shown = ", ".join(map(repr, options[name][:8])) + (", ..." if len(options[name]) > 8 else "")
            return f"{name}: {value!r} is not available (choices: {shown or 'none found'})"
    return True

"""ComfyUI services for the nodes: devices and memory, progress bars with previews, cancellation.

Models are kept on ComfyUI's offload device (the CPU unless --highvram/--gpu-only) and moved to its
compute device only while a node runs, after asking ComfyUI to free that much memory from its own
models; afterwards they go back and the cache is emptied. Simple and predictable: two packs' models
never sit in VRAM together. The pack does not wrap its models in ModelPatcher: ModelPatcher's partial
(lowvram) loading relies on ComfyUI's own `comfy.ops` layers, which diffusers/transformers models do not
use, so it would only add a second bookkeeping of the same move.
"""

from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.cli_args import LatentPreviewMethod, args

from ..npedit_core.previews import to_pil


def module_bytes(modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in list(m.parameters()) + list(m.buffers()))


@contextmanager
def on_device(*modules: torch.nn.Module):
    """Run the block with `modules` on ComfyUI's compute device; yields that device."""
    device = mm.get_torch_device()
    if device.type != "cpu":
        mm.free_memory(int(module_bytes(modules) * 1.3), device)  # room for the weights and some activations
    for module in modules:
        module.to(device)
    try:
        yield device
    finally:
        offload = mm.unet_offload_device()
        for module in modules:
            module.to(offload)
        mm.soft_empty_cache()


@contextmanager
def autograd_ready(grad: bool = False):
    """Leave the torch.inference_mode() that ComfyUI runs every node in (optionally with gradients on).

    Tensors created in inference mode can never take part in autograd. Loaders build their weights in
    here, so that NPEditRefine can backpropagate through the VAE decoder and the judge; NPEditRefine
    runs in here with grad=True (its inputs from other nodes are cloned into normal tensors first).
    """
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        yield


def previews_enabled() -> bool:
    """ComfyUI's --preview-method switch: "none" (its default) skips the per-step decode."""
    return args.preview_method != LatentPreviewMethod.NoPreviews


def progress(total: int, preview=None):
    """A core callback `(step, total, x0?, ...)` that checks Cancel, advances a progress bar and sends a preview.

    `preview(x0)` turns the step's latents into a (1, 3, H, W) image in [0, 1]; it runs only when
    previews are on in ComfyUI.
    """
    bar = comfy.utils.ProgressBar(total)
    show = preview is not None and previews_enabled()

    def callback(step: int, _total: int, latents: torch.Tensor | None = None, *_):
        mm.throw_exception_if_processing_interrupted()
        image = None
        if show and latents is not None:
            with torch.no_grad():
                image = ("JPEG", to_pil(preview(latents[:1])), args.preview_size)
        bar.update_absolute(step + 1, total, image)

    return callback

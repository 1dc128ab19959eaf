"""NPEditSampler: edit a batch of images with an instruction (npedit_core.sampler.edit_images)."""

from __future__ import annotations

from comfy_api.latest import io

from ..npedit_core.config import SamplerConfig
from ..npedit_core.sampler import edit_images
from .convert import image_to_comfy, image_to_core, mask_to_core, require_text
from .runtime import on_device, progress
from .types import Editor

MAX_SEED = 2**63 - 1  # SeededNoise seeds torch generators: any int64


class NPEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = SamplerConfig()
        return io.Schema(
            node_id="NPEditSampler",
            display_name="NP-Edit Sampler",
            category="NP-Edit/sampling",
            description="Edit images following an instruction in a few steps. The output has exactly the input's "
                        "size; with a mask, pixels outside it are the input's.",
            inputs=[
                Editor.Input("editor", tooltip="The editor from NP-Edit Load Editor."),
                io.Image.Input("image", tooltip="Images to edit (a batch is edited in one go, each with its own seed)."),
                io.String.Input("instruction", multiline=True, default="",
                                tooltip="What to change, e.g. 'make the car red' or 'remove the person on the left'."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed; batch item i uses seed + i, so an image gets the same edit alone "
                                     "or in a batch."),
                io.Int.Input("steps", default=defaults.steps, min=1, max=1000,
                             tooltip=f"Sampler steps; the editor is trained for {defaults.steps}."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: where the edit may change the image (1) and where the input is kept "
                                      "exactly (0). Must have the image's size."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def validate_inputs(cls, instruction=None) -> bool | str:
        return require_text(instruction, "instruction", "describe the edit to make")

    @classmethod
    def execute(cls, editor, image, instruction, seed, steps, mask=None) -> io.NodeOutput:
        images, masks = image_to_core(image), mask_to_core(mask)
        defaults = SamplerConfig()
        fast = getattr(editor, "fast_decoder", None) is not None  # FLUX.2 with a TAEF2 preview decoder
        preview = (lambda x0: editor.decode_latents(x0, fast=True)) if fast else editor.decode_latents
        with on_device(editor):
            out = edit_images(editor, images, instruction, seeds=seed, steps=steps, shift=defaults.shift,
                              eta=defaults.eta, step=defaults.step, mask=masks, callback=progress(steps, preview))
        return io.NodeOutput(image_to_comfy(out))

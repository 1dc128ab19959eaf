"""NP-Edit on ComfyUI's own MODEL: the pieces core has no node for, to use with core loaders and `SamplerCustom`.

- NPEditSigmas: the editor's few-step schedule as SIGMAS (with the final 0).
- NPEditStepSampler: the editor's between-step update (re-noise or the re-implementation's ddim step) as a
  SAMPLER, drawing its fresh noise as the NP-Edit Sampler does, so a batch of one gets the same edit from
  the same seed.
- NPEditZImageReference: the reference image as Z-Image conditioning, which ComfyUI's Z-Image model lacks.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.samplers
import torch
from comfy_api.latest import io

from ..npedit_core.config import SamplerConfig
from ..npedit_core.errors import NPEditError
from ..npedit_core.sampler import STEPS, SeededNoise, edit_schedule, next_latent
from . import zimage_reference

CATEGORY = "NP-Edit/sampling"
REFERENCE_KEY = "npedit_reference"


class NPEditSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = SamplerConfig()
        return io.Schema(
            node_id="NPEditSigmas",
            display_name="NP-Edit Sigmas",
            category=CATEGORY,
            description="The NP-Edit editor's schedule for SamplerCustom: 1, 1 - 1/steps, ... time-shifted, then 0 "
                        "(4 steps, shift 6: 1.0, 0.9474, 0.8571, 0.6667, 0).",
            inputs=[
                io.Int.Input("steps", default=defaults.steps, min=1, max=1000,
                             tooltip=f"Sampler steps; the editor is trained for {defaults.steps}."),
                io.Float.Input("shift", default=defaults.shift, min=0.01, max=100.0, step=0.01,
                               tooltip="Time shift towards the noise end (the editor's: 6)."),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, steps, shift) -> io.NodeOutput:
        return io.NodeOutput(torch.tensor(edit_schedule(steps, shift) + [0.0], dtype=torch.float32))


def sample_npedit(model, x, sigmas, extra_args=None, callback=None, disable=None, step="renoise", eta=1.0):
    """A k-diffusion-style sampler function: `model` returns x0 (ComfyUI's denoised); times are our t (1 = noise).

    Fresh noise: batch item i from a generator seeded with seed + i, after the draw that made its starting
    noise (npedit_core.sampler.SeededNoise, the NP-Edit Sampler's stream). Progress and previews come from
    `callback` (SamplerCustom's).
    """
    extra_args = extra_args or {}
    seed = int(extra_args.get("seed", 0) or 0)
    fresh = SeededNoise([seed + i for i in range(x.shape[0])])
    fresh(x)  # the starting noise's draw: ComfyUI's prepare_noise made it from the same seed
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})
        if s <= 0:  # a schedule that repeats its final 0: nothing left to denoise
            x = x0
            continue
        x = next_latent(x, x0, (x - x0) / s, s, s_next, step, eta, fresh)
    return x


class NPEditStepSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditStepSampler",
            display_name="NP-Edit Step Sampler",
            category=CATEGORY,
            description="The NP-Edit editor's sampler for SamplerCustom: at each step predict the clean image, then "
                        "go to the next time with fresh noise ('renoise', this project's editors) or the "
                        "re-implementation's 'ddim' step (its published checkpoint). Use cfg 1.",
            inputs=[
                io.Combo.Input("step", options=list(STEPS), default="renoise",
                               tooltip="renoise: this project's exports (unless their log says ddim); ddim: the "
                                       "re-implementation's published Z-Image editor."),
                io.Float.Input("eta", default=SamplerConfig().eta, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of fresh noise: 1 as trained, 0 the deterministic Euler step."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, step, eta) -> io.NodeOutput:
        if step not in STEPS:
            raise NPEditError(f"NP-Edit Step Sampler: step {step!r} is not one of {', '.join(STEPS)}")
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_npedit, extra_options={"step": step, "eta": eta}))


class NPEditZImageReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditZImageReference",
            display_name="NP-Edit Z-Image Reference",
            category=CATEGORY,
            description="Give a Z-Image model (from ComfyUI's own loaders, with NP-Edit's LoRA or the full NP-Edit "
                        "editor) the image to edit, the way the NP-Edit editor was trained to read it. ComfyUI's "
                        "Z-Image ignores ReferenceLatent; this patches the model instead.",
            inputs=[
                io.Model.Input("model", tooltip="A Z-Image model from Load Diffusion Model (optionally with LoRAs)."),
                io.Latent.Input("reference", tooltip="The image to edit, from VAE Encode (one, or one per edit)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, reference) -> io.NodeOutput:
        diffusion_model = model.get_model_object("diffusion_model")
        if not zimage_reference.is_z_image(diffusion_model):
            raise NPEditError(f"NP-Edit Z-Image Reference: the model is a {type(diffusion_model).__name__}, not Z-Image; "
                              "load a Z-Image diffusion model")
        samples = reference["samples"]
        if samples.ndim != 4 or samples.shape[1] != diffusion_model.in_channels:
            raise NPEditError(f"NP-Edit Z-Image Reference: reference latents {tuple(samples.shape)} are not Z-Image's "
                              f"(B, {diffusion_model.in_channels}, h, w); encode the image with the Z-Image VAE (ae)")
        latents = model.get_model_object("latent_format").process_in(samples.float())
        patched = model.clone()
        patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, REFERENCE_KEY)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, REFERENCE_KEY,
                                     zimage_reference.wrapper(latents))
        return io.NodeOutput(patched)

"""NPEditRefine: a few gradient steps on an edit under the judge + DMD objective (npedit_core.refine)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..npedit_core.config import LossConfig, RefineConfig
from ..npedit_core.refine import refine_edits
from .comfy_critic import critic_text, text_inputs
from .convert import image_to_comfy, image_to_core, mask_to_core
from .runtime import autograd_ready, on_device, progress
from .sampler import MAX_SEED
from .scoring import check_edit, edit_inputs
from .types import Critic, Judge


class NPEditRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        refine, loss = RefineConfig(), LossConfig()
        return io.Schema(
            node_id="NPEditRefine",
            display_name="NP-Edit Refine",
            category="NP-Edit/sampling",
            description="Test-time refinement: a few Adam steps on the edit's latents under the training objective "
                        "(w_vlm x judge loss + w_dmd x DMD loss), then decode. Keeps the input size.",
            inputs=[
                Critic.Input("critic", tooltip="The DMD critic; its base model also encodes and decodes the image."),
                io.Image.Input("reference", tooltip="The original image(s): one for all edits, or one per edit."),
                io.Image.Input("edited", tooltip="The edit(s) to refine, e.g. the NP-Edit Sampler's output."),
                *edit_inputs(),
                io.String.Input("caption", multiline=True, default="",
                                tooltip="A description of the edited image, for the DMD teacher (needed when w_dmd > 0)."),
                io.Int.Input("steps", default=refine.steps, min=1, max=200, tooltip="Gradient steps."),
                io.Float.Input("lr", default=refine.lr, min=0.0001, max=1.0, step=0.001, round=0.0001,
                               tooltip="Adam step size, in normalised-latent units per step."),
                io.Float.Input("w_vlm", default=loss.w_vlm, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the judge loss (training default). 0: no judge needed."),
                io.Float.Input("w_dmd", default=loss.w_dmd, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the DMD loss (training default). 0: no caption needed."),
                io.Int.Input("seed", default=refine.seed, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the DMD noise and times."),
                Judge.Input("judge", optional=True, tooltip="The judge; required when w_vlm > 0."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: refine only where the mask is 1; elsewhere the edit is kept exactly."),
                *text_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                io.String.Output(display_name="report", tooltip="The objective at the first and the last step."),
            ],
        )

    @classmethod
    def validate_inputs(cls, instruction=None, edit_type=None) -> bool | str:
        return check_edit(cls, instruction, edit_type)

    @classmethod
    def execute(cls, critic, reference, edited, instruction, edit_type, object, caption, steps, lr, w_vlm, w_dmd,  # noqa: A002
                seed, judge=None, mask=None, positive=None, negative=None) -> io.NodeOutput:
        text = critic_text(critic, positive, negative) if w_dmd > 0 else {}
        modules = critic.modules() + ([judge] if judge is not None and w_vlm > 0 else [])
        with autograd_ready(grad=True), on_device(*modules):
            # Clones: tensors from other nodes were made in inference mode and cannot join autograd.
            references = image_to_core(reference, "reference").clone()
            edited_core = image_to_core(edited, "edited").clone()
            masks = None if mask is None else mask_to_core(mask).clone()
            out, logs = refine_edits(
                judge if w_vlm > 0 else None, critic, references, edited_core, instruction, caption, edit_type,
                object.strip() or None, steps=steps, lr=lr, w_vlm=w_vlm, w_dmd=w_dmd, seed=seed, mask=masks,
                callback=progress(steps, critic.backbone.decode_latents), **text,
            )
        terms = [k for k in ("vlm_loss", "dmd_loss") if k in logs[0]]
        report = "\n".join(
            f"step {i + 1}/{len(logs)}: loss {log['loss']:.4f}" + "".join(f"  {k} {log[k]:.4f}" for k in terms)
            for i, log in ((0, logs[0]), (len(logs) - 1, logs[-1]))
        )
        return io.NodeOutput(image_to_comfy(out), report, ui=ui.PreviewText(report))

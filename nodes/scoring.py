"""Scoring nodes: the judge's P(edit done) / P(rest unchanged), the DMD critic's realism, best-of-N.

Per-item numbers leave as FLOAT *lists* (`is_output_list`): ComfyUI runs a node fed by such an output
once per item, and a batch of one gives a plain single value. Each node also returns, and shows on
itself, a short text report with one line per batch item.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..npedit_core.config import CriticConfig
from ..npedit_core.critic import realism_scores
from ..npedit_core.judges import EDIT_TYPES
from ..npedit_core.scoring import score_edits
from .comfy_critic import critic_text, text_inputs
from .convert import check_choices, image_to_core, require_text
from .runtime import on_device, progress
from .sampler import MAX_SEED
from .types import Critic, Judge

CATEGORY = "NP-Edit/scoring"


def edit_inputs() -> list:
    """Instruction, edit type and object: what the judge needs to ask its two questions."""
    return [
        io.String.Input("instruction", multiline=True, default="", tooltip="The edit instruction that was carried out."),
        io.Combo.Input("edit_type", options=list(EDIT_TYPES), default="other",
                       tooltip="Kind of edit; it picks the judge's questions (a removal asks whether the object is "
                               "still there)."),
        io.String.Input("object", default="", tooltip="For 'remove' edits: the name of the removed object."),
    ]


def check_edit(node, instruction, edit_type) -> bool | str:
    """validate_inputs of the nodes with `edit_inputs`."""
    text = require_text(instruction, "instruction", "give the instruction that was carried out")
    return text if text is not True else check_choices(node, edit_type=edit_type)


def _judge_scores(judge, reference, edited, instruction, edit_type, obj):
    references, edited = image_to_core(reference, "reference"), image_to_core(edited, "edited")
    with on_device(judge):
        return score_edits(judge, references, edited, instruction, edit_type, obj.strip() or None,
                           callback=progress(edited.shape[0]))


class NPEditVLMScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditVLMScore",
            display_name="NP-Edit VLM Score",
            category=CATEGORY,
            description="Ask the judge whether each edit was carried out and whether the rest of the image stayed "
                        "the same. Outputs one value per batch item (FLOAT lists) and a text report.",
            inputs=[
                Judge.Input("judge", tooltip="The judge from NP-Edit Load Judge."),
                io.Image.Input("reference", tooltip="The original image(s): one for all edits, or one per edit."),
                io.Image.Input("edited", tooltip="The edited image(s)."),
                *edit_inputs(),
            ],
            outputs=[
                io.Float.Output(display_name="p_edit_done", is_output_list=True,
                                tooltip="Per item: probability that the instruction was carried out."),
                io.Float.Output(display_name="p_rest_unchanged", is_output_list=True,
                                tooltip="Per item: probability that everything else is unchanged."),
                io.String.Output(display_name="report", tooltip="One line per item with both probabilities."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, instruction=None, edit_type=None) -> bool | str:
        return check_edit(cls, instruction, edit_type)

    @classmethod
    def execute(cls, judge, reference, edited, instruction, edit_type, object) -> io.NodeOutput:  # noqa: A002
        scores = _judge_scores(judge, reference, edited, instruction, edit_type, object)
        report = scores.report()
        return io.NodeOutput(scores.p_edit, scores.p_identity, report, ui=ui.PreviewText(report))


class NPEditSelectBest(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditSelectBest",
            display_name="NP-Edit Select Best",
            category=CATEGORY,
            description="Best-of-N: score every candidate edit with the judge and keep the one with the highest "
                        "P(edit done) x P(rest unchanged).",
            inputs=[
                Judge.Input("judge", tooltip="The judge from NP-Edit Load Judge."),
                io.Image.Input("reference", tooltip="The original image (one, or one per candidate)."),
                io.Image.Input("candidates", tooltip="A batch of candidate edits of the reference."),
                *edit_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="best", tooltip="The best candidate (a batch of one)."),
                io.Int.Output(display_name="index", tooltip="Its index in the candidate batch."),
                io.Float.Output(display_name="score", tooltip="Its P(edit done) x P(rest unchanged)."),
                io.String.Output(display_name="report", tooltip="Every candidate's scores, the chosen one marked."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, instruction=None, edit_type=None) -> bool | str:
        return check_edit(cls, instruction, edit_type)

    @classmethod
    def execute(cls, judge, reference, candidates, instruction, edit_type, object) -> io.NodeOutput:  # noqa: A002
        scores = _judge_scores(judge, reference, candidates, instruction, edit_type, object)
        best = scores.best()
        report = f"best: #{best}\n{scores.report()}"
        return io.NodeOutput(candidates[best:best + 1], best, scores.overall[best], report, ui=ui.PreviewText(report))


class NPEditDMDCritic(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = CriticConfig()
        return io.Schema(
            node_id="NPEditDMDCritic",
            display_name="NP-Edit DMD Critic",
            category=CATEGORY,
            description="Realism score per image: how much the teacher (base model) and the fake score disagree about "
                        "the noised image, relative to its size, averaged over fixed noise levels. Lower is more "
                        "realistic; 0 means they agree.",
            inputs=[
                Critic.Input("critic", tooltip="The critic from NP-Edit Load DMD Critic."),
                io.Image.Input("image", tooltip="Images to score."),
                io.String.Input("caption", multiline=True, default="",
                                tooltip="A description of the image (the teacher is a text-to-image model)."),
                io.Int.Input("seed", default=defaults.seed, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the fixed noise; keep it when comparing images."),
                io.Float.Input("guidance", default=defaults.guidance, min=1.0, max=20.0, step=0.1,
                               tooltip="Teacher CFG scale, as in training (3.5; 7.5 for remove/shape/style/action)."),
                *text_inputs(),
            ],
            outputs=[
                io.Float.Output(display_name="realism", is_output_list=True,
                                tooltip="Per item: teacher/fake-score disagreement (lower = more realistic)."),
                io.String.Output(display_name="report", tooltip="One line per item."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, critic, image, caption, seed, guidance, positive=None, negative=None) -> io.NodeOutput:
        images = image_to_core(image)
        times = CriticConfig().times
        text = critic_text(critic, positive, negative)
        with on_device(*critic.modules()):
            scores = realism_scores(critic, images, caption, times=times, seed=seed, guidance=guidance,
                                    callback=progress(len(times)), **text).tolist()
        report = "\n".join(f"#{i}  realism {s:.4f}  (teacher/fake disagreement, lower is better)"
                           for i, s in enumerate(scores))
        return io.NodeOutput(scores, report, ui=ui.PreviewText(report))


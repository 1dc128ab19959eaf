"""Score edits with the VLM judge: the training questions read as probabilities (method.md 2.2).

For each (reference, edited, instruction) the judge gets the two training questions:
- edit verification -> P(edit done): P(Yes) that the instruction was carried out; for removals the
  question is "does the edited image contain {object}?" and "edit done" is its P(No);
- identity preservation -> P(rest unchanged): P(Yes) that everything else stayed the same.
Each probability is the two-token softmax over {Yes, No} at the answer position (`Judge.p_yes`).
`overall` = P(edit done) x P(rest unchanged): the probability that both answers are the desired
ones if the questions were independent; maximising it is minimising the training loss's sum of
-log p over the two questions, so best-of-N selection ranks candidates by the objective itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import NPEditError
from .images import check_images
from .judges.base import Judge
from .judges.prompts import QuestionTemplates, edit_questions
from .sampler import per_sample


@dataclass
class EditScores:
    """Per-item judge probabilities of a batch of edits (lists of floats, one per edited image)."""

    p_edit: list[float]
    p_identity: list[float]
    instructions: list[str]
    edit_types: list[str]

    @property
    def overall(self) -> list[float]:
        return [e * i for e, i in zip(self.p_edit, self.p_identity)]

    def best(self) -> int:
        """Index of the highest `overall` score (the first one on ties)."""
        overall = self.overall
        return max(range(len(overall)), key=lambda i: (overall[i], -i))

    def report(self) -> str:
        """One line per item, e.g. `#0  edit done 0.83  unchanged 0.91  both 0.76  (color) make the sky pink`."""
        lines = [
            f"#{i}  edit done {e:.3f}  unchanged {u:.3f}  both {e * u:.3f}  ({t}) {s}"
            for i, (e, u, t, s) in enumerate(zip(self.p_edit, self.p_identity, self.edit_types, self.instructions))
        ]
        return "\n".join(lines)


def broadcast_references(references: torch.Tensor, batch: int, name: str = "reference") -> torch.Tensor:
    """A batch of one reference serves every edited image; otherwise the batch sizes must match."""
    if references.shape[0] == batch:
        return references
    if references.shape[0] == 1:
        return references.expand(batch, -1, -1, -1)
    raise NPEditError(f"{name}: {references.shape[0]} images for {batch} edited images (give 1 or {batch})")


@torch.no_grad()
def score_edits(
    judge: Judge,
    references: torch.Tensor,
    edited: torch.Tensor,
    instructions: str | Sequence[str],
    edit_types: str | Sequence[str] = "other",
    objects: str | None | Sequence[str | None] = None,
    templates: QuestionTemplates | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> EditScores:
    """Judge each edited image against its reference; images (B, 3, H, W) in [0, 1], sizes may differ.

    A single reference, instruction, edit type or object is used for every edited image (best-of-N).
    The judge sees one item (two questions) per forward pass, so memory does not grow with the batch;
    `callback(i, B)` runs after each item (progress, cancellation).
    """
    check_images(references, "reference")
    check_images(edited, "edited")
    batch = edited.shape[0]
    references = broadcast_references(references, batch)
    instructions = per_sample(instructions, batch, "instruction")
    edit_types = per_sample(edit_types, batch, "edit_type")
    objects = per_sample(objects, batch, "object")
    p_edit, p_identity = [], []
    for i in range(batch):
        verify, identity = edit_questions(references[i], edited[i], instructions[i], edit_types[i], objects[i], templates)
        p_yes = judge.p_yes([verify, identity]).float().cpu()
        # Removal verification asks whether the object is still there: the edit is done when the answer is No.
        p_edit.append(float(p_yes[0]) if verify.desired == "Yes" else 1.0 - float(p_yes[0]))
        p_identity.append(float(p_yes[1]))
        if callback is not None:
            callback(i, batch)
    return EditScores(p_edit, p_identity, list(instructions), list(edit_types))

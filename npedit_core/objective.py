"""The NP-Edit objective's judge term, from decoded images to a loss (method.md 2.2).

`judge_loss` asks the judge the two questions per sample (edit verification, identity preservation)
on differentiable images and returns the two-token loss, so gradients go
judge -> judge preprocessing -> decoded pixels -> VAE decoder -> unrolled editor.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .judges.base import Judge
from .judges.prompts import QuestionTemplates, edit_questions
from .losses import vlm_loss


def judge_loss(
    judge: Judge,
    references: torch.Tensor,
    edited: torch.Tensor,
    instructions: Sequence[str],
    edit_types: Sequence[str],
    objects: Sequence[str | None] | None = None,
    templates: QuestionTemplates | None = None,
    scale: float = 1.0,
    identity_question: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Two-token VLM loss for a batch of edits.

    references, edited: (B, 3, H, W) in [0, 1] (edited carries gradients; references need not).
    `identity_question=False` is the "no identity question" ablation. Logs the loss and the mean
    P(Yes) per question kind ("edit", "identity").
    """
    objects = list(objects) if objects is not None else [None] * len(instructions)
    questions = []
    for b in range(edited.shape[0]):
        pair = edit_questions(references[b], edited[b], instructions[b], edit_types[b], objects[b], templates)
        questions.extend(pair if identity_question else pair[:1])
    logits = judge.answer_logits(questions)
    return vlm_loss(logits, [q.desired for q in questions], [q.kind for q in questions], scale)

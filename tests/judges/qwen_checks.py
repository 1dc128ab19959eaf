"""Checks shared by the Qwen2.5-VL and Qwen3-VL judge tests (each family passes its own crops)."""

from __future__ import annotations

import torch

from npedit_core.judges.prompts import edit_questions


def logits_match_processor(judge, questions, hf_inputs, tol: float) -> None:
    """Batched, left-padded answer logits equal the model run alone on the HF processor's inputs."""
    with torch.no_grad():
        ours = judge.answer_logits(questions)
        batch = judge.build_inputs(questions)
        assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the batch really is left-padded
        for i, q in enumerate(questions):
            ref = hf_inputs(judge.tokenizer, q)
            row = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            assert torch.equal(row, ref["input_ids"][0])  # same tokens, pads expanded the same way
            logits = judge.model(**ref, use_cache=False).logits[0, -1, [judge.yes_id, judge.no_id]]
            assert (ours[i] - logits).abs().max() <= tol
    assert (ours[0] - ours[1]).abs().max() > 10 * tol  # the tolerance is far below what questions change


def gradients_reach_images_not_the_judge(judge, ref: torch.Tensor, edited: torch.Tensor) -> None:
    ref, edited = ref.clone().requires_grad_(True), edited.clone().requires_grad_(True)
    questions = edit_questions(ref, edited, "remove the cup", "remove", obj="cup")
    logits = judge.answer_logits(questions)
    desired = torch.tensor([q.desired == "Yes" for q in questions])
    margin = torch.where(desired, logits[:, 0] - logits[:, 1], logits[:, 1] - logits[:, 0])
    (-torch.nn.functional.logsigmoid(margin).mean()).backward()
    for image in (ref, edited):
        assert image.grad is not None and image.grad.abs().sum() > 0 and torch.isfinite(image.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in judge.parameters())


def removal_and_two_image_questions_batch_like_alone(judge, ref: torch.Tensor, edited: torch.Tensor) -> None:
    questions = edit_questions(ref, edited, "remove the rocket", "remove", obj="rocket")
    assert [len(q.images) for q in questions] == [1, 2]
    with torch.no_grad():
        batched = judge.answer_logits(questions)
        alone = torch.cat([judge.answer_logits([q]) for q in questions])
        p = judge.p_yes(questions)
    assert batched.shape == (2, 2)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert ((p > 0) & (p < 1)).all()

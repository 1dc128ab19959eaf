"""Scoring edits with the judge: removal semantics, broadcasting, best-of-N, a real tiny judge."""

import pytest
import torch

from npedit_core.errors import NPEditError
from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge
from npedit_core.scoring import EditScores, score_edits


class BrightnessJudge:
    """Answers Yes with probability = mean brightness of the last image shown (edit) or 0.9 (identity)."""

    def __init__(self):
        self.asked = []

    def p_yes(self, questions):
        self.asked.append(questions)
        return torch.tensor([q.images[-1].mean().item() if q.kind == "edit" else 0.9 for q in questions])


def test_edit_done_is_p_yes_except_for_removals_where_it_is_p_no():
    judge = BrightnessJudge()
    ref, edited = torch.zeros(1, 3, 8, 8), torch.full((2, 3, 8, 8), 0.2)
    scores = score_edits(judge, ref, edited, "make it brighter", "color")
    assert scores.p_edit == pytest.approx([0.2, 0.2]) and scores.p_identity == pytest.approx([0.9, 0.9])
    removal = score_edits(judge, ref, edited, "remove the cat", "remove", "cat")
    # "Does this image contain a cat?" answered Yes with p 0.2: the removal is done with p 0.8.
    assert removal.p_edit == pytest.approx([0.8, 0.8])
    verify = judge.asked[-1][0]
    assert verify.desired == "No" and len(verify.images) == 1 and "cat" in verify.text


def test_one_reference_serves_n_candidates_and_the_best_is_the_product_argmax():
    ref = torch.zeros(1, 3, 8, 8)
    candidates = torch.stack([torch.full((3, 8, 8), v) for v in (0.3, 0.9, 0.6, 0.9)])
    scores = score_edits(BrightnessJudge(), ref, candidates, "make it brighter", ["color"])
    assert scores.overall == pytest.approx([0.27, 0.81, 0.54, 0.81])
    assert scores.best() == 1  # ties go to the first
    lines = scores.report().splitlines()
    assert len(lines) == 4 and lines[1].startswith("#1  edit done 0.900  unchanged 0.900  both 0.810  (color)")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(references=torch.zeros(2, 3, 8, 8)), "reference: 2 images for 3 edited"),
        (dict(instructions=["a", "b"]), "instruction: 2 given for a batch of 3"),
        (dict(edit_types="recolor"), "unknown edit type 'recolor'"),
        (dict(edit_types="remove"), "object: a 'remove' edit needs"),
        (dict(edited=torch.full((3, 3, 8, 8), 2.0)), r"edited: values must lie in \[0, 1\]"),
    ],
)
def test_bad_inputs_name_the_input(kwargs, match):
    args = dict(references=torch.zeros(1, 3, 8, 8), edited=torch.rand(3, 3, 8, 8), instructions="add a hat")
    args.update(kwargs)
    with pytest.raises(NPEditError, match=match):
        score_edits(BrightnessJudge(), **args)


def test_real_tiny_judge_scores_are_probabilities_and_batch_independent(qwen_tokenizer_path, photos):
    judge = Qwen25VLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)
    ref = photos("chelsea")[:, :, ::8, ::8]  # (1, 3, 38, 56): odd sizes on purpose
    edited = torch.stack([ref[0].flip(-1), 1 - ref[0], ref[0]])
    batch = score_edits(judge, ref, edited, "make the cat blue", "color")
    alone = score_edits(judge, ref, edited[1:2], "make the cat blue", "color")
    assert all(0 < p < 1 for p in batch.p_edit + batch.p_identity)
    assert batch.p_edit[1] == pytest.approx(alone.p_edit[0], abs=1e-5)
    assert batch.p_identity[1] == pytest.approx(alone.p_identity[0], abs=1e-5)
    assert isinstance(batch, EditScores) and len(batch.report().splitlines()) == 3

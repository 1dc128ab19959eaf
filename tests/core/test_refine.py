"""Test-time refinement: the objective goes down, sizes and masks are kept, seeds repeat, errors name inputs."""

import pytest
import torch

from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.critic import Critic
from npedit_core.errors import NPEditError
from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge
from npedit_core.refine import refine_edits

from tests.core.exports import write_exports


class RednessJudge:
    """Differentiable stand-in judge: log-odds of Yes = 8 * (red - blue) of the last image shown."""

    def answer_logits(self, questions):
        margins = [8 * (q.images[-1][0].mean() - q.images[-1][2].mean()) for q in questions]
        return torch.stack([torch.stack([m, torch.zeros_like(m)]) for m in margins])


@pytest.fixture(scope="module")
def critic(tmp_path_factory):
    fake = write_exports(ZImageBackbone.tiny(seed=0), tmp_path_factory.mktemp("exports"))["fake"]
    return Critic.from_export(ZImageBackbone.tiny(seed=0), fake)


@pytest.fixture(scope="module")
def pair(photos):
    reference = photos("astronaut")[:, :, ::12, ::11]  # (1, 3, 43, 47): odd sizes on purpose
    return reference, reference.flip(-1)


def test_judge_term_alone_lowers_the_loss_and_keeps_the_size(critic, pair):
    reference, edited = pair
    steps = []
    out, logs = refine_edits(RednessJudge(), critic, reference, edited, "make it red", steps=6, lr=0.1, w_vlm=1.0,
                             w_dmd=0.0, callback=lambda i, n, x, log: steps.append((i, n, tuple(x.shape))))
    assert out.shape == edited.shape and out.dtype == edited.dtype
    assert steps == [(i, 6, (1, 16, 6, 6)) for i in range(6)]  # 43x47 runs at 48x48: 6x6 latents
    assert logs[-1]["vlm_loss"] < logs[0]["vlm_loss"]
    # Redder, not merely changed: red - blue rises above the input's (0.176; 6 steps give 0.209) and far
    # above what the tiny VAE's round trip alone leaves of it (0.135).
    redness = lambda x: (x[0, 0] - x[0, 2]).mean().item()  # noqa: E731
    backbone = critic.backbone
    with torch.no_grad():
        round_trip = backbone.decode_latents(backbone.encode_images(torch.nn.functional.interpolate(
            edited, size=(48, 48), mode="bilinear", antialias=True))).float()
    assert redness(out) > redness(edited) + 0.02
    assert redness(out) > redness(round_trip) + 0.05


def test_dmd_term_is_seeded_and_the_mask_keeps_unmasked_pixels_exactly(critic, pair):
    reference, edited = pair
    kwargs = dict(captions="an astronaut", steps=2, w_vlm=0.0, w_dmd=1.0)
    a, logs = refine_edits(None, critic, reference, edited, "x", seed=3, **kwargs)
    b, _ = refine_edits(None, critic, reference, edited, "x", seed=3, **kwargs)
    c, _ = refine_edits(None, critic, reference, edited, "x", seed=4, **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert "dmd_loss" in logs[0] and "vlm_loss" not in logs[0]
    mask = torch.zeros(1, 43, 47)
    mask[:, 10:30, 5:40] = 1.0
    masked, _ = refine_edits(None, critic, reference, edited, "x", seed=3, mask=mask, **kwargs)
    assert torch.equal(masked[:, :, mask[0] == 0], edited[:, :, mask[0] == 0])
    assert torch.allclose(masked[:, :, mask[0] == 1], a[:, :, mask[0] == 1], atol=1e-6)


def test_full_objective_with_a_real_tiny_judge_moves_the_latents(critic, pair, qwen_tokenizer_path):
    reference, edited = pair
    judge = Qwen25VLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)
    out, logs = refine_edits(judge, critic, reference, edited, "remove the flag", "an astronaut", "remove", "flag",
                             steps=2, lr=0.05)
    assert {"vlm_loss", "dmd_loss", "loss"} <= set(logs[0]) and not torch.equal(out, edited)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(w_vlm=0.0, w_dmd=0.0), "w_vlm, w_dmd: need non-negative weights"),
        (dict(w_vlm=1.0, judge=None), "judge: w_vlm > 0 needs a judge"),
        (dict(captions=""), r"caption\[0\]: empty"),
        (dict(steps=0), "steps: must be at least 1"),
        (dict(mask=torch.ones(1, 10, 10)), "mask: size"),
    ],
)
def test_bad_inputs_name_the_input(critic, pair, kwargs, match):
    reference, edited = pair
    args = dict(judge=RednessJudge(), critic=critic, references=reference, edited=edited, instructions="make it red",
                captions="an astronaut")
    args.update(kwargs)
    with pytest.raises(NPEditError, match=match):
        refine_edits(**args)

"""The loss terms against hand computations on small tensors."""

import math

import pytest
import torch

from npedit_core.backbones.base import TextEmbeds
from npedit_core.losses import (
    cfg_scales,
    dmd_generator_loss,
    dmd_loss,
    do_nothing_loss,
    fake_score_loss,
    logit_scale,
    vlm_loss,
    warmup_loss,
)


def test_vlm_loss_is_minus_log_sigmoid_of_the_desired_margin():
    logits = torch.tensor([[2.0, 0.5], [1.0, 3.0]])
    loss, logs = vlm_loss(logits, ["Yes", "No"], ["edit", "identity"])
    by_hand = (-math.log(1 / (1 + math.exp(-1.5))) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert logs["p_yes_edit"] == pytest.approx(1 / (1 + math.exp(-1.5)), rel=1e-6)
    assert logs["p_yes_identity"] == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-6)


def test_vlm_loss_falls_when_the_desired_logit_rises_and_removal_wants_no():
    base = torch.tensor([[0.0, 0.0]])
    up_yes = torch.tensor([[1.0, 0.0]])
    assert vlm_loss(up_yes, ["Yes"])[0] < vlm_loss(base, ["Yes"])[0]
    # A removal question wants "No": raising "Yes" must make it worse, raising "No" better.
    assert vlm_loss(up_yes, ["No"])[0] > vlm_loss(base, ["No"])[0]
    assert vlm_loss(torch.tensor([[0.0, 1.0]]), ["No"])[0] < vlm_loss(base, ["No"])[0]
    # The gradient points the same way: descent raises the desired logit, lowers the other.
    logits = torch.zeros(2, 2, requires_grad=True)
    vlm_loss(logits, ["Yes", "No"])[0].backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]
    assert logits.grad[1, 1] < 0 < logits.grad[1, 0]


def test_vlm_loss_stays_finite_for_a_very_sure_wrong_judge():
    loss, _ = vlm_loss(torch.tensor([[-1e4, 1e4]]), ["Yes"])
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2e4)


def test_logit_scale_ramps_linearly_then_holds():
    assert logit_scale(0) == pytest.approx(0.1)
    assert logit_scale(1000) == pytest.approx(0.55)
    assert logit_scale(2000) == logit_scale(10**6) == pytest.approx(1.0)


def test_dmd_gradient_is_zero_when_fake_and_teacher_agree():
    x0 = torch.randn(2, 4, 3, 3, requires_grad=True)
    pred = torch.randn(2, 4, 3, 3)
    loss, _ = dmd_loss(x0, pred, pred.clone())
    loss.backward()
    assert torch.count_nonzero(x0.grad) == 0


def test_dmd_matches_a_hand_computation_and_moves_x0_toward_the_teacher():
    x0 = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]], requires_grad=True)  # (2, 1, 1, 2)
    real = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    fake = x0.detach().clone()  # the fake score reproduces the editor's output
    loss, _ = dmd_loss(x0, real, fake)
    loss.backward()
    # By hand: norm_0 = mean(|1-0|, |2-0|) = 1.5; norm_1 = mean(1, 2) = 1.5; g = (fake - real) / norm;
    # dL/dx0 = g / numel with numel = 4.
    g = (fake - real) / 1.5
    assert torch.allclose(x0.grad, g / 4, atol=1e-7)
    assert loss.item() == pytest.approx(0.5 * (g**2).mean().item(), rel=1e-6)
    stepped = x0.detach() - 0.1 * x0.grad
    assert (stepped - real).abs().sum() < (x0.detach() - real).abs().sum()


def test_dmd_generator_loss_uses_cfg_on_the_teacher_and_no_grad_through_the_critics():
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 2, 2, requires_grad=True)
    text, negative = TextEmbeds(torch.ones(2, 1, 1)), TextEmbeds(torch.zeros(2, 1, 1))
    calls = []

    def real(x_t, t, txt):
        calls.append(("real", txt.embeds[0, 0, 0].item()))
        return x_t * (1 + txt.embeds[0, 0, 0])  # cond and uncond differ, so CFG matters

    def fake(x_t, t, txt):
        assert not torch.is_grad_enabled()
        return x_t

    loss, logs = dmd_generator_loss(x0, real, fake, text, negative, cfg_scales(["remove", "color"]),
                                    generator=torch.Generator().manual_seed(5))
    loss.backward()
    assert [c[1] for c in calls] == [1.0, 0.0]
    assert 0.02 <= logs["dmd_t_mean"] <= 0.98
    assert cfg_scales(["remove", "color", "style"]).tolist() == [7.5, 3.5, 7.5]

    # By hand, from the same draws: the teacher's velocity is v_u + w (v_c - v_u) with w = 7.5 for the
    # removal and 3.5 for the recolour; v_c = 2 x_t, v_u = x_t, the fake's v = x_t.
    def expected_grad(w):
        g = torch.Generator().manual_seed(5)
        t = (0.02 + 0.96 * torch.rand(2, generator=g)).view(-1, 1, 1, 1)
        x_t = (1 - t) * x0.detach() + t * torch.randn(x0.shape, generator=g)
        x0_real = x_t - t * (x_t + w.view(-1, 1, 1, 1) * (2 * x_t - x_t))
        x0_fake = x_t - t * x_t
        norm = (x0.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
        return (x0_fake - x0_real) / norm / x0.numel()

    torch.testing.assert_close(x0.grad, expected_grad(torch.tensor([7.5, 3.5])))
    for other in ([1.0, 1.0], [3.5, 3.5], [7.5, 7.5]):  # no CFG, or one scale for both: another gradient
        assert (x0.grad - expected_grad(torch.tensor(other))).abs().max() > 1e-3


def test_fake_score_loss_is_zero_for_the_exact_velocity_and_trains_only_the_fake():
    x0 = torch.randn(3, 2, 4, 4, requires_grad=True)
    text = TextEmbeds(torch.zeros(3, 1, 1))
    gen = torch.Generator().manual_seed(1)
    # An oracle that knows x0 predicts eps - x0 exactly from x_t and t.
    oracle = lambda x_t, t, _: (x_t - x0.detach()) / t.view(-1, 1, 1, 1)  # noqa: E731  (x_t - x0) / t = eps - x0
    loss, _ = fake_score_loss(oracle, x0, text, generator=gen)
    assert loss.item() < 1e-8
    w = torch.zeros((), requires_grad=True)
    loss, _ = fake_score_loss(lambda x_t, t, _: w * x_t, x0, text)
    loss.backward()
    assert w.grad is not None and x0.grad is None


def test_do_nothing_and_warmup_targets_are_the_reference():
    ref = torch.randn(2, 3, 4, 4)
    assert do_nothing_loss(ref.clone(), ref)[0].item() == 0.0
    # An editor that returns eps - reference exactly (it can see x_t, t and the clean reference).
    perfect = lambda x_t, t, text, r: (x_t - r) / t.view(-1, 1, 1, 1)  # noqa: E731
    loss, logs = warmup_loss(perfect, ref, TextEmbeds(torch.zeros(2, 1, 1)))
    assert loss.item() < 1e-8 and 0 < logs["warmup_t_mean"] < 1


def test_warmup_t2i_share_trains_the_first_rows_without_the_reference():
    ref = torch.randn(4, 3, 4, 4)
    text = TextEmbeds(torch.arange(4.0).view(4, 1, 1))
    calls = []

    def editor(x_t, t, txt, r):  # exact on the copy rows; a constant on text-to-image rows
        calls.append((txt.embeds.flatten().tolist(), None if r is None else r.shape[0]))
        return torch.zeros_like(x_t) if r is None else (x_t - r) / t.view(-1, 1, 1, 1)

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    loss, logs = warmup_loss(editor, ref, text, generator=gen(), t2i_share=0.5)
    assert calls == [([0.0, 1.0], None), ([2.0, 3.0], 2)]  # the first half from its captions alone
    assert loss.item() > 0 and logs["warmup_t2i_loss"] > 0
    calls.clear()
    plain, plain_logs = warmup_loss(editor, ref, text, generator=gen())  # the default copies every row, in one call
    assert calls == [([0.0, 1.0, 2.0, 3.0], 4)] and plain.item() < 1e-8 and "warmup_t2i_loss" not in plain_logs
    assert loss.item() == pytest.approx(logs["warmup_t2i_loss"] / 2, rel=1e-6)  # copy rows contribute 0 (mean over 4)

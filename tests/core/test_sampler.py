"""The few-step sampler and the training unroll, on a toy backbone (exact arithmetic checks)."""

import pytest
import torch

from npedit_core.errors import NPEditError
from npedit_core.sampler import SeededNoise, denoise, edit_images, edit_schedule, unroll, unroll_sigmas

from tests.core.toy_backbone import ToyBackbone


def test_schedule_is_the_reimplementations():
    assert edit_schedule(4, 6.0) == pytest.approx([1.0, 0.9474, 0.8571, 0.6667], abs=1e-4)
    assert edit_schedule(1, 6.0) == [1.0]
    with pytest.raises(NPEditError, match="steps"):
        edit_schedule(0)


def test_deterministic_step_is_euler_and_reuses_the_starting_noise_from_t1():
    bb = ToyBackbone()
    text = bb.encode_text(["a"])
    eps = torch.randn(1, 4, 2, 2)
    sig = [1.0, 0.6]
    v1 = bb.velocity(eps, torch.tensor([1.0]), text)
    x0_a = eps - v1
    x_t2 = 0.4 * x0_a + 0.6 * eps  # the paper's "same eps" re-noising
    expected = x_t2 - 0.6 * bb.velocity(x_t2, torch.tensor([0.6]), text)
    assert torch.allclose(denoise(bb, eps, sig, text, eta=0.0), expected, atol=1e-6)


def test_eta_one_renoises_with_fresh_noise():
    bb = ToyBackbone()
    text = bb.encode_text(["a"])
    eps, fresh = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x0_a = eps - bb.velocity(eps, torch.tensor([1.0]), text)
    x_t2 = 0.4 * x0_a + 0.6 * fresh
    expected = x_t2 - 0.6 * bb.velocity(x_t2, torch.tensor([0.6]), text)
    got = denoise(bb, eps, [1.0, 0.6], text, eta=1.0, renoise=lambda x: fresh)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("k, times", [(1, [1.0]), (2, [1.0, 0.9474]), (4, [1.0, 0.6667])])
def test_unroll_runs_one_or_two_passes_with_gradients_through_both(k, times):
    bb = ToyBackbone()
    schedule = edit_schedule(4, 6.0)
    assert unroll_sigmas(schedule, k) == pytest.approx(times, abs=1e-4)
    text = bb.encode_text(["make it red"])
    ref = bb.encode_images(torch.rand(1, 3, 16, 16))
    x0 = unroll(bb, torch.randn(1, 4, 2, 2), text, ref, schedule, k)
    assert [c[0] for c in bb.calls] == pytest.approx(times, abs=1e-4)
    x0.square().mean().backward()
    for name, p in bb.transformer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in bb.vae.parameters())
    with pytest.raises(NPEditError, match="unroll length"):
        unroll_sigmas(schedule, 5)


def test_two_step_unroll_backpropagates_through_the_first_pass():
    """The first pass's output feeds the second: its contribution must be in the gradient."""
    bb = ToyBackbone()
    text, ref = bb.encode_text(["x"]), bb.encode_images(torch.rand(1, 3, 16, 16))
    noise, fresh = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    w = bb.transformer["x"].weight
    full = torch.autograd.grad(unroll(bb, noise, text, ref, [1.0, 0.5], 2, renoise=lambda x: fresh).sum(), w)[0]
    # Same computation with the first pass detached: its gradient differs, so the first pass counted.
    x0_a = (noise - bb.velocity(noise, torch.tensor([1.0]), text, ref)).detach()
    x_t2 = 0.5 * x0_a + 0.5 * fresh
    cut = torch.autograd.grad((x_t2 - 0.5 * bb.velocity(x_t2, torch.tensor([0.5]), text, ref)).sum(), w)[0]
    assert not torch.allclose(full, cut)


def test_edit_keeps_odd_sizes_and_blends_the_mask_bit_exactly():
    bb = ToyBackbone()
    images = torch.rand(2, 3, 333, 517)
    out = edit_images(bb, images, "add a hat", seeds=3)
    assert out.shape == images.shape and out.dtype == images.dtype
    mask = torch.zeros(2, 333, 517)
    mask[:, 100:200, 50:300] = 1.0
    mask[:, 90:100, 50:300] = 0.5
    blended = edit_images(bb, images, "add a hat", seeds=3, mask=mask)
    keep = (mask == 0)[:, None].expand_as(images)
    assert torch.equal(blended[keep], images[keep])
    assert not torch.equal(blended[~keep], images[~keep])


def test_batch_seeds_equal_single_runs():
    bb = ToyBackbone()
    images = torch.rand(2, 3, 32, 48)
    both = edit_images(bb, images, ["red", "blue"], seeds=[7, 11])
    second = edit_images(bb, images[1:], "blue", seeds=11)
    assert torch.allclose(both[1:], second, atol=1e-6)
    assert not torch.allclose(both[0], edit_images(bb, images[:1], "red", seeds=8)[0])


def test_seeded_noise_is_per_row():
    a = SeededNoise([1, 2])(torch.empty(2, 3))
    assert torch.equal(a[1], SeededNoise([2])(torch.empty(1, 3))[0])


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (torch.rand(1, 3, 16, 16) * 255, {}, r"\[0, 1\]"),
        (torch.rand(1, 16, 16, 3), {}, r"\(B, 3, H, W\)"),
        (torch.randint(0, 2, (1, 3, 16, 16)), {}, "floating-point"),
        (torch.full((1, 3, 16, 16), float("nan")), {}, "NaN"),
        (torch.rand(1, 3, 16, 16), {"instructions": "  "}, "empty"),
        (torch.rand(2, 3, 16, 16), {"instructions": ["a", "b", "c"]}, "3 given for a batch of 2"),
        (torch.rand(1, 3, 16, 16), {"mask": torch.ones(1, 8, 8)}, "does not match the image size"),
        (torch.rand(1, 3, 16, 16), {"eta": 2.0}, "eta"),
    ],
)
def test_bad_inputs_get_clear_errors(images, kwargs, match):
    kwargs.setdefault("instructions", "add a hat")
    with pytest.raises(NPEditError, match=match):
        edit_images(ToyBackbone(), images, **kwargs)


def reimplementation_flow_sampler(velocity, x, timesteps, noises, eta):
    """A port of the re-implementation's inference loop (utils_fm/sampler.py, FlowSampler.__call__,
    sample_method "ddim", FlowNoiser alpha = 1 - t, beta = t, min_timestep 0 appended); `noises` stands
    in for its generator's draws, one per step."""
    x = x.to(torch.float32)
    timesteps = torch.cat([torch.tensor(timesteps), torch.tensor([0.0])])
    for i, (t, next_t) in enumerate(zip(timesteps[:-1], timesteps[1:], strict=True)):
        v = velocity(x, t.repeat(x.shape[0]))
        alpha, beta = 1 - t, t
        next_alpha, next_beta = 1 - next_t, next_t
        x_0, eps = x - beta * v, x + alpha * v
        sde_beta = (next_beta - eta * (beta - next_beta) * (next_beta / beta)).clamp(min=0.0)
        x = next_alpha * x_0 + sde_beta * eps + (next_beta**2 - sde_beta**2).sqrt() * noises[i]
    return x, x_0


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_ddim_step_matches_a_port_of_the_reimplementations_sampler(eta):
    bb = ToyBackbone()
    text, ref = bb.encode_text(["make it red"]), bb.encode_images(torch.rand(2, 3, 16, 16))
    schedule = edit_schedule(4, 6.0)
    start = torch.randn(2, 4, 2, 2)
    noises = [torch.randn(2, 4, 2, 2) for _ in schedule]
    expected, _ = reimplementation_flow_sampler(lambda x, t: bb.velocity(x, t, text, ref), start, schedule, noises, eta)
    draws = iter(noises)
    got = denoise(bb, start, schedule, text, ref, eta=eta, renoise=lambda x: next(draws), step="ddim")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # It is not the renoise step: at eta = 1 that keeps none of the predicted noise.
    draws = iter(noises)
    other = denoise(bb, start, schedule, text, ref, eta=eta, renoise=lambda x: next(draws), step="renoise")
    if eta > 0:
        assert (other - expected).abs().max() > 1e-3
    else:
        torch.testing.assert_close(other, expected, rtol=1e-5, atol=1e-6)  # eta 0: both are Euler


def test_edit_images_uses_the_step_an_export_records():
    bb = ToyBackbone()
    images = torch.rand(1, 3, 16, 16)
    renoised = edit_images(bb, images, "make it red", seeds=3, step="renoise")
    ddim = edit_images(bb, images, "make it red", seeds=3, step="ddim")
    assert (renoised - ddim).abs().max() > 1e-4
    bb.sampler_step = "ddim"  # what export.load_editor sets from the file's metadata
    assert torch.equal(edit_images(bb, images, "make it red", seeds=3), ddim)
    assert torch.equal(edit_images(bb, images, "make it red", seeds=3, step="renoise"), renoised)
    with pytest.raises(NPEditError, match="sampler step"):
        edit_images(bb, images, "make it red", step="euler")

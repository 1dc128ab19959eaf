"""NP-Edit's loss terms (method.md sections 2.2-2.4 and 3), each a small function returning (loss, logs).

The trainer only weights, sums, clips and steps. Velocity models enter as callables
`velocity(x_t (B, C, h, w), t (B,), text) -> v`, so the same functions serve separate models and one
shared base with LoRA adapters switched on and off.
Logs are plain floats (detached), ready for metrics.jsonl.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .backbones.base import TextEmbeds

Velocity = Callable[[torch.Tensor, torch.Tensor, TextEmbeds], torch.Tensor]

#: Teacher CFG scale per edit type in the re-implementation; every other type uses DEFAULT_CFG.
STRONG_CFG_TYPES = frozenset({"remove", "shape", "style", "action"})
STRONG_CFG, DEFAULT_CFG = 7.5, 3.5


def logit_scale(step: int, start: float = 0.1, end: float = 1.0, ramp_steps: int = 2000) -> float:
    """The judge-logit scale: linear from `start` at step 0 to `end` at `ramp_steps`, then constant."""
    if ramp_steps <= 0:
        return end
    return start + (end - start) * min(step, ramp_steps) / ramp_steps


def vlm_loss(
    logits: torch.Tensor, desired: Sequence[str], kinds: Sequence[str] | None = None, scale: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """Two-token yes/no loss (method.md 2.2): mean over questions of -log p(desired).

    logits: (Q, 2) answer-position logits of ["Yes", "No"]. p = sigmoid(l_desired - l_other) is the
    softmax over the two tokens only; the margin is multiplied by `scale` (the ramp). logsigmoid keeps
    it finite when the judge is very sure. Logs P(Yes) averaged per question kind.
    """
    if logits.ndim != 2 or logits.shape[1] != 2 or logits.shape[0] != len(desired):
        raise ValueError(f"vlm_loss: logits {tuple(logits.shape)} for {len(desired)} questions; expected (Q, 2)")
    sign = torch.tensor([1.0 if d == "Yes" else -1.0 for d in desired], device=logits.device)
    margin = scale * (logits[:, 0] - logits[:, 1])  # log-odds of "Yes"
    loss = -F.logsigmoid(sign * margin).mean()
    p_yes = torch.sigmoid(margin.detach())
    logs = {"vlm_loss": loss.item()}
    for kind in sorted(set(kinds or [])):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        logs[f"p_yes_{kind}"] = p_yes[rows].mean().item()
    return loss, logs


def cfg_scales(edit_types: Sequence[str], device=None) -> torch.Tensor:
    """(B,) teacher CFG scale per sample: 7.5 for remove/shape/style/action edits, 3.5 otherwise."""
    return torch.tensor([STRONG_CFG if e in STRONG_CFG_TYPES else DEFAULT_CFG for e in edit_types], device=device)


def dmd_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """DMD generator loss from given teacher and fake-score predictions (method.md 2.3, as in DMD2).

    g = (x0_fake - x0_real) / mean|x0 - x0_real| with the normaliser per sample over (C, H, W);
    L = 0.5 * mean((x0 - stopgrad(x0 - g))^2), whose gradient wrt x0 is g / numel: a descent step
    moves x0 away from the fake score's prediction towards the teacher's.
    """
    with torch.no_grad():
        dims = tuple(range(1, x0.ndim))
        # The normaliser is a detached per-sample scale; the clamp stops a division by ~0 when the
        # teacher already reproduces x0 exactly (then g is ~0 anyway).
        norm = (x0.float() - x0_real.float()).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)
        grad = (x0_fake.float() - x0_real.float()) / norm
        grad = torch.nan_to_num(grad)
        target = x0.float() - grad
    loss = 0.5 * F.mse_loss(x0.float(), target)
    return loss, {"dmd_loss": loss.item(), "dmd_grad_norm": grad.norm().item() / grad.numel() ** 0.5}


def dmd_generator_loss(
    x0: torch.Tensor,
    real: Velocity,
    fake: Velocity,
    text: TextEmbeds,
    negative: TextEmbeds,
    guidance: torch.Tensor,
    t_min: float = 0.02,
    t_max: float = 0.98,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """DMD term for editor outputs x0 (B, C, h, w): noise them, ask teacher and fake score, call `dmd_loss`.

    `real` is the frozen T2I teacher, conditioned on the edited caption `text` (no reference), with
    CFG against `negative` at per-sample scale `guidance` (B,); `fake` is the online fake score, no CFG.
    t ~ U[t_min, t_max]; nothing below x0 carries gradients except through `dmd_loss`'s target.
    """
    with torch.no_grad():
        b = x0.shape[0]
        t = t_min + (t_max - t_min) * torch.rand(b, device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        tb = t.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        x_t = (1 - tb) * x0.detach() + tb * eps
        v_cond = real(x_t, t, text)
        v_uncond = real(x_t, t, negative)
        g = guidance.view(-1, *[1] * (x0.ndim - 1)).to(v_cond.dtype)
        v_real = v_uncond + g * (v_cond - v_uncond)
        x0_real = x_t - tb * v_real
        x0_fake = x_t - tb * fake(x_t, t, text)
    loss, logs = dmd_loss(x0, x0_real, x0_fake)
    logs["dmd_t_mean"] = t.mean().item()
    return loss, logs


def fake_score_loss(
    fake: Velocity, x0: torch.Tensor, text: TextEmbeds, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict]:
    """Denoising loss of the fake score on (detached) editor outputs: t ~ U[0, 1], regress v onto eps - x0."""
    x0 = x0.detach()
    t = torch.rand(x0.shape[0], device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    tb = t.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
    x_t = (1 - tb) * x0 + tb * eps
    loss = F.mse_loss(fake(x_t, t, text).float(), (eps - x0).float())
    return loss, {"fake_loss": loss.item()}


def do_nothing_loss(x0: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """For the "do nothing." instruction: MSE between the edit's latents and the reference latents.

    A mean over the do-nothing rows given; the trainer weighs it by their share of the batch
    (`batch_share`), as the re-implementation zeroes the other rows' term and averages over the batch.
    """
    loss = F.mse_loss(x0.float(), reference.float())
    return loss, {"do_nothing_loss": loss.item()}


def batch_share(rows: int, batch: int) -> float:
    """Weight of a term averaged over `rows` of a `batch`: rows / batch, so every sample weighs 1 / batch.

    TRAP: a term that is a mean over a subset of the batch (the do-nothing rows, or the edit rows) would
    otherwise weigh as much as a whole batch: with batch B and one do-nothing row, B times the
    re-implementation's weight. Gradient accumulation divides every micro-batch by the same count, so
    the weight per sample is the same whatever batch_size x grad_accum makes up the global batch.
    """
    return rows / batch


def sample_train_times(
    n: int, shift: float = 6.0, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logit-normal training times t = sigmoid(N(0, 1)), then the time shift (SD3's sampling)."""
    t = torch.sigmoid(torch.randn(n, device=device, generator=generator))
    return shift * t / (1 + (shift - 1) * t)


def logit_normal_density(t: torch.Tensor, mu: float = 0.0, sigma: float = 1.0) -> torch.Tensor:
    """Density of the logit-normal distribution at t (clamped to [1e-6, 1 - 1e-6], as the re-implementation)."""
    t = t.clamp(1e-6, 1 - 1e-6)
    logit = torch.log(t / (1 - t))
    log_pdf = -torch.log(t * (1 - t)) - math.log(sigma * math.sqrt(2 * math.pi)) - 0.5 * ((logit - mu) / sigma) ** 2
    return log_pdf.exp()


def warmup_times(
    n: int, shift: float = 6.0, kind: str = "uniform", device=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, loss weight), each (n,), for the warm-up (method.md 3).

    "uniform" (the re-implementation's refcopy config): t ~ U(0, 1), time-shifted, weighted by the
    logit-normal density at the shifted t (its TimeSampler / TimeWarper / TimeWeighter); "logit_normal":
    `sample_train_times`, weight 1.
    """
    if kind == "logit_normal":
        t = sample_train_times(n, shift, device, generator)
        return t, torch.ones_like(t)
    if kind != "uniform":
        raise ValueError(f"warm-up times: {kind!r} is not 'uniform' or 'logit_normal'")
    u = torch.rand(n, device=device, generator=generator)
    t = shift * u / (1 + (shift - 1) * u)
    return t, logit_normal_density(t)


def warmup_loss(
    editor: Callable[[torch.Tensor, torch.Tensor, TextEmbeds, torch.Tensor], torch.Tensor],
    reference: torch.Tensor,
    text: TextEmbeds,
    shift: float = 6.0,
    generator: torch.Generator | None = None,
    times: str = "uniform",
    t2i_share: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Reference-copy flow matching (method.md 3): the target x0 is the reference itself.

    editor(x_t, t, text, reference) -> v; text is the reference caption c_y. Teaches the reference
    pathway before NP-Edit proper. Loss = mean over samples of weight(t) x per-sample MSE (`warmup_times`).
    The first round(t2i_share x B) samples are trained text-to-image instead (reference None: the image
    from its caption alone), so that the copy does not erode the text pathway edits need.
    """
    x0 = reference.detach()
    t, weight = warmup_times(x0.shape[0], shift, times, x0.device, generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    tb = t.view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
    x_t = (1 - tb) * x0 + tb * eps
    n = round(t2i_share * x0.shape[0])
    v = [editor(x_t[:n], t[:n], text.index(slice(0, n)), None)] if n else []
    if n < x0.shape[0]:
        v.append(editor(x_t[n:], t[n:], text.index(slice(n, None)), x0[n:]))
    per_sample = (torch.cat(v).float() - (eps - x0).float()).square().flatten(1).mean(1)
    loss = (weight * per_sample).mean()
    logs = {"warmup_loss": loss.item(), "warmup_t_mean": t.mean().item()}
    if n:
        logs["warmup_t2i_loss"] = (weight[:n] * per_sample[:n]).mean().item()
    return loss, logs

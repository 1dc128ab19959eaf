"""The few-step edit sampler and the training unroll, one code path (method.md sections 2.1 and 4).

Rectified flow: x_t = (1 - t) x_0 + t eps, v = eps - x_0, t = 1 is pure noise, x0_hat = x_t - t v.
`denoise` runs any list of times; inference runs the 4-step schedule under no_grad, training runs the
1- or 2-step `unroll` of the same function with gradients through every pass.

Two ways to go from time s to the next time s' (x0 = x - s v, eps_hat = x0 + v the implied noise, z fresh):
- "renoise" (ours): x' = (1 - s') x0 + s' (eta z + sqrt(1 - eta^2) eps_hat). eta = 1 is all-fresh noise,
  which is the re-implementation's TRAINING unroll (models/latent_fm.py, TrainableOpsDMD); eta = 0 is
  the deterministic Euler step of diffusers' FlowMatchEulerDiscreteScheduler.
- "ddim": the re-implementation's INFERENCE step (utils_fm/sampler.py, FlowSampler, sample_method
  "ddim"), a predictor-corrector step that keeps part of the predicted noise:
      c  = max(0, s' - eta (s - s') s' / s)
      x' = (1 - s') x0 + c eps_hat + sqrt(s'^2 - c^2) z
  With eta = 1 the kept share is c = s'^2 / s (at s = 1 -> 0.9474: 0.898 of eps_hat, 0.303 of z), not
  zero; eta = 0 is Euler again. Its published checkpoint was sampled this way (eta = 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .backbones.base import Backbone, TextEmbeds
from .errors import NPEditError
from .images import blend_mask, check_images, check_mask, resize, working_size

#: Called after each step with (step index, number of steps, current x0 estimate (B, C, h, w)).
StepCallback = Callable[[int, int, torch.Tensor], None]

#: The between-step updates of `denoise` (module docstring).
STEPS = ("renoise", "ddim")


def resolve_step(backbone, step: str | None) -> str:
    """`step`, or for None / "auto" the editor's own (recorded in its export, e.g. "ddim" for the published checkpoint)."""
    if step in (None, "auto"):
        step = getattr(backbone, "sampler_step", None) or "renoise"
    if step not in STEPS:
        raise NPEditError(f"sampler step: {step!r} is not one of {', '.join(STEPS)} (or auto)")
    return step


def time_shift(t: float, shift: float) -> float:
    """SD3-style time shift: shift * t / (1 + (shift - 1) * t); pushes times towards the noise end."""
    return shift * t / (1 + (shift - 1) * t)


def edit_schedule(steps: int = 4, shift: float = 6.0) -> list[float]:
    """Times of a `steps`-step sampler: 1, 1 - 1/steps, ..., 1/steps, each time-shifted.

    With steps=4, shift=6: [1.0, 0.9474, 0.8571, 0.6667], the re-implementation's schedule.
    """
    if steps < 1:
        raise NPEditError(f"steps: must be at least 1, got {steps}")
    if shift <= 0:
        raise NPEditError(f"shift: must be positive, got {shift}")
    return [time_shift(1 - i / steps, shift) for i in range(steps)]


def next_latent(x: torch.Tensor, x0: torch.Tensor, v: torch.Tensor, s: float, s_next: float, step: str, eta: float,
                renoise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The latent at time s_next from x at time s, its x0 estimate and v = (x - x0) / s (module docstring)."""
    if step == "ddim":
        eps_hat = x0 + v
        kept = max(0.0, s_next - eta * (s - s_next) * s_next / s)  # share of the predicted noise kept
        return (1 - s_next) * x0 + kept * eps_hat + math.sqrt(s_next**2 - kept**2) * renoise(x)
    if eta == 0.0:
        return x + (s_next - s) * v
    eps_hat = x0 + v  # the noise implied by (x, v): x = (1 - s) x0 + s eps
    eps = eta * renoise(x) + math.sqrt(1 - eta**2) * eps_hat
    return (1 - s_next) * x0 + s_next * eps


def denoise(
    backbone: Backbone,
    x: torch.Tensor,
    sigmas: list[float],
    text: TextEmbeds,
    reference: torch.Tensor | None = None,
    eta: float = 0.0,
    renoise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: StepCallback | None = None,
    step: str = "renoise",
) -> torch.Tensor:
    """Run the sampler from latents `x` (B, C, h, w) at time sigmas[0]; return x0_hat of the last step.

    Between steps, `step` "renoise" or "ddim" with `eta` (module docstring). With eta = 0 both are the
    deterministic Euler step (x <- x + (s_next - s) v), which from t = 1 re-uses the starting noise
    exactly: the paper's "same eps" variant of the unroll. No stop-gradient anywhere: under autograd
    every pass is kept. `renoise(x)` returns fresh noise shaped like x (default torch.randn_like);
    "ddim" draws it between steps even where its coefficient is 0, as the re-implementation does.
    """
    if not 0.0 <= eta <= 1.0:
        raise NPEditError(f"eta: must lie in [0, 1], got {eta}")
    if step not in STEPS:
        raise NPEditError(f"sampler step: {step!r} is not one of {', '.join(STEPS)}")
    renoise = renoise or torch.randn_like
    x0 = x
    for i, s in enumerate(sigmas):
        t = torch.full((x.shape[0],), s, device=x.device, dtype=torch.float32)
        v = backbone.velocity(x, t, text, reference)
        x0 = x - s * v
        if callback is not None:
            callback(i, len(sigmas), x0)
        if i + 1 == len(sigmas):
            break
        x = next_latent(x, x0, v, s, sigmas[i + 1], step, eta, renoise)
    return x0


def unroll_sigmas(schedule: list[float], k: int) -> list[float]:
    """Times of a k-step training unroll (k in 1..len(schedule)): [1] or [1, schedule[k-1]].

    Only the first step and the one landing at t_k carry gradients; the re-implementation draws
    k ~ U{1..4}, so a quarter of the updates train the single-step editor.
    """
    if not 1 <= k <= len(schedule):
        raise NPEditError(f"unroll length k={k} outside 1..{len(schedule)}")
    return schedule[:1] if k == 1 else [schedule[0], schedule[k - 1]]


def unroll(
    backbone: Backbone,
    noise: torch.Tensor,
    text: TextEmbeds,
    reference: torch.Tensor,
    schedule: list[float],
    k: int,
    eta: float = 1.0,
    renoise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The training unroll (method.md 2.1): `denoise` over `unroll_sigmas(schedule, k)`, with gradients.

    Always the "renoise" step: with eta = 1 (the default) that is the re-implementation's training
    unroll, fresh noise at t_k, whichever step its inference uses.
    """
    return denoise(backbone, noise, unroll_sigmas(schedule, k), text, reference, eta=eta, renoise=renoise)


class SeededNoise:
    """Per-sample noise streams: row i of every draw comes from its own generator seeded with seeds[i].

    So an image edited in a batch gets exactly the result it gets alone with the same seed. The
    generators live on the CPU, which makes results independent of the device.
    """

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise NPEditError(f"noise for a batch of {like.shape[0]} but {len(self.generators)} seeds")
        rows = [torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(like.device, like.dtype)


def per_sample(value, batch: int, name: str) -> list:
    """One value per batch item: a single str/int/None is repeated, a list of one is broadcast, else lengths must match."""
    items = [value] * batch if value is None or isinstance(value, (str, int)) else list(value)
    if len(items) == 1 and batch > 1:
        items = items * batch
    if len(items) != batch:
        raise NPEditError(f"{name}: {len(items)} given for a batch of {batch} images")
    return items


@torch.no_grad()
def edit_images(
    backbone: Backbone,
    images: torch.Tensor,
    instructions: str | list[str],
    seeds: int | list[int] = 0,
    steps: int = 4,
    shift: float = 6.0,
    eta: float = 1.0,
    mask: torch.Tensor | None = None,
    max_area: int | None = None,
    callback: StepCallback | None = None,
    step: str | None = None,
) -> torch.Tensor:
    """Edit a batch of images (B, 3, H, W) in [0, 1]; returns (B, 3, H, W) of exactly the input size.

    `step` is the between-step update ("renoise" or "ddim", module docstring); None or "auto": the
    editor's own, as its export records it ("ddim" for the re-implementation's published checkpoint),
    else "renoise".

    The images run at the nearest size whose sides are multiples of `backbone.pixel_multiple`
    (optionally scaled down to `max_area` pixels) and the output is resized back to (H, W). With a
    `mask` (B, H, W) in [0, 1], the edit is blended onto the input and pixels where the mask is 0 are
    the input's, bit for bit. An int seed gives sample i the seed `seeds + i`.
    """
    check_images(images, "image")
    step = resolve_step(backbone, step)
    batch, _, height, width = images.shape
    instructions = per_sample(instructions, batch, "instructions")
    for i, text in enumerate(instructions):
        if not isinstance(text, str) or not text.strip():
            raise NPEditError(f"instructions[{i}]: empty; describe the edit to make")
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(batch)]
    seeds = per_sample(seeds, batch, "seeds")
    if mask is not None:
        mask = check_mask(mask, batch, height, width)

    size = working_size(height, width, backbone.pixel_multiple, max_area)
    work = resize(images, size).to(backbone.device)
    reference = backbone.encode_images(work)
    text = backbone.encode_text(instructions)
    noise_source = SeededNoise(seeds)
    noise = noise_source(torch.empty(reference.shape, device=reference.device, dtype=torch.float32))
    x0 = denoise(
        backbone, noise, edit_schedule(steps, shift), text, reference, eta=eta, renoise=noise_source, callback=callback,
        step=step,
    )
    out = resize(backbone.decode_latents(x0).float().cpu(), (height, width))
    out = out.to(images.device, images.dtype)
    return out if mask is None else blend_mask(out, images, mask.to(out))

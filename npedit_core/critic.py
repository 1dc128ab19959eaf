"""The DMD critic at test time: teacher vs fake-score disagreement as a per-image realism score (method.md 2.3).

In training, the teacher (the frozen base text-to-image model, with CFG) models real images and the
fake score models the editor's outputs; DMD moves each output along (x0_fake - x0_real) until the two
agree there. After training the pair is a critic: where they still disagree, the image sits where the
editor's distribution differs from real images.

Realism score of an image x0 (its normalised latents, B items) with caption c:

    d(t)  = RMS(x0_fake(x_t, t, c) - x0_real(x_t, t, c)) / RMS(x0)     per item, over (C, h, w)
    x_t   = (1 - t) x0 + t eps,   eps from a fixed seed,   x0_real with CFG against the negative prompt
    score = mean of d(t) over the fixed times (config `critic.times`, default 0.25, 0.5, 0.75)

0 means the two models predict the same clean image at every time; lower is more realistic. Dividing
by RMS(x0) makes it a relative error, comparable across backbone families. Fixed times and seeds make
the score a deterministic function of (image, caption), so ComfyUI can cache it and candidates compare
fairly. (The DMD loss itself normalises by the teacher's own error |x0 - x0_real| instead, which
suits a gradient step but would reward images the teacher reconstructs badly.)

`Critic` holds the two velocity functions over one backbone: the fake score is either a LoRA adapter
"fake" on the base transformer (the teacher is the same transformer with adapters disabled, as in
`roles.SharedLoRARoles`) or, for full fine-tunes, a second transformer.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch

from .backbones.base import Backbone, TextEmbeds
from .checkpointing import adapters_restored
from .config import CriticConfig, LossConfig
from .errors import NPEditError
from .export import load_editor, read_export
from .images import check_images, resize, working_size
from .roles import with_transformer
from .sampler import SeededNoise, per_sample

FAKE_ADAPTER = "fake"


class Critic:
    """Teacher and fake score of one base backbone, as velocity functions `f(x_t, t, text) -> v`."""

    def __init__(self, backbone: Backbone, fake: Backbone | None = None):
        self.backbone = backbone
        self._fake = fake  # None: the fake score is the LoRA adapter FAKE_ADAPTER on backbone.transformer
        for module in self.modules():  # frozen: refinement differentiates through the latents only
            module.requires_grad_(False)

    @classmethod
    def from_export(cls, backbone: Backbone, path: str | Path) -> "Critic":
        """The critic of `backbone` (the base model) and a fake score exported with `--role fake`.

        LoRA exports attach to the base transformer as adapter "fake" (no copy); full exports load into
        a copy of the transformer, so the base stays the teacher.
        """
        _, meta = read_export(path, tensors=False)
        if meta["npedit_format"] == "lora":
            load_editor(backbone, path, role="fake", adapter_name=FAKE_ADAPTER)
            return cls(backbone)
        fake = with_transformer(backbone, copy.deepcopy(backbone.transformer))
        load_editor(fake, path, role="fake")
        return cls(backbone, fake)

    @contextmanager
    def _adapters(self, enabled: bool):
        """Run the body with adapter FAKE_ADAPTER active (enabled) or every adapter off (the teacher).

        Set explicitly, never inherited: the same base may also carry an editor LoRA (loaded after the
        fake score, it would be the active one). The adapter state found is put back afterwards.
        """
        transformer = self.backbone.transformer
        try:
            with adapters_restored(transformer):
                if enabled:
                    transformer.enable_adapters()
                    transformer.set_adapter(FAKE_ADAPTER)
                else:
                    transformer.disable_adapters()
                yield
        finally:
            transformer.requires_grad_(False)  # peft re-enables requires_grad on adapter weights when switching

    def teacher(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbeds) -> torch.Tensor:
        if self._fake is not None:
            return self.backbone.velocity(x_t, t, text, None)
        with self._adapters(False):
            return self.backbone.velocity(x_t, t, text, None)

    def fake(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbeds) -> torch.Tensor:
        if self._fake is not None:
            return self._fake.velocity(x_t, t, text, None)
        with self._adapters(True):
            return self.backbone.velocity(x_t, t, text, None)

    def modules(self) -> list[torch.nn.Module]:
        """Every module that must sit on the compute device to run the critic."""
        return [self.backbone] + ([self._fake.transformer] if self._fake is not None else [])


def x0_predictions(
    critic: Critic,
    x_t: torch.Tensor,
    t: float,
    text: TextEmbeds,
    negative: TextEmbeds,
    guidance: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_real, x0_fake) at time t for x_t (B, C, h, w): teacher with CFG at per-item scale `guidance` (B,), fake without."""
    tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.float32)
    v_cond = critic.teacher(x_t, tt, text)
    v_uncond = critic.teacher(x_t, tt, negative)
    g = guidance.view(-1, *[1] * (x_t.ndim - 1)).to(v_cond)
    x0_real = x_t - t * (v_uncond + g * (v_cond - v_uncond))
    x0_fake = x_t - t * critic.fake(x_t, tt, text)
    return x0_real, x0_fake


@torch.no_grad()
def realism_scores(
    critic: Critic,
    images: torch.Tensor,
    captions: str | Sequence[str],
    times: Sequence[float] = CriticConfig.times,
    seed: int = CriticConfig.seed,
    guidance: float = CriticConfig.guidance,
    negative_prompt: str = LossConfig.negative_prompt,
    max_area: int | None = None,
    callback: Callable[[int, int], None] | None = None,
    text=None,
    negative_text=None,
) -> torch.Tensor:
    """Realism score (module docstring) of each image (B, 3, H, W) in [0, 1] with its caption -> (B,) float32, lower = more realistic.

    Images run at the backbone's working size (sides rounded to its pixel multiple, optionally scaled
    down to `max_area`). `callback(i, len(times))` runs after each time. `text` and `negative_text`, the captions
    and negative prompt already encoded the way the critic's teacher reads them, replace `captions` and
    `negative_prompt` (both or neither).
    """
    check_images(images, "image")
    batch, _, height, width = images.shape
    if (text is None) != (negative_text is None):
        raise NPEditError("text, negative_text: give both encoded texts or neither")
    if text is None:
        captions = per_sample(captions, batch, "caption")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise NPEditError(f"caption[{i}]: empty; describe the image (the teacher is a text-to-image model)")
    if not times or any(not 0.0 < t < 1.0 for t in times):
        raise NPEditError(f"times: need values strictly between 0 and 1, got {list(times)}")
    backbone = critic.backbone
    size = working_size(height, width, backbone.pixel_multiple, max_area)
    x0 = backbone.encode_images(resize(images, size).to(backbone.device)).float()  # (B, C, h, w)
    if text is None:
        text = backbone.encode_text(list(captions))
        negative_text = backbone.encode_text([negative_prompt] * batch)
    scale = torch.full((batch,), float(guidance), device=x0.device)
    noise = SeededNoise([seed] * batch)  # the same noise for every item: a fair comparison
    dims = tuple(range(1, x0.ndim))
    x0_rms = x0.square().mean(dim=dims).sqrt().clamp_min(1e-6)
    total = torch.zeros(batch, device=x0.device)
    for i, t in enumerate(times):
        x_t = (1 - t) * x0 + t * noise(x0)
        x0_real, x0_fake = x0_predictions(critic, x_t, float(t), text, negative_text, scale)
        total += (x0_fake.float() - x0_real.float()).square().mean(dim=dims).sqrt() / x0_rms
        if callback is not None:
            callback(i, len(times))
    return (total / len(times)).cpu()

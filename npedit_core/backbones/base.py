"""The small protocol every editor backbone implements.

A backbone bundles the three pretrained parts of a flow-matching text-to-image model (text encoder,
VAE, transformer) and exposes them in one convention, so the sampler, the unroll and the losses never
see a family's quirks:

- latents are spatial tensors (B, C, h, w) in the *model's* normalised latent space (after any
  patchify, scaling and shift), so `x_t = (1 - t) x_0 + t eps` is the forward process;
- `velocity` predicts v = eps - x_0 for the target latents at time t in [0, 1] (t = 1 is pure
  noise), optionally conditioned on clean reference latents, and returns only the target's prediction;
- images enter and leave as float (B, 3, H, W) in [0, 1].

Families convert to their own conventions inside (e.g. Z-Image's reversed time and negated output,
FLUX.2's token packing and 4-d position ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class TextEmbeds:
    """Encoded prompts for one batch: what `Backbone.velocity` consumes.

    embeds: (B, L, D) hidden states; mask: (B, L) bool, True on real tokens (None = all real).
    extra: family-specific tensors (e.g. position ids), each with batch first.
    """

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def index(self, idx: torch.Tensor | list[int] | slice) -> "TextEmbeds":
        """Select batch rows (used to cache embeddings once and gather per batch)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return TextEmbeds(pick(self.embeds), pick(self.mask), {k: pick(v) for k, v in self.extra.items()})

    def repeat(self, n: int) -> "TextEmbeds":
        """Repeat each row n times (row i becomes rows i*n .. i*n+n-1)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        return TextEmbeds(rep(self.embeds), rep(self.mask), {k: rep(v) for k, v in self.extra.items()})

    def to(self, device=None, dtype=None) -> "TextEmbeds":
        move = lambda t, d=dtype: None if t is None else t.to(device=device, dtype=d if t.is_floating_point() else None)  # noqa: E731
        return TextEmbeds(move(self.embeds), move(self.mask), {k: move(v) for k, v in self.extra.items()})

    @staticmethod
    def cat(items: list["TextEmbeds"]) -> "TextEmbeds":
        """Concatenate along the batch, right-padding the sequence axis (mask False on padding)."""
        length = max(e.embeds.shape[1] for e in items)

        def pad(t: torch.Tensor | None, e: "TextEmbeds") -> torch.Tensor | None:
            if t is None:
                return None
            extra = length - t.shape[1] if t.ndim >= 2 and t.shape[1] == e.embeds.shape[1] else 0
            return torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, extra)) if extra else t

        masks = []
        for e in items:
            m = e.mask if e.mask is not None else torch.ones(e.embeds.shape[:2], dtype=torch.bool, device=e.embeds.device)
            masks.append(pad(m, e))
        keys = items[0].extra.keys()
        return TextEmbeds(
            torch.cat([pad(e.embeds, e) for e in items]),
            torch.cat(masks),
            {k: torch.cat([pad(e.extra[k], e) for e in items]) for k in keys},
        )


class Backbone(nn.Module):
    """Text encoder + VAE + transformer of one model family, in the convention above.

    Subclasses set the class attributes and implement the abstract methods. `transformer` is the
    module the editor trains (fully or through LoRA on `lora_target_modules`); the text encoder and
    the VAE stay frozen.
    """

    family: ClassVar[str]
    #: Image sides must be multiples of this many pixels (VAE downsampling x patch size).
    pixel_multiple: ClassVar[int]

    text_encoder: nn.Module
    vae: nn.Module
    transformer: nn.Module

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype = torch.bfloat16, device="cpu", **kwargs) -> "Backbone":
        """Load real weights from a local diffusers folder (or family-specific single files); never downloads."""
        raise NotImplementedError

    @classmethod
    def tiny(cls, seed: int = 0, tokenizer_path: str | None = None) -> "Backbone":
        """Random-initialised components of the real classes at a tiny size, built in code (tests, benchmarks)."""
        raise NotImplementedError

    # --- the protocol -------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of an image of `height` x `width` pixels (multiples of pixel_multiple)."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """Encode a list of prompts exactly as the family's diffusers pipeline does."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised latents (B, C, h, w); deterministic (posterior mode)."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]; differentiable."""
        raise NotImplementedError

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: TextEmbeds,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v = eps - x_0 for target latents x_t (B, C, h, w) at times t (B,) in [0, 1].

        `reference` (B, C, h', w') are clean latents of the image to edit, joined to the target
        tokens the family's way; None runs the plain text-to-image model (the DMD teacher/critic).
        Returns (B, C, h, w) in x_t's dtype.
        """
        raise NotImplementedError

    def lora_target_modules(self) -> list[str]:
        """Names (peft `target_modules` patterns) of the transformer's linear layers that LoRA adapts."""
        raise NotImplementedError

    # --- shared helpers -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def freeze_frozen_parts(self) -> None:
        """Text encoder and VAE never train."""
        for module in (self.text_encoder, self.vae):
            module.requires_grad_(False)
            module.eval()

"""A protocol-conforming toy backbone (a few convolutions) for fast sampler tests.

The real families are tested against diffusers in tests/backbones; this one only has to honour the
Backbone contract so the sampler's own logic can be checked quickly and exactly.
"""

import torch
from torch import nn

from npedit_core.backbones.base import Backbone, TextEmbeds


class ToyBackbone(Backbone):
    family = "toy"
    pixel_multiple = 8

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.text_encoder = nn.Embedding(256, 4)
        self.vae = nn.ModuleDict({"enc": nn.Conv2d(3, 4, 8, stride=8), "dec": nn.ConvTranspose2d(4, 3, 8, stride=8)})
        self.transformer = nn.ModuleDict({"x": nn.Conv2d(4, 4, 3, padding=1), "ref": nn.Conv2d(4, 4, 1)})
        self.calls: list[list[float]] = []
        self.freeze_frozen_parts()

    def latent_shape(self, height, width):
        return 4, height // 8, width // 8

    def encode_text(self, prompts):
        ids = torch.tensor([[ord(c) % 256 for c in p[:8].ljust(8)] for p in prompts])
        return TextEmbeds(self.text_encoder(ids))

    def encode_images(self, images):
        return self.vae["enc"](images * 2 - 1)

    def decode_latents(self, latents):
        return (self.vae["dec"](latents) / 2 + 0.5).clamp(0, 1)

    def velocity(self, x_t, t, text, reference=None):
        self.calls.append(t.tolist())
        v = self.transformer["x"](x_t) * t.view(-1, 1, 1, 1) + text.embeds.mean(1)[:, :, None, None]
        if reference is not None:
            v = v + self.transformer["ref"](reference)
        return v

    def lora_target_modules(self):
        return ["x", "ref"]

"""FLUX.2-klein (4B / 9B) as an NP-Edit backbone: Qwen3 text encoder + FLUX.2 VAE + Flux2 DiT.

Everything mirrors diffusers' `Flux2KleinPipeline` (diffusers 0.42) so that `sampler.denoise` with
eta = 0 reproduces the pipeline's images; the tests check this against the pipeline itself.

Latent convention (base.py): the spatial tensors the sampler sees are the pipeline's *normalised,
patchified* latents, (B, 128, H/16, W/16):

    image (B, 3, H, W) in [0, 1] --x*2-1--> VAE encode, posterior mode --> z (B, 32, H/8, W/8)
      --patchify 2x2--> (B, 128, H/16, W/16) --(x - bn.running_mean) / sqrt(bn.running_var + eps)--> x

The transformer works on tokens: x is packed to (B, h*w, 128) in raster order with 4-d position ids
(T, H, W, L) = (0, i, j, 0); the reference image's tokens (T = 10, FLUX.2's first reference slot) are
appended after the target tokens along the token axis, and the output is cropped back to the target
tokens. Text tokens get ids (0, 0, 0, l). The transformer receives the time in [0, 1] (it multiplies
by 1000 itself) and predicts v = eps - x0 (the scheduler steps x <- x + (s_next - s) v).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, NPEditError
from ..images import check_images
from .base import Backbone, TextEmbeds
from .loading import (
    check_no_meta,
    describe_key_mismatch,
    empty_weights,
    load_safetensors,
    load_state_dict_checked,
    require_path,
    strip_prefix,
)

# --------------------------------------------------------------------------------------------------
# Real configurations (black-forest-labs/FLUX.2-klein-{4B,9B}: transformer/config.json, vae/config.json,
# text_encoder = Qwen3-4B / Qwen3-8B). Single-file checkpoints carry no config: the shapes in the file
# pick one of these (any other shape set is loaded with a config inferred from the shapes).
# --------------------------------------------------------------------------------------------------
_KLEIN_TRANSFORMER_COMMON = {
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "attention_head_dim": 128,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}
TRANSFORMER_CONFIGS: dict[str, dict] = {
    "FLUX.2-klein-4B": {
        **_KLEIN_TRANSFORMER_COMMON,
        "num_layers": 5,
        "num_single_layers": 20,
        "num_attention_heads": 24,
        "joint_attention_dim": 7680,  # 3 x Qwen3-4B hidden size 2560
    },
    "FLUX.2-klein-9B": {
        **_KLEIN_TRANSFORMER_COMMON,
        "num_layers": 8,
        "num_single_layers": 24,
        "num_attention_heads": 32,
        "joint_attention_dim": 12288,  # 3 x Qwen3-8B hidden size 4096
    },
}
#: AutoencoderKLFlux2's defaults are the released FLUX.2 VAE (shared by dev and klein).
VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 32,
    "norm_num_groups": 32,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": (2, 2),
}
_QWEN3_COMMON = {
    "vocab_size": 151936,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
TEXT_ENCODER_CONFIGS: dict[str, dict] = {
    "Qwen3-4B": {**_QWEN3_COMMON, "hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True},
    "Qwen3-8B": {**_QWEN3_COMMON, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False},
}

#: FLUX.2-klein stacks these Qwen3 hidden states (index 0 = the embeddings) as its text features.
TEXT_LAYERS = (9, 18, 27)
#: Time slot of the first reference image (`Flux2KleinPipeline._prepare_image_ids`, scale 10).
REFERENCE_T = 10
#: Linear layers LoRA adapts: attention and MLP projections of both block kinds.
_LORA_SUFFIXES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.linear_in",
    "ff.linear_out",
    "ff_context.linear_in",
    "ff_context.linear_out",
    "attn.to_qkv_mlp_proj",  # single blocks: fused q, k, v and MLP-in
    "attn.to_out",  # single blocks: fused attention-out and MLP-out (a Linear there, a ModuleList above)
)


# --------------------------------------------------------------------------------------------------
# Latent layout helpers (the pipeline's static methods, batched)
# --------------------------------------------------------------------------------------------------
def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4C, h, w); channel index c*4 + 2*dy + dx (`_patchify_latents`)."""
    b, c, h2, w2 = z.shape
    z = z.view(b, c, h2 // 2, 2, w2 // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * 4, h2 // 2, w2 // 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w); the inverse of `patchify` (`_unpatchify_latents`)."""
    b, c4, h, w = x.shape
    x = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> tokens (B, h*w, C) in raster order (`_pack_latents`)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens (B, h*w, C) in raster order -> (B, C, h, w); equals `_unpack_latents_with_ids` for raster ids."""
    b, _, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, h, w)


def latent_ids(h: int, w: int, t: int = 0) -> torch.Tensor:
    """(h*w, 4) int64 ids (T=t, H=i, W=j, L=0) in raster order (`_prepare_latent_ids`, `_prepare_image_ids`)."""
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(h), torch.arange(w), torch.arange(1))


def text_ids(batch: int, length: int) -> torch.Tensor:
    """(B, L, 4) int64 ids (0, 0, 0, l) of the text tokens (`_prepare_text_ids`)."""
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))
    return ids.unsqueeze(0).expand(batch, -1, -1).contiguous()


# --------------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------------
class Flux2KleinBackbone(Backbone):
    """FLUX.2-klein in the NP-Edit backbone convention (see the module docstring for the layouts).

    Args:
        transformer: diffusers `Flux2Transformer2DModel` (trained by the editor).
        vae: diffusers `AutoencoderKLFlux2` (frozen).
        text_encoder: transformers `Qwen3ForCausalLM` (frozen; only hidden states are read).
        tokenizer: the Qwen tokenizer with Qwen3's chat template.
        max_sequence_length: prompts are padded/truncated to this many tokens, as the pipeline's
            `max_sequence_length` (512 by default; the transformer sees every padded token).
        text_layers: Qwen3 hidden states stacked as the text features (the pipeline's
            `text_encoder_out_layers`).

    Attributes:
        fast_decoder: optional callable mapping the normalised latents (B, 128, h, w) to images
            (B, 3, 16h, 16w) in [0, 1], used by `decode_latents(..., fast=True)`. For TAEF2:
            ``functools.partial(taef2.decode_flux2_latents, taef2_model)`` (TAEF2 was distilled on the
            normalised latents, so that path skips the de-normalisation the real VAE needs).
    """

    family = "flux2_klein"
    pixel_multiple = 16

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        max_sequence_length: int = 512,
        text_layers: Sequence[int] = TEXT_LAYERS,
    ):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_sequence_length = int(max_sequence_length)
        self.text_layers = tuple(int(i) for i in text_layers)
        self.fast_decoder: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._check_components()
        self.freeze_frozen_parts()

    def _check_components(self) -> None:
        """Fail early, naming the mismatch, when the three parts do not belong together."""
        tcfg, vcfg, ecfg = self.transformer.config, self.vae.config, self.text_encoder.config
        n_layers = ecfg.num_hidden_layers
        if max(self.text_layers) > n_layers:
            raise CheckpointError(
                f"text encoder: has {n_layers} layers but FLUX.2-klein reads hidden states {self.text_layers}"
            )
        want = len(self.text_layers) * ecfg.hidden_size
        if tcfg.joint_attention_dim != want:
            raise CheckpointError(
                f"transformer expects text features of width {tcfg.joint_attention_dim} but the text encoder "
                f"gives {len(self.text_layers)} x {ecfg.hidden_size} = {want} (FLUX.2-klein-4B pairs with "
                "Qwen3-4B, 9B with Qwen3-8B)"
            )
        channels = vcfg.latent_channels * vcfg.patch_size[0] * vcfg.patch_size[1]
        if tcfg.in_channels != channels or len(vcfg.block_out_channels) != 4:
            raise CheckpointError(
                f"transformer takes {tcfg.in_channels}-channel latents but the VAE gives {channels} "
                f"(latent_channels {vcfg.latent_channels}, {len(vcfg.block_out_channels)} levels); "
                "is this the FLUX.2 VAE?"
            )

    def train(self, mode: bool = True) -> Flux2KleinBackbone:
        """Only the transformer (and what wraps it) changes mode; the frozen parts stay in eval."""
        super().train(mode)
        self.text_encoder.eval()
        self.vae.eval()
        return self

    # --- protocol -----------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if height % self.pixel_multiple or width % self.pixel_multiple or height <= 0 or width <= 0:
            raise NPEditError(f"image size {height}x{width}: FLUX.2 needs sides that are multiples of 16")
        return self.transformer.config.in_channels, height // 16, width // 16

    @torch.no_grad()
    def encode_text(self, prompts: list[str] | str) -> TextEmbeds:
        """Prompts -> TextEmbeds with embeds (B, L, 3*D) in the text encoder's dtype, L = max_sequence_length.

        As `Flux2KleinPipeline._get_qwen3_prompt_embeds`: Qwen3 chat template (user turn, generation
        prompt, empty think block), padded to max length, hidden states `text_layers` stacked per token.
        `mask` (B, L) marks real tokens (the pipeline does not give it to the transformer, and neither
        does `velocity`); `extra["txt_ids"]` (B, L, 4) holds the text position ids.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise NPEditError("encode_text: no prompts given")
        ids, masks = [], []
        for prompt in prompts:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
            enc = self.tokenizer(
                text, return_tensors="pt", padding="max_length", truncation=True, max_length=self.max_sequence_length
            )
            ids.append(enc["input_ids"])
            masks.append(enc["attention_mask"])
        device = next(self.text_encoder.parameters()).device
        input_ids, attention_mask = torch.cat(ids).to(device), torch.cat(masks).to(device)
        # The base Qwen3Model gives the same hidden states as the pipeline's Qwen3ForCausalLM call without
        # the LM head, which would compute (B, L, 151936) logits nobody reads (~400 GFLOP per 4B prompt).
        base = getattr(self.text_encoder, "model", self.text_encoder)
        out = base(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        hidden = torch.stack([out.hidden_states[k] for k in self.text_layers], dim=1)  # (B, 3, L, D)
        b, n, length, d = hidden.shape
        embeds = hidden.permute(0, 2, 1, 3).reshape(b, length, n * d)  # (B, L, 3D): [layer9 | layer18 | layer27]
        return TextEmbeds(embeds, attention_mask.bool(), {"txt_ids": text_ids(b, length).to(device)})

    def _bn_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE BatchNorm's running mean and std, (1, 128, 1, 1), on `like`'s device and dtype."""
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], sides multiples of 16 -> normalised latents (B, 128, H/16, W/16), VAE dtype.

        `Flux2KleinPipeline._encode_vae_image`: [-1, 1], posterior mode ("argmax"), patchify, BN-normalise.
        """
        check_images(images, "image")
        self.latent_shape(*images.shape[-2:])
        vae_param = next(self.vae.parameters())
        x = (2.0 * images - 1.0).to(vae_param.device, vae_param.dtype)
        z = self.vae.encode(x).latent_dist.mode()  # (B, 32, H/8, W/8)
        z = patchify(z)  # (B, 128, H/16, W/16)
        mean, std = self._bn_stats(z)
        return (z - mean) / std

    def decode_latents(self, latents: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """Normalised latents (B, 128, h, w) -> images (B, 3, 16h, 16w) in [0, 1], in latents' dtype.

        Differentiable (the VAE is frozen, not detached). The full path is the pipeline's: de-normalise,
        unpatchify, `vae.decode`, then (x / 2 + 0.5).clamp(0, 1) as `VaeImageProcessor.postprocess`.
        `fast=True` uses `self.fast_decoder` on the normalised latents instead.
        """
        if latents.ndim != 4 or latents.shape[1] != self.transformer.config.in_channels:
            raise NPEditError(f"decode_latents: expected (B, 128, h, w) latents, got {tuple(latents.shape)}")
        if fast:
            if self.fast_decoder is None:
                raise NPEditError("decode_latents(fast=True): no fast_decoder is set on this backbone")
            return self.fast_decoder(latents).to(latents.dtype)
        vae_param = next(self.vae.parameters())
        x = latents.to(vae_param.device, vae_param.dtype)
        mean, std = self._bn_stats(x)
        z = unpatchify(x * std + mean)  # (B, 32, 2h, 2w)
        image = self.vae.decode(z, return_dict=False)[0]  # (B, 3, 16h, 16w) in ~[-1, 1]
        return (image / 2 + 0.5).clamp(0, 1).to(latents.dtype)

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: TextEmbeds,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v = eps - x0 for x_t (B, 128, h, w) at times t (B,) in [0, 1]; returns (B, 128, h, w) in x_t's dtype.

        One transformer call as in the pipeline's denoising loop: target tokens (T=0) then, with a
        reference (B or 1, 128, h', w'), its tokens at T=10; the output is cropped to the target tokens.
        No text attention mask and no guidance embedding (klein is guidance-free), like the pipeline.
        """
        if x_t.ndim != 4 or x_t.shape[1] != self.transformer.config.in_channels:
            raise NPEditError(f"velocity: expected x_t of shape (B, 128, h, w), got {tuple(x_t.shape)}")
        batch, _, h, w = x_t.shape
        device, dtype = self.device, self.dtype
        if len(text) not in (1, batch):
            raise NPEditError(f"velocity: {len(text)} text embeddings for a batch of {batch} latents")
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise NPEditError(f"velocity: {t.numel()} times for a batch of {batch} latents")

        tokens = pack(x_t.to(device, dtype))  # (B, h*w, 128)
        ids = latent_ids(h, w)  # (h*w, 4), T = 0
        if reference is not None:
            if reference.ndim != 4 or reference.shape[1] != x_t.shape[1] or reference.shape[0] not in (1, batch):
                raise NPEditError(
                    f"velocity: reference latents {tuple(reference.shape)} do not fit x_t {tuple(x_t.shape)}"
                )
            ref = pack(reference.to(device, dtype)).expand(batch, -1, -1)  # (B, h'*w', 128)
            tokens = torch.cat([tokens, ref], dim=1)  # (B, h*w + h'*w', 128): target first, as the pipeline
            ids = torch.cat([ids, latent_ids(*reference.shape[-2:], t=REFERENCE_T)], dim=0)

        embeds = text.embeds.to(device, dtype)
        txt_ids = text.extra.get("txt_ids")
        if txt_ids is None:
            txt_ids = text_ids(len(text), embeds.shape[1])
        if len(text) != batch:
            embeds = embeds.expand(batch, -1, -1)
        # The pipeline passes scheduler timesteps (sigma * 1000, float32) cast to the latents' dtype and
        # divided by 1000; the transformer multiplies by 1000 again. Same arithmetic here, bit for bit.
        timestep = (t.to(torch.float32) * 1000).to(dtype) / 1000
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=embeds,
            timestep=timestep,
            img_ids=ids.to(device),
            txt_ids=txt_ids.to(device),
            guidance=None,
            return_dict=False,
        )[0]
        out = out[:, : h * w]  # drop the reference tokens' outputs
        return unpack(out, h, w).to(x_t.dtype)

    def lora_target_modules(self) -> list[str]:
        """Full names of the transformer's attention and MLP linears (exact peft `target_modules` entries).

        Full names, not suffixes: a suffix "attn.to_out" would also match the double blocks'
        `to_out` ModuleList, which peft cannot wrap. Call it before wrapping (peft turns the Linears
        into LoRA layers).
        """
        names = []
        for name, module in self.transformer.named_modules():
            if isinstance(module, nn.Linear) and any(name == s or name.endswith("." + s) for s in _LORA_SUFFIXES):
                names.append(name)
        return names

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, tokenizer_path: str | None = None) -> Flux2KleinBackbone:
        """Random tiny components of the real classes (tests, benchmarks); the real Qwen tokenizer.

        The text encoder keeps 28 layers (FLUX.2 reads hidden states 9, 18, 27) and the full Qwen
        vocabulary; the VAE keeps 4 levels and 32 latent channels (so 16-pixel multiples and 128
        latent channels, as the real one); the transformer has one block of each kind.
        """
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import Qwen3Config, Qwen3ForCausalLM

        tokenizer = _load_tokenizer(tokenizer_path)
        gen = torch.manual_seed(seed)
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=151936,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=28,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            )
        )
        vae = AutoencoderKLFlux2(
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            norm_num_groups=32,
            latent_channels=32,
            sample_size=64,
        )
        # Non-trivial BN statistics, so the normalisation is exercised.
        vae.bn.running_mean.copy_(0.5 * torch.randn(vae.bn.num_features, generator=gen))
        vae.bn.running_var.copy_(0.5 + 1.5 * torch.rand(vae.bn.num_features, generator=gen))
        transformer = Flux2Transformer2DModel(
            **{
                **_KLEIN_TRANSFORMER_COMMON,
                "num_layers": 1,
                "num_single_layers": 1,
                "num_attention_heads": 2,
                "attention_head_dim": 16,
                "axes_dims_rope": (4, 4, 4, 4),
                "joint_attention_dim": 3 * 32,
            }
        )
        return cls(transformer.eval(), vae.eval(), text_encoder.eval(), tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device="cpu",
        vae_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> Flux2KleinBackbone:
        """Load a local diffusers folder (transformer/, vae/, text_encoder/, tokenizer/); never downloads.

        The VAE defaults to float32 (NP-Edit decodes with gradients through it); pass vae_dtype=dtype
        to match `Flux2KleinPipeline.from_pretrained(..., torch_dtype=dtype)` exactly. For ComfyUI-style
        single files use `from_single_files`.
        """
        root = Path(path).expanduser()
        if root.is_file():
            raise CheckpointError(
                f"FLUX.2-klein: {root} is a file; from_pretrained takes a diffusers folder. Use "
                "Flux2KleinBackbone.from_single_files(transformer=..., vae=..., text_encoder=..., tokenizer=...)"
            )
        root = require_path(root, "FLUX.2-klein diffusers folder", kind="dir")
        kwargs = {**_backbone_options(root), **kwargs}
        vae = root / "vae"
        if kwargs.pop("vae", None) == "taef2":  # a small checkpoint trained in TAEF2's latent space
            from ..assets import taef2_dir
            from .taef2 import TAEF2, TAEF2AsFlux2VAE, folder_files

            # TAEF2-architecture files in the folder's vae/ (the micro-world ships its own), else the
            # pretrained TAEF2 from the shared assets.
            if folder_files(vae) is None:
                vae = taef2_dir()
            vae = TAEF2AsFlux2VAE(TAEF2.from_files(vae, dtype=vae_dtype, device=device))
        return cls.from_single_files(
            transformer=root / "transformer",
            vae=vae,
            text_encoder=root / "text_encoder",
            tokenizer=root / "tokenizer",
            dtype=dtype,
            device=device,
            vae_dtype=vae_dtype,
            **kwargs,
        )

    @classmethod
    def from_single_files(
        cls,
        transformer: str | Path,
        vae: str | Path,
        text_encoder: str | Path,
        tokenizer: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device="cpu",
        vae_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> Flux2KleinBackbone:
        """Load each part from a .safetensors file (as ComfyUI keeps them) or a diffusers/HF subfolder.

        - transformer: ComfyUI `diffusion_models/flux-2-klein-*.safetensors` (BFL original keys, with or
          without the `model.diffusion_model.` prefix) or diffusers keys; the shapes select the
          FLUX.2-klein-4B or -9B config.
        - vae: ComfyUI `vae/flux2-vae.safetensors` (BFL/LDM keys) or a diffusers `AutoencoderKLFlux2` file,
          or an already built module with its interface (e.g. `taef2.TAEF2AsFlux2VAE`).
        - text_encoder: ComfyUI `text_encoders/qwen_3_4b.safetensors` (or 8B), HF Qwen3 keys with any prefix.
        - tokenizer: a Qwen tokenizer folder (or a loaded tokenizer); None uses the project's shared
          fixture if present.
        Missing or corrupt files and key mismatches raise `CheckpointError` naming the file.
        """
        return cls(
            load_transformer(transformer, dtype=dtype, device=device),
            vae if isinstance(vae, nn.Module) else load_vae(vae, dtype=vae_dtype, device=device),
            load_text_encoder(text_encoder, dtype=dtype, device=device),
            _load_tokenizer(tokenizer),
            **kwargs,
        )


# --------------------------------------------------------------------------------------------------
# Component loaders (each takes a diffusers/HF folder or a single .safetensors file)
# --------------------------------------------------------------------------------------------------
def _load_tokenizer(path):
    """A Qwen tokenizer from a folder (None: the shared fixture); an already loaded tokenizer passes through."""
    from transformers import AutoTokenizer

    if path is not None and not isinstance(path, (str, Path)):
        if not hasattr(path, "apply_chat_template"):
            raise CheckpointError(f"tokenizer: expected a folder or a tokenizer, got {type(path).__name__}")
        return path
    if path is None:
        from ..assets import qwen_tokenizer_dir

        path = qwen_tokenizer_dir()
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(
                f"tokenizer: none given and no Qwen tokenizer at {path}; pass the folder of a Qwen3 tokenizer"
            )
    p = require_path(path, "tokenizer", kind="dir")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"tokenizer: cannot load a tokenizer from {p} ({err})") from err


#: Optional file in a diffusers folder with constructor options of small/custom checkpoints
#: (e.g. the micro-world's: a 3-layer text encoder read at layers (1, 2, 3), 40-token prompts, TAEF2 as
#: its VAE).
BACKBONE_OPTIONS_FILE = "npedit_backbone.json"
_BACKBONE_OPTIONS = ("max_sequence_length", "text_layers", "vae")  # vae: "taef2" = TAEF2 files in vae/


def _backbone_options(root: Path) -> dict:
    """`max_sequence_length` / `text_layers` from `root/npedit_backbone.json` ({} when absent)."""
    path = root / BACKBONE_OPTIONS_FILE
    if not path.is_file():
        return {}
    import json

    try:
        options = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    unknown = sorted(set(options) - set(_BACKBONE_OPTIONS)) if isinstance(options, dict) else ["<not a mapping>"]
    if unknown:
        raise CheckpointError(f"{path}: unknown option(s) {unknown}; allowed: {', '.join(_BACKBONE_OPTIONS)}")
    return options


def _from_folder(loader: Callable, path: Path, what: str, **kwargs) -> nn.Module:
    """A diffusers/transformers `from_pretrained` on a local folder, errors re-raised naming the folder."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{what}: {path} has no config.json (expected a diffusers/transformers folder)")
    try:
        model, info = loader(str(path), local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as err:
        raise CheckpointError(f"{what}: cannot load {path} ({type(err).__name__}: {err})") from err
    # from_pretrained fills missing weights with random ones and only warns: that must be an error here.
    missing = list(info.get("missing_keys", []))
    missing += [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys", [])]
    if missing:
        raise CheckpointError(f"{what}: {path} does not fit the model: {describe_key_mismatch(missing, [])}")
    return model


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors of a state dict in `dtype` (what from_pretrained's torch_dtype does to loaded weights).

    Casting the file's tensors rather than the built module keeps computed float32 buffers (Qwen3's
    rotary `inv_freq`) in float32, as from_pretrained does.
    """
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def _finish(module: nn.Module, path: Path, what: str, device) -> nn.Module:
    check_no_meta(module, path, what)
    return module.to(device).eval()


def _block_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _require_keys(sd: dict, keys: Sequence[str], path: Path, what: str, kind: str) -> None:
    absent = [k for k in keys if k not in sd]
    if absent:
        raise CheckpointError(f"{what}: {path} is not a {kind} checkpoint (no {', '.join(absent[:4])})")


# --- transformer ------------------------------------------------------------------------------------
def _is_bfl_transformer(sd: dict) -> bool:
    return any(k.startswith(("double_blocks.", "single_blocks.", "img_in.")) for k in sd)


def transformer_config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """The `Flux2Transformer2DModel` config a diffusers-keyed state dict implies.

    Returns the released FLUX.2-klein-4B/9B config when the shapes are theirs, else one inferred from
    the shapes with klein's rope/eps settings (e.g. the tiny test model).
    """
    inner, in_channels = sd["x_embedder.weight"].shape
    head_dim = next(v.shape[0] for k, v in sd.items() if k.endswith("attn.norm_q.weight"))
    inferred = {
        **_KLEIN_TRANSFORMER_COMMON,
        "in_channels": int(in_channels),
        "num_layers": _block_count(sd, "transformer_blocks."),
        "num_single_layers": _block_count(sd, "single_transformer_blocks."),
        "attention_head_dim": int(head_dim),
        "num_attention_heads": int(inner // head_dim),
        "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
        "timestep_guidance_channels": int(sd["time_guidance_embed.timestep_embedder.linear_1.weight"].shape[1]),
        "guidance_embeds": any(k.startswith("time_guidance_embed.guidance_embedder.") for k in sd),
        "axes_dims_rope": (int(head_dim) // 4,) * 4,
    }
    if "transformer_blocks.0.ff.linear_in.weight" in sd:
        inferred["mlp_ratio"] = sd["transformer_blocks.0.ff.linear_in.weight"].shape[0] / 2 / inner
    proj_out = int(sd["proj_out.weight"].shape[0])
    inferred["out_channels"] = None if proj_out == in_channels else proj_out
    for config in TRANSFORMER_CONFIGS.values():
        if all(config[k] == v for k, v in inferred.items()):
            return dict(config)
    return inferred


def load_transformer(path: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> nn.Module:
    """`Flux2Transformer2DModel` from a diffusers folder or a single file (BFL or diffusers keys)."""
    from diffusers import Flux2Transformer2DModel

    what = "FLUX.2 transformer"
    p = require_path(path, what)
    if p.is_dir():
        return _from_folder(Flux2Transformer2DModel.from_pretrained, p, what, torch_dtype=dtype).to(device).eval()
    sd = strip_prefix(load_safetensors(p, what), ["model.diffusion_model.", "diffusion_model."])
    if _is_bfl_transformer(sd):
        from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

        try:
            sd = convert_flux2_transformer_checkpoint_to_diffusers(dict(sd))
        except KeyError as err:  # a block entry the FLUX.2 layout does not have
            raise CheckpointError(f"{what}: {p} has a key the FLUX.2 layout does not know: {err}") from err
    _require_keys(
        sd,
        ["x_embedder.weight", "context_embedder.weight", "proj_out.weight",
         "time_guidance_embed.timestep_embedder.linear_1.weight"],
        p, what, "FLUX.2",
    )  # fmt: skip
    if not any(k.endswith("attn.norm_q.weight") for k in sd):
        raise CheckpointError(f"{what}: {p} is not a FLUX.2 checkpoint (no attention norms)")
    config = transformer_config_from_state_dict(sd)
    with empty_weights():
        model = Flux2Transformer2DModel.from_config(config)
    load_state_dict_checked(model, _cast(sd, dtype), p, what, assign=True)
    return _finish(model, p, what, device)


def transformer_state_dict_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `Flux2Transformer2DModel` keys -> BFL original keys (ComfyUI `diffusion_models` layout).

    The exact inverse of diffusers' `convert_flux2_transformer_checkpoint_to_diffusers`: q/k/v are
    fused back, RMSNorm weights become `.scale`, the final AdaLN's (scale, shift) becomes (shift, scale).
    Use it to export a trained editor for ComfyUI.
    """
    top = {
        "x_embedder.": "img_in.",
        "context_embedder.": "txt_in.",
        "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
        "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
        "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
        "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
        "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
        "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
        "single_stream_modulation.linear.": "single_stream_modulation.lin.",
        "proj_out.": "final_layer.linear.",
    }
    double = {
        "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
        "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
        "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
        "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
        "attn.to_out.0.": "img_attn.proj.",
        "attn.to_add_out.": "txt_attn.proj.",
        "ff.linear_in.": "img_mlp.0.",
        "ff.linear_out.": "img_mlp.2.",
        "ff_context.linear_in.": "txt_mlp.0.",
        "ff_context.linear_out.": "txt_mlp.2.",
    }
    single = {
        "attn.to_qkv_mlp_proj.": "linear1.",
        "attn.to_out.": "linear2.",
        "attn.norm_q.weight": "norm.query_norm.scale",
        "attn.norm_k.weight": "norm.key_norm.scale",
    }
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("norm_out.linear."):
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1]] = torch.cat([shift, scale], dim=0)
            continue
        m = re.match(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.*)", key)
        if m is None:
            new = next((b + key[len(a) :] for a, b in top.items() if key.startswith(a)), None)
            if new is None:
                raise NPEditError(f"transformer_state_dict_to_bfl: unknown key {key}")
            out[new] = value
            continue
        kind, idx, rest = m.groups()
        if kind == "transformer_blocks":
            q = re.match(r"attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)\.(weight|bias)", rest)
            if q is not None:
                name = q.group(1)  # to_q -> img stream "q"; add_q_proj -> txt stream "q"
                stream, part = ("img", name[-1]) if name.startswith("to_") else ("txt", name[4])
                fused.setdefault(f"double_blocks.{idx}.{stream}_attn.qkv.{q.group(2)}", {})[part] = value
                continue
            table, prefix = double, f"double_blocks.{idx}."
        else:
            table, prefix = single, f"single_blocks.{idx}."
        new = next((prefix + b + rest[len(a) :] for a, b in table.items() if rest.startswith(a)), None)
        if new is None:
            raise NPEditError(f"transformer_state_dict_to_bfl: unknown key {key}")
        out[new] = value
    for key, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise NPEditError(f"transformer_state_dict_to_bfl: {key} needs q, k and v, got {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # BFL's fused qkv Linear, q first
    return out


# --- VAE ------------------------------------------------------------------------------------------
def _vae_bfl_to_diffusers(sd: dict[str, torch.Tensor], path: Path, what: str) -> dict[str, torch.Tensor]:
    """BFL/LDM FLUX.2 VAE keys (`flux2-vae.safetensors`) -> diffusers `AutoencoderKLFlux2` keys.

    Follows diffusers' scripts/convert_flux2_to_diffusers.py (LDM block names, quant convs inside the
    encoder/decoder, 1x1-conv attention projections); any key it cannot place is reported.
    """
    n_up = _block_count(sd, "decoder.up.")
    simple = {
        "encoder.quant_conv.": "quant_conv.",
        "quant_conv.": "quant_conv.",
        "decoder.post_quant_conv.": "post_quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
        "encoder.norm_out.": "encoder.conv_norm_out.",
        "decoder.norm_out.": "decoder.conv_norm_out.",
        "encoder.conv_in.": "encoder.conv_in.",
        "encoder.conv_out.": "encoder.conv_out.",
        "decoder.conv_in.": "decoder.conv_in.",
        "decoder.conv_out.": "decoder.conv_out.",
        "bn.": "bn.",
    }
    attn = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}
    out, unknown = {}, []
    for key, value in sd.items():
        new = next((b + key[len(a) :] for a, b in simple.items() if key.startswith(a)), None)
        if new is None and (m := re.match(r"(encoder|decoder)\.mid\.block_([12])\.(.*)", key)):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3].replace('nin_shortcut', 'conv_shortcut')}"
        elif new is None and (m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(.*)", key)):
            sub = next((b + m[2][len(a) :] for a, b in attn.items() if m[2].startswith(a)), None)
            if sub is not None:
                new = f"{m[1]}.mid_block.attentions.0.{sub}"
                if value.ndim > 2:  # 1x1 conv -> linear
                    value = value.flatten(1)
        elif new is None and (m := re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)", key)):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3].replace('nin_shortcut', 'conv_shortcut')}"
        elif new is None and (m := re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.*)", key)):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
        elif new is None and (m := re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", key)):
            rest = m[3].replace("nin_shortcut", "conv_shortcut")
            new = f"decoder.up_blocks.{n_up - 1 - int(m[1])}.resnets.{m[2]}.{rest}"  # LDM counts up blocks upwards
        elif new is None and (m := re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.*)", key)):
            new = f"decoder.up_blocks.{n_up - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{what}: {path} does not fit the FLUX.2 VAE: {describe_key_mismatch([], unknown)}")
    return out


def vae_config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """The `AutoencoderKLFlux2` config a diffusers-keyed state dict implies (the released one when it matches)."""
    levels = _block_count(sd, "encoder.down_blocks.")
    channels = tuple(int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels))
    config = {
        **VAE_CONFIG,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": channels,
        "layers_per_block": _block_count(sd, "encoder.down_blocks.0.resnets."),
        "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]),
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "mid_block_add_attention": any(".mid_block.attentions." in k for k in sd),
    }
    return config


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> nn.Module:
    """`AutoencoderKLFlux2` from a diffusers folder or a single file (BFL/LDM or diffusers keys)."""
    from diffusers import AutoencoderKLFlux2

    what = "FLUX.2 VAE"
    p = require_path(path, what)
    if p.is_dir():
        return _from_folder(AutoencoderKLFlux2.from_pretrained, p, what, torch_dtype=dtype).to(device).eval()
    sd = strip_prefix(load_safetensors(p, what), ["first_stage_model.", "vae."])
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.")) for k in sd):
        sd = _vae_bfl_to_diffusers(sd, p, what)
    _require_keys(sd, ["encoder.down_blocks.0.resnets.0.conv1.weight", "decoder.conv_in.weight"], p, what, "VAE")
    if "bn.running_mean" not in sd:
        raise CheckpointError(
            f"{what}: {p} has no bn.running_mean/bn.running_var; it is not the FLUX.2 VAE "
            "(FLUX.1's ae has no BatchNorm)"
        )
    with empty_weights():
        model = AutoencoderKLFlux2.from_config(vae_config_from_state_dict(sd))
    load_state_dict_checked(model, _cast(sd, dtype), p, what, allow_missing=["bn.num_batches_tracked"], assign=True)
    return _finish(model, p, what, device)


# --- text encoder -----------------------------------------------------------------------------------
def text_encoder_config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """The `Qwen3Config` fields an HF-keyed (`model.` prefixed) Qwen3 state dict implies.

    Returns the released Qwen3-4B / Qwen3-8B config when the shapes are theirs.
    """
    vocab, hidden = sd["model.embed_tokens.weight"].shape
    head_dim = int(sd["model.layers.0.self_attn.q_norm.weight"].shape[0])
    inferred = {
        **_QWEN3_COMMON,
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(sd["model.layers.0.mlp.gate_proj.weight"].shape[0]),
        "num_hidden_layers": _block_count(sd, "model.layers."),
        "head_dim": head_dim,
        "num_attention_heads": int(sd["model.layers.0.self_attn.q_proj.weight"].shape[0]) // head_dim,
        "num_key_value_heads": int(sd["model.layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in sd,
        # Without an lm_head in the file, tie it: it is never used (FLUX.2 reads hidden states only).
        "tie_word_embeddings": "lm_head.weight" not in sd,
    }
    for config in TEXT_ENCODER_CONFIGS.values():
        if all(config[k] == v for k, v in inferred.items() if k != "tie_word_embeddings"):
            return {**config, "tie_word_embeddings": inferred["tie_word_embeddings"]}
    return inferred


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu") -> nn.Module:
    """`Qwen3ForCausalLM` from a transformers folder or a single file with HF Qwen3 keys (any prefix)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    what = "Qwen3 text encoder"
    p = require_path(path, what)
    if p.is_dir():
        return _from_folder(Qwen3ForCausalLM.from_pretrained, p, what, dtype=dtype).to(device).eval()
    raw = load_safetensors(p, what)
    # Normalise the prefix: whatever precedes "embed_tokens.weight" (e.g. "model.", "", or a ComfyUI
    # wrapper's) is the base model's; "lm_head.weight" may sit beside it.
    anchor = next((k for k in raw if k.endswith("embed_tokens.weight")), None)
    if anchor is None:
        raise CheckpointError(f"{what}: {p} is not a Qwen3 checkpoint (no embed_tokens.weight)")
    prefix = anchor[: -len("embed_tokens.weight")]
    sd = {}
    for key, value in raw.items():
        if key.endswith("lm_head.weight"):
            sd["lm_head.weight"] = value
        elif key.startswith(prefix):
            sd["model." + key[len(prefix) :]] = value
        else:
            sd[key] = value  # reported as unexpected below
    _require_keys(
        sd,
        ["model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.q_proj.weight",
         "model.layers.0.mlp.gate_proj.weight"],
        p, what, "Qwen3",
    )  # fmt: skip
    config = Qwen3Config(**text_encoder_config_from_state_dict(sd))
    with empty_weights():
        model = Qwen3ForCausalLM(config)
    allow = ["lm_head.weight"] if config.tie_word_embeddings else []
    load_state_dict_checked(model, _cast(sd, dtype), p, what, allow_missing=allow, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the tied Parameter
    return _finish(model, p, what, device)

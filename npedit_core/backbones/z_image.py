"""Z-Image (Tongyi-MAI, 6B single-stream DiT) as an NP-Edit editor backbone.

Parts: diffusers `ZImageTransformer2DModel`, the FLUX.1 `AutoencoderKL` (16 latent channels, 8x
downsampling, scaling 0.3611 / shift 0.1159), transformers `Qwen3Model` (Qwen3-4B; `ZImagePipeline`
reads `hidden_states[-2]`) and the Qwen tokenizer. Latents are (B, 16, H/8, W/8); the transformer
patchifies 2x2, so image sides are multiples of 16 pixels.

Conventions (see base.py). Z-Image's transformer runs time the other way: `ZImagePipeline` feeds
`(1000 - 1000 sigma) / 1000` (1 = clean image, 0 = noise) and negates the output before its Euler step.
`velocity` takes our t (1 = noise) and returns v = eps - x0, so it feeds `1 - t` (computed in the same
float32 arithmetic as the pipeline) and negates the output.

Reference conditioning: the NP-Edit re-implementation's scheme, built from the transformer's own blocks
=====================================================================================================
Decision: we do NOT use diffusers' multi-image "omni" mode (`x` as a list of lists,
`image_noise_mask`). Omni mode does have the three defining properties (the reference frame sits at the
same (h, w) coordinates with its own frame index, clean images get the t = clean modulation, the output
is cropped to the target), but everything around them differs from what the published NP-Edit
re-implementation (github nupurkmr9/npedit, `models/zimage_denoiser.py`) trains and ships its
checkpoint for:
  - omni splits the prompt into per-image captions with `<|vision_start|>`/`<|vision_end|>` markers,
    each piece encoded as a separate Qwen3 sequence, so the text features depend on whether a
    reference is present. Our protocol encodes text once (`encode_text`) and uses it with and without
    a reference (the DMD teacher runs the same embeddings without one); the re-implementation also
    encodes the instruction exactly like plain text-to-image;
  - omni orders the sequence [captions, images] and gives the first caption piece the clean
    modulation; the re-implementation keeps Z-Image's text-to-image order [image tokens, caption] and
    only the reference tokens are clean;
  - omni pads every image to 32 tokens separately and is meant for the Omni checkpoints (SigLIP
    features); Z-Image / Z-Image-Turbo have no SigLIP branch. Omni mode does run without SigLIP when
    given `siglip_feats=[None] * B` (`siglip_feats=None` raises a TypeError on `all_siglip_feats[i]`);
    the reference frame then gets frame index 1 + len(caption piece 0), the target
    1 + len(piece 0) + 2 + len(piece 1) (measured: 6 and 17 for pieces of 5 and 9 tokens);
  - in diffusers 0.42 omni mode also misplaces the positions of every caption piece after the first:
    `_pad_with_ids` returns pad_len more position rows than tokens for a caption whose length is not
    a multiple of 32, harmless for the single caption of text-to-image but it shifts the rows of
    the next pieces (measured: piece 1's first token gets (0, 0, 0) instead of (8, 0, 0)).
So we implement the re-implementation's scheme on the transformer's building blocks (its patchify /
pad / RoPE helpers, `noise_refiner`, `context_refiner`, `layers`, final layer, all unchanged, using the
blocks' built-in per-token modulation path). Per sample, with caption length L and Lp = L rounded up
to a multiple of 32 (SEQ_MULTI_OF):

  token order (main layers): [ ref tokens | target tokens | pad to x32 ] [ caption (L) | caption pad ]
  position ids (frame, h, w):
    caption token k (incl. its pad)  (1 + k, 0, 0)          k = 0 .. Lp-1   (as in text-to-image)
    reference patch (i, j)           (Lp + 1, i, j)          the frame text-to-image uses for its image
    target patch (i, j)              (Lp + 2, i, j)          same spatial grid, next frame index
    image pad tokens                 (0, 0, 0)
  modulation: reference tokens get the embedding of a clean image (transformer time 1, our t = 0) in
    every modulated block (noise refiner, main layers, final layer); target, pad and caption tokens
    get the target's time;
  output: the target tokens only, unpatchified to (B, 16, h, w).
With equal reference and target sizes this is exactly `patchify_and_embed` on a 2-frame latent
(C, 2, h, w) = [ref, target], which is how the re-implementation builds it; we also allow a reference
of a different size (its own grid at frame Lp + 1). Two deliberate differences from the
re-implementation's batched code, both matching diffusers' text-to-image forward instead: (1) each
sample's layout uses its own caption length (the re-implementation pads every caption to the batch's
longest, so a sample's positions depend on its batch-mates); (2) in-sequence pad tokens (x_pad_token,
cap_pad_token) take part in attention, as in diffusers and as in the re-implementation's FlashAttention-4
path (its SDPA fallback masks them).

Text: as `ZImagePipeline._encode_prompt`: Qwen3 chat template with `add_generation_prompt=True`,
`enable_thinking=True` (which adds no think block; ComfyUI's template is the same string), at most 512
tokens, `hidden_states[-2]`, only the real tokens. We pad to the batch's longest prompt instead of to
512 (right padding under a causal mask leaves the real tokens' states unchanged) and keep the
real-token mask in `TextEmbeds.mask`; `velocity` passes each sample's real tokens as a separate
variable-length caption, exactly as the pipeline does. The re-implementation uses
`enable_thinking=False` (an empty `<think>` block): pass `enable_thinking=False` to match its checkpoint.

Single files (ComfyUI's models/ folders), loaded with the real Z-Image-Turbo configs below:
  diffusion_models/*.safetensors  original Z-Image keys (`layers.N.attention.qkv`, `x_embedder`,
                                  `final_layer`, ...; optionally under `model.diffusion_model.`),
                                  converted with diffusers' own converter; or diffusers keys
  text_encoders/qwen_3_4b.safetensors  Qwen3-4B `Qwen3ForCausalLM` keys (`model.layers...`,
                                  optional `lm_head.weight`, dropped) or bare `Qwen3Model` keys
  vae/ae.safetensors              the FLUX.1 VAE in BFL/LDM keys (`encoder.down.0.block.0...`),
                                  converted with diffusers' converter; or diffusers keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from ..assets import qwen_tokenizer_dir
from ..errors import CheckpointError, NPEditError
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

#: diffusers' `SEQ_MULTI_OF`: every token group is padded to a multiple of this many tokens.
_SEQ_MULTI_OF = 32
_PATCH = 2
_PATCH_KEY = "2-1"  # "{patch_size}-{f_patch_size}" of the transformer's embedder / final layer

# --- real configs (Tongyi-MAI/Z-Image-Turbo), for single files without a config ---------------------
#: transformer/config.json
Z_IMAGE_TURBO_TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}
#: text_encoder/config.json (Qwen3-4B)
QWEN3_4B_CONFIG: dict[str, Any] = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 9728,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
#: vae/config.json (the FLUX.1 autoencoder; no quant convs)
FLUX1_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

# --- tiny configs (tests, benchmarks): same classes, a few hundred thousand parameters ---------------
TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    **Z_IMAGE_TURBO_TRANSFORMER_CONFIG,
    "dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 32,
    "axes_dims": [8, 4, 4],  # sums to the head dim 16
    "axes_lens": [1536, 256, 256],
}
TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **QWEN3_4B_CONFIG,
    "head_dim": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 1024,
    "max_window_layers": 2,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,  # hidden_states[-2] is then the first layer's output
    "num_key_value_heads": 1,
}  # the real vocabulary size, so the real tokenizer's ids (up to 151668) all embed
TINY_VAE_CONFIG: dict[str, Any] = {
    **FLUX1_VAE_CONFIG,
    "block_out_channels": [8, 8, 16, 16],  # four blocks = 8x downsampling, as the real one
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}


def _diffusers_keys_from_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Z-Image / ComfyUI transformer keys -> diffusers keys (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    if any(k.startswith("all_x_embedder.") or ".all_x_embedder." in k for k in state_dict):
        return strip_prefix(state_dict, ["model.diffusion_model."])  # already diffusers' layout
    return convert_z_image_transformer_checkpoint_to_diffusers(dict(state_dict))


#: diffusers -> original key pieces (the inverse of the renames in diffusers' Z-Image converter).
_TO_ORIGINAL = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_k.weight": ".attention.k_norm.weight",
    ".attention.norm_q.weight": ".attention.q_norm.weight",
}


def transformer_state_dict_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `ZImageTransformer2DModel` keys -> original Z-Image keys (ComfyUI's `diffusion_models` layout).

    The inverse of diffusers' `convert_z_image_transformer_checkpoint_to_diffusers`: q/k/v fused back into
    `attention.qkv`, the embedder, final layer, out projection and q/k norms renamed. Adds `norm_final.weight`
    (ones), the RMSNorm ComfyUI's NextDiT builds and never calls, so its loader reports no missing key.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [sd[key.replace(".to_q.", f".to_{n}.")] for n in "qkv"]
            out[key.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts, dim=0)
            continue
        for old, new in _TO_ORIGINAL.items():
            key = key.replace(old, new)
        out[key] = value
    embed = sd["all_x_embedder.2-1.weight"]
    out.setdefault("norm_final.weight", torch.ones(embed.shape[0], dtype=embed.dtype, device=embed.device))
    return out


def _diffusers_vae_keys(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """BFL/LDM autoencoder keys (`encoder.down.0.block.0...`) -> diffusers keys; diffusers keys pass."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if any(".down_blocks." in k or ".up_blocks." in k for k in state_dict):
        return strip_prefix(state_dict, ["vae.", "first_stage_model."])
    return convert_ldm_vae_checkpoint(state_dict, config)


def _require_per_token_modulation(transformer) -> None:
    """The reference path uses the per-token (clean / noisy) modulation that diffusers added with Z-Image omni."""
    import inspect

    block = transformer.layers[0] if len(transformer.layers) else None
    if block is None or "noise_mask" not in inspect.signature(block.forward).parameters:
        import diffusers

        raise NPEditError(
            f"diffusers {diffusers.__version__}: its ZImageTransformer2DModel has no per-token modulation "
            "(added with the Z-Image omni pipeline); install a newer diffusers (0.42 is tested)"
        )


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` before an assign-load (no second full copy of the model afterwards)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _load_tokenizer(path):
    """A tokenizer from a folder (default: the Qwen tokenizer from `npedit_core.assets`); a loaded one passes."""
    from transformers import AutoTokenizer

    if path is not None and not isinstance(path, (str, Path)):
        return path
    folder = require_path(path if path is not None else qwen_tokenizer_dir(), "Qwen tokenizer", kind="dir")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"Qwen tokenizer: could not load {folder} ({err})") from err


class ZImageBackbone(Backbone):
    """Z-Image in the NP-Edit convention (module docstring: time, reference layout, text, files).

    transformer: `ZImageTransformer2DModel` (trained); vae: `AutoencoderKL`; text_encoder: `Qwen3Model`
    (both frozen); tokenizer: the Qwen tokenizer. `enable_thinking` is passed to the chat template.
    """

    family = "z_image"
    pixel_multiple = 16  # 8x VAE downsampling x 2x2 patches
    latent_channels = 16

    def __init__(self, transformer, vae, text_encoder, tokenizer, *, enable_thinking: bool = True, max_sequence_length: int = 512):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking
        self.max_sequence_length = max_sequence_length
        self.freeze_frozen_parts()
        _require_per_token_modulation(transformer)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, tokenizer_path: str | None = None, **kwargs) -> "ZImageBackbone":
        """Tiny random Z-Image (same classes, configs above) with the real Qwen tokenizer; float32, CPU."""
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        tokenizer = _load_tokenizer(tokenizer_path)
        with torch.random.fork_rng(devices=[]):  # deterministic without touching the caller's RNG
            torch.manual_seed(seed)
            text_encoder = Qwen3Model(Qwen3Config(**TINY_TEXT_ENCODER_CONFIG)).eval()
            vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
            transformer = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
            # Z-Image's pad tokens get no real initialisation (diffusers 0.42 makes zeros; real values
            # come from the checkpoint); give them random values so padding is not a silent no-op.
            for token in (transformer.x_pad_token, transformer.cap_pad_token):
                with torch.no_grad():
                    token.normal_(0.0, 0.5)
        return cls(transformer, vae, text_encoder, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device="cpu",
        vae_dtype: torch.dtype = torch.float32,
        text_encoder: str | None = None,
        vae: str | None = None,
        tokenizer=None,
        enable_thinking: bool = True,
        transformer_config: dict | None = None,
        text_encoder_config: dict | None = None,
        vae_config: dict | None = None,
    ) -> "ZImageBackbone":
        """Load real weights from local files only (never downloads).

        `path` is either a diffusers folder (model_index.json with transformer/, vae/, text_encoder/,
        tokenizer/) or a single transformer `.safetensors` file (ComfyUI `diffusion_models`); a single
        file needs `text_encoder=` (e.g. `text_encoders/qwen_3_4b.safetensors`, or a transformers
        folder) and `vae=` (e.g. `vae/ae.safetensors`, or a diffusers folder); `tokenizer=` (a folder or a
        loaded tokenizer) defaults to the folder's tokenizer/, or for single files to the Qwen tokenizer
        from `npedit_core.assets`. The `*_config` dicts override the real
        Z-Image-Turbo / Qwen3-4B / FLUX.1 configs used for single files. The transformer and text
        encoder get `dtype`, the VAE `vae_dtype` (float32 by default: its decoder carries the judge's
        gradients). Any missing, unreadable or mismatching file raises `CheckpointError` naming it.
        """
        root = require_path(path, "Z-Image checkpoint")
        if root.is_dir():
            if not (root / "model_index.json").is_file():
                raise CheckpointError(
                    f"Z-Image checkpoint: {root} is a folder without model_index.json; give a diffusers "
                    "Z-Image folder, or the transformer .safetensors file with text_encoder= and vae="
                )
            tok = _load_tokenizer(tokenizer if tokenizer is not None else root / "tokenizer")
            parts = cls._load_diffusers_folder(root, dtype, vae_dtype)
        else:
            if text_encoder is None or vae is None:
                raise CheckpointError(
                    f"Z-Image checkpoint: {root} is a single transformer file; also give text_encoder= "
                    "(qwen_3_4b.safetensors) and vae= (ae.safetensors)"
                )
            tok = _load_tokenizer(tokenizer)
            parts = (
                cls._load_transformer_file(root, dtype, transformer_config),
                cls._load_vae(vae, vae_dtype, vae_config),
                cls._load_text_encoder(text_encoder, dtype, text_encoder_config),
            )
        transformer, vae_model, te = parts
        backbone = cls(transformer, vae_model, te, tok, enable_thinking=enable_thinking)
        return backbone.to(device)

    @staticmethod
    def _load_diffusers_folder(root: Path, dtype, vae_dtype):
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import Qwen3Model

        load = ZImageBackbone._load_folder_model
        return (
            load(ZImageTransformer2DModel, root / "transformer", "Z-Image transformer", torch_dtype=dtype),
            load(AutoencoderKL, root / "vae", "Z-Image VAE", torch_dtype=vae_dtype),
            load(Qwen3Model, root / "text_encoder", "Z-Image text encoder (Qwen3)", dtype=dtype),
        )

    @staticmethod
    def _load_transformer_file(file: Path, dtype, config: dict | None):
        from diffusers import ZImageTransformer2DModel

        what = "Z-Image transformer"
        state = _diffusers_keys_from_original(load_safetensors(file, what))
        with empty_weights():
            model = ZImageTransformer2DModel(**(config or Z_IMAGE_TURBO_TRANSFORMER_CONFIG))
        load_state_dict_checked(model, _cast(state, dtype), file, what, assign=True)
        check_no_meta(model, file, what)
        return model

    @staticmethod
    def _load_vae(path: str | Path, dtype, config: dict | None):
        from diffusers import AutoencoderKL

        what = "Z-Image VAE (FLUX.1 ae)"
        p = require_path(path, what)
        config = dict(config or FLUX1_VAE_CONFIG)
        if p.is_dir():
            return ZImageBackbone._load_folder_model(AutoencoderKL, p, what, torch_dtype=dtype)
        state = _diffusers_vae_keys(load_safetensors(p, what), config)
        with empty_weights():
            model = AutoencoderKL(**config)
        load_state_dict_checked(model, _cast(state, dtype), p, what, assign=True)
        check_no_meta(model, p, what)
        return model.eval()

    @staticmethod
    def _load_text_encoder(path: str | Path, dtype, config: dict | None):
        from transformers import Qwen3Config, Qwen3Model

        what = "Z-Image text encoder (Qwen3)"
        p = require_path(path, what)
        if p.is_dir():
            return ZImageBackbone._load_folder_model(Qwen3Model, p, what, dtype=dtype)
        state = load_safetensors(p, what)
        # Qwen3ForCausalLM files: base model under "model.", a tied lm_head that the encoder does not use.
        state = strip_prefix({k: v for k, v in state.items() if k != "lm_head.weight"}, ["model."])
        with empty_weights():  # buffers (rotary inv_freq) stay real and computed
            model = Qwen3Model(Qwen3Config(**(config or QWEN3_4B_CONFIG)))
        load_state_dict_checked(model, _cast(state, dtype), p, what, assign=True)
        check_no_meta(model, p, what)
        return model.eval()

    @staticmethod
    def _load_folder_model(model_cls, folder: Path, what: str, **kwargs):
        """`model_cls.from_pretrained(folder)` (local only) that names the folder on any failure or key mismatch.

        diffusers and transformers only warn about missing keys (and initialise them randomly); here
        they are errors. A tied `lm_head.weight` left in a Qwen3ForCausalLM folder is not.
        """
        folder = require_path(folder, what, kind="dir")
        try:
            model, info = model_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
        except Exception as err:  # missing or corrupt weights / config
            raise CheckpointError(f"{what}: could not load {folder} ({type(err).__name__}: {err})") from err
        mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
        missing = list(info.get("missing_keys", [])) + [str(k) for k in mismatched]
        unexpected = [k for k in info.get("unexpected_keys", []) if k != "lm_head.weight"]
        if missing or unexpected:
            raise CheckpointError(f"{what}: {folder} does not fit the model: {describe_key_mismatch(missing, unexpected)}")
        return model.eval()

    # --- the protocol -------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        m = self.pixel_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise NPEditError(f"image size {height}x{width}: Z-Image needs sides that are positive multiples of {m}")
        return self.latent_channels, height // 8, width // 8

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> TextEmbeds:
        """Prompts -> TextEmbeds (B, L, D) of Qwen3 `hidden_states[-2]`, L = longest prompt; mask True on real tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise NPEditError("prompts: empty list")
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=self.enable_thinking,
            )
            for p in prompts
        ]
        device = next(self.text_encoder.parameters()).device
        inputs = self.tokenizer(
            texts, padding="longest", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        )
        ids = inputs.input_ids.to(device)
        mask = inputs.attention_mask.to(device).bool()
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        hidden = hidden.masked_fill(~mask[..., None], 0.0)  # padding rows are never read; keep them clean
        return TextEmbeds(hidden, mask)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 16, H/8, W/8) float32: (posterior mode - shift) * scale, as the pipelines."""
        _, _, height, width = images.shape
        self.latent_shape(height, width)
        vae_param = next(self.vae.parameters())
        x = (images * 2 - 1).to(vae_param.device, vae_param.dtype)
        mode = self.vae.encode(x).latent_dist.mode()
        cfg = self.vae.config
        return ((mode - cfg.shift_factor) * cfg.scaling_factor).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) -> (B, 3, 8h, 8w) float in [0, 1]; differentiable (the pipelines' decode + postprocess)."""
        vae_param = next(self.vae.parameters())
        cfg = self.vae.config
        z = latents.to(vae_param.device, vae_param.dtype) / cfg.scaling_factor + cfg.shift_factor
        image = self.vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)  # VaeImageProcessor.denormalize

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        text: TextEmbeds,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v = eps - x0 for x_t (B, 16, h, w) at our times t (B,) (1 = noise); reference (B, 16, h', w') or None."""
        tf = self.transformer
        batch = self._check_inputs(x_t, text, reference)
        t = torch.as_tensor(t, device=x_t.device).float().reshape(-1).expand(batch)
        # ZImagePipeline: timestep = sigma * 1000; model time = (1000 - timestep) / 1000 (1 = clean).
        model_t = (1000 - t * 1000) / 1000
        x = x_t.to(tf.dtype)
        mask = text.mask if text.mask is not None else torch.ones(text.embeds.shape[:2], dtype=torch.bool)
        # One variable-length caption per sample, like the pipeline's list of masked embeddings.
        caps = [text.embeds[i][mask[i].to(text.embeds.device)].to(x.device, tf.dtype) for i in range(batch)]
        if reference is None:
            out = tf(list(x.unsqueeze(2).unbind(0)), model_t, caps, return_dict=False)[0]  # list of (C, 1, h, w)
            out = torch.stack([o.float() for o in out]).squeeze(2)
        else:
            out = self._forward_with_reference(x, reference.to(x.device, tf.dtype), model_t, caps).float()
        return (-out).to(x_t.dtype)  # Z-Image predicts x0 - eps

    def lora_target_modules(self) -> list[str]:
        """Attention q/k/v/out and SwiGLU FFN linears of every block (refiners included)."""
        return [
            "attention.to_q",
            "attention.to_k",
            "attention.to_v",
            "attention.to_out.0",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        ]

    # --- internals ----------------------------------------------------------------------------
    def _check_inputs(self, x_t: torch.Tensor, text: TextEmbeds, reference: torch.Tensor | None) -> int:
        c = self.transformer.config.in_channels
        axes = self.transformer.config.axes_lens
        for name, x in (("x_t", x_t), ("reference", reference)):
            if x is None:
                continue
            if x.ndim != 4 or x.shape[1] != c:
                raise NPEditError(f"{name}: expected latents (B, {c}, h, w), got {tuple(x.shape)}")
            if x.shape[2] % _PATCH or x.shape[3] % _PATCH:
                raise NPEditError(f"{name}: latent sides must be even (2x2 patches), got {tuple(x.shape[2:])}")
            if x.shape[2] // _PATCH > axes[1] or x.shape[3] // _PATCH > axes[2]:
                raise NPEditError(
                    f"{name}: {tuple(x.shape[2:])} latents exceed the transformer's position range "
                    f"({axes[1] * 16}x{axes[2] * 16} pixels)"
                )
        batch = x_t.shape[0]
        if len(text) != batch:
            raise NPEditError(f"text: {len(text)} prompts for a batch of {batch} latents")
        if reference is not None and reference.shape[0] != batch:
            raise NPEditError(f"reference: batch of {reference.shape[0]} for {batch} targets")
        return batch

    def _run(self, layer, *args):
        """Call a block, through the transformer's gradient checkpointing when it is enabled (as its forward)."""
        tf = self.transformer
        if torch.is_grad_enabled() and tf.gradient_checkpointing:
            return tf._gradient_checkpointing_func(layer, *args)
        return layer(*args)

    def reference_layout(self, cap_len: int, ref_hw: tuple[int, int], target_hw: tuple[int, int], device=None):
        """Image-token layout of one sample (latent sizes ref_hw, target_hw; caption of cap_len real tokens).

        Returns (pos_ids (N, 3) int32, noise_mask list[int] (0 = clean reference), pad_mask (N,) bool,
        target span (start, stop)), N = image tokens padded to a multiple of 32. Frame indices follow the
        caption padded to Lp = ceil(cap_len / 32) * 32: reference Lp + 1, target Lp + 2.
        """
        tf = self.transformer
        lp = cap_len + (-cap_len) % _SEQ_MULTI_OF
        (hr, wr), (ht, wt) = [(h // _PATCH, w // _PATCH) for h, w in (ref_hw, target_hw)]
        n_ref, n_tgt = hr * wr, ht * wt
        pos = torch.cat(
            [
                tf.create_coordinate_grid((1, hr, wr), (lp + 1, 0, 0), device).flatten(0, 2),
                tf.create_coordinate_grid((1, ht, wt), (lp + 2, 0, 0), device).flatten(0, 2),
            ]
        )
        pad = (-(n_ref + n_tgt)) % _SEQ_MULTI_OF
        pos = torch.cat([pos, torch.zeros((pad, 3), dtype=pos.dtype, device=device)])  # pad tokens at (0, 0, 0)
        pad_mask = torch.zeros(n_ref + n_tgt + pad, dtype=torch.bool, device=device)
        pad_mask[n_ref + n_tgt :] = True
        noise = [0] * n_ref + [1] * (n_tgt + pad)
        return pos, noise, pad_mask, (n_ref, n_ref + n_tgt)

    def _forward_with_reference(self, x: torch.Tensor, ref: torch.Tensor, model_t: torch.Tensor, caps: list[torch.Tensor]):
        """The transformer's forward with [ref | target] image tokens (layout in the module docstring).

        x (B, C, h, w), ref (B, C, h', w') in the transformer dtype; model_t (B,) Z-Image time; returns
        the target's raw output (B, C, h, w) (Z-Image sign: x0 - eps).
        """
        tf = self.transformer
        device, batch, channels = x.device, x.shape[0], tf.out_channels
        adaln_noisy = tf.t_embedder(model_t * tf.t_scale).type_as(x)
        # A clean image in Z-Image time is 1 (our t = 0): what the reference tokens are modulated with.
        adaln_clean = tf.t_embedder(torch.ones_like(model_t) * tf.t_scale).type_as(x)

        feats, x_pos, x_pad, x_noise, spans = [], [], [], [], []
        cap_feats, cap_pos, cap_pad = [], [], []
        for i in range(batch):
            cap = caps[i]
            # Caption exactly as patchify_and_embed: padded to x32, positions (1 + k, 0, 0).
            padded = len(cap) + (-len(cap)) % _SEQ_MULTI_OF
            c_feat, c_pos, c_pad, _, _ = tf._pad_with_ids(cap, (padded, 1, 1), (1, 0, 0), device)
            cap_feats.append(c_feat)
            cap_pos.append(c_pos)
            cap_pad.append(c_pad)
            # Image tokens: (h/2 * w/2, 4C) each, reference first (frame-major, like a 2-frame latent).
            r_tok, _, _ = tf._patchify_image(ref[i].unsqueeze(1), _PATCH, 1)
            t_tok, _, _ = tf._patchify_image(x[i].unsqueeze(1), _PATCH, 1)
            pos, noise, pad_mask, span = self.reference_layout(len(cap), ref.shape[2:], x.shape[2:], device)
            tokens = torch.cat([r_tok, t_tok])
            n_pad = len(pos) - len(tokens)
            if n_pad:  # diffusers pads with copies of the last token (replaced by x_pad_token below)
                tokens = torch.cat([tokens, tokens[-1:].repeat(n_pad, 1)])
            feats.append(tokens)
            x_pos.append(pos)
            x_pad.append(pad_mask)
            x_noise.append(noise)
            spans.append(span)

        # Image tokens: embed, pad token, RoPE; noise refiner with per-token (clean / noisy) modulation.
        x_lens = [len(f) for f in feats]
        emb = tf.all_x_embedder[_PATCH_KEY](torch.cat(feats))
        hx, x_freqs, x_mask, _, x_noise_t = tf._prepare_sequence(
            list(emb.split(x_lens)), x_pos, x_pad, tf.x_pad_token, x_noise, device
        )
        for layer in tf.noise_refiner:
            hx = self._run(layer, hx, x_mask, x_freqs, None, x_noise_t, adaln_noisy, adaln_clean)

        # Caption: embed, pad token, RoPE, context refiner (no modulation), as in text-to-image.
        cap_lens = [len(c) for c in cap_feats]
        emb = tf.cap_embedder(torch.cat(cap_feats))
        hc, cap_freqs, cap_mask, _, _ = tf._prepare_sequence(
            list(emb.split(cap_lens)), cap_pos, cap_pad, tf.cap_pad_token, None, device
        )
        for layer in tf.context_refiner:
            hc = self._run(layer, hc, cap_mask, cap_freqs)

        # [image tokens, caption] per sample (basic-mode order), padded across the batch with a key mask.
        unified, freqs, attn_mask, _ = tf._build_unified_sequence(
            hx, x_freqs, x_lens, None, hc, cap_freqs, cap_lens, None, None, None, None, None, False, device
        )
        noise_mask = pad_sequence(
            [torch.tensor(x_noise[i] + [1] * cap_lens[i], dtype=torch.long, device=device) for i in range(batch)],
            batch_first=True,
            padding_value=1,
        )  # (B, S): 0 only on reference tokens; caption tokens share the target's modulation
        for layer in tf.layers:
            unified = self._run(layer, unified, attn_mask, freqs, None, noise_mask, adaln_noisy, adaln_clean)
        unified = tf.all_final_layer[_PATCH_KEY](unified, noise_mask=noise_mask, c_noisy=adaln_noisy, c_clean=adaln_clean)

        # Crop to the target tokens and unpatchify: (ht * wt, 2*2*C) -> (C, h, w).
        ht, wt = x.shape[2] // _PATCH, x.shape[3] // _PATCH
        outs = []
        for i, (start, stop) in enumerate(spans):
            tokens = unified[i, start:stop].view(ht, wt, _PATCH, _PATCH, channels)  # (h', w', ph, pw, C)
            outs.append(tokens.permute(4, 0, 2, 1, 3).reshape(channels, ht * _PATCH, wt * _PATCH))
        return torch.stack(outs)


"""TAEF2: the tiny autoencoder for the FLUX.2 latent space (TAESD family, madebyollin/taesd, MIT).

A ~1.3 M-parameter-per-half stand-in for FLUX.2's `AutoencoderKLFlux2` (84 M): fast, fully
differentiable, good to ~30 dB PSNR on real photos. NP-Edit uses it wherever an image-space loss or a
preview needs pixels from FLUX.2 latents and the real VAE is too slow or too large.

Architecture (re-implemented from the tensor names and shapes of the released state dicts; the
module indices below *are* the state-dict keys, so the modules are `nn.Sequential`s):

    encoder  (B, 3, H, W) in [0, 1]  ->  (B, 32, H/8, W/8)
        0 conv3x3 3->64, 1 Block,
        2 conv3x3/2 (no bias), 3-5 Block x3,
        6 conv3x3/2 (no bias), 7-9 Block x3,
        10 conv3x3/2 (no bias), 11-13 Block+GN x3,
        14 conv3x3 64->32
    decoder  (B, 32, h, w)  ->  (B, 3, 8h, 8w), ~[0, 1]
        0 tanh clamp 3*tanh(z/3), 1 conv3x3 32->64, 2 ReLU, 3-5 Block+GN x3,
        6 up x2 (nearest), 7 conv3x3 (no bias), 8-10 Block x3,
        11 up x2, 12 conv3x3 (no bias), 13-15 Block x3,
        16 up x2, 17 conv3x3 (no bias), 18 Block, 19 conv3x3 64->3

`Block` is TAESD's residual unit relu(conv-relu-conv-relu-conv(x) + x). The FLUX.2 variant
("use_midblock_gn" in taesd.py) adds, in the three blocks at latent resolution only, a pre-branch
x <- x + conv1x1(relu(GroupNorm(4, 256)(conv1x1(x)))) (64 -> 256 -> 64, no biases): the `pool.*` keys.
diffusers' `AutoencoderTiny` cannot express that branch, hence this file.

Value conventions (TAESD family; checked here by the round-trip PSNR, ~30 dB only with these):
- images are in [0, 1] on both sides (not the [-1, 1] of the diffusers VAEs);
- there is no scaling/shift factor: the encoder output *is* the latent the decoder consumes.

Which FLUX.2 latents these are — the *normalised* ones, not the raw VAE ones:
`AutoencoderKLFlux2` encodes to raw latents z_raw (B, 32, H/8, W/8); the FLUX.2 pipelines then
patchify 2x2 to (B, 128, H/16, W/16) and normalise with the VAE's BatchNorm running statistics,
x = (patchify(z_raw) - mean) / sqrt(var + eps); x is what the transformer sees. TAEF2's 32-channel
latent is `unpatchify(x)`: the transformer's normalised latent in the unpatchified layout, i.e.
TAEF2 ~= unpatchify . BN-normalise . patchify . VAE-encode, and its decoder skips the de-normalisation.
Evidence: the TAEF2 author's diffusers wrapper (madebyollin/taesd issue #35, huggingface.co/
madebyollin/taef2) installs an identity `BatchNorm2d(128, affine=False, eps=0.0)` as `vae.bn`, so the
pipeline's `x * std + mean` becomes a no-op before `_unpatchify_latents` and TAEF2's decoder; ComfyUI
feeds its (BN-normalised, BFL-style) FLUX.2 latents to `taef2_decoder` after only the unpatchify
reshape; ports that applied the BN inverse first reported over-saturated previews (mlx-taef PR #41:
SSIM vs the full VAE 0.92 normalised vs 0.59 with the inverse, which widens latents ~1.8x per
channel; Forge PR #807). Consistently, TAEF2's encoder gives BN-normalised-looking statistics on real
photos (measured here on chelsea/coffee/astronaut/rocket: overall mean -0.01..-0.06, std 0.80-0.85,
patchified per-channel std 0.57-1.05). So:

    transformer latents (B, 128, h, w)  --unpatchify_flux2-->  TAEF2 latents (B, 32, 2h, 2w)
    raw VAE latents z_raw (B, 32, ...)  --normalize_flux2_vae_latents(bn_mean, bn_std)-->  (B, 128, ...)

`decode_flux2_latents` / `encode_flux2_latents` do the first line; raw latents (e.g. a diffusers
FLUX.2 pipeline run with output_type="latent", which returns un-normalised, unpatchified latents) must
be normalised first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from ..errors import CheckpointError, NPEditError

LATENT_CHANNELS = 32  # TAEF2 / AutoencoderKLFlux2 latent channels before the 2x2 patchify
PATCHIFIED_CHANNELS = 4 * LATENT_CHANNELS  # 128: what the FLUX.2 transformer sees
DOWNSCALE = 8  # pixels per latent cell (three stride-2 stages)
ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
SAFETENSORS_SUFFIX = ".safetensors"  # the same keys as a safetensors file (the micro-world's own TAEF2)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------
def _conv3x3(n_in: int, n_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class _TanhClamp(nn.Module):
    """Soft clamp of decoder inputs to (-3, 3): 3 tanh(z / 3) (identity near 0, bounded for noisy latents)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3.0) * 3.0


class _Block(nn.Module):
    """TAESD residual block relu(f(x) + x), f = conv-relu-conv-relu-conv (64 channels throughout).

    With `group_norm=True` (FLUX.2 variant, latent-resolution blocks only) a wide 1x1 branch with a
    GroupNorm first adds x <- x + W2 relu(GN(W1 x)), W1: 64 -> 256, GN: 4 groups over 256 channels.
    """

    def __init__(self, channels: int = 64, *, group_norm: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(channels, channels), nn.ReLU(),
            _conv3x3(channels, channels), nn.ReLU(),
            _conv3x3(channels, channels),
        )
        self.pool = None
        if group_norm:
            wide = 4 * channels
            self.pool = nn.Sequential(
                nn.Conv2d(channels, wide, 1, bias=False),
                nn.GroupNorm(4, wide),  # eps 1e-5, affine (pool.1.weight / pool.1.bias)
                nn.ReLU(),
                nn.Conv2d(wide, channels, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)  # n_in == n_out everywhere, so the skip is the identity


class TAEF2Encoder(nn.Sequential):
    """(B, 3, H, W) images in [0, 1] -> (B, 32, ceil(H/8), ceil(W/8)) TAEF2 latents (no output clamp)."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = 64):
        c = width
        super().__init__(
            _conv3x3(3, c), _Block(c),                                                       # 0-1
            _conv3x3(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c),           # 2-5   /2
            _conv3x3(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c),           # 6-9   /4
            _conv3x3(c, c, stride=2, bias=False),                                            # 10    /8
            _Block(c, group_norm=True), _Block(c, group_norm=True), _Block(c, group_norm=True),  # 11-13
            _conv3x3(c, latent_channels),                                                    # 14
        )


class TAEF2Decoder(nn.Sequential):
    """(B, 32, h, w) TAEF2 latents -> (B, 3, 8h, 8w) images, approximately in [0, 1] (not clamped here)."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = 64):
        c = width
        super().__init__(
            _TanhClamp(), _conv3x3(latent_channels, c), nn.ReLU(),                           # 0-2
            _Block(c, group_norm=True), _Block(c, group_norm=True), _Block(c, group_norm=True),  # 3-5
            nn.Upsample(scale_factor=2), _conv3x3(c, c, bias=False),                         # 6-7   x2
            _Block(c), _Block(c), _Block(c),                                                 # 8-10
            nn.Upsample(scale_factor=2), _conv3x3(c, c, bias=False),                         # 11-12 x4
            _Block(c), _Block(c), _Block(c),                                                 # 13-15
            nn.Upsample(scale_factor=2), _conv3x3(c, c, bias=False),                         # 16-17 x8
            _Block(c), _conv3x3(c, 3),                                                       # 18-19
        )


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"TAEF2 checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, pickle with non-tensor objects, ...
        raise CheckpointError(
            f"TAEF2 checkpoint {path} could not be read as a state dict ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"TAEF2 checkpoint {path} is not a state dict of tensors (got {type(state).__name__})")
    return state


def _names(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _width(state: dict[str, torch.Tensor], key: str) -> int:
    """The channel width of a TAEF2 half from its first conv (64 in the released weights)."""
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 4 else 64


def _load_into(module: nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Strictly load `path` into `module`, naming the file and the offending keys on any mismatch."""
    state = _read_state_dict(path) if state is None else state
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches ({len(wrong_shape)}): {_names(wrong_shape)}")
        raise CheckpointError(
            f"TAEF2 checkpoint {path} does not fit {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)  # copies (and casts fp16 -> module dtype) in place


def folder_files(folder: PathLike) -> tuple[Path, Path] | None:
    """(encoder, decoder) files in `folder`: the released `.pth` pair, else a `.safetensors` pair; None if neither."""
    folder = Path(folder)
    for enc, dec in ((ENCODER_FILE, DECODER_FILE),
                     (Path(ENCODER_FILE).stem + SAFETENSORS_SUFFIX, Path(DECODER_FILE).stem + SAFETENSORS_SUFFIX)):
        if (folder / dec).is_file():
            return folder / enc, folder / dec
    return None


def _resolve_paths(folder_or_paths) -> tuple[Path | None, Path | None]:
    if isinstance(folder_or_paths, (str, os.PathLike)):
        folder = Path(folder_or_paths)
        if not folder.is_dir():
            raise CheckpointError(
                f"TAEF2 folder not found: {folder} (expected a folder with {ENCODER_FILE} and {DECODER_FILE} "
                f"or their {SAFETENSORS_SUFFIX} pair, or a pair (encoder_path, decoder_path))"
            )
        return folder_files(folder) or (folder / ENCODER_FILE, folder / DECODER_FILE)
    if isinstance(folder_or_paths, (tuple, list)) and len(folder_or_paths) == 2:
        enc, dec = folder_or_paths
        if enc is None and dec is None:
            raise CheckpointError("TAEF2.from_files: both encoder_path and decoder_path are None")
        return (None if enc is None else Path(enc)), (None if dec is None else Path(dec))
    raise CheckpointError(
        "TAEF2.from_files expects a folder or a pair (encoder_path, decoder_path), "
        f"got {type(folder_or_paths).__name__}"
    )


# --------------------------------------------------------------------------------------------------
# The autoencoder
# --------------------------------------------------------------------------------------------------
class TAEF2(nn.Module):
    """TAEF2 encoder + decoder with input checks. Either half may be absent (decoder-only previews).

    Latents are TAEF2's 32-channel, 1/8-resolution latents = the FLUX.2 transformer's *normalised*
    latents in the unpatchified layout (see the module docstring and `decode_flux2_latents`).
    """

    latent_channels = LATENT_CHANNELS
    downscale = DOWNSCALE

    def __init__(self, encoder: TAEF2Encoder | None = None, decoder: TAEF2Decoder | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def from_files(
        cls,
        folder_or_paths: PathLike | tuple[PathLike | None, PathLike | None],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "TAEF2":
        """Load the released weights; frozen (requires_grad False) and in eval mode.

        folder_or_paths: a folder holding `taef2_encoder.pth` and `taef2_decoder.pth` (e.g. the
            ComfyUI `models/vae_approx/` folder), or a pair (encoder_path, decoder_path) where either
            may be None to load one half only. `.safetensors` files with the same keys also load (in a
            folder, `taef2_encoder.safetensors` / `taef2_decoder.safetensors` when there is no `.pth` pair).
            The channel width is read from the weights (64 released; the micro-world's own is narrower).
        dtype, device: where the parameters live (the files are fp16; float32 is the safe default on CPU).
        Raises CheckpointError naming the file if it is missing, unreadable, or does not fit.
        """
        enc_path, dec_path = _resolve_paths(folder_or_paths)
        encoder = decoder = None
        if enc_path is not None:
            state = _read_state_dict(enc_path)
            encoder = TAEF2Encoder(width=_width(state, "0.weight"))
            _load_into(encoder, enc_path, state)
        if dec_path is not None:
            state = _read_state_dict(dec_path)
            decoder = TAEF2Decoder(width=_width(state, "1.weight"))
            _load_into(decoder, dec_path, state)
        model = cls(encoder, decoder).to(device=device, dtype=dtype)
        model.requires_grad_(False)
        return model.eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float images in [0, 1], H and W multiples of 8 -> (B, 32, H/8, W/8) latents.

        Returned in the input's dtype; differentiable with respect to the images.
        """
        if self.encoder is None:
            raise NPEditError("this TAEF2 was loaded without an encoder (encoder_path was None)")
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise NPEditError(
                f"TAEF2.encode expects float images (B, 3, H, W) in [0, 1], got {tuple(images.shape)} {images.dtype}"
            )
        h, w = images.shape[-2:]
        if h % DOWNSCALE or w % DOWNSCALE:
            raise NPEditError(
                f"TAEF2.encode needs image sides that are multiples of {DOWNSCALE}, got {h}x{w} "
                "(crop or resize before encoding)"
            )
        return self.encoder(images.to(self.dtype)).to(images.dtype)

    def decode(self, latents: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """(B, 32, h, w) latents -> (B, 3, 8h, 8w) images in [0, 1], in the latents' dtype.

        Differentiable with respect to the latents. clamp=True clips to [0, 1] like TAESD's reference
        usage (pixels outside get no gradient); clamp=False returns the raw decoder output.
        """
        if self.decoder is None:
            raise NPEditError("this TAEF2 was loaded without a decoder (decoder_path was None)")
        if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS or not latents.is_floating_point():
            hint = (
                " (these look like patchified FLUX.2 transformer latents: use decode_flux2_latents)"
                if latents.ndim == 4 and latents.shape[1] == PATCHIFIED_CHANNELS
                else ""
            )
            raise NPEditError(
                f"TAEF2.decode expects float latents (B, {LATENT_CHANNELS}, h, w), "
                f"got {tuple(latents.shape)} {latents.dtype}{hint}"
            )
        images = self.decoder(latents.to(self.dtype)).to(latents.dtype)
        return images.clamp(0, 1) if clamp else images


# --------------------------------------------------------------------------------------------------
# FLUX.2 latent layout: 2x2 patchify and the VAE BatchNorm
# --------------------------------------------------------------------------------------------------
def patchify_flux2(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4C, h, w), diffusers' `Flux2Pipeline._patchify_latents` ordering.

    Output channel 4c + 2i + j holds input channel c at pixel offset (row i, column j) of each 2x2 cell.
    """
    b, c, hh, ww = latents.shape
    if hh % 2 or ww % 2:
        raise NPEditError(f"patchify_flux2 needs even latent sides, got {hh}x{ww}")
    x = latents.view(b, c, hh // 2, 2, ww // 2, 2)  # (B, C, h, i, w, j)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, C, i, j, h, w)
    return x.reshape(b, c * 4, hh // 2, ww // 2)


def unpatchify_flux2(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w): the inverse of `patchify_flux2` (diffusers' `_unpatchify_latents`)."""
    b, c4, h, w = latents.shape
    if c4 % 4:
        raise NPEditError(f"unpatchify_flux2 needs a channel count divisible by 4, got {c4}")
    x = latents.reshape(b, c4 // 4, 2, 2, h, w)  # (B, C, i, j, h, w)
    x = x.permute(0, 1, 4, 2, 5, 3)  # (B, C, h, i, w, j)
    return x.reshape(b, c4 // 4, h * 2, w * 2)


def _bn_stat(stat: torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
    stat = torch.as_tensor(stat).to(device=like.device, dtype=like.dtype)
    if stat.numel() != PATCHIFIED_CHANNELS:
        raise NPEditError(f"{name} must have {PATCHIFIED_CHANNELS} entries (one per patchified channel), got {stat.numel()}")
    return stat.reshape(1, PATCHIFIED_CHANNELS, 1, 1)


def flux2_bn_stats(vae: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of an `AutoencoderKLFlux2`, exactly as the diffusers FLUX.2 pipelines compute them.

    mean = vae.bn.running_mean, std = sqrt(vae.bn.running_var + vae.config.batch_norm_eps), each (128,).
    """
    mean = vae.bn.running_mean.detach().float()
    std = torch.sqrt(vae.bn.running_var.detach().float() + vae.config.batch_norm_eps)
    return mean, std


def normalize_flux2_vae_latents(raw: torch.Tensor, bn_mean: torch.Tensor, bn_std: torch.Tensor) -> torch.Tensor:
    """Raw `AutoencoderKLFlux2` latents (B, 32, 2h, 2w) -> normalised transformer latents (B, 128, h, w).

    x = (patchify(z_raw) - mean) / std, as `Flux2Pipeline._encode_vae_image` does. The result is what
    `decode_flux2_latents` takes (and unpatchify(x) is what `TAEF2.decode` takes).
    """
    x = patchify_flux2(raw)
    return (x - _bn_stat(bn_mean, "bn_mean", x)) / _bn_stat(bn_std, "bn_std", x)


def denormalize_flux2_latents(latents_128: torch.Tensor, bn_mean: torch.Tensor, bn_std: torch.Tensor) -> torch.Tensor:
    """Normalised transformer latents (B, 128, h, w) -> raw VAE latents (B, 32, 2h, 2w) for the *real* VAE.

    unpatchify(x * std + mean), as the diffusers FLUX.2 pipelines do before `vae.decode`. Do not feed
    the result to TAEF2: TAEF2 works on the normalised latents (see the module docstring).
    """
    x = latents_128 * _bn_stat(bn_std, "bn_std", latents_128) + _bn_stat(bn_mean, "bn_mean", latents_128)
    return unpatchify_flux2(x)


def _check_patchified(latents: torch.Tensor) -> None:
    if latents.ndim != 4 or latents.shape[1] != PATCHIFIED_CHANNELS or not latents.is_floating_point():
        raise NPEditError(
            f"expected FLUX.2 transformer latents (B, {PATCHIFIED_CHANNELS}, h, w), "
            f"got {tuple(latents.shape)} {latents.dtype}"
        )


def decode_flux2_latents(taef2: TAEF2, latents_128: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """FLUX.2 transformer latents (B, 128, h, w), BN-normalised and patchified -> images (B, 3, 16h, 16w).

    Only the 2x2 unpatchify (diffusers' `_unpatchify_latents` ordering) happens before TAEF2's decoder:
    TAEF2 was distilled on the normalised latents, so the pipeline's de-normalisation x * std + mean
    (which the real VAE needs) must NOT be applied — that widens the latents ~1.8x and over-saturates
    the result. For raw VAE latents use `normalize_flux2_vae_latents` first. Differentiable.
    """
    _check_patchified(latents_128)
    return taef2.decode(unpatchify_flux2(latents_128), clamp=clamp)


def encode_flux2_latents(taef2: TAEF2, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1], sides multiples of 16 -> FLUX.2 transformer latents (B, 128, H/16, W/16).

    The TAEF2 approximation of `Flux2Pipeline._encode_vae_image` (VAE mode + patchify + BN-normalise).
    """
    h, w = images.shape[-2:]
    if h % 16 or w % 16:
        raise NPEditError(f"encode_flux2_latents needs image sides that are multiples of 16, got {h}x{w}")
    return patchify_flux2(taef2.encode(images))


class _Deterministic:
    """A posterior with one value: `.mode()` (what `Flux2KleinBackbone.encode_images` reads) returns it."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def mode(self) -> torch.Tensor:
        return self.value


class TAEF2AsFlux2VAE(nn.Module):
    """TAEF2 behind the part of `AutoencoderKLFlux2`'s interface that `Flux2KleinBackbone` uses.

    So a backbone can run on TAEF2 latents end to end (e.g. a small checkpoint trained in TAEF2's
    latent space; `npedit_backbone.json` {"vae": "taef2"}). Conventions are converted here:
    `encode` takes [-1, 1] images and returns TAEF2 latents as the "raw" latents; `bn` is an identity
    BatchNorm (running mean 0, var 1, eps 0), because TAEF2 latents already are the normalised ones
    (the same trick as the TAEF2 author's diffusers wrapper, see the module docstring); `decode`
    returns [-1, 1] images.
    """

    def __init__(self, taef2: TAEF2):
        super().__init__()
        from types import SimpleNamespace

        if taef2.encoder is None or taef2.decoder is None:
            raise NPEditError("TAEF2AsFlux2VAE needs both the TAEF2 encoder and decoder")
        self.taef2 = taef2
        self.bn = nn.BatchNorm2d(PATCHIFIED_CHANNELS, affine=False, eps=0.0)  # identity in eval mode
        self.config = SimpleNamespace(latent_channels=LATENT_CHANNELS, patch_size=(2, 2),
                                      block_out_channels=(64,) * 4, batch_norm_eps=0.0)

    def encode(self, x: torch.Tensor):
        """[-1, 1] images (B, 3, H, W) -> an object whose `.latent_dist.mode()` is (B, 32, H/8, W/8)."""
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=_Deterministic(self.taef2.encode((x + 1) / 2)))

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """(B, 32, h, w) -> [-1, 1] images (B, 3, 8h, 8w), unclamped (the backbone clamps after rescaling)."""
        from types import SimpleNamespace

        image = self.taef2.decode(z, clamp=False) * 2 - 1
        return SimpleNamespace(sample=image) if return_dict else (image,)

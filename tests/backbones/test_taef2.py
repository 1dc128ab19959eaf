"""TAEF2 on its real released weights: strict load, round-trip PSNR on real photos, gradients, errors,
and the FLUX.2 latent layout (2x2 patchify in diffusers' order, the VAE BatchNorm)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from npedit_core.backbones.taef2 import (
    DECODER_FILE,
    ENCODER_FILE,
    TAEF2,
    TAEF2Decoder,
    TAEF2Encoder,
    decode_flux2_latents,
    denormalize_flux2_latents,
    encode_flux2_latents,
    normalize_flux2_vae_latents,
    patchify_flux2,
    unpatchify_flux2,
)
from npedit_core.errors import CheckpointError, NPEditError


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1.0 / ((a - b) ** 2).mean())).item()


def crop_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., : h // multiple * multiple, : w // multiple * multiple]


@pytest.fixture(scope="module")
def taef2(taef2_path) -> TAEF2:
    return TAEF2.from_files(taef2_path)


@pytest.fixture(scope="module")
def chelsea_round_trip(taef2, photos):
    x = crop_to(photos("chelsea"), 8)
    with torch.no_grad():
        z = taef2.encode(x)
    return x, z


# --- loading ----------------------------------------------------------------------------------------
def test_real_weights_load_strictly_into_the_reimplemented_architecture(taef2_path):
    for module, name in ((TAEF2Encoder(), ENCODER_FILE), (TAEF2Decoder(), DECODER_FILE)):
        state = torch.load(Path(taef2_path) / name, map_location="cpu", weights_only=True)
        result = module.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        # fp16 files, ~1.3 M parameters per half (README)
        assert all(v.dtype == torch.float16 for v in state.values())
        assert 1.2e6 < sum(p.numel() for p in module.parameters()) < 1.4e6


def test_from_files_gives_a_frozen_float32_model_in_eval_mode(taef2):
    assert taef2.dtype == torch.float32
    assert not taef2.training
    assert not any(p.requires_grad for p in taef2.parameters())


# --- round trip on real photos ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_round_trip_of_real_photos_is_above_28_db(taef2, photos, chelsea_round_trip, name, record_property):
    if name == "chelsea":
        x, z = chelsea_round_trip
    else:
        x = crop_to(photos(name), 8)
        with torch.no_grad():
            z = taef2.encode(x)
    b, _, h, w = x.shape
    assert z.shape == (b, 32, h // 8, w // 8)
    with torch.no_grad():
        y = taef2.decode(z)
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    value = psnr(y, x)
    record_property(f"psnr_{name}", value)
    print(f"TAEF2 round trip {name} {tuple(x.shape)}: {value:.2f} dB")
    assert value >= 28.0, f"{name}: {value:.2f} dB"


def test_a_random_initialised_decoder_is_far_worse(taef2, chelsea_round_trip):
    x, z = chelsea_round_trip
    torch.manual_seed(0)
    random_model = TAEF2(taef2.encoder, TAEF2Decoder()).eval()
    with torch.no_grad():
        real, rand = psnr(taef2.decode(z), x), psnr(random_model.decode(z), x)
    print(f"real decoder {real:.2f} dB, random decoder {rand:.2f} dB")
    assert rand < 15.0 and real - rand > 13.0


def test_images_in_minus_one_one_are_the_wrong_convention(taef2, photos):
    # TAESD family: [0, 1] in and out; feeding [-1, 1] ruins the reconstruction.
    x = photos("chelsea")[..., 64:192, 128:256]
    with torch.no_grad():
        right = psnr(taef2.decode(taef2.encode(x)), x)
        wrong = psnr(taef2.decode(taef2.encode(x * 2 - 1)), x)
    assert right > 25.0 and wrong < 15.0


# --- gradients ----------------------------------------------------------------------------------------
def test_gradients_flow_from_decoded_pixels_back_to_the_latents(taef2, photos):
    x = photos("chelsea")[..., 64:128, 128:192]
    target = photos("coffee")[..., 100:164, 200:264]
    with torch.no_grad():
        z0 = taef2.encode(x)
    z = z0.clone().requires_grad_(True)

    def loss_of(latents):
        return ((taef2.decode(latents) - target) ** 2).mean()

    loss = loss_of(z)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in taef2.parameters())  # frozen weights collect nothing
    with torch.no_grad():  # the gradient is a descent direction
        assert loss_of(z - 0.5 * z.grad / z.grad.abs().max()) < loss


def test_a_narrower_taef2_in_safetensors_loads_from_its_folder(tmp_path):
    # The micro-world's own autoencoder: TAEF2's keys at width 16, a safetensors pair in a folder.
    from safetensors.torch import save_file

    torch.manual_seed(0)
    encoder, decoder = TAEF2Encoder(width=16), TAEF2Decoder(width=16)
    save_file(encoder.state_dict(), str(tmp_path / "taef2_encoder.safetensors"))
    save_file(decoder.state_dict(), str(tmp_path / "taef2_decoder.safetensors"))
    model = TAEF2.from_files(tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode(x), encoder(x))
        z = torch.randn(2, 32, 4, 4)
        assert torch.equal(model.decode(z, clamp=False), decoder(z))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for m in (encoder, decoder) for p in m.parameters())


# --- errors -------------------------------------------------------------------------------------------
def test_missing_file_names_the_file(taef2_path, tmp_path):
    shutil.copy(Path(taef2_path) / ENCODER_FILE, tmp_path / ENCODER_FILE)
    with pytest.raises(CheckpointError, match="not found") as info:
        TAEF2.from_files(tmp_path)
    assert str(tmp_path / DECODER_FILE) in str(info.value)


def test_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(CheckpointError) as info:
        TAEF2.from_files(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_corrupt_file_names_the_file(taef2_path, tmp_path):
    shutil.copy(Path(taef2_path) / ENCODER_FILE, tmp_path / ENCODER_FILE)
    (tmp_path / DECODER_FILE).write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(CheckpointError) as info:
        TAEF2.from_files(tmp_path)
    assert str(tmp_path / DECODER_FILE) in str(info.value)


def test_truncated_file_names_the_file(taef2_path, tmp_path):
    data = (Path(taef2_path) / ENCODER_FILE).read_bytes()
    (tmp_path / ENCODER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        TAEF2.from_files((tmp_path / ENCODER_FILE, None))
    assert str(tmp_path / ENCODER_FILE) in str(info.value)


def test_state_dict_that_does_not_fit_lists_missing_and_unexpected_keys(taef2_path, tmp_path):
    state = torch.load(Path(taef2_path) / DECODER_FILE, map_location="cpu", weights_only=True)
    del state["3.pool.1.weight"]
    state["20.weight"] = torch.zeros(3)
    state["19.bias"] = torch.zeros(4)
    path = tmp_path / "bad_decoder.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        TAEF2.from_files((None, path))
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): 3.pool.1.weight" in message
    assert "unexpected keys (1): 20.weight" in message
    assert "19.bias (4,) != (3,)" in message


def test_a_taesd_without_the_group_norm_does_not_load_as_taef2(tmp_path):
    # An SD/FLUX.1-style decoder (no mid-block GroupNorm, 16 latent channels) is refused, not half-loaded.
    path = tmp_path / "taef1_decoder.pth"
    state = {k: v for k, v in TAEF2Decoder(latent_channels=16).state_dict().items() if ".pool." not in k}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(12\).*shape mismatches \(1\): 1.weight") as info:
        TAEF2.from_files((None, path))
    assert str(path) in str(info.value)


def test_bad_inputs_are_refused_with_a_clear_message(taef2):
    with pytest.raises(NPEditError, match="multiples of 8"):
        taef2.encode(torch.rand(1, 3, 60, 64))
    with pytest.raises(NPEditError, match=r"\(B, 3, H, W\)"):
        taef2.encode(torch.rand(1, 4, 64, 64))
    with pytest.raises(NPEditError, match="decode_flux2_latents"):
        taef2.decode(torch.randn(1, 128, 4, 4))
    with pytest.raises(NPEditError, match="without a decoder"):
        TAEF2(taef2.encoder, None).decode(torch.randn(1, 32, 4, 4))


# --- FLUX.2 latent layout -----------------------------------------------------------------------------
def test_patchify_uses_diffusers_channel_order():
    # Flux2Pipeline._patchify_latents: out[:, 4c + 2i + j, y, x] = in[:, c, 2y + i, 2x + j]
    z = torch.randn(2, 32, 6, 10)
    p = patchify_flux2(z)
    assert p.shape == (2, 128, 3, 5)
    for c, i, j in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (5, 1, 1), (31, 0, 1)]:
        assert torch.equal(p[:, 4 * c + 2 * i + j], z[:, c, i::2, j::2])
    assert torch.equal(unpatchify_flux2(p), z)


def test_batch_norm_helpers_invert_each_other():
    torch.manual_seed(0)
    mean, std = torch.randn(128), torch.rand(128) + 0.5
    x128 = torch.randn(2, 128, 3, 4)
    raw = denormalize_flux2_latents(x128, mean, std)
    assert raw.shape == (2, 32, 6, 8)
    # by hand: channel 4c + 2i + j of x128 de-normalised lands at raw[:, c, i::2, j::2]
    assert torch.allclose(raw[:, 3, 1::2, 0::2], x128[:, 14] * std[14] + mean[14])
    assert torch.allclose(normalize_flux2_vae_latents(raw, mean, std), x128, atol=1e-6)
    with pytest.raises(NPEditError, match="128 entries"):
        normalize_flux2_vae_latents(raw, mean[:32], std)


def test_decode_flux2_latents_reproduces_taef2_decode_exactly(taef2, photos):
    x = photos("astronaut")[..., 96:224, 160:288]  # 128 x 128, a multiple of 16
    with torch.no_grad():
        z = taef2.encode(x)  # (1, 32, 16, 16): TAEF2 latents = unpatchified normalised FLUX.2 latents
        latents_128 = patchify_flux2(z)  # what the FLUX.2 transformer sees
        assert torch.equal(encode_flux2_latents(taef2, x), latents_128)
        assert latents_128.shape == (1, 128, 8, 8)
        assert torch.equal(decode_flux2_latents(taef2, latents_128), taef2.decode(z))
    with pytest.raises(NPEditError, match=r"\(B, 128, h, w\)"):
        decode_flux2_latents(taef2, z)


def test_raw_vae_latents_decode_after_normalisation(taef2, photos):
    # A raw-latent round trip (e.g. diffusers' output_type="latent"): normalise, then decode.
    torch.manual_seed(0)
    mean, std = 0.3 * torch.randn(128), 1.5 + torch.rand(128)
    x = photos("astronaut")[..., 96:224, 160:288]
    with torch.no_grad():
        latents_128 = encode_flux2_latents(taef2, x)
        raw = denormalize_flux2_latents(latents_128, mean, std)
        again = normalize_flux2_vae_latents(raw, mean, std)
        assert torch.allclose(again, latents_128, atol=1e-5)
        assert psnr(decode_flux2_latents(taef2, again), decode_flux2_latents(taef2, latents_128)) > 60

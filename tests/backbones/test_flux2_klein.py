"""FLUX.2-klein backbone: parity with diffusers' Flux2KleinPipeline, editing, gradients, checkpoint files.

Everything runs on tiny random components of the real classes (`Flux2KleinBackbone.tiny`) with the
real Qwen tokenizer (skipped when the offline fixture is absent) and a real photo.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from npedit_core.backbones.flux2_klein import (
    TEXT_ENCODER_CONFIGS,
    TRANSFORMER_CONFIGS,
    VAE_CONFIG,
    Flux2KleinBackbone,
    text_encoder_config_from_state_dict,
    transformer_config_from_state_dict,
    transformer_state_dict_to_bfl,
    unpatchify,
    vae_config_from_state_dict,
)
from npedit_core.backbones.loading import empty_weights
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.sampler import denoise, edit_images, edit_schedule, unroll

diffusers = pytest.importorskip("diffusers")
PIL = pytest.importorskip("PIL.Image")

PROMPTS = ["make the helmet bright red", "a cat"]


@pytest.fixture(scope="module")
def bb(qwen_tokenizer_path):
    return Flux2KleinBackbone.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)


@pytest.fixture(scope="module")
def pipe(bb):
    """diffusers' Flux2KleinPipeline over the SAME modules; shift 1 and no dynamic shifting keep sigmas as given."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    p = diffusers.Flux2KleinPipeline(
        scheduler=sched,
        vae=bb.vae,
        text_encoder=bb.text_encoder,
        tokenizer=bb.tokenizer,
        transformer=bb.transformer,
        is_distilled=True,
    )
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def reference():
    """A 64x96 crop of the astronaut photo: the PIL image the pipeline takes and the identical pixel tensor.

    The tensor is built as `VaeImageProcessor.numpy_to_pt` builds it (a (1, H, W, 3) array transposed),
    so even its memory layout matches: oneDNN convolutions differ by ~1e-6 between layouts.
    """
    data = pytest.importorskip("skimage.data")
    image = PIL.fromarray(data.astronaut()[100:164, 150:246])
    arr = (np.asarray(image).astype(np.float32) / 255.0)[None]
    return image, torch.from_numpy(arr.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def text(bb):
    return bb.encode_text(PROMPTS)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- 1. parity with diffusers ------------------------------------------------------------------------
def test_text_encoding_matches_the_pipeline(bb, pipe, text):
    embeds, txt_ids = pipe.encode_prompt(PROMPTS)
    assert text.embeds.shape == (2, 512, 3 * 32)  # padded to max_sequence_length, 3 stacked layers
    assert torch.equal(text.embeds, embeds)
    assert torch.equal(text.extra["txt_ids"], txt_ids)
    # The mask marks the chat-templated prompt's real tokens (the rest is <|endoftext|> padding).
    n_real = [len(bb.tokenizer(pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    ))["input_ids"]) for p in PROMPTS]  # fmt: skip
    assert text.mask.sum(1).tolist() == n_real and text.mask.dtype == torch.bool


def test_image_encoding_matches_the_pipeline(bb, pipe, reference):
    image, pixels = reference
    pre = pipe.image_processor.preprocess(image, height=64, width=96, resize_mode="crop")
    assert torch.equal(pre, 2 * pixels - 1)  # we feed the pipeline's own pixels
    latents = bb.encode_images(pixels)
    assert latents.shape == (1, 128, 4, 6) == (1, *bb.latent_shape(64, 96))
    assert torch.equal(latents, pipe._encode_vae_image(pre, generator=None))
    with pytest.raises(NPEditError, match="multiples of 16"):
        bb.encode_images(torch.rand(1, 3, 40, 64))


@pytest.mark.parametrize("with_reference", [True, False], ids=["edit", "text_to_image"])
def test_sampler_reproduces_the_pipeline(bb, pipe, reference, text, with_reference):
    """4 steps on the edit schedule, eta = 0: our encode + denoise + decode vs Flux2KleinPipeline."""
    image, pixels = reference
    sigmas = edit_schedule(4, 6.0)
    noise = _randn(2, 128, 4, 6)
    kwargs = {"image": image} if with_reference else {"height": 64, "width": 96}
    expected = pipe(
        prompt=PROMPTS, sigmas=sigmas, num_inference_steps=4, latents=noise.clone(), output_type="pt", **kwargs
    ).images
    with torch.no_grad():
        ref = bb.encode_images(pixels) if with_reference else None
        ours = bb.decode_latents(denoise(bb, noise.clone(), sigmas, text, ref, eta=0.0))
    assert ours.shape == expected.shape == (2, 3, 64, 96)
    # Measured 2.6e-6 (edit) / 3.2e-6 (T2I): the only difference is the sampler's float64 step sizes
    # against the scheduler's float32 ones (one step, and float32 steps, agree to 0.0).
    assert (ours - expected).abs().max() <= 1e-4
    assert expected.std() > 0.05  # not a degenerate (constant) image


def test_one_step_velocity_is_the_pipelines_bit_for_bit(bb, pipe, reference, text):
    image, pixels = reference
    noise = _randn(2, 128, 4, 6, seed=1)
    raw = pipe(
        image=image, prompt=PROMPTS, sigmas=[1.0], num_inference_steps=1, latents=noise.clone(), output_type="latent"
    ).images  # un-normalised, unpatchified: x - 1 * v, de-normalised
    with torch.no_grad():
        x0 = noise - bb.velocity(noise, torch.ones(2), text, bb.encode_images(pixels))
    mean, std = bb._bn_stats(x0)
    assert torch.equal(unpatchify(x0 * std + mean), raw)


# --- velocity details --------------------------------------------------------------------------------
def test_velocity_conditions_on_the_reference_and_keeps_x_t_dtype(bb, text):
    x = _randn(2, 128, 3, 4)
    t = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        plain = bb.velocity(x, t, text)
        ref = _randn(1, 128, 5, 2, seed=2)  # another size, broadcast over the batch
        edited = bb.velocity(x, t, text, ref)
        assert edited.shape == plain.shape == x.shape
        assert not torch.allclose(edited, plain)
        assert torch.equal(bb.velocity(x, t, text, ref.expand(2, -1, -1, -1)), edited)
        bf16 = Flux2KleinBackbone(copy.deepcopy(bb.transformer).bfloat16(), bb.vae, bb.text_encoder, bb.tokenizer)
        low = bf16.velocity(x, t, text, ref)
    assert low.dtype == torch.float32
    assert (low - edited).abs().max() < 0.1 * edited.abs().max()
    with pytest.raises(NPEditError, match="reference"):
        bb.velocity(x, t, text, _randn(3, 128, 2, 2))


def test_lora_targets_are_the_attention_and_mlp_linears(bb, text):
    names = bb.lora_target_modules()
    modules = dict(bb.transformer.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)
    assert len(names) == 12 * len(bb.transformer.transformer_blocks) + 2 * len(bb.transformer.single_transformer_blocks)
    assert "single_transformer_blocks.0.attn.to_out" in names and "transformer_blocks.0.attn.to_out.0" in names
    assert not any(re.search(r"modulation|embed|proj_out|norm_out", n) for n in names)
    peft = pytest.importorskip("peft")
    lora_bb = Flux2KleinBackbone(copy.deepcopy(bb.transformer), bb.vae, bb.text_encoder, bb.tokenizer)
    lora_bb.transformer.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=names))
    wrapped = [n for n, m in lora_bb.transformer.named_modules() if hasattr(m, "lora_A")]
    assert sorted(wrapped) == sorted(names)
    x = _randn(2, 128, 2, 2)
    with torch.no_grad():  # LoRA B starts at zero: same function
        assert torch.allclose(lora_bb.velocity(x, torch.ones(2), text), bb.velocity(x, torch.ones(2), text), atol=1e-6)


# --- 2. editing at the boundary ------------------------------------------------------------------------
def test_edit_images_odd_size_mask_and_per_sample_seeds(bb):
    images = torch.rand(2, 3, 333, 517, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 333, 517)
    mask[:, 100:200, 50:300] = 1.0
    mask[:, 90:100, 50:300] = 0.5
    # max_area keeps the tiny VAE cheap; the output must still be exactly the input size.
    out = edit_images(bb, images, PROMPTS, seeds=[11, 12], mask=mask, max_area=160 * 240)
    assert out.shape == (2, 3, 333, 517) and out.dtype == images.dtype
    keep = (mask == 0)[:, None].expand_as(images)
    assert torch.equal(out[keep], images[keep])
    assert not torch.equal(out[~keep], images[~keep])
    alone = edit_images(bb, images[1:], PROMPTS[1:], seeds=[12], mask=mask[1:], max_area=160 * 240)
    # Same seed, same sample; only CPU kernels that differ with the batch size (VAE decoder ~6e-5) remain.
    assert (out[1:] - alone).abs().max() < 2e-4


# --- 3. gradients ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_unroll_gradients_reach_every_transformer_parameter_and_no_frozen_one(bb, text, reference, k):
    ref = bb.encode_images(reference[1])
    ref2 = ref.expand(2, -1, -1, -1)
    bb.transformer.zero_grad(set_to_none=True)
    try:
        x0 = unroll(bb, _randn(2, 128, 4, 6, seed=k), text, ref2, edit_schedule(4, 6.0), k)
        bb.decode_latents(x0).mean().backward()
        for name, p in bb.transformer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        for module in (bb.vae, bb.text_encoder):
            assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    finally:
        bb.transformer.zero_grad(set_to_none=True)


# --- 4. checkpoints -----------------------------------------------------------------------------------
def _vae_to_bfl(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKLFlux2 keys -> BFL `flux2-vae.safetensors` keys (test helper: the inverse layout)."""
    out = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked"):
            continue  # not in BFL files; the loader must tolerate its absence
        new = key.replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^quant_conv\.", "encoder.quant_conv.", new)
        new = re.sub(r"^post_quant_conv\.", "decoder.post_quant_conv.", new)
        new = new.replace("conv_norm_out", "norm_out")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.",
            new,
        )
        if ".mid_block.attentions.0." in new:
            for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                new = new.replace(f"attentions.0.{a}.", f"attentions.0.{b}.")
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            if v.ndim == 2:
                v = v[:, :, None, None]  # BFL keeps 1x1 convolutions
        out[new] = v.clone()
    return out


def _same_backbone(a: Flux2KleinBackbone, b: Flux2KleinBackbone, pixels: torch.Tensor) -> None:
    """Same weights -> same outputs, up to GEMM rounding (loaded tensors sit at other memory alignments: ~3e-7).

    Any wrongly mapped tensor would show up as an O(0.1) difference.
    """

    def close(x, y):
        assert x.shape == y.shape and (x - y).abs().max() <= 1e-5

    with torch.no_grad():
        text_a, text_b = a.encode_text(["a dog"]), b.encode_text(["a dog"])
        close(text_a.embeds, text_b.embeds)
        ref_a, ref_b = a.encode_images(pixels), b.encode_images(pixels)
        close(ref_a, ref_b)
        x = _randn(1, 128, 4, 6, seed=5)
        close(a.velocity(x, torch.tensor([0.7]), text_a, ref_a), b.velocity(x, torch.tensor([0.7]), text_a, ref_a))
        close(a.decode_latents(ref_a), b.decode_latents(ref_a))


def test_diffusers_folder_round_trip(bb, reference, tmp_path):
    bb.transformer.save_pretrained(tmp_path / "transformer")
    bb.vae.save_pretrained(tmp_path / "vae")
    bb.text_encoder.save_pretrained(tmp_path / "text_encoder")
    bb.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = Flux2KleinBackbone.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert loaded.dtype == torch.float32 and next(loaded.vae.parameters()).dtype == torch.float32
    _same_backbone(bb, loaded, reference[1])

    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a cut-short download
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "vae"))):
        Flux2KleinBackbone.from_pretrained(str(tmp_path), dtype=torch.float32)
    bb.vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "text_encoder" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "text_encoder"))):
        Flux2KleinBackbone.from_pretrained(str(tmp_path), dtype=torch.float32)


@pytest.mark.parametrize("layout", ["comfyui_bfl", "diffusers_keys"])
def test_single_files(bb, reference, tmp_path, layout):
    """ComfyUI keeps one .safetensors per part: diffusion_models (BFL keys), vae (BFL keys), text_encoders."""
    transformer = bb.transformer.state_dict()
    vae = bb.vae.state_dict()
    if layout == "comfyui_bfl":
        transformer = {"model.diffusion_model." + k: v for k, v in transformer_state_dict_to_bfl(transformer).items()}
        vae = _vae_to_bfl(vae, levels=4)
    text_encoder = {k: v for k, v in bb.text_encoder.state_dict().items() if k != "lm_head.weight"}  # tied
    files = {name: tmp_path / f"{name}.safetensors" for name in ("transformer", "vae", "text_encoder")}
    for name, sd in (("transformer", transformer), ("vae", vae), ("text_encoder", text_encoder)):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(files[name]))
    loaded = Flux2KleinBackbone.from_single_files(
        **{k: str(v) for k, v in files.items()}, tokenizer=bb.tokenizer, dtype=torch.float32
    )
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert loaded.text_encoder.lm_head.weight is loaded.text_encoder.model.embed_tokens.weight
    _same_backbone(bb, loaded, reference[1])


def test_bfl_transformer_layout_inverts_diffusers_conversion(bb):
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    sd = bb.transformer.state_dict()
    bfl = transformer_state_dict_to_bfl(sd)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    assert "final_layer.adaLN_modulation.1.weight" in bfl and "double_blocks.0.txt_attn.norm.key_norm.scale" in bfl
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["FLUX.2-klein-4B", "FLUX.2-klein-9B"])
def test_real_checkpoint_shapes_select_the_released_configs(name):
    """Shapes of the real 4B/9B files (built on the meta device, BFL keys) pick the shipped configs."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with empty_weights():
        model = diffusers.Flux2Transformer2DModel(**TRANSFORMER_CONFIGS[name])
    bfl = transformer_state_dict_to_bfl(model.state_dict())
    config = transformer_config_from_state_dict(convert_flux2_transformer_checkpoint_to_diffusers(bfl))
    assert config == TRANSFORMER_CONFIGS[name]

    te_name = {"FLUX.2-klein-4B": "Qwen3-4B", "FLUX.2-klein-9B": "Qwen3-8B"}[name]
    with empty_weights():
        te = Qwen3ForCausalLM(Qwen3Config(**TEXT_ENCODER_CONFIGS[te_name]))
    te_sd = {k: v for k, v in te.state_dict().items() if k != "lm_head.weight"}  # as ComfyUI stores it
    inferred = text_encoder_config_from_state_dict(te_sd)
    assert inferred == {**TEXT_ENCODER_CONFIGS[te_name], "tie_word_embeddings": True}
    assert 3 * inferred["hidden_size"] == TRANSFORMER_CONFIGS[name]["joint_attention_dim"]

    with empty_weights():
        vae = diffusers.AutoencoderKLFlux2(**VAE_CONFIG)
    assert vae_config_from_state_dict(vae.state_dict()) == VAE_CONFIG


def test_checkpoint_errors_name_the_file(bb, tmp_path):
    good_vae = tmp_path / "vae.safetensors"
    save_file(_vae_to_bfl(bb.vae.state_dict(), levels=4), str(good_vae))
    te = tmp_path / "te.safetensors"
    save_file({k: v for k, v in bb.text_encoder.state_dict().items() if k != "lm_head.weight"}, str(te))
    sd = transformer_state_dict_to_bfl(bb.transformer.state_dict())
    missing = tmp_path / "nowhere" / "flux-2-klein-4b.safetensors"

    def load(transformer, vae=good_vae, text_encoder=te):
        return Flux2KleinBackbone.from_single_files(
            str(transformer), str(vae), str(text_encoder), bb.tokenizer, dtype=torch.float32
        )

    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        load(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    save_file(sd, str(corrupt))
    corrupt.write_bytes(corrupt.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match=re.escape(str(corrupt)) + ".*incomplete"):
        load(corrupt)
    wrong = tmp_path / "wrong_keys.safetensors"
    bad = dict(sd)
    bad.pop("double_blocks.0.img_mlp.2.weight")
    bad["double_blocks.0.img_attn.extra.weight"] = torch.zeros(1)
    save_file(bad, str(wrong))
    with pytest.raises(CheckpointError, match=re.escape(str(wrong)) + ".*img_attn.extra"):
        load(wrong)
    bad = dict(sd)
    bad.pop("single_blocks.0.linear2.weight")
    save_file(bad, str(wrong))
    with pytest.raises(CheckpointError, match="missing key.*single_transformer_blocks.0.attn.to_out.weight"):
        load(wrong)
    # A FLUX.1-style VAE (no BatchNorm statistics) is refused by name.
    flux1_vae = tmp_path / "ae.safetensors"
    save_file({k: v for k, v in _vae_to_bfl(bb.vae.state_dict(), 4).items() if not k.startswith("bn.")}, str(flux1_vae))
    good_transformer = tmp_path / "transformer.safetensors"
    save_file(sd, str(good_transformer))
    with pytest.raises(CheckpointError, match=re.escape(str(flux1_vae)) + ".*BatchNorm"):
        load(good_transformer, vae=flux1_vae)
    # The text encoder as the transformer: not a FLUX.2 checkpoint.
    with pytest.raises(CheckpointError, match=re.escape(str(te)) + ".*not a FLUX.2"):
        load(te)
    with pytest.raises(CheckpointError, match="is a file"):
        Flux2KleinBackbone.from_pretrained(str(good_transformer))


def test_mismatched_parts_are_refused(bb):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    small = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=28,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
    ))  # fmt: skip
    with pytest.raises(CheckpointError, match="text features of width 96"):
        Flux2KleinBackbone(bb.transformer, bb.vae, small, bb.tokenizer)


def test_single_files_in_bf16_keep_computed_buffers_in_float32(bb, tmp_path):
    """As from_pretrained(torch_dtype=bf16): weights in bf16, Qwen3's computed rotary inv_freq stays float32."""
    from npedit_core.backbones.flux2_klein import load_text_encoder, load_vae

    te = tmp_path / "qwen.safetensors"
    save_file({k: v for k, v in bb.text_encoder.state_dict().items() if k != "lm_head.weight"}, str(te))
    model = load_text_encoder(te, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(model.model.rotary_emb.inv_freq, bb.text_encoder.model.rotary_emb.inv_freq)
    vae = tmp_path / "vae.safetensors"
    save_file(_vae_to_bfl(bb.vae.state_dict(), levels=4), str(vae))
    loaded = load_vae(vae, dtype=torch.bfloat16)
    assert loaded.bn.running_var.dtype == torch.bfloat16 and loaded.bn.num_batches_tracked.dtype == torch.int64


def test_fast_decoder_hook_gets_the_normalised_latents(bb):
    latents = _randn(1, 128, 2, 3)
    seen = []
    bb.fast_decoder = lambda x: (seen.append(x), torch.zeros(x.shape[0], 3, 16 * x.shape[2], 16 * x.shape[3]))[1]
    try:
        assert bb.decode_latents(latents, fast=True).shape == (1, 3, 32, 48)
        assert seen[0] is latents  # no de-normalisation on the fast path (TAEF2 works on normalised latents)
    finally:
        bb.fast_decoder = None
    with pytest.raises(NPEditError, match="fast_decoder"):
        bb.decode_latents(latents, fast=True)

"""Z-Image backbone: parity with diffusers' pipelines, the reference scheme, gradients, checkpoint files.

Everything runs on tiny random components of the real classes (`ZImageBackbone.tiny`) with the real
Qwen tokenizer (skipped when the offline fixture is absent).
"""

from __future__ import annotations

import copy
import json
import shutil
import types

import pytest
import torch
from safetensors.torch import save_file

from npedit_core.backbones.base import TextEmbeds
from npedit_core.backbones.z_image import (
    TINY_TEXT_ENCODER_CONFIG,
    TINY_TRANSFORMER_CONFIG,
    TINY_VAE_CONFIG,
    ZImageBackbone,
)
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.images import resize
from npedit_core.sampler import SeededNoise, denoise, edit_images, edit_schedule, unroll

diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a red bicycle leaning on a brick wall at sunset", "snow"]  # different lengths: per-sample captions


@pytest.fixture(scope="module")
def bb(qwen_tokenizer_path):
    return ZImageBackbone.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)


@pytest.fixture(scope="module")
def pipe(bb):
    """diffusers' ZImagePipeline over the SAME modules, with a scheduler that keeps explicit sigmas as given."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    p = diffusers.ZImagePipeline(
        scheduler=sched, vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, transformer=bb.transformer
    )
    p.set_progress_bar_config(disable=True)
    return p


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- 1. parity with diffusers ------------------------------------------------------------------------
def test_text_encoding_matches_the_pipeline(bb, pipe):
    text = bb.encode_text(PROMPTS)
    expected, _ = pipe.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False)  # list of (L_i, D)
    assert text.mask.sum(1).tolist() == [len(e) for e in expected]
    for i, e in enumerate(expected):
        assert torch.allclose(text.embeds[i][text.mask[i]], e, atol=1e-6)  # we pad to the longest, not to 512
    assert torch.equal(text.embeds[1][~text.mask[1]], torch.zeros_like(text.embeds[1][~text.mask[1]]))


def test_text_to_image_sampling_matches_zimage_pipeline(bb, pipe):
    sigmas = edit_schedule(4, 6.0)
    latents = _randn(2, 16, 6, 10)  # 48 x 80 pixels
    seen = []  # the pipeline's latents after each step; after the last one (sigma 0) they are its x0

    def keep(pipeline, i, t, kw):
        seen.append(kw["latents"].clone())
        return {}

    ref_images = pipe(
        prompt=list(PROMPTS),
        height=48,
        width=80,
        sigmas=sigmas,
        guidance_scale=0.0,  # no CFG pass
        latents=latents.clone(),
        output_type="pt",
        callback_on_step_end=keep,
    ).images
    assert torch.equal(pipe.scheduler.sigmas[:-1], torch.tensor(sigmas, dtype=torch.float32))  # sigmas unchanged
    ref_latents = seen[-1]

    with torch.no_grad():
        x0 = denoise(bb, latents, sigmas, bb.encode_text(PROMPTS), None, eta=0.0)
        images = bb.decode_latents(x0)
    assert images.shape == ref_images.shape == (2, 3, 48, 80)
    assert (x0 - ref_latents).abs().max() <= 1e-5  # measured 7e-7
    assert (images - ref_images).abs().max() <= 1e-4  # measured 1.5e-6


def test_velocity_convention_is_eps_minus_x0(bb):
    """x0_hat = x_t - t v must be the transformer's own x0 estimate: Z-Image outputs x0 - eps at time 1 - t."""
    x, text = _randn(1, 16, 4, 4), bb.encode_text(["a cat"])
    with torch.no_grad():
        v = bb.velocity(x, torch.tensor([0.25]), text)
        raw = bb.transformer([x[0].unsqueeze(1)], torch.tensor([0.75]), [text.embeds[0][text.mask[0]]], return_dict=False)[0][0]
    assert torch.allclose(v, -raw.squeeze(1)[None], atol=1e-6)


def test_image_encoding_matches_the_omni_pipelines_reference_encoding(bb):
    """ZImageOmniPipeline encodes references as (mode - shift) * scale after casting the image to bf16."""
    from diffusers import ZImageOmniPipeline

    vae16 = copy.deepcopy(bb.vae).to(torch.bfloat16)
    bb16 = ZImageBackbone(bb.transformer, vae16, bb.text_encoder, bb.tokenizer)
    images = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    fake_pipe = types.SimpleNamespace(vae=vae16)
    with torch.no_grad():
        expected = ZImageOmniPipeline.prepare_image_latents(fake_pipe, [images * 2 - 1], 1, "cpu", torch.float32)
    got = bb16.encode_images(images)
    assert got.dtype == torch.float32 and got.shape == (1, 16, 6, 10)
    assert torch.equal(got[0], expected[0][0][:, 0])
    # float32 VAE: deterministic (posterior mode), and decode inverts the scaling
    z = bb.encode_images(images)
    assert torch.equal(z, bb.encode_images(images))
    cfg = bb.vae.config
    with torch.no_grad():
        direct = bb.vae.decode(z / cfg.scaling_factor + cfg.shift_factor).sample
    assert torch.allclose(bb.decode_latents(z), (direct / 2 + 0.5).clamp(0, 1))


# --- 1b. the reference scheme (the NP-Edit re-implementation's, see the module docstring) ---------------
def _reimpl_velocity(tf, img, t, txt, lens, mask_pads):
    """An independent port of nupurkmr9/npedit `ZImageDenoiser._forward_dual_adaln_batched` (+ sign/time).

    img (B, C, 2, h, w) = [reference, target] frames; t (B,) our time; txt (B, L, D); lens (B,).
    mask_pads=True is its SDPA path (pad tokens masked); False its FlashAttention-4 path (they attend).
    """
    B, C, F, H, W = img.shape
    t_z = 1.0 - t.float()
    max_len = int(lens.max())
    cap_padded = max_len + (-max_len) % 32
    noisy, clean = tf.t_embedder(t_z * tf.t_scale), tf.t_embedder(torch.ones_like(t_z) * tf.t_scale)
    Ht, Wt = H // 2, W // 2
    N = F * Ht * Wt
    x = img.view(B, C, F, 1, Ht, 2, Wt, 2).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, N, 4 * C)
    pad = (-N) % 32
    if pad:
        x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    S = N + pad
    x = tf.all_x_embedder["2-1"](x.reshape(B * S, -1)).view(B, S, -1)
    if pad:
        x[:, N:] = tf.x_pad_token
    f_ax = torch.arange(cap_padded + 1, cap_padded + 1 + F, dtype=torch.int32)
    grid = torch.meshgrid(f_ax, torch.arange(Ht, dtype=torch.int32), torch.arange(Wt, dtype=torch.int32), indexing="ij")
    pos = torch.cat([torch.stack(grid, -1).reshape(N, 3), torch.zeros(pad, 3, dtype=torch.int32)])
    x_freqs = tf.rope_embedder(pos).unsqueeze(0).expand(B, -1, -1)
    x_mask = torch.ones(B, S, dtype=torch.bool)
    x_mask[:, N:] = False
    n_ref = Ht * Wt

    def dual(layer, h, mask, freqs):
        n_noisy = h.shape[1] - n_ref
        mods = [m.chunk(4, dim=1) for m in (layer.adaLN_modulation(clean), layer.adaLN_modulation(noisy))]

        def per_token(k, fn):
            return torch.cat(
                [fn(mods[0][k]).unsqueeze(1).expand(-1, n_ref, -1), fn(mods[1][k]).unsqueeze(1).expand(-1, n_noisy, -1)],
                dim=1,
            )

        scale_msa, gate_msa = per_token(0, lambda m: 1 + m), per_token(1, torch.tanh)
        scale_mlp, gate_mlp = per_token(2, lambda m: 1 + m), per_token(3, torch.tanh)
        out = layer.attention(layer.attention_norm1(h) * scale_msa, attention_mask=mask, freqs_cis=freqs)
        h = h + gate_msa * layer.attention_norm2(out)
        return h + gate_mlp * layer.ffn_norm2(layer.feed_forward(layer.ffn_norm1(h) * scale_mlp))

    for layer in tf.noise_refiner:
        x = dual(layer, x, x_mask if mask_pads else None, x_freqs)
    cap = txt[:, :max_len]
    cap = torch.cat([cap, cap[:, -1:].expand(-1, cap_padded - max_len, -1)], dim=1)
    cap = tf.cap_embedder(cap.reshape(B * cap_padded, -1)).view(B, cap_padded, -1)
    cap_pad_mask = torch.arange(cap_padded).unsqueeze(0) >= lens.unsqueeze(1)
    cap[cap_pad_mask] = tf.cap_pad_token.to(cap.dtype)
    cap_pos = torch.zeros(cap_padded, 3, dtype=torch.int32)
    cap_pos[:, 0] = torch.arange(1, cap_padded + 1)
    cap_freqs = tf.rope_embedder(cap_pos).unsqueeze(0).expand(B, -1, -1)
    for layer in tf.context_refiner:
        cap = layer(cap, ~cap_pad_mask if mask_pads else None, cap_freqs)
    h = torch.cat([x, cap], 1)
    freqs = torch.cat([x_freqs, cap_freqs], 1)
    mask = torch.cat([x_mask, ~cap_pad_mask], 1) if mask_pads else None
    for layer in tf.layers:
        h = dual(layer, h, mask, freqs)
    final = tf.all_final_layer["2-1"]
    scale = torch.cat(
        [
            (1 + final.adaLN_modulation(clean)).unsqueeze(1).expand(-1, n_ref, -1),
            (1 + final.adaLN_modulation(noisy)).unsqueeze(1).expand(-1, h.shape[1] - n_ref, -1),
        ],
        1,
    )
    h = final.linear(final.norm_final(h) * scale)
    out = h[:, :N].view(B, F, Ht, Wt, 1, 2, 2, C).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, C, F, H, W)
    return -out[:, :, 1]


def test_reference_forward_equals_the_reimplementation_without_padding(bb):
    """32 caption tokens and 16 + 16 image tokens: no pad token anywhere, so the port runs its masked path."""
    text = TextEmbeds(_randn(1, 32, 32, seed=2), torch.ones(1, 32, dtype=torch.bool))
    ref, x, t = _randn(1, 16, 8, 8, seed=3), _randn(1, 16, 8, 8, seed=4), torch.tensor([0.7])
    with torch.no_grad():
        got = bb.velocity(x, t, text, ref)
        expected = _reimpl_velocity(bb.transformer, torch.stack([ref, x], 2), t, text.embeds, torch.tensor([32]), True)
    assert (got - expected).abs().max() <= 1e-5


def test_reference_forward_equals_the_reimplementation_with_padding(bb):
    """With pad tokens (real prompt, 15 + 15 image tokens) both let them attend (diffusers / FA4 path)."""
    text = bb.encode_text(["turn the car blue"])
    assert text.embeds.shape[1] % 32 and (15 + 15) % 32  # caption and image tokens both padded
    ref, x, t = _randn(1, 16, 6, 10, seed=5), _randn(1, 16, 6, 10, seed=6), torch.tensor([0.9474])
    with torch.no_grad():
        got = bb.velocity(x, t, text, ref)
        expected = _reimpl_velocity(
            bb.transformer, torch.stack([ref, x], 2), t, text.embeds, text.mask.sum(1), mask_pads=False
        )
    assert (got - expected).abs().max() <= 1e-5


def test_reference_layout_is_a_second_frame_at_the_same_coordinates(bb):
    cap_len, hw = 13, (6, 10)  # caption padded to 32; 15 reference + 15 target tokens padded to 32
    pos, noise, pad_mask, span = bb.reference_layout(cap_len, hw, hw)
    grid = [(i, j) for i in range(3) for j in range(5)]
    expected = [(33, i, j) for i, j in grid] + [(34, i, j) for i, j in grid] + [(0, 0, 0)] * 2
    assert pos.tolist() == [list(p) for p in expected]
    assert noise == [0] * 15 + [1] * 17 and span == (15, 30)
    assert pad_mask.tolist() == [False] * 30 + [True] * 2
    # identical to diffusers' own text-to-image patchify of a 2-frame latent [reference, target]
    tf = bb.transformer
    out = tf.patchify_and_embed([torch.zeros(16, 2, *hw)], [torch.zeros(cap_len, 32)], 2, 1)
    assert torch.equal(out[3][0], pos) and torch.equal(out[5][0], pad_mask)
    # and text-to-image puts its image at the reference's frame: the reference takes the target's place
    t2i = tf.patchify_and_embed([torch.zeros(16, 1, *hw)], [torch.zeros(cap_len, 32)], 2, 1)[3][0]
    assert torch.equal(t2i[:15], pos[:15])


def test_reference_tokens_get_clean_modulation_at_any_target_time(bb):
    tf = bb.transformer
    seen = []
    hooks = [
        layer.adaLN_modulation.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
        for layer in list(tf.noise_refiner) + list(tf.layers)
    ]
    masks = []
    hooks.append(
        tf.layers[0].register_forward_pre_hook(lambda m, args: masks.append(args[4].clone()))
    )
    text = bb.encode_text(["add a hat"])
    ref, x = _randn(1, 16, 6, 10, seed=7), _randn(1, 16, 6, 10, seed=8)
    calls = []
    try:
        with torch.no_grad():
            for t in (0.9, 0.3):
                seen.clear()
                bb.velocity(x, torch.tensor([t]), text, ref)
                calls.append(list(seen))
    finally:
        for h in hooks:
            h.remove()
    clean = tf.t_embedder(torch.tensor([1000.0]))  # Z-Image time 1 = our t = 0 = a clean image
    n_blocks = len(tf.noise_refiner) + len(tf.layers)
    for run in calls:
        assert len(run) == 2 * n_blocks  # each block: noisy then clean
        for k in range(n_blocks):
            assert torch.equal(run[2 * k + 1], clean)
    assert all(not torch.equal(a, b) for a, b in zip(calls[0][0::2], calls[1][0::2]))  # target time differs
    # the per-token choice: 0 (clean) exactly on the 15 reference tokens, 1 on target, pads and caption
    mask, cap_len = masks[0][0], text.embeds.shape[1]
    assert len(mask) == 32 + cap_len + (-cap_len) % 32  # [15 ref, 15 target, 2 pad] + padded caption
    assert mask[:15].eq(0).all() and mask[15:].eq(1).all()


def test_reference_output_is_the_targets_and_depends_on_the_reference(bb):
    text = bb.encode_text(["make it night"])
    x, ref, t = _randn(1, 16, 6, 10, seed=9), _randn(1, 16, 6, 10, seed=10), torch.tensor([0.8])
    with torch.no_grad():
        v = bb.velocity(x, t, text, ref)
        moved = bb.velocity(x, t, text, torch.roll(ref, shifts=2, dims=3))
        plain = bb.velocity(x, t, text)
        other_size = bb.velocity(x, t, text, _randn(1, 16, 4, 8, seed=11))
    assert v.shape == moved.shape == plain.shape == other_size.shape == x.shape
    assert (v - moved).abs().max() > 1e-3 and (v - plain).abs().max() > 1e-3


def test_batched_results_equal_single_results(bb):
    """Each sample's layout uses its own caption length, so batch-mates never change a result."""
    text = bb.encode_text(PROMPTS)
    x, ref, t = _randn(2, 16, 6, 10, seed=12), _randn(2, 16, 6, 10, seed=13), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        for r in (None, ref):
            both = bb.velocity(x, t, text, r)
            for i in range(2):
                one = bb.velocity(x[i : i + 1], t[i : i + 1], text.index([i]), None if r is None else r[i : i + 1])
                assert (both[i : i + 1] - one).abs().max() <= 1e-5


def test_bad_inputs_name_the_problem(bb):
    text = bb.encode_text(["a"])
    with pytest.raises(NPEditError, match="x_t"):
        bb.velocity(torch.zeros(1, 4, 6, 10), torch.tensor([1.0]), text)
    with pytest.raises(NPEditError, match="even"):
        bb.velocity(torch.zeros(1, 16, 5, 10), torch.tensor([1.0]), text)
    with pytest.raises(NPEditError, match="prompts"):
        bb.velocity(torch.zeros(2, 16, 6, 10), torch.tensor([1.0, 1.0]), text)
    with pytest.raises(NPEditError, match="multiples of 16"):
        bb.latent_shape(40, 80)
    assert bb.latent_shape(48, 80) == (16, 6, 10)


def test_lora_targets_are_the_attention_and_ffn_linears(bb):
    names = [n for n, m in bb.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in bb.lora_target_modules():
        hits = [n for n in names if n.endswith("." + target)]
        # every block: 2 refiners x 1 + 2 main layers in the tiny model
        assert len(hits) == len(bb.transformer.noise_refiner) + len(bb.transformer.context_refiner) + len(bb.transformer.layers)


def test_lora_adapters_attach_and_train_through_the_reference_path(bb):
    peft = pytest.importorskip("peft")
    tf = copy.deepcopy(bb.transformer)
    tf.add_adapter(peft.LoraConfig(r=2, lora_alpha=2, target_modules=bb.lora_target_modules()))
    lora = ZImageBackbone(tf, bb.vae, bb.text_encoder, bb.tokenizer)
    n_blocks = len(tf.noise_refiner) + len(tf.context_refiner) + len(tf.layers)
    assert sum(1 for n, _ in tf.named_modules() if n.endswith("lora_A")) == 7 * n_blocks
    text = bb.encode_text(["a"])
    x, ref = _randn(1, 16, 6, 10, seed=18), _randn(1, 16, 6, 10, seed=19)
    v = lora.velocity(x, torch.tensor([0.5]), text, ref)
    with torch.no_grad():
        assert torch.allclose(v, bb.velocity(x, torch.tensor([0.5]), text, ref), atol=1e-6)  # LoRA B starts at 0
    v.square().mean().backward()
    grads = [p.grad for n, p in tf.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


# --- 2. the edit sampler and gradients -----------------------------------------------------------------
def test_edit_images_returns_exactly_the_input_size(bb, photos):
    image = resize(photos("astronaut"), (333, 517))
    out = edit_images(bb, image, "make the suit red", seeds=0)
    assert out.shape == (1, 3, 333, 517) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, edit_images(bb, image, "make the suit red", seeds=0))  # seeded


def test_gradients_reach_every_transformer_parameter_and_no_frozen_one(bb):
    tf = bb.transformer
    assert tf.siglip_embedder is None  # Z-Image(-Turbo) has no SigLIP branch: no parameter to exclude
    image = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    reference = bb.encode_images(image)
    text = bb.encode_text(["remove the hat"])
    assert text.embeds.shape[1] % 32 and 30 % 32  # caption and image pads in use: pad tokens get gradients
    noise = SeededNoise([0])
    try:
        x0 = unroll(bb, noise(reference), text, reference, edit_schedule(4, 6.0), k=2, eta=1.0, renoise=noise)
        loss = (bb.decode_latents(x0) - 0.5).square().mean()
        loss.backward()
        no_grad = [n for n, p in tf.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert no_grad == []
        frozen = [n for m in (bb.vae, bb.text_encoder) for n, p in m.named_parameters() if p.requires_grad or p.grad is not None]
        assert frozen == []
    finally:
        tf.zero_grad(set_to_none=True)


def test_gradient_checkpointing_gives_the_same_gradients(bb):
    tf = bb.transformer
    text = bb.encode_text(["a"])
    x, ref = _randn(1, 16, 6, 10, seed=14), _randn(1, 16, 6, 10, seed=15)
    grads = []
    try:
        for checkpointing in (False, True):
            if checkpointing:
                tf.enable_gradient_checkpointing()
            tf.zero_grad(set_to_none=True)
            bb.velocity(x, torch.tensor([0.5]), text, ref).square().mean().backward()
            grads.append(tf.layers[0].attention.to_q.weight.grad.clone())
        assert tf.gradient_checkpointing
    finally:
        tf.disable_gradient_checkpointing()
        tf.zero_grad(set_to_none=True)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --- 3. checkpoint loading ---------------------------------------------------------------------------
def _original_transformer_keys(state):
    """diffusers -> original Z-Image / ComfyUI keys (the inverse of diffusers' single-file converter)."""
    out = {}
    for k, v in state.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        n = k.replace("all_final_layer.2-1.", "final_layer.").replace("all_x_embedder.2-1.", "x_embedder.")
        n = n.replace(".attention.to_out.0.", ".attention.out.").replace(".attention.norm_q.", ".attention.q_norm.")
        n = n.replace(".attention.norm_k.", ".attention.k_norm.")
        if ".attention.to_q." in k:
            n = n.replace(".attention.to_q.", ".attention.qkv.")
            v = torch.cat([v, state[k.replace("to_q", "to_k")], state[k.replace("to_q", "to_v")]])
        out["model.diffusion_model." + n] = v.contiguous()
    return out


def _ldm_vae_keys(state):
    """diffusers AutoencoderKL -> BFL/LDM `ae.safetensors` keys (inverse of convert_ldm_vae_checkpoint)."""
    n_up = len(TINY_VAE_CONFIG["up_block_types"])
    out = {}
    for k, v in state.items():
        n = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = n.split(".")
        if parts[1] == "down_blocks":
            n = f"{parts[0]}.down.{parts[2]}." + ".".join(parts[3:])
            n = n.replace(".resnets.", ".block.").replace(".downsamplers.0.", ".downsample.")
        elif parts[1] == "up_blocks":
            n = f"{parts[0]}.up.{n_up - 1 - int(parts[2])}." + ".".join(parts[3:])
            n = n.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                n = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:  # attentions.0.<name>: 1x1 convolutions in the original
                name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
                n = f"{parts[0]}.mid.attn_1.{name}.{parts[-1]}"
                if v.ndim == 2:
                    v = v[:, :, None, None]
        out[n] = v.contiguous()
    return out


@pytest.fixture(scope="module")
def files(bb, pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("zimage")
    pipe.save_pretrained(root / "diffusers")
    transformer = _original_transformer_keys(bb.transformer.state_dict())
    # check the inverse against diffusers' own converter before trusting it
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_z_image_transformer_checkpoint_to_diffusers

    back = convert_z_image_transformer_checkpoint_to_diffusers(dict(transformer))
    assert back.keys() == bb.transformer.state_dict().keys()
    vae = _ldm_vae_keys(bb.vae.state_dict())
    assert convert_ldm_vae_checkpoint(dict(vae), TINY_VAE_CONFIG).keys() == bb.vae.state_dict().keys()
    paths = {
        "transformer": root / "diffusion_models" / "z_image_tiny.safetensors",
        "text_encoder": root / "text_encoders" / "qwen_3_tiny.safetensors",
        "vae": root / "vae" / "ae.safetensors",
    }
    for p in paths.values():
        p.parent.mkdir(exist_ok=True)
    save_file(transformer, paths["transformer"])
    save_file({"model." + k: v.contiguous() for k, v in bb.text_encoder.state_dict().items()}, paths["text_encoder"])
    save_file(vae, paths["vae"])
    return root, paths


def _same_outputs(a, b):
    text_a, text_b = a.encode_text(["paint the door green"]), b.encode_text(["paint the door green"])
    assert torch.equal(text_a.embeds, text_b.embeds) and torch.equal(text_a.mask, text_b.mask)
    x, ref = _randn(1, 16, 6, 10, seed=16), _randn(1, 16, 6, 10, seed=17)
    with torch.no_grad():
        assert torch.equal(a.velocity(x, torch.tensor([0.6]), text_a, ref), b.velocity(x, torch.tensor([0.6]), text_b, ref))
        assert torch.equal(a.decode_latents(x), b.decode_latents(x))


def test_diffusers_folder_round_trip(bb, files):
    root, _ = files
    index = json.loads((root / "diffusers" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    loaded = ZImageBackbone.from_pretrained(str(root / "diffusers"), dtype=torch.float32)
    _same_outputs(bb, loaded)
    assert not any(p.requires_grad for p in loaded.vae.parameters())
    half = ZImageBackbone.from_pretrained(str(root / "diffusers"), tokenizer=bb.tokenizer)  # default dtypes
    assert half.transformer.dtype == torch.bfloat16 and half.text_encoder.dtype == torch.bfloat16
    assert half.vae.dtype == torch.float32  # bf16 transformer and text encoder, fp32 VAE
    with torch.no_grad():
        v = half.velocity(_randn(1, 16, 6, 10), torch.tensor([1.0]), half.encode_text(["a"]), _randn(1, 16, 6, 10))
    assert v.dtype == torch.float32 and torch.isfinite(v).all()  # x_t's dtype, whatever the weights


def test_single_files_as_comfyui_keeps_them(bb, files):
    _, paths = files
    loaded = ZImageBackbone.from_pretrained(
        str(paths["transformer"]),
        dtype=torch.float32,
        text_encoder=str(paths["text_encoder"]),
        vae=str(paths["vae"]),
        tokenizer=bb.tokenizer,  # a loaded tokenizer is accepted as well as a folder
        transformer_config=TINY_TRANSFORMER_CONFIG,
        text_encoder_config=TINY_TEXT_ENCODER_CONFIG,
        vae_config=TINY_VAE_CONFIG,
    )
    _same_outputs(bb, loaded)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.transformer.parameters())
    assert not any(p.requires_grad for p in list(loaded.vae.parameters()) + list(loaded.text_encoder.parameters()))


def test_missing_corrupt_and_mismatching_files_raise_checkpoint_errors(bb, files, tmp_path):
    _, paths = files
    tiny = dict(
        dtype=torch.float32,
        tokenizer=bb.tokenizer,
        transformer_config=TINY_TRANSFORMER_CONFIG,
        text_encoder_config=TINY_TEXT_ENCODER_CONFIG,
        vae_config=TINY_VAE_CONFIG,
    )
    singles = {"text_encoder": str(paths["text_encoder"]), "vae": str(paths["vae"])}
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=str(missing)):
        ZImageBackbone.from_pretrained(str(missing), **singles, **tiny)
    with pytest.raises(CheckpointError, match="text_encoder="):
        ZImageBackbone.from_pretrained(str(paths["transformer"]), **tiny)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(paths["vae"].read_bytes()[:200])  # a cut-short download
    with pytest.raises(CheckpointError, match=str(corrupt)):
        ZImageBackbone.from_pretrained(str(paths["transformer"]), text_encoder=singles["text_encoder"], vae=str(corrupt), **tiny)
    # a text encoder file where the transformer belongs: names the file and lists keys
    with pytest.raises(CheckpointError, match=r"qwen_3_tiny\.safetensors.*missing keys \(.*unexpected keys \("):
        ZImageBackbone.from_pretrained(str(paths["text_encoder"]), **singles, **tiny)
    # the real Z-Image-Turbo config (the default) does not fit the tiny file: keys listed
    with pytest.raises(CheckpointError, match=r"z_image_tiny\.safetensors.*448 missing keys \(context_refiner\.1\."):
        ZImageBackbone.from_pretrained(str(paths["transformer"]), **singles, **{**tiny, "transformer_config": None})
    # same keys, other widths: the shapes are listed
    wider = {**TINY_TRANSFORMER_CONFIG, "dim": 64, "n_heads": 4, "n_kv_heads": 4}
    with pytest.raises(CheckpointError, match=r"z_image_tiny\.safetensors.*wrong shape.*\(file vs model"):
        ZImageBackbone.from_pretrained(str(paths["transformer"]), **singles, **{**tiny, "transformer_config": wider})
    # diffusers folders: not one, one missing a part, one with a broken weight file
    with pytest.raises(CheckpointError, match="model_index.json"):
        ZImageBackbone.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(files[0] / "diffusers", broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match=str(broken / "vae")):
        ZImageBackbone.from_pretrained(str(broken), dtype=torch.float32, tokenizer=bb.tokenizer)
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=str(broken / "transformer")):
        ZImageBackbone.from_pretrained(str(broken), dtype=torch.float32, tokenizer=bb.tokenizer)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(CheckpointError, match=str(broken / "tokenizer")):
        ZImageBackbone.from_pretrained(str(broken))

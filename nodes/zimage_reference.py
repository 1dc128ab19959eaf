"""NP-Edit's reference conditioning on ComfyUI's own Z-Image model (`comfy.ldm.lumina.model.NextDiT`).

ComfyUI (0.3.75) runs Z-Image as text-to-image only: its model ignores `ReferenceLatent`. `forward` runs the
model's own modules with the NP-Edit editor's layout (npedit_core/backbones/z_image.py, module docstring):
[reference | target | pad to x32] image tokens and the caption padded to Lp tokens; the reference at frame
Lp + 1 and the target at Lp + 2 on the same (h, w) grid; the reference tokens modulated as a clean image
(model time 1) in every modulated block. ComfyUI orders the sequence [caption, image] where diffusers
orders it [image, caption]; with no attention mask inside one sample that changes nothing.

It only calls the model's modules, so ComfyUI's weight casting, LoRA patches and partial (lowvram) loading
apply as in ComfyUI's own forward. Not supported here: ComfyUI's RoPE options (`rope_options`) and
per-block patches of other nodes, which this forward does not call.
"""

from __future__ import annotations

import torch
from comfy.ldm.common_dit import pad_to_patch_size

from ..npedit_core.errors import NPEditError


def is_z_image(diffusion_model) -> bool:
    """ComfyUI's NextDiT built as Z-Image (pad tokens; Z-Image's modulation, a bare Linear) by its loaders."""
    layers = getattr(diffusion_model, "layers", None)
    return type(diffusion_model).__name__ == "NextDiT" and hasattr(diffusion_model, "x_pad_token") and \
        bool(layers) and len(layers[0].adaLN_modulation) == 1


def _modulation(linear, c_noisy, c_clean, clean):
    """Per-token modulation (B, T, n): the clean time's where `clean` (B, T, 1) is set, else the noisy time's."""
    return torch.where(clean, linear(c_clean).unsqueeze(1), linear(c_noisy).unsqueeze(1))


def _block(block, x, freqs, c_noisy, c_clean, clean, options):
    """A modulated JointTransformerBlock with one modulation per token (its forward has one per sample)."""
    scale_msa, gate_msa, scale_mlp, gate_mlp = _modulation(block.adaLN_modulation, c_noisy, c_clean, clean).chunk(4, dim=-1)
    h = block.attention(block.attention_norm1(x) * (1 + scale_msa), None, freqs, transformer_options=options)
    x = x + gate_msa.tanh() * block.attention_norm2(h)
    h = block.feed_forward(block.ffn_norm1(x) * (1 + scale_mlp))
    return x + gate_mlp.tanh() * block.ffn_norm2(h)


def _patch_tokens(model, z):
    """(B, C, H, W) -> embedded tokens (B, H/p * W/p, dim), as NextDiT.patchify_and_embed."""
    p = model.patch_size
    b, c, h, w = z.shape
    return model.x_embedder(z.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2))


def _grid(h: int, w: int, frame: int, device) -> torch.Tensor:
    """Positions (h * w, 3) = (frame, row, column), row-major."""
    rows = torch.arange(h, dtype=torch.float32, device=device).view(-1, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32, device=device).view(1, -1).expand(h, w)
    return torch.stack([torch.full((h, w), float(frame), device=device), rows, cols], dim=-1).flatten(0, 1)


def _pad(tokens, pad_token, multiple: int):
    extra = (-tokens.shape[1]) % multiple
    if not extra:
        return tokens, 0
    pad = pad_token.to(device=tokens.device, dtype=tokens.dtype, copy=True).unsqueeze(0).repeat(tokens.shape[0], extra, 1)
    return torch.cat([tokens, pad], dim=1), extra


def forward(model, x, timesteps, context, reference, attention_mask=None, transformer_options=None):
    """NextDiT._forward with a reference latent (B, C, h', w') (process_in applied): Z-Image's raw output (x0 - eps)."""
    options = transformer_options or {}
    p, multiple = model.patch_size, model.pad_tokens_multiple or 1
    bs, _, h, w = x.shape
    x = pad_to_patch_size(x, (p, p))
    reference = pad_to_patch_size(reference, (p, p))
    t = 1.0 - timesteps
    c_noisy = model.t_embedder(t * model.time_scale, dtype=x.dtype)
    c_clean = model.t_embedder(torch.ones_like(t) * model.time_scale, dtype=x.dtype)

    cap, _ = _pad(model.cap_embedder(context), model.cap_pad_token, multiple)
    lp, device = cap.shape[1], x.device
    cap_pos = torch.zeros(lp, 3, dtype=torch.float32, device=device)
    cap_pos[:, 0] = torch.arange(lp, dtype=torch.float32, device=device) + 1.0

    (hr, wr), (ht, wt) = (reference.shape[2] // p, reference.shape[3] // p), (x.shape[2] // p, x.shape[3] // p)
    n_ref, n_tgt = hr * wr, ht * wt
    img, extra = _pad(torch.cat([_patch_tokens(model, reference), _patch_tokens(model, x)], dim=1), model.x_pad_token, multiple)
    img_pos = torch.cat([_grid(hr, wr, lp + 1, device), _grid(ht, wt, lp + 2, device),
                         torch.zeros(extra, 3, dtype=torch.float32, device=device)])
    # one set of positions for the whole batch: RoPE broadcasts over it
    freqs = model.rope_embedder(torch.cat([cap_pos, img_pos]).unsqueeze(0)).movedim(1, 2)
    clean = torch.zeros(1, lp + img.shape[1], 1, dtype=torch.bool, device=device)
    clean[:, lp:lp + n_ref] = True

    for layer in model.context_refiner:
        cap = layer(cap, attention_mask, freqs[:, :lp], transformer_options=options)
    for layer in model.noise_refiner:
        img = _block(layer, img, freqs[:, lp:], c_noisy, c_clean, clean[:, lp:], options)
    seq = torch.cat([cap, img], dim=1)
    for layer in model.layers:
        seq = _block(layer, seq, freqs, c_noisy, c_clean, clean, options)
    final = model.final_layer
    seq = final.linear(final.norm_final(seq) * (1 + _modulation(final.adaLN_modulation, c_noisy, c_clean, clean)))

    out = seq[:, lp + n_ref:lp + n_ref + n_tgt].view(bs, ht, wt, p, p, model.out_channels)
    out = out.permute(0, 5, 1, 3, 2, 4).reshape(bs, model.out_channels, ht * p, wt * p)
    return -out[:, :, :h, :w]


def reference_for(reference: torch.Tensor, batch: int) -> torch.Tensor:
    """The reference rows for a model batch: one for all, one per item, or repeated over cond/uncond copies."""
    if reference.shape[0] == batch:
        return reference
    if batch % reference.shape[0] == 0:
        return reference.repeat(batch // reference.shape[0], 1, 1, 1)
    raise NPEditError(f"NP-Edit Z-Image Reference: {reference.shape[0]} latents for a batch of {batch}; give 1 or one per image")


def wrapper(reference: torch.Tensor):
    """A DIFFUSION_MODEL wrapper (ComfyUI patcher extension) that runs `forward` with `reference`."""
    def run(executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        ref = reference_for(reference, x.shape[0]).to(x.device, x.dtype)
        return forward(executor.class_obj, x, timesteps, context, ref, attention_mask, kwargs.get("transformer_options"))
    return run

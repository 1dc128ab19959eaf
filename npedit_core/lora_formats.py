"""NP-Edit LoRA weights in the key layout ComfyUI's own LoRA loader reads (ComfyUI 0.3.75's comfy/lora.py).

Input: peft layout without adapter name, `<diffusers module>.lora_A.weight` (r, in) and
`<diffusers module>.lora_B.weight` (out, r), scale alpha / r (export.py writes these).
- Z-Image: ComfyUI maps diffusers module names under `diffusion_model.` (its z_image_to_diffusers
  table), so keys are `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` / `.alpha`.
- FLUX.2-klein: ComfyUI's diffusers table for Flux models predates FLUX.2's module names, so we write
  ComfyUI's native (BFL) names, `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` etc. BFL
  fuses q, k and v into one Linear: the three rank-r LoRAs become one exact rank-3r LoRA on it, with
  A = [A_q; A_k; A_v] (3r, in), B = blockdiag(B_q, B_k, B_v) (3 out, 3r), and alpha tripled so that
  alpha / rank, the scale, is unchanged: B A = [B_q A_q; B_k A_k; B_v A_v].
"""

from __future__ import annotations

import re

import torch

from .errors import NPEditError

_QKV = re.compile(r"transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)$")


def _modules(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A (r, in), B (out, r))} from peft-layout keys; a half without its pair is an error."""
    mods: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        m = re.match(r"(.*)\.lora_([AB])\.weight$", key)
        if m is None:
            raise NPEditError(f"LoRA weights: unexpected key {key}")
        mods.setdefault(m.group(1), {})[m.group(2)] = value
    for name, parts in mods.items():
        if set(parts) != {"A", "B"}:
            raise NPEditError(f"LoRA weights: {name} has lora_{''.join(parts)} only")
    return {name: (p["A"], p["B"]) for name, p in mods.items()}


def to_comfyui_lora(weights: dict[str, torch.Tensor], family: str, alpha: float) -> dict[str, torch.Tensor]:
    """peft-layout LoRA of backbone `family` -> ComfyUI's key layout (see the module docstring)."""
    mods = _modules(weights)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, a: torch.Tensor, b: torch.Tensor, a_alpha: float) -> None:
        out[f"diffusion_model.{name}.lora_A.weight"] = a.contiguous()
        out[f"diffusion_model.{name}.lora_B.weight"] = b.contiguous()
        out[f"diffusion_model.{name}.alpha"] = torch.tensor(float(a_alpha))

    if family == "z_image":
        for name, (a, b) in mods.items():
            put(name, a, b, alpha)
        return out
    if family != "flux2_klein":
        raise NPEditError(f"no ComfyUI LoRA layout known for backbone '{family}'")

    from .backbones.flux2_klein import transformer_state_dict_to_bfl

    fused: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, (a, b) in mods.items():
        m = _QKV.match(name)
        if m is not None:
            idx, proj = m.groups()
            stream = "img" if proj.startswith("to_") else "txt"
            part = proj[-1] if stream == "img" else proj[4]
            fused.setdefault(f"double_blocks.{idx}.{stream}_attn.qkv", {})[part] = (a, b)
            continue
        # One Linear: let the state-dict converter name it (a dummy weight; only the key matters).
        (bfl_key,) = transformer_state_dict_to_bfl({f"{name}.weight": b.new_zeros(1)}).keys()
        put(bfl_key[: -len(".weight")], a, b, alpha)
    for name, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise NPEditError(f"LoRA weights: {name} needs LoRAs on q, k and v, got {sorted(parts)}")
        a = torch.cat([parts[p][0] for p in "qkv"], dim=0)  # (3r, in)
        b = torch.block_diag(*[parts[p][1] for p in "qkv"])  # (3 out, 3r)
        put(name, a, b, 3 * alpha)
    return out

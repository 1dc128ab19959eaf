"""ComfyUI-layout LoRA export: the FLUX.2 fused-qkv mapping is exact; Z-Image keeps diffusers names."""

import pytest
import torch

from npedit_core.backbones.flux2_klein import Flux2KleinBackbone, transformer_state_dict_to_bfl
from npedit_core.errors import NPEditError
from npedit_core.lora_formats import to_comfyui_lora


def _random_lora(backbone, rank=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    modules = dict(backbone.transformer.named_modules())
    for name in backbone.lora_target_modules():
        linear = modules[name]
        weights[f"{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=gen)
        weights[f"{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=gen)
    return weights


def test_flux2_comfyui_lora_reproduces_the_merged_weights_in_bfl_layout():
    bb = Flux2KleinBackbone.tiny(seed=0)
    rank, alpha = 3, 6.0
    lora = _random_lora(bb, rank)
    base = bb.transformer.state_dict()
    merged = dict(base)
    for key, a in lora.items():
        if ".lora_A." in key:
            module = key[: -len(".lora_A.weight")]
            merged[f"{module}.weight"] = base[f"{module}.weight"] + alpha / rank * lora[f"{module}.lora_B.weight"] @ a
    expected, bfl_base = transformer_state_dict_to_bfl(merged), transformer_state_dict_to_bfl(base)

    comfy = to_comfyui_lora(lora, "flux2_klein", alpha)
    applied = dict(bfl_base)
    for key, a in comfy.items():
        if key.endswith(".lora_A.weight"):
            x = key[: -len(".lora_A.weight")]
            b, scale = comfy[f"{x}.lora_B.weight"], comfy[f"{x}.alpha"].item() / a.shape[0]  # ComfyUI: alpha / rank
            target = x[len("diffusion_model."):] + ".weight"
            applied[target] = applied[target] + scale * b @ a
    assert any(".qkv." in k for k in comfy)  # the fused case was exercised
    for key in expected:
        assert torch.allclose(applied[key], expected[key], atol=1e-5), key


def test_z_image_keeps_diffusers_names_under_diffusion_model():
    lora = {"layers.0.attention.to_q.lora_A.weight": torch.ones(2, 4), "layers.0.attention.to_q.lora_B.weight": torch.ones(4, 2)}
    comfy = to_comfyui_lora(lora, "z_image", 8.0)
    assert set(comfy) == {"diffusion_model.layers.0.attention.to_q.lora_A.weight",
                          "diffusion_model.layers.0.attention.to_q.lora_B.weight", "diffusion_model.layers.0.attention.to_q.alpha"}
    assert comfy["diffusion_model.layers.0.attention.to_q.alpha"].item() == 8.0


def test_incomplete_lora_is_an_error():
    with pytest.raises(NPEditError, match="lora_A only"):
        to_comfyui_lora({"x.lora_A.weight": torch.ones(1, 1)}, "z_image", 1.0)


@pytest.mark.parametrize("family", ["z_image", "flux2_klein"])
def test_full_run_comfyui_export_is_a_diffusion_model_in_original_keys(tmp_path, family):
    """`export --layout comfyui` of a full fine-tune: the family's original keys (BFL for FLUX.2, Z-Image's own)."""
    from safetensors.torch import load_file

    from npedit_core.backbones.z_image import ZImageBackbone, transformer_state_dict_to_original
    from tests.core.exports import write_exports

    cls = ZImageBackbone if family == "z_image" else Flux2KleinBackbone
    exports = write_exports(cls.tiny(seed=0), tmp_path, lora=False, comfyui=True)
    full = load_file(str(exports["editor"]))
    to_original = transformer_state_dict_to_original if family == "z_image" else transformer_state_dict_to_bfl
    written = load_file(str(exports["editor_comfyui"]))
    expected = to_original(full)
    assert set(written) == set(expected) and all(torch.equal(written[k], expected[k]) for k in expected)

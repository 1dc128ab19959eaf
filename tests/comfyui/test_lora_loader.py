"""`train_cli export --layout comfyui` LoRAs through ComfyUI's own LoraLoaderModelOnly, on ComfyUI's own model classes.

For both families: ComfyUI's loader must take every key of our file (no "lora key not loaded"), and the weights
it patches must equal the ones our editor runs with (peft's merge of the same LoRA), in ComfyUI's layout.
The check runs in the ComfyUI tier's own Python (`lora_check.py`); the small models are built from configs,
because ComfyUI 0.3.75's detection accepts only the full-size Z-Image (dim 3840) and FLUX.2 (48 heads).
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from npedit_core.backbones.flux2_klein import Flux2KleinBackbone, transformer_state_dict_to_bfl
from npedit_core.backbones.z_image import TINY_TRANSFORMER_CONFIG, ZImageBackbone
from npedit_core.export import load_editor
from tests.core.exports import write_exports

CHECK = Path(__file__).with_name("lora_check.py")


def merged_weights(backbone) -> dict[str, torch.Tensor]:
    """The transformer our editor runs with, the LoRA merged by peft (diffusers names)."""
    from peft.tuners.lora import LoraLayer

    for module in backbone.transformer.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return {k.replace(".base_layer.", "."): v.contiguous() for k, v in backbone.transformer.state_dict().items()
            if "lora_" not in k}


def z_image_unet_config(c: dict) -> dict:
    """ComfyUI's unet_config for a diffusers Z-Image transformer config `c`, with the values its detection sets."""
    return {"patch_size": 2, "in_channels": c["in_channels"], "dim": c["dim"], "n_layers": c["n_layers"],
            "n_refiner_layers": c["n_refiner_layers"], "n_heads": c["n_heads"], "n_kv_heads": c["n_kv_heads"],
            "cap_feat_dim": c["cap_feat_dim"], "axes_dims": c["axes_dims"], "axes_lens": c["axes_lens"],
            "qk_norm": True, "rope_theta": c["rope_theta"], "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 1,
            "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}


def comfy_config(family: str, transformer) -> dict:
    if family == "flux2_klein":
        c = transformer.config
        return {"num_heads": c.num_attention_heads, "axes_dim": list(c.axes_dims_rope)}
    return z_image_unet_config(TINY_TRANSFORMER_CONFIG)


@pytest.mark.parametrize("family", ["flux2_klein", "z_image"])
def test_comfyui_lora_loader_takes_every_key_and_patches_our_merged_weights(comfyui, tmp_path, family):
    tree, python = comfyui
    cls = Flux2KleinBackbone if family == "flux2_klein" else ZImageBackbone
    exports = write_exports(cls.tiny(seed=0), tmp_path / "exports", comfyui=True)
    base = cls.tiny(seed=0)
    before = {k: v.contiguous() for k, v in base.transformer.state_dict().items()}
    after = merged_weights(load_editor(cls.tiny(seed=0), exports["editor"]))
    if family == "flux2_klein":  # ComfyUI's FLUX.2 model has the original (BFL) names
        before, after = transformer_state_dict_to_bfl(before), transformer_state_dict_to_bfl(after)
    save_file(before, str(tmp_path / "base.safetensors"))
    save_file(after, str(tmp_path / "merged.safetensors"))
    job = {"family": family, "config": comfy_config(family, base.transformer), "base": str(tmp_path / "base.safetensors"),
           "merged": str(tmp_path / "merged.safetensors"), "lora_dir": str(exports["editor_comfyui"].parent),
           "lora_name": exports["editor_comfyui"].name}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run = subprocess.run([str(python), str(CHECK), str(tmp_path / "job.json")], cwd=tree, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(family, {k: v for k, v in report.items() if k != "changed"}, f"{len(report['changed'])} weights changed")
    assert report["warnings"] == []  # ComfyUI logs "lora key not loaded: <key>" for every key it cannot place
    # ComfyUI's NextDiT builds a `norm_final` RMSNorm that its forward never calls; Z-Image files have none.
    assert report["missing"] == ([] if family == "flux2_klein" else ["norm_final.weight"])
    assert report["unexpected"] == [] and report["absent"] == [] and report["unmapped"] == []
    lora_modules = {k.rsplit(".lora_", 1)[0] for k in load_file(str(exports["editor_comfyui"])) if ".lora_A." in k}
    assert all(k.startswith("t_embedder.") for k in report["mismatched"])  # the small model's timestep MLP only
    assert report["patched"] == len(report["changed"]) > 0  # each patched weight is one our merge changed
    assert len(report["changed"]) <= len(lora_modules)
    assert max(report["changed"].values()) < 1e-5 and report["max_diff"] < 1e-5

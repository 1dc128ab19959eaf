"""Loading backbones and judges from model files as ComfyUI users keep them (models.load_backbone / load_judge)."""

import json

import pytest
import torch

from npedit_core.backbones.flux2_klein import Flux2KleinBackbone
from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.errors import NPEditError
from npedit_core.models import judge_family_of, load_backbone, load_judge


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_diffusers_folder_and_single_files_load_the_saved_weights(tiny_models):
    root, names = tiny_models
    z = load_backbone("z_image", root / "npedit" / names["zimage"], dtype="float32")
    assert same_weights(z, ZImageBackbone.tiny(seed=0))
    f = load_backbone("flux2_klein", root / "diffusion_models" / names["model"], root / "text_encoders" / names["text_encoder"],
                      root / "vae" / names["vae"], root / "npedit" / names["tokenizer"], dtype="float32")
    assert same_weights(f, Flux2KleinBackbone.tiny(seed=0))
    assert not any(p.requires_grad for p in list(f.vae.parameters()) + list(f.text_encoder.parameters()))


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(model="npedit/zimage-tiny", text_encoder="text_encoders/qwen3-tiny.safetensors"),
         "text_encoder: .* is a diffusers folder"),
        (dict(model="diffusion_models/flux2-klein-tiny.safetensors", text_encoder="text_encoders/qwen3-tiny.safetensors"),
         "vae: flux2-klein-tiny.safetensors is a single transformer file"),
        (dict(model="npedit/zimage-tiny", dtype="float8"), "dtype: 'float8'"),
    ],
)
def test_wrong_combinations_name_the_input(tiny_models, args, match):
    root = tiny_models[0]
    paths = {k: (root / v if k != "dtype" else v) for k, v in args.items()}
    family = "flux2_klein" if "flux2" in args["model"] else "z_image"
    with pytest.raises(NPEditError, match=match):
        load_backbone(family, **paths)


def test_judge_family_comes_from_config_json(tiny_models, tmp_path):
    root, names = tiny_models
    folder = root / "LLM" / names["judge"]
    assert judge_family_of(folder) == "qwen2_5_vl"
    assert type(load_judge(folder, dtype="float32")).__name__ == "Qwen25VLJudge"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(NPEditError, match="holds a 'llava' model"):
        judge_family_of(tmp_path)

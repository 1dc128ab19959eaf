"""The published checkpoint converter, on random weights written in the re-implementation's key layout.

Layout (npedit_core/convert_npedit.py): ZImageDenoiser holds the diffusers ZImageTransformer2DModel as
`transformer`, and scripts/edit.py loads a raw state dict strictly, so the keys are
`transformer.<diffusers key>`. Names and shapes come from a tiny ZImageTransformer2DModel.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from npedit_core.backbones.z_image import TINY_TRANSFORMER_CONFIG, ZImageBackbone
from npedit_core.convert_npedit import (
    convert_npedit_checkpoint,
    load_published_editor,
    read_published_state_dict,
    reference_shapes,
)
from npedit_core.errors import CheckpointError
from npedit_core.export import load_editor, read_export
from npedit_core.sampler import resolve_step


@pytest.fixture(scope="module")
def published():
    """A random 'published' state dict: the tiny transformer's names and shapes under `transformer.`, bf16."""
    torch.manual_seed(1)
    model = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
    state = {f"transformer.{k}": torch.randn_like(v).to(torch.bfloat16) for k, v in model.state_dict().items()}
    return state


def test_converts_and_loads_into_backbone(tmp_path, published, qwen_tokenizer_path):
    src = tmp_path / "zimage_npedit_internvl.pt"
    torch.save(published, src)
    out = convert_npedit_checkpoint(src, tmp_path / "editor.safetensors", reference=dict(TINY_TRANSFORMER_CONFIG))
    weights, meta = read_export(out)
    assert meta["npedit_format"] == "full" and meta["backbone"] == "z_image" and meta["role"] == "editor"
    assert weights["x_pad_token"].dtype == torch.bfloat16  # the file's dtype is kept

    backbone = load_editor(ZImageBackbone.tiny(seed=0, tokenizer_path=qwen_tokenizer_path), out)
    assert meta["sampler_step"] == "ddim" and resolve_step(backbone, "auto") == "ddim"  # its own inference step
    state = backbone.transformer.state_dict()
    for key, value in published.items():
        assert torch.equal(state[key[len("transformer."):]], value.float()), key

    direct = load_published_editor(ZImageBackbone.tiny(seed=3, tokenizer_path=qwen_tokenizer_path), src)
    assert direct.enable_thinking is False and resolve_step(direct, None) == "ddim"
    assert torch.equal(direct.transformer.state_dict()["x_pad_token"], state["x_pad_token"])


@pytest.mark.parametrize("wrap", ["model_dict", "fsdp_prefixes", "ema_dict"])
def test_wrappers_are_unwrapped(tmp_path, published, wrap):
    if wrap == "model_dict":
        obj = {"model": published, "step": 12000}
    elif wrap == "ema_dict":
        obj = {"ema": published}
    else:  # DDP / torch.compile / FSDP1 wrapper segments inside the names
        obj = {k.replace("transformer.", "module.transformer._orig_mod.", 1).replace("layers.0.", "layers.0._fsdp_wrapped_module.", 1): v
               for k, v in published.items()}
    src = tmp_path / "wrapped.pt"
    torch.save(obj, src)
    assert set(read_published_state_dict(src)) == set(published)
    convert_npedit_checkpoint(src, tmp_path / "e.safetensors", reference=dict(TINY_TRANSFORMER_CONFIG))


def test_mismatch_lists_unmatched_keys(tmp_path, published):
    state = dict(published)
    state.pop("transformer.layers.0.attention.to_q.weight")
    state["transformer.layers.0.extra_gate"] = torch.zeros(3)
    state["transformer.x_pad_token"] = torch.zeros(1, 7)
    src = tmp_path / "bad.pt"
    torch.save(state, src)
    with pytest.raises(CheckpointError) as err:
        convert_npedit_checkpoint(src, tmp_path / "e.safetensors", reference=dict(TINY_TRANSFORMER_CONFIG))
    msg = str(err.value)
    assert "bad.pt" in msg
    assert "missing (1): layers.0.attention.to_q.weight" in msg
    assert "unexpected (1): layers.0.extra_gate" in msg
    assert "wrong shape (1): x_pad_token (1, 7)" in msg
    assert not (tmp_path / "e.safetensors").exists()


def test_keys_outside_the_denoiser_are_named(tmp_path, published):
    src = tmp_path / "raw.pt"
    torch.save({k[len("transformer."):]: v for k, v in list(published.items())[:3]}, src)
    with pytest.raises(CheckpointError, match="not under the denoiser's 'transformer.'"):
        convert_npedit_checkpoint(src, tmp_path / "e.safetensors", reference=dict(TINY_TRANSFORMER_CONFIG))
    with pytest.raises(CheckpointError, match="not found"):
        convert_npedit_checkpoint(tmp_path / "nope.pt", tmp_path / "e.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_published_state_dict(tmp_path / "junk.pt")


def test_real_config_reference_is_the_6b_layout():
    shapes = reference_shapes()  # built on the meta device: no memory
    assert shapes["layers.0.attention.to_q.weight"] == (3840, 3840)
    assert sum(1 for k in shapes if k.startswith("layers.") and k.endswith("attention.to_q.weight")) == 30


def test_cli_convert(tmp_path, published, capsys):
    import json as _json

    from train_cli.cli import main

    src = tmp_path / "zimage_npedit_internvl.pt"
    torch.save(published, src)
    ref = tmp_path / "transformer"
    ref.mkdir()
    (ref / "config.json").write_text(_json.dumps({"_class_name": "ZImageTransformer2DModel", **TINY_TRANSFORMER_CONFIG}))
    out = tmp_path / "npedit_zimage.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--reference", str(tmp_path), "--dtype", "float32"]) == 0
    assert read_export(out)[0]["x_pad_token"].dtype == torch.float32
    assert main(["convert", str(src), "-o", str(out)]) == 2  # the tiny weights do not fit the real 6B config
    assert "does not fit the Z-Image transformer" in capsys.readouterr().err


def test_cli_convert_comfyui_layout_is_the_original_z_image_file(tmp_path, published):
    """`--layout comfyui`: the original Z-Image keys (what ComfyUI's Load Diffusion Model reads); diffusers' own
    converter turns them back into exactly the published weights, and our single-file loader takes the file."""
    import json as _json

    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    from npedit_core.backbones.z_image import ZImageBackbone as ZB
    from train_cli.cli import main

    src = tmp_path / "zimage_npedit_internvl.pt"
    torch.save(published, src)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(_json.dumps(TINY_TRANSFORMER_CONFIG))
    out = tmp_path / "npedit_zimage_comfyui.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--reference", str(tmp_path), "--layout", "comfyui"]) == 0
    original = load_file(str(out))
    assert "layers.0.attention.qkv.weight" in original and "x_embedder.weight" in original
    assert not any(".to_q." in k or k.startswith("all_") for k in original)
    assert torch.equal(original["norm_final.weight"], torch.ones(TINY_TRANSFORMER_CONFIG["dim"], dtype=torch.bfloat16))
    back = convert_z_image_transformer_checkpoint_to_diffusers(dict(original))
    assert set(back) == {k[len("transformer."):] for k in published}
    for key, value in published.items():
        assert torch.equal(back[key[len("transformer."):]], value), key
    model = ZB._load_transformer_file(out, torch.float32, dict(TINY_TRANSFORMER_CONFIG))
    assert torch.equal(model.state_dict()["layers.1.attention.to_v.weight"],
                       published["transformer.layers.1.attention.to_v.weight"].float())
    with pytest.raises(CheckpointError, match="Load Diffusion Model"):
        read_export(out)  # not an NP-Edit export: the pack's loader says where it goes

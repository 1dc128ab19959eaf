"""An NP-Edit Z-Image editor on ComfyUI's own MODEL (core LoRA loader + SamplerCustom) gives our sampler's edit.

Both sides get the same base weights, the same `--layout comfyui` LoRA, caption features, reference latent and
seed: ours is `npedit_core.sampler.denoise` as `edit_images` runs it; ComfyUI's is `core_nodes_check.py` in the
tier's own Python. The same for a full editor converted with `convert --layout comfyui`, whose full-size layout
ComfyUI's own detection must take (`unet_check.py`). The model is a Z-Image of dim 1024 (ComfyUI's timestep MLP
is min(dim, 1024) wide where diffusers' is 1024: below that the two classes differ in shape), 1 layer of each kind.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from npedit_core.backbones.z_image import TINY_TRANSFORMER_CONFIG, ZImageBackbone, transformer_state_dict_to_original
from npedit_core.convert_npedit import convert_npedit_checkpoint, load_published_editor, reference_shapes
from npedit_core.export import load_editor
from npedit_core.sampler import SeededNoise, denoise, edit_schedule
from tests.comfyui.test_lora_loader import z_image_unet_config
from tests.core.exports import write_exports

CHECK = Path(__file__).with_name("core_nodes_check.py")
UNET_CHECK = Path(__file__).with_name("unet_check.py")
CONFIG = {**TINY_TRANSFORMER_CONFIG, "dim": 1024, "n_layers": 1, "n_refiner_layers": 1, "n_heads": 8, "n_kv_heads": 8,
          "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}


def backbone(seed: int = 0) -> ZImageBackbone:
    from diffusers import ZImageTransformer2DModel

    tiny = ZImageBackbone.tiny(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**CONFIG)
        with torch.no_grad():
            for token in (transformer.x_pad_token, transformer.cap_pad_token):
                token.normal_(0.0, 0.5)
            # diffusers zero-initialises the modulation and final layers: no output, nothing to compare
            for name, p in transformer.named_parameters():
                if "adaLN" in name or "final_layer" in name:
                    p.normal_(0.0, 0.02)
    return ZImageBackbone(transformer, tiny.vae, tiny.text_encoder, tiny.tokenizer)


def run_check(comfyui, tmp_path, job) -> tuple[dict, torch.Tensor]:
    tree, python = comfyui
    path = tmp_path / f"job-{job['step']}.json"
    path.write_text(json.dumps(job))
    run = subprocess.run([str(python), str(CHECK), str(path)], cwd=tree, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    from safetensors.torch import load_file

    return json.loads(run.stdout.strip().splitlines()[-1]), load_file(job["out"])["x0"]


def edit_both(comfyui, tmp_path, editor, base: Path, lora: Path | None, step: str, **extra):
    """(ComfyUI's report, max difference of the first item's latents, their scale) of one edit, same inputs both sides.

    `extra` job keys (e.g. a batch and a judge) go to the check as they are.
    """
    image = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    save_file({"image": image.movedim(1, -1).contiguous()}, str(tmp_path / "image.safetensors"))
    reference = editor.encode_images(image)  # (1, 16, 12, 8): a 6 x 4 token grid, not square
    text = editor.encode_text(["make the sky pink"])
    save_file({"latent": reference.contiguous()}, str(tmp_path / "reference.safetensors"))
    save_file({"context": text.embeds[text.mask][None].contiguous()}, str(tmp_path / "context.safetensors"))
    seed, steps, shift, eta = 7, 4, 6.0, 1.0
    noise = SeededNoise([seed])
    with torch.no_grad():
        ours = denoise(editor, noise(reference), edit_schedule(steps, shift), text, reference, eta=eta,
                       renoise=noise, step=step)
    job = {"config": z_image_unet_config(CONFIG), "base": str(base), "lora_dir": str(lora.parent) if lora else None,
           "lora_name": lora.name if lora else None, "context": str(tmp_path / "context.safetensors"),
           "reference": str(tmp_path / "reference.safetensors"), "batch": 1, "seed": seed, "steps": steps,
           "shift": shift, "step": step, "eta": eta, "out": str(tmp_path / f"comfy-{step}.safetensors"),
           "image": str(tmp_path / "image.safetensors"), **extra}
    report, theirs = run_check(comfyui, tmp_path, job)
    theirs = theirs[:1]  # batch item 0 has our seed's noise
    diff = float((theirs - ours).abs().max())
    print(step, report, f"max |ComfyUI - ours| {diff:.3g} (latents up to {float(ours.abs().max()):.3g})")
    assert report["sigmas"] == [1.0, 0.947368, 0.857143, 0.666667, 0.0]
    assert theirs.shape == ours.shape
    return report, diff, float(ours.abs().max())


@pytest.mark.parametrize("step", ["renoise", "ddim"])
def test_core_nodes_edit_with_our_lora_equals_our_sampler(comfyui, tmp_path, step):
    exports = write_exports(backbone(), tmp_path / "exports", comfyui=True)
    editor = load_editor(backbone(), exports["editor"])
    base = {k: v.contiguous() for k, v in backbone().transformer.state_dict().items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    report, diff, scale = edit_both(comfyui, tmp_path, editor, tmp_path / "base.safetensors", exports["editor_comfyui"], step)
    assert report["missing"] == ["norm_final.weight"] and report["unexpected"] == []  # an unused RMSNorm of ComfyUI's
    assert report["patches"] > 0  # the LoRA reached the model
    assert diff < 1e-4 * max(1.0, scale)


def test_converted_full_editor_in_core_nodes_equals_our_sampler(comfyui, tmp_path):
    """The re-implementation's checkpoint layout, `convert --layout comfyui`, as the model itself, on its ddim step."""
    model = backbone(seed=5).transformer
    published = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    torch.save(published, tmp_path / "zimage_npedit_internvl.pt")
    out = convert_npedit_checkpoint(tmp_path / "zimage_npedit_internvl.pt", tmp_path / "npedit_zimage.safetensors",
                                    reference=dict(CONFIG), layout="comfyui")
    editor = load_published_editor(backbone(), tmp_path / "zimage_npedit_internvl.pt")
    report, diff, scale = edit_both(comfyui, tmp_path, editor, out, None, "ddim")
    assert report["missing"] == [] and report["unexpected"] == [] and report["patches"] == 0
    assert diff < 1e-4 * max(1.0, scale)


def test_select_best_picks_from_a_core_sampler_batch(comfyui, tmp_path, tiny_models):
    """Best-of-N on a core editor's output: a batch of 3 from core SamplerCustom on ComfyUI's model, decoded, judged
    by the pack's Select Best inside ComfyUI's Python; item 0 is still our sampler's edit."""
    exports = write_exports(backbone(), tmp_path / "exports", comfyui=True)
    editor = load_editor(backbone(), exports["editor"])
    save_file({k: v.contiguous() for k, v in backbone().transformer.state_dict().items()}, str(tmp_path / "base.safetensors"))
    editor.vae.save_pretrained(str(tmp_path / "vae"))
    models, names = tiny_models
    judge = models / "LLM" / names["judge"].rstrip("/")
    report, diff, scale = edit_both(comfyui, tmp_path, editor, tmp_path / "base.safetensors", exports["editor_comfyui"],
                                    "renoise", batch=3, judge=str(judge), vae=str(tmp_path / "vae"),
                                    instruction="make the sky pink")
    best = report["select_best"]
    assert best["candidates"] == [3, 96, 64, 3] and best["distinct"]  # each item its own noise
    assert best["best_is_candidate"] and 0 <= best["index"] < 3
    lines = best["report"].splitlines()
    assert lines[0] == f"best: #{best['index']}" and [line[:2] for line in lines[1:]] == ["#0", "#1", "#2"]
    assert 0 < best["score"] < 1
    assert diff < 1e-4 * max(1.0, scale)


def test_full_size_converted_editor_is_detected_as_z_image_by_comfyui(comfyui, tmp_path):
    """The real 6B layout (meta tensors): ComfyUI's UNETLoader steps detect Z-Image and every key and shape fits."""
    tree, python = comfyui
    with torch.device("meta"):
        weights = {k: torch.empty(shape) for k, shape in reference_shapes().items()}
    shapes = {k: list(v.shape) for k, v in transformer_state_dict_to_original(weights).items()}
    (tmp_path / "shapes.json").write_text(json.dumps(shapes))
    run = subprocess.run([str(python), str(UNET_CHECK), str(tmp_path / "shapes.json")], cwd=tree, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print({k: v for k, v in report.items() if k != "unet_config"})
    assert report["detected"] == "ZImage"
    assert report["missing"] == [] and report["unexpected"] == [] and report["wrong_shape"] == []
    assert report["keys"] == len(shapes)

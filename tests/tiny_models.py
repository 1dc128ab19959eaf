"""Tiny random models written to disk in the layouts ComfyUI users keep real ones in.

`write_models(models_dir)` fills a ComfyUI-style models folder:

    npedit/zimage-tiny/              Z-Image diffusers folder (model_index.json, transformer/, vae/, ...)
    npedit/qwen-tokenizer/           a tokenizer folder (for single-file models)
    diffusion_models/flux2-klein-tiny.safetensors   FLUX.2-klein transformer, one file
    text_encoders/qwen3-tiny.safetensors            its Qwen3 text encoder
    vae/flux2-vae-tiny.safetensors                  its VAE
    loras/zimage-editor.safetensors, zimage-fake.safetensors, flux2-editor.safetensors   NP-Edit exports
    LLM/qwen25vl-tiny/               a Qwen2.5-VL judge folder (config.json, safetensors, tokenizer)
    vae_approx/taef2_decoder.pth     the real TAEF2 decoder (FLUX.2 step previews), when the shared copy exists

Every model is the family's `.tiny(seed=0)`, so a test can rebuild the same weights in memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from npedit_core.assets import qwen_tokenizer_dir, taef2_dir
from npedit_core.backbones.flux2_klein import Flux2KleinBackbone
from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge

from tests.core.exports import write_exports

ZIMAGE_FOLDER = "zimage-tiny/"
FLUX2_FILES = {"model": "flux2-klein-tiny.safetensors", "text_encoder": "qwen3-tiny.safetensors",
               "vae": "flux2-vae-tiny.safetensors", "tokenizer": "qwen-tokenizer/"}
JUDGE_FOLDER = "qwen25vl-tiny/"


def _save(module, path: Path, drop=()) -> None:
    state = {k: v.contiguous() for k, v in module.state_dict().items() if k not in drop}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def write_models(models: Path) -> dict[str, str]:
    """Write every fixture model under `models`; returns the names the loader combos show."""
    ours = models / "npedit"
    tokenizer = qwen_tokenizer_dir()

    z = ZImageBackbone.tiny(seed=0)
    folder = ours / ZIMAGE_FOLDER.rstrip("/")
    for name in ("transformer", "vae", "text_encoder"):
        getattr(z, name).save_pretrained(folder / name)
    z.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    shutil.copytree(tokenizer, ours / FLUX2_FILES["tokenizer"].rstrip("/"))

    f = Flux2KleinBackbone.tiny(seed=0)
    _save(f.transformer, models / "diffusion_models" / FLUX2_FILES["model"])
    _save(f.text_encoder, models / "text_encoders" / FLUX2_FILES["text_encoder"], drop={"lm_head.weight"})  # tied
    _save(f.vae, models / "vae" / FLUX2_FILES["vae"])

    loras = models / "loras"
    z_exports = write_exports(ZImageBackbone.tiny(seed=0), loras / "tmp-z")
    f_exports = write_exports(Flux2KleinBackbone.tiny(seed=0), loras / "tmp-f")
    names = {"zimage_editor": "zimage-editor.safetensors", "zimage_fake": "zimage-fake.safetensors",
             "flux2_editor": "flux2-editor.safetensors"}
    z_exports["editor"].replace(loras / names["zimage_editor"])
    z_exports["fake"].replace(loras / names["zimage_fake"])
    f_exports["editor"].replace(loras / names["flux2_editor"])
    shutil.rmtree(loras / "tmp-z")
    shutil.rmtree(loras / "tmp-f")

    taef2 = taef2_dir() / "taef2_decoder.pth"
    if taef2.is_file():
        (models / "vae_approx").mkdir(parents=True, exist_ok=True)
        shutil.copy(taef2, models / "vae_approx" / taef2.name)
        names["taef2"] = taef2.name

    judge = Qwen25VLJudge.tiny(seed=0)
    judge_dir = models / "LLM" / JUDGE_FOLDER.rstrip("/")
    judge.model.save_pretrained(judge_dir)
    judge.tokenizer.save_pretrained(judge_dir)
    return {"zimage": ZIMAGE_FOLDER, **FLUX2_FILES, "judge": JUDGE_FOLDER, **names}

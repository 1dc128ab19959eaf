"""Where the loaders find model files: ComfyUI's model folders (so extra_model_paths.yaml works) plus our own.

- `npedit`  (models/npedit, registered here): diffusers model folders, tokenizer folders, NP-Edit exports
- `LLM`     (models/LLM, registered here if ComfyUI has none): VLM judge folders
- ComfyUI's own: `diffusion_models`, `text_encoders`, `vae`, `vae_approx`, `loras`, `diffusers`
Lists are rebuilt on every schema request, so ComfyUI's refresh shows new files. Folders are offered as
"name/" (trailing slash), single files by their path relative to the model folder. Nothing is ever
downloaded.
"""

from __future__ import annotations

import os

import folder_paths

from ..npedit_core.errors import NPEditError

OURS, LLM = "npedit", "LLM"
NONE = "none"
MAX_DEPTH = 3  # how deep to look for model folders below each root
#: Files that make a folder one model: a transformers config, a diffusers pipeline index, or our own
#: backbone options (a FLUX.2-klein folder without model_index.json, such as the micro-world teacher).
BACKBONE_MARKERS = {"model_index.json", "npedit_backbone.json"}
MODEL_MARKERS = {"config.json"} | BACKBONE_MARKERS
#: ComfyUI finds a family's preview decoder in vae_approx by this prefix (latent_formats.Flux2.taesd_decoder_name).
TAEF2_DECODER_PREFIX = "taef2_decoder"


def register() -> None:
    """Add models/npedit and models/LLM to ComfyUI's folder table (idempotent)."""
    for name in (OURS, LLM):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def _roots(*names: str) -> list[str]:
    roots = []
    for name in names:
        if name in folder_paths.folder_names_and_paths:
            roots += [p for p in folder_paths.get_folder_paths(name) if os.path.isdir(p) and p not in roots]
    return roots


def _walk(root: str):
    """(relative dir, files) below root, at most MAX_DEPTH levels, sorted, skipping hidden folders.

    A model folder (`MODEL_MARKERS`) is listed but not entered: its parts (a diffusers folder's
    transformer/, text_encoder/) are not models of their own and would fail when picked.
    """
    for path, dirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(path, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        inside = depth < MAX_DEPTH and not MODEL_MARKERS & set(files)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if inside else []
        yield ("" if rel == "." else rel.replace(os.sep, "/")), files


def _folders(names: tuple[str, ...], marker) -> list[str]:
    found = []
    for root in _roots(*names):
        for rel, files in _walk(root):
            if rel and marker(set(files)) and rel + "/" not in found:
                found.append(rel + "/")
    return sorted(found)


def diffusers_folders() -> list[str]:
    """Diffusers model folders (model_index.json or npedit_backbone.json) under models/npedit and models/diffusers."""
    return _folders((OURS, "diffusers"), lambda files: bool(BACKBONE_MARKERS & files))


def tokenizer_folders() -> list[str]:
    """Tokenizer folders (tokenizer.json or tokenizer_config.json) under models/npedit, models/LLM, text_encoders."""
    return _folders((OURS, LLM, "text_encoders"), lambda files: bool({"tokenizer.json", "tokenizer_config.json"} & files))


def vlm_folders() -> list[str]:
    """Hugging Face model folders with a config.json and weights under models/LLM and models/npedit."""
    weights = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
    return _folders((LLM, OURS), lambda files: "config.json" in files and any(f.endswith(weights) for f in files))


def files(name: str) -> list[str]:
    """ComfyUI's file list of one model folder (empty if ComfyUI has no such folder)."""
    try:
        return folder_paths.get_filename_list(name)
    except KeyError:
        return []


def preview_decoders() -> list[str]:
    """TAEF2 decoders in models/vae_approx, named as ComfyUI's own previews look for them (taef2_decoder*):
    the folder also holds other families' decoders and encoders, which cannot decode FLUX.2 latents."""
    return [f for f in files("vae_approx") if os.path.basename(f).startswith(TAEF2_DECODER_PREFIX)]


def export_files() -> list[str]:
    """NP-Edit weight files: .safetensors in ComfyUI's loras and in models/npedit outside model folders.

    Exports are always safetensors; pickles there (other tools' LoRAs, training checkpoints) would not load.
    """
    found = [f for f in files("loras") if f.endswith(".safetensors")]
    for root in _roots(OURS):
        for rel, names in _walk(root):
            if MODEL_MARKERS & set(names):
                continue
            for name in names:
                path = f"{rel}/{name}" if rel else name
                if name.endswith(".safetensors") and path not in found:
                    found.append(path)
    return sorted(found)


def resolve_folder(value: str, names: tuple[str, ...], what: str) -> str:
    """Full path of a "name/" folder choice, searched in the roots of `names`."""
    for root in _roots(*names):
        path = os.path.join(root, value.rstrip("/"))
        if os.path.isdir(path):
            return path
    raise NPEditError(f"{what}: folder {value!r} not found in {', '.join(_roots(*names)) or 'any model folder'}")


def resolve_file(value: str, names: tuple[str, ...], what: str) -> str:
    """Full path of a file choice, searched in ComfyUI's folders `names` (then in models/npedit)."""
    for name in names:
        try:
            path = folder_paths.get_full_path(name, value)
        except KeyError:
            path = None
        if path:
            return path
    raise NPEditError(f"{what}: file {value!r} not found in the {', '.join(names)} model folders")

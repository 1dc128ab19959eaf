"""Loader nodes: the editor, the judge and the DMD critic, from ComfyUI's model folders (never downloads).

Models load onto ComfyUI's offload device (usually the CPU); the nodes that run them move them to
the compute device while they run (`runtime.on_device`). Weights are created outside ComfyUI's
inference mode (`runtime.autograd_ready`), so NPEditRefine can differentiate through them.
"""

from __future__ import annotations

import functools

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..npedit_core.backbones import BACKBONES
from ..npedit_core.backbones.taef2 import TAEF2, decode_flux2_latents
from ..npedit_core.config import ModelConfig
from ..npedit_core.critic import Critic
from ..npedit_core.errors import NPEditError
from ..npedit_core.export import load_editor
from ..npedit_core.judges import JUDGES
from ..npedit_core.models import DTYPES, load_backbone, load_judge
from . import folders
from .convert import check_choices
from .runtime import autograd_ready
from .types import Critic as CriticType
from .types import Editor as EditorType
from .types import Judge as JudgeType

CATEGORY = "NP-Edit/loaders"
NONE, AUTO = folders.NONE, "auto"


def _base_model_inputs() -> list:
    """The inputs that pick a base text-to-image model: a diffusers folder, or single files."""
    return [
        io.Combo.Input("family", options=list(BACKBONES), default=ModelConfig().backbone,
                       tooltip="Base model family the NP-Edit weights were trained on."),
        io.Combo.Input("model", options=folders.diffusers_folders() + folders.files("diffusion_models"),
                       tooltip="A diffusers folder (name/) from models/npedit or models/diffusers, or a single "
                               "transformer .safetensors from models/diffusion_models."),
        io.Combo.Input("text_encoder", options=[NONE] + folders.files("text_encoders"), default=NONE,
                       tooltip="For a single-file model: the Qwen3 text encoder (models/text_encoders). "
                               "none: taken from the diffusers folder."),
        io.Combo.Input("vae", options=[NONE] + folders.files("vae"), default=NONE,
                       tooltip="For a single-file model: the VAE (models/vae). none: taken from the diffusers folder."),
        io.Combo.Input("tokenizer", options=[AUTO] + folders.tokenizer_folders(), default=AUTO,
                       tooltip="For a single-file model: a Qwen tokenizer folder (tokenizer.json) under models/npedit, "
                               "models/LLM or models/text_encoders. auto: the diffusers folder's own."),
        io.Combo.Input("dtype", options=list(DTYPES), default=ModelConfig().dtype,
                       tooltip="Weight dtype of the transformer and text encoder (the VAE stays float32). "
                               "bfloat16 on GPUs; float32 on CPUs."),
    ]


def _load_base(family: str, model: str, text_encoder: str, vae: str, tokenizer: str, dtype: str):
    if model.endswith("/"):
        path = folders.resolve_folder(model, (folders.OURS, "diffusers"), "model")
    else:
        path = folders.resolve_file(model, ("diffusion_models",), "model")
    return load_backbone(
        family, path,
        text_encoder=None if text_encoder == NONE else folders.resolve_file(text_encoder, ("text_encoders",), "text_encoder"),
        vae=None if vae == NONE else folders.resolve_file(vae, ("vae",), "vae"),
        tokenizer=None if tokenizer == AUTO else folders.resolve_folder(tokenizer, (folders.OURS, folders.LLM, "text_encoders"), "tokenizer"),
        dtype=dtype, device=mm.unet_offload_device(),
    )


def _export_path(value: str, what: str) -> str:
    return folders.resolve_file(value, ("loras", folders.OURS), what)


class NPEditLoadEditor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditLoadEditor",
            display_name="NP-Edit Load Editor",
            category=CATEGORY,
            description="Load a base FLUX.2-klein or Z-Image model and apply NP-Edit editor weights (LoRA or full) "
                        "as `python -m train_cli export` writes them.",
            inputs=_base_model_inputs() + [
                io.Combo.Input("weights", options=[NONE] + folders.export_files(), default=NONE,
                               tooltip="NP-Edit editor weights (.safetensors from `train_cli export`) in models/loras "
                                       "or models/npedit. none: the base model alone (it has not learned to edit)."),
                io.Combo.Input("preview_decoder", options=[NONE] + folders.preview_decoders(), default=NONE,
                               tooltip="FLUX.2 only: TAEF2 decoder (taef2_decoder.pth in models/vae_approx) for fast "
                                       "step previews. none: previews use the full VAE."),
            ],
            outputs=[EditorType.Output(display_name="editor")],
        )

    @classmethod
    def validate_inputs(cls, family=None, model=None, text_encoder=None, vae=None, tokenizer=None, dtype=None,
                        weights=None, preview_decoder=None) -> bool | str:
        return check_choices(cls, family=family, model=model, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer,
                             dtype=dtype, weights=weights, preview_decoder=preview_decoder)

    @classmethod
    def execute(cls, family, model, text_encoder, vae, tokenizer, dtype, weights, preview_decoder) -> io.NodeOutput:
        with autograd_ready():
            backbone = _load_base(family, model, text_encoder, vae, tokenizer, dtype)
            if weights != NONE:
                load_editor(backbone, _export_path(weights, "weights"), role="editor")
            if preview_decoder != NONE:
                if family != "flux2_klein":
                    raise NPEditError(f"preview_decoder: TAEF2 decodes FLUX.2 latents, not {family}; choose none")
                path = folders.resolve_file(preview_decoder, ("vae_approx",), "preview_decoder")
                backbone.fast_decoder = functools.partial(_decode_on_cpu, TAEF2.from_files((None, path)))
        return io.NodeOutput(backbone)


def _decode_on_cpu(taef2: TAEF2, latents: torch.Tensor) -> torch.Tensor:
    """TAEF2 stays on the CPU (1.3 M parameters): previews never need VRAM."""
    return decode_flux2_latents(taef2, latents.detach().to("cpu", taef2.dtype))


class NPEditLoadJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditLoadJudge",
            display_name="NP-Edit Load Judge",
            category=CATEGORY,
            description="Load a vision-language model (Qwen2.5-VL, Qwen3-VL or InternVL3 -hf folder) that judges edits "
                        "with yes/no questions.",
            inputs=[
                io.Combo.Input("model", options=folders.vlm_folders(),
                               tooltip="A Hugging Face VLM folder (config.json + safetensors) under models/LLM or "
                                       "models/npedit."),
                io.Combo.Input("family", options=[AUTO] + list(JUDGES), default=AUTO,
                               tooltip="Judge family. auto: read from the folder's config.json model_type."),
                io.Combo.Input("dtype", options=list(DTYPES), default=ModelConfig().dtype,
                               tooltip="Weight dtype: bfloat16 on GPUs; float32 on CPUs."),
            ],
            outputs=[JudgeType.Output(display_name="judge")],
        )

    @classmethod
    def validate_inputs(cls, model=None, family=None, dtype=None) -> bool | str:
        return check_choices(cls, model=model, family=family, dtype=dtype)

    @classmethod
    def execute(cls, model, family, dtype) -> io.NodeOutput:
        path = folders.resolve_folder(model, (folders.LLM, folders.OURS), "model")
        with autograd_ready():
            return io.NodeOutput(load_judge(path, family, dtype, device=mm.unet_offload_device()))


class NPEditLoadCritic(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditLoadCritic",
            display_name="NP-Edit Load DMD Critic",
            category=CATEGORY,
            description="Load the DMD critic: the base model as teacher plus the fake-score weights that training "
                        "exports (`train_cli export --role fake`). Loads its own copy of the base model.",
            inputs=_base_model_inputs() + [
                io.Combo.Input("fake_weights", options=folders.export_files(),
                               tooltip="Fake-score weights (.safetensors, exported with --role fake) in models/loras "
                                       "or models/npedit."),
            ],
            outputs=[CriticType.Output(display_name="critic")],
        )

    @classmethod
    def validate_inputs(cls, family=None, model=None, text_encoder=None, vae=None, tokenizer=None, dtype=None,
                        fake_weights=None) -> bool | str:
        return check_choices(cls, family=family, model=model, text_encoder=text_encoder, vae=vae, tokenizer=tokenizer,
                             dtype=dtype, fake_weights=fake_weights)

    @classmethod
    def execute(cls, family, model, text_encoder, vae, tokenizer, dtype, fake_weights) -> io.NodeOutput:
        with autograd_ready():
            backbone = _load_base(family, model, text_encoder, vae, tokenizer, dtype)
            return io.NodeOutput(Critic.from_export(backbone, _export_path(fake_weights, "fake_weights")))

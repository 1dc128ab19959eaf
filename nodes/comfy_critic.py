"""The DMD critic on ComfyUI's own loaded MODEL, so that the base model is not loaded a second time.

`ComfyCritic` offers what `npedit_core.refine.refine_edits` and `npedit_core.critic.realism_scores` use of a critic:
- `teacher(x_t, t, cond)`: the MODEL as ComfyUI loaded it (its memory management, partial loading, quantised
  weights), run through ComfyUI's own sampling path (`comfy.samplers.sample`, cfg 1) with a one-step sampler that
  returns the model's clean-image prediction x0 at time t; velocity v = (x_t - x0) / t. ComfyUI's sigma of a
  flow-matching model is our t (x_t = (1 - t) x0 + t eps), so no time conversion is needed.
- `fake(x_t, t, cond)`: the same MODEL with the fake-score LoRA (`train_cli export --role fake`) put on by ComfyUI's
  LoRA code, as LoraLoaderModelOnly does: a clone that shares the weights. ComfyUI patches the weights in place
  when it switches between the clone and the MODEL, so each switch re-applies the LoRA (and, on a GPU, can move
  the model).
- `backbone`: encodes and decodes with ComfyUI's VAE, in the latents the model reads (`process_in` of its latent
  format); decoding is differentiable, for the judge term of Refine.
Text arrives as CONDITIONING (CLIP Text Encode's output), which the core functions take as `text` and `negative_text`.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.samplers
import torch
from comfy_api.latest import io
from safetensors import safe_open

from ..npedit_core.errors import NPEditError
from ..npedit_core.export import read_export
from ..npedit_core.lora_formats import to_comfyui_lora
from . import folders
from .convert import check_choices
from .types import Critic


def _predict_x0(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A one-step sampler function: the model's clean-image prediction at sigmas[0]."""
    return model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))


PREDICT_X0 = comfy.samplers.KSAMPLER(_predict_x0)


def fake_score_patches(path: str) -> dict[str, torch.Tensor]:
    """The fake-score LoRA of an NP-Edit export (either layout), in the key layout ComfyUI's LoRA code reads."""
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            ours = meta.get("npedit_format") == "comfyui_lora"
            weights = {k: handle.get_tensor(k) for k in handle.keys()} if ours else None
    except Exception:  # not safetensors: read_export says what it is
        weights = None
    if weights is None:
        weights, meta = read_export(path)
        if meta["npedit_format"] != "lora":
            raise NPEditError(f"{path}: a fully fine-tuned fake score, not a LoRA; it needs its own copy of the "
                              "transformer: load it with NP-Edit Load DMD Critic")
        weights = to_comfyui_lora(weights, meta["backbone"], float(meta["alpha"]))
    if meta.get("role", "fake") != "fake":
        raise NPEditError(f"{path}: exported with --role {meta['role']}; the critic needs the fake score (--role fake)")
    return weights


class ComfyVAEBackbone:
    """Encode and decode with ComfyUI's VAE in the normalised latents that `model` reads."""

    def __init__(self, model, vae):
        self.model, self.vae = model, vae
        self.latent_format = model.get_model_object("latent_format")
        diffusion_model = model.get_model_object("diffusion_model")
        self.pixel_multiple = int(vae.downscale_ratio) * int(getattr(diffusion_model, "patch_size", 1))

    @property
    def device(self) -> torch.device:
        return self.model.load_device

    def _vae_ready(self):
        mm.load_models_gpu([self.vae.patcher])
        # ComfyUI builds and moves weights in inference mode; such tensors can never join autograd.
        for module in self.vae.first_stage_model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and p.is_inference():
                    module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None and b.is_inference():
                    module._buffers[name] = b.clone()
        return self.vae.first_stage_model

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised latents (the posterior mode, as VAE Encode gives)."""
        with torch.no_grad():
            raw = self.vae.encode(images.movedim(1, -1).cpu())
        return self.latent_format.process_in(raw.float()).to(self.device)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> (B, 3, H, W) in [0, 1]; differentiable."""
        vae = self._vae_ready()
        z = self.latent_format.process_out(latents).to(self.vae.device, self.vae.vae_dtype)
        return (vae.decode(z).float() / 2 + 0.5).clamp(0, 1).to(latents.device)


class ComfyCritic:
    """Teacher = ComfyUI's MODEL, fake score = that MODEL with the fake LoRA; see the module docstring."""

    def __init__(self, model, vae, fake_lora: dict[str, torch.Tensor], strength: float = 1.0,
                 name: str = "fake_weights"):
        import comfy.lora
        import comfy.lora_convert
        import comfy.model_sampling

        if not isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.CONST):
            raise NPEditError("the DMD critic needs a flow-matching model (Z-Image, FLUX); this MODEL is not one")
        loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(fake_lora),
                                      comfy.lora.model_lora_keys_unet(model.model, {}))
        pairs = sum(1 for k in fake_lora if k.endswith(".lora_A.weight") or k.endswith(".lora_down.weight"))
        if not loaded or len(loaded) < pairs:
            raise NPEditError(f"{name}: {pairs - len(loaded)} of its {pairs} LoRA modules match no weight of this "
                              "MODEL; the fake score was trained on another base model")
        self.model = model
        self.fake_model = model.clone()
        self.fake_model.add_patches(loaded, strength)
        self.backbone = ComfyVAEBackbone(model, vae)

    def _velocity(self, model, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if t.numel() > 1 and not bool((t == t[0]).all()):  # ComfyUI's conditioning reads one time per call
            return torch.cat([self._velocity(model, x_t[i:i + 1], t[i:i + 1], cond) for i in range(len(t))])
        s = float(t.flatten()[0])
        sigmas = torch.tensor([s, 0.0])
        # comfy.samplers.sample starts from t * noise + (1 - t) * latent: with a zero latent, noise = x_t / t
        zeros = torch.zeros_like(x_t, dtype=torch.float32)
        x0 = comfy.samplers.sample(model, (x_t / s).float(), cond, cond, 1.0, model.load_device, PREDICT_X0, sigmas,
                                   model_options=model.model_options, latent_image=zeros, disable_pbar=True, seed=0)
        x0 = model.model.process_latent_in(x0).to(x_t.device, x_t.dtype)
        return (x_t - x0) / s

    def teacher(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return self._velocity(self.model, x_t, t, cond)

    def fake(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return self._velocity(self.fake_model, x_t, t, cond)

    def modules(self) -> list[torch.nn.Module]:
        """None for `on_device`: ComfyUI places its own models."""
        return []


def text_inputs() -> list:
    """The optional CONDITIONING pair that a critic on ComfyUI's MODEL reads instead of the caption."""
    return [
        io.Conditioning.Input("positive", optional=True,
                              tooltip="Only with NP-Edit DMD Critic from MODEL: the caption, from CLIP Text Encode "
                                      "(replaces the caption text)."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Only with NP-Edit DMD Critic from MODEL: the negative prompt, from CLIP Text "
                                      "Encode (often empty)."),
    ]


def critic_text(critic, positive, negative) -> dict:
    """Keyword arguments for the core call: the conditioning pair for a ComfyCritic; none for the pack's critic."""
    if isinstance(critic, ComfyCritic):
        if positive is None or negative is None:
            raise NPEditError("positive, negative: a critic on ComfyUI's MODEL reads its text as conditioning: connect "
                              "CLIP Text Encode outputs for the caption and the negative prompt")
        return {"text": positive, "negative_text": negative}
    if positive is not None or negative is not None:
        raise NPEditError("positive, negative: only for a critic from NP-Edit DMD Critic from MODEL; this critic "
                          "encodes the caption text itself: disconnect them")
    return {}


class NPEditCriticFromModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NPEditCriticFromModel",
            display_name="NP-Edit DMD Critic from MODEL",
            category="NP-Edit/loaders",
            description="The DMD critic on the base model ComfyUI already loaded (no second copy): the MODEL is the "
                        "teacher, the MODEL with the fake-score LoRA is the fake score. Give its Refine / DMD Critic "
                        "the caption as conditioning (positive, negative).",
            inputs=[
                io.Model.Input("model", tooltip="The base text-to-image model (Load Diffusion Model), without the "
                                                "NP-Edit editor LoRA: it is the DMD teacher."),
                io.Vae.Input("vae", tooltip="The base model's VAE: encodes the images and decodes the refined ones."),
                io.Combo.Input("fake_weights", options=folders.export_files(),
                               tooltip="The fake-score LoRA (`train_cli export --role fake`, either layout) in "
                                       "models/loras or models/npedit."),
            ],
            outputs=[Critic.Output(display_name="critic")],
        )

    @classmethod
    def validate_inputs(cls, fake_weights=None) -> bool | str:
        return check_choices(cls, fake_weights=fake_weights)

    @classmethod
    def execute(cls, model, vae, fake_weights) -> io.NodeOutput:
        path = folders.resolve_file(fake_weights, ("loras", folders.OURS), "fake_weights")
        return io.NodeOutput(ComfyCritic(model, vae, fake_score_patches(path)))

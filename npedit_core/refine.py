"""Test-time refinement: a few Adam steps on an edit's latents under the training objective (method.md 2.2-2.4).

The editor is trained to minimise  w_vlm * L_vlm + w_dmd * L_dmd  over its outputs x0. Here the same
objective is minimised over one output's latents directly, with every network frozen:

    x0  <- encode(edited image)                                  (B, C, h, w), normalised latents
    repeat `steps` times:
        L_vlm = judge_loss(judge, reference, decode(x0), ...)    gradients through the VAE decoder
        L_dmd = dmd_generator_loss(x0, teacher, fake, caption)   gradient (x0_fake - x0_real) / norm
        Adam step on x0 with w_vlm * L_vlm + w_dmd * L_dmd
    result = decode(x0), resized back to the input size (and blended with an optional mask)

Adam divides by the gradient's running RMS, so `lr` is roughly how far each latent value may move per
step (latents are normalised to about unit variance); the weights only set the two terms' balance.
The DMD noise and times come from a generator seeded with `seed`, so a refinement is repeatable.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .config import LossConfig, RefineConfig
from .critic import Critic
from .errors import NPEditError
from .images import blend_mask, check_images, check_mask, resize, working_size
from .judges.base import Judge
from .judges.prompts import QuestionTemplates
from .losses import cfg_scales, dmd_generator_loss
from .objective import judge_loss
from .sampler import per_sample
from .scoring import broadcast_references

#: Called after each step with (step index, number of steps, current latents (B, C, h, w), that step's logs).
RefineCallback = Callable[[int, int, torch.Tensor, dict], None]


def refine_edits(
    judge: Judge | None,
    critic: Critic,
    references: torch.Tensor,
    edited: torch.Tensor,
    instructions: str | Sequence[str],
    captions: str | Sequence[str] | None = None,
    edit_types: str | Sequence[str] = "other",
    objects: str | None | Sequence[str | None] = None,
    steps: int = RefineConfig.steps,
    lr: float = RefineConfig.lr,
    w_vlm: float = LossConfig.w_vlm,
    w_dmd: float = LossConfig.w_dmd,
    seed: int = RefineConfig.seed,
    mask: torch.Tensor | None = None,
    templates: QuestionTemplates | None = None,
    negative_prompt: str = LossConfig.negative_prompt,
    max_area: int | None = None,
    callback: RefineCallback | None = None,
    text=None,
    negative_text=None,
) -> tuple[torch.Tensor, list[dict]]:
    """Refine edited images (B, 3, H, W) in [0, 1] against their references; returns (images (B, 3, H, W), logs per step).

    The critic's backbone (the base model) encodes and decodes; its VAE is the editor's. `captions`
    describe the edited images (the DMD teacher is text-to-image); they are needed when w_dmd > 0.
    With a `mask` (B, H, W) the refined pixels replace the input only where the mask is nonzero.
    Setting w_vlm = 0 needs no judge (pass None). `text` and `negative_text`, the caption and negative prompt
    already encoded the way the critic's teacher reads them (a critic on ComfyUI's MODEL takes conditioning),
    replace `captions` and `negative_prompt`.
    """
    check_images(references, "reference")
    check_images(edited, "edited")
    batch, _, height, width = edited.shape
    references = broadcast_references(references, batch)
    instructions = per_sample(instructions, batch, "instruction")
    edit_types = per_sample(edit_types, batch, "edit_type")
    objects = per_sample(objects, batch, "object")
    if steps < 1:
        raise NPEditError(f"steps: must be at least 1, got {steps}")
    if lr <= 0:
        raise NPEditError(f"lr: must be positive, got {lr}")
    if w_vlm < 0 or w_dmd < 0 or w_vlm + w_dmd == 0:
        raise NPEditError(f"w_vlm, w_dmd: need non-negative weights, not both 0 (got {w_vlm}, {w_dmd})")
    if w_vlm > 0 and judge is None:
        raise NPEditError("judge: w_vlm > 0 needs a judge (or set w_vlm to 0)")
    if w_dmd > 0 and (text is None) != (negative_text is None):
        raise NPEditError("text, negative_text: give both encoded texts or neither")
    if w_dmd > 0 and text is None:
        captions = per_sample(captions, batch, "caption")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str) or not caption.strip():
                raise NPEditError(f"caption[{i}]: empty; describe the edited image (the DMD teacher needs it) or set w_dmd to 0")
    if mask is not None:
        mask = check_mask(mask, batch, height, width)

    backbone = critic.backbone
    size = working_size(height, width, backbone.pixel_multiple, max_area)
    device = backbone.device
    reference_work = resize(references, size).to(device)
    with torch.no_grad():
        start = backbone.encode_images(resize(edited, size).to(device)).float()
    latents = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latents], lr=lr)
    generator = torch.Generator(device).manual_seed(int(seed))
    if w_dmd > 0:
        if text is None:
            text = backbone.encode_text(list(captions))
            negative_text = backbone.encode_text([negative_prompt] * batch)
        guidance = cfg_scales(edit_types, device)

    history = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        total = latents.new_zeros(())
        logs: dict = {}
        if w_vlm > 0:
            decoded = backbone.decode_latents(latents).float()  # (B, 3, h*, w*), differentiable
            l_vlm, vlm_logs = judge_loss(judge, reference_work, decoded, instructions, edit_types, objects, templates)
            total = total + w_vlm * l_vlm.to(total.device)
            logs.update(vlm_logs)
        if w_dmd > 0:
            l_dmd, dmd_logs = dmd_generator_loss(latents, critic.teacher, critic.fake, text, negative_text, guidance,
                                                 generator=generator)
            total = total + w_dmd * l_dmd
            logs.update(dmd_logs)
        total.backward()
        optimizer.step()
        logs["loss"] = total.item()
        history.append(logs)
        if callback is not None:
            callback(step, steps, latents.detach(), logs)

    with torch.no_grad():
        out = resize(backbone.decode_latents(latents.detach()).float().cpu(), (height, width))
    out = out.to(edited.device, edited.dtype)
    return (out if mask is None else blend_mask(out, edited, mask.to(out))), history

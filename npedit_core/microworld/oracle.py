"""The oracle: instruction success and preservation of everything else, from the scene graph alone.

Evaluation only, never a training signal, and independent of every learned part (no classifier, no
VAE, no judge). For an example (scene, edit) and an editor output `out` (3, S, S) in [0, 1]:

    src = render(scene), tgt = render(edit.target)                       (the renderer is exact)
    R   = {pixels where max_c |src - tgt| > 0.1}                          the edit region
    e_t = mean over R of mean_c |out - tgt|,  e_s = the same against src
    R is split by what the target shows there: object (a shape covers the pixel in the edited scene)
    or background; e_obj, e_bg = mean_c |out - tgt| over each part (parts under 8 pixels are skipped;
    if both are, R as a whole stands in)
    success      = e_t < e_s and e_obj < 0.15 and e_bg < 0.15
                   (every part of R looks like the edit asked for, not like the original)
    O   = pixels farther than 2 px from R                                  the rest of the image
    preservation = fraction of O with max_c |out - src| < 0.1
    psnr_outside = PSNR of out against src over O

A copy of the input scores success 0 and preservation 1; the correct target scores 1 and 1. Success
needs both: nearer the target than the source over R, and a mean error below 0.15 over each part of R
(the closest palette pair, yellow/orange, is 0.13 apart and all others more than 0.2), so a half-done
or muddy region fails while the soft edges of a decoded image do not decide it (R's interior
dominates). The split matters for `replace`: the old shape's pixels outside the new one outnumber the
new shape's own, so over R as a whole an editor that only erased the object came within 0.15 and
passed; over the object part alone it is ~0.5 off.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from .world import Edit, Scene, render, shape_mask

REGION_THRESHOLD = 0.1
SUCCESS_ERROR = 0.15
KEEP_THRESHOLD = 0.1
MARGIN = 2
MIN_PART = 8  # pixels: a smaller part of the edit region (a sliver at a shape's edge) is not judged alone


def score(out: torch.Tensor, scene: Scene, edit: Edit) -> dict:
    """Oracle scores of one output image (3, S, S) in [0, 1] (see the module docstring)."""
    out = out.detach().float().cpu().clamp(0, 1)
    src, tgt = render(scene, out.shape[-1]), render(edit.target, out.shape[-1])
    region = (src - tgt).abs().amax(0) > REGION_THRESHOLD  # (S, S)
    d_t = (out - tgt).abs().mean(0)
    d_s = (out - src).abs().mean(0)
    e_t, e_s = d_t[region].mean().item(), d_s[region].mean().item()
    covered = _coverage(edit.target, out.shape[-1]) > 0.5
    parts = [d_t[region & m].mean().item() for m in (covered, ~covered) if (region & m).sum() >= MIN_PART] or [e_t]
    near = F.max_pool2d(region[None, None].float(), 2 * MARGIN + 1, 1, MARGIN)[0, 0] > 0
    outside = ~near
    keep = (out - src).abs().amax(0)[outside] < KEEP_THRESHOLD
    mse = ((out - src) ** 2).mean(0)[outside].mean().item() if outside.any() else 0.0
    return {
        "edit_type": edit.edit_type,
        "success": float(e_t < e_s and all(e < SUCCESS_ERROR for e in parts)),
        "preservation": keep.float().mean().item() if outside.any() else 1.0,
        "psnr_outside": 10 * math.log10(1 / max(mse, 1e-10)),
        "err_target": e_t,
        "err_source": e_s,
    }


def _coverage(scene: Scene, size: int) -> torch.Tensor:
    """(size, size) share of each pixel covered by some shape of `scene`."""
    cover = torch.zeros(size, size)
    for s in scene.shapes:
        cover = torch.maximum(cover, torch.from_numpy(shape_mask(s, size)))
    return cover


def aggregate(scores: list[dict]) -> dict:
    """Means overall and per edit type: {"all": {...}, "color": {...}, ...} with n, success, preservation, psnr_outside."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in scores:
        groups[s["edit_type"]].append(s)
        groups["all"].append(s)
    keys = ("success", "preservation", "psnr_outside")
    return {g: {"n": len(v), **{k: sum(x[k] for x in v) / len(v) for k in keys}} for g, v in sorted(groups.items())}

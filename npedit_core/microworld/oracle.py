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
    scene        = scene_match(out, edit.target): the whole edited scene is right (background, and every
                   shape's colour, kind and cell, nothing extra), the strict reading of both at once

Success and preservation are lenient in ways the strict `scene` is not: preservation counts pixels, so a
small untouched shape that changed colour costs a few percent of it; success looks at R only, so a
removal that left a smaller blob behind can pass. Even the correct target passes `scene` only as often
as the world's autoencoder keeps a scene recognisable (its round trip: `autoencoder.round_trip_scenes`).

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
from functools import lru_cache

import torch
import torch.nn.functional as F

from .world import BACKGROUNDS, COLORS, KINDS, SIZES, Edit, Scene, Shape, render, shape_mask

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
        "scene": float(scene_match(out, edit.target)["scene"]),
    }


def _coverage(scene: Scene, size: int) -> torch.Tensor:
    """(size, size) share of each pixel covered by some shape of `scene`."""
    cover = torch.zeros(size, size)
    for s in scene.shapes:
        cover = torch.maximum(cover, torch.from_numpy(shape_mask(s, size)))
    return cover


def aggregate(scores: list[dict]) -> dict:
    """Means overall and per edit type: {"all": {...}, "color": {...}, ...} with n, success, preservation,
    psnr_outside and scene."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in scores:
        groups[s["edit_type"]].append(s)
        groups["all"].append(s)
    keys = ("success", "preservation", "psnr_outside", "scene")
    return {g: {"n": len(v), **{k: sum(x[k] for x in v) / len(v) for k in keys}} for g, v in sorted(groups.items())}


# --- scenes (the teacher's text-to-image samples) ---------------------------------------------------
PALETTE = list(COLORS) + list(BACKGROUNDS)  # object and background colours are disjoint
BACKGROUND_SHARE = 0.9  # of the pixels away from every shape, this share must show the background colour
MIN_COVER = 0.3  # of a shape's area, this share must show its colour in its cell
MIN_IOU = 0.5  # the best-fitting template of the right kind must overlap the colour blob this much


def colour_labels(image: torch.Tensor) -> torch.Tensor:
    """(S, S) index into PALETTE of each pixel's nearest colour."""
    palette = torch.tensor([COLORS.get(c) or BACKGROUNDS[c] for c in PALETTE])
    flat = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).reshape(-1, 3)
    return torch.cdist(flat, palette).argmin(1).view(image.shape[-2:])


@lru_cache(maxsize=None)
def _templates(kind: str, size: str, cell: int, image_size: int, shift: int) -> torch.Tensor:
    """(n, S, S) masks of one shape at every offset of up to `shift` pixels in half-pixel steps.

    Rendered once at 4x (2 fine pixels = half a pixel), moved, then averaged back down to S.
    """
    n, pad = 4 * image_size, 4 * shift
    fine = F.pad(torch.from_numpy(shape_mask(Shape("red", kind, size, cell), n)), (pad, pad, pad, pad))
    steps = range(-2 * shift, 2 * shift + 1)
    moved = torch.stack([fine[pad - 2 * dy:pad - 2 * dy + n, pad - 2 * dx:pad - 2 * dx + n] for dy in steps for dx in steps])
    return F.avg_pool2d(moved[:, None], 4)[:, 0] > 0.5


def scene_match(image: torch.Tensor, scene: Scene, shift: int = 3) -> dict:
    """Whether `image` (3, S, S) shows `scene`: background colour, and each shape's colour, kind and cell.

    The caption fixes no exact position, so each shape is looked for in its grid cell (widened by `shift`
    pixels): the pixels of its colour there must cover MIN_COVER of its area, and among templates of every
    kind and size shifted by up to `shift` pixels (in half pixels), the best fit (IoU) must be of its kind,
    with IoU >= MIN_IOU.
    Away from every shape (more than `shift` + 2 pixels), BACKGROUND_SHARE of the pixels of every grid
    cell must show the background colour, so an extra object or a wrong background fails. Returns
    {"background": bool, "shapes": [bool per shape], "scene": bool (all of them)}.
    """
    size = image.shape[-1]
    labels = colour_labels(image)
    cell = size / 3
    placed = torch.zeros(size, size, dtype=torch.bool)
    shapes = []
    for s in scene.shapes:
        row, col = divmod(s.cell, 3)
        box = torch.zeros(size, size, dtype=torch.bool)
        box[max(0, int(row * cell) - shift):int((row + 1) * cell) + shift,
            max(0, int(col * cell) - shift):int((col + 1) * cell) + shift] = True
        blob = (labels == PALETTE.index(s.color)) & box
        area = float(shape_mask(s, size).sum())
        fits = {}
        for kind in KINDS:  # half-pixel steps: a square's edges are sharp
            for sz in SIZES:
                t = _templates(kind, sz, s.cell, size, shift)
                iou = (t & blob).sum((1, 2)).float() / (t | blob).sum((1, 2)).clamp(min=1).float()
                fits[kind] = max(fits.get(kind, 0.0), float(iou.max()))
        best = max(fits, key=fits.get)
        shapes.append(bool(blob.sum() >= MIN_COVER * area and best == s.kind and fits[best] >= MIN_IOU))
        largest = _templates(s.kind, "large", s.cell, size, 0)[0]
        placed |= box & (F.max_pool2d(largest[None, None].float(),
                                      2 * (shift + 2) + 1, 1, shift + 2)[0, 0] > 0)
    is_background = labels == PALETTE.index(scene.background)
    background = True
    for c in range(9):  # cell by cell, so that one extra object is not lost in the whole image's background
        row, col = divmod(c, 3)
        away = ~placed[int(row * cell):int((row + 1) * cell), int(col * cell):int((col + 1) * cell)]
        share = is_background[int(row * cell):int((row + 1) * cell), int(col * cell):int((col + 1) * cell)][away]
        background &= share.numel() == 0 or bool(share.float().mean() >= BACKGROUND_SHARE)
    return {"background": background, "shapes": shapes, "scene": background and all(shapes)}

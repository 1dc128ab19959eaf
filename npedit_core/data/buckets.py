"""Aspect-ratio buckets and image loading for training (method.md section 2.5: ~512 px, aspect buckets).

Bucket policy (the documented training behaviour): every reference image is assigned the bucket whose
aspect ratio is nearest in log space, then scaled (up or down) so that it just covers the bucket and
centre-cropped to exactly the bucket size. The crop removes at most the sliver that the aspect
difference between the image and its bucket implies; no image is squashed, padded or dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import NPEditError

Bucket = tuple[int, int]  # (height, width) in pixels


def make_buckets(resolution: int = 512, multiple: int = 16, max_ratio: float = 2.0) -> list[Bucket]:
    """Bucket sizes (h, w), sorted from tallest to widest, with h*w close to resolution**2.

    Each side is a multiple of `multiple` (the backbone's pixel granularity: VAE factor x patch size)
    and the long side is at most `max_ratio` times the short side. For each short side s the long side
    is the multiple nearest to resolution**2 / s, so |h*w - resolution**2| <= s * multiple / 2; every
    bucket comes with its transpose (portrait and landscape alike), and the nearest square is always in.
    """
    if multiple < 1 or resolution < multiple:
        raise NPEditError(f"buckets: need 1 <= multiple <= resolution, got multiple={multiple}, resolution={resolution}")
    if max_ratio < 1:
        raise NPEditError(f"buckets: max_ratio must be >= 1, got {max_ratio}")
    area = resolution * resolution
    side = max(multiple, round(resolution / multiple) * multiple)
    buckets = {(side, side)}  # always a square bucket, even when resolution is not a multiple
    for short in range(multiple, resolution + 1, multiple):
        long = round(area / short / multiple) * multiple
        if long >= short and long <= short * max_ratio + 1e-9:
            buckets |= {(short, long), (long, short)}
    return sorted(buckets, key=lambda b: b[1] / b[0])


def assign_bucket(height: int, width: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest to width/height in log space (ties: the first)."""
    if not buckets:
        raise NPEditError("buckets: the list of buckets is empty")
    if height <= 0 or width <= 0:
        raise NPEditError(f"image size {width}x{height}: both sides must be positive")
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def assign_buckets(records, buckets: list[Bucket]) -> list[Bucket]:
    """`assign_bucket` for each record (by its `height`/`width`), computed once per distinct size."""
    cache: dict[tuple[int, int], Bucket] = {}
    out = []
    for record in records:
        size = (record.height, record.width)
        if size not in cache:
            try:
                cache[size] = assign_bucket(*size, buckets)
            except NPEditError as exc:
                where = record.where() if hasattr(record, "where") else "record"
                raise NPEditError(f"{where}: {exc}") from None
        out.append(cache[size])
    return out


def load_image(record, size: Bucket) -> torch.Tensor:
    """Load a record's reference image as a float32 tensor (3, H, W) in [0, 1] with (H, W) == size.

    `record` is an `EditRecord` (errors then name the manifest row) or a path. Steps: apply the EXIF
    orientation; composite transparent images onto white; convert to RGB; then, in one bicubic
    resample (PIL, with its fast `reducing_gap` pre-shrink), scale the image to cover `size` and take
    the centred crop of exactly `size`. Small images are scaled up.
    """
    path = Path(getattr(record, "image", record))
    where = f"{record.where()}: image" if hasattr(record, "where") else "image"
    height, width = size
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = to_rgb(im)
            box = _cover_box(im.width, im.height, width, height)
            im = im.resize((width, height), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise NPEditError(f"{where}: file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise NPEditError(f"{where}: cannot read image {path} ({type(exc).__name__}: {exc})") from None
    # (H, W, 3) uint8 -> (3, H, W) float in [0, 1]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


#: PIL modes of 16-bit (and 32-bit integer) greyscale files, whose convert("RGB") clips everything above 255 to white.
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(im: Image.Image) -> Image.Image:
    """The one rule for every image the project reads (training and `edit`), as 8-bit RGB.

    16-bit greyscale is scaled down from 16 bits (mode "I" from its values: above 255 means 16-bit);
    transparent images (RGBA, LA, PA, P with transparency) are composited onto white; others convert.
    """
    if im.mode in WIDE_GREY:
        values = np.asarray(im, dtype=np.float64)
        full = 65535.0 if im.mode != "I" or values.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(values * (255.0 / full)), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _cover_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[float, float, float, float]:
    """The centred source region with the aspect of (dst_w, dst_h): the crop that a cover-resize keeps."""
    if src_w * dst_h > dst_w * src_h:  # source is wider than the bucket: crop the sides
        crop_w = src_h * dst_w / dst_h
        left = (src_w - crop_w) / 2
        return (left, 0.0, left + crop_w, float(src_h))
    crop_h = src_w * dst_h / dst_w  # source is taller (or equal): crop top and bottom
    top = (src_h - crop_h) / 2
    return (0.0, top, float(src_w), top + crop_h)

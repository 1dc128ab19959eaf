"""From sampler indices to a training batch: images at their bucket size plus the text fields."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import Dataset

from ..errors import NPEditError
from .buckets import Bucket, assign_buckets, load_image
from .manifest import EditRecord


def collate(records: list[EditRecord], indices: list[int], buckets: list[Bucket],
            size: Bucket | None = None, num_workers: int = 0) -> dict:
    """Load records[i] for i in `indices` into one batch dict.

    Every image is loaded at its bucket (`assign_bucket` on its size, the rule `BucketBatchSampler`
    groups by) with the cover-and-centre-crop policy of `load_image`; the indices must therefore
    share one bucket, which the sampler guarantees. `size` (h, w) instead loads all of them at that
    one size, with the same policy (for previews of arbitrary records). `num_workers` > 0 decodes in
    that many threads (PIL releases the GIL).

    Returns images (B, 3, H, W) float32 in [0, 1]; instructions, edit_types, objects (None where not
    given), edited_captions, source_captions: lists of B strings; rows: the B manifest row numbers.
    """
    if not indices:
        raise NPEditError("collate: empty batch")
    chosen = [records[i] for i in indices]
    if size is None:
        sizes = set(assign_buckets(chosen, buckets))
        if len(sizes) > 1:
            raise NPEditError(
                f"collate: rows {[r.row for r in chosen]} fall in different buckets {sorted(sizes)}; "
                "batch them with BucketBatchSampler or pass one size"
            )
        (size,) = sizes
    if num_workers > 0 and len(chosen) > 1:
        with ThreadPoolExecutor(min(num_workers, len(chosen))) as pool:
            images = list(pool.map(lambda r: load_image(r, size), chosen))
    else:
        images = [load_image(r, size) for r in chosen]
    return {
        "images": torch.stack(images),
        "instructions": [r.instruction for r in chosen],
        "edit_types": [r.edit_type for r in chosen],
        "objects": [r.object for r in chosen],
        "edited_captions": [r.edited_caption for r in chosen],
        "source_captions": [r.source_caption for r in chosen],
        "rows": [r.row for r in chosen],
    }


class EditDataset(Dataset):
    """Records + buckets as a map-style dataset: `dataset[i]` is one sample, `load_batch` a batch.

    `dataset[i]` is {"image": (3, H, W) at the record's bucket, "instruction", "edit_type", "object",
    "edited_caption", "source_caption", "row"}; `load_batch(indices)` is `collate` on these records.
    """

    def __init__(self, records: list[EditRecord], buckets: list[Bucket], num_workers: int = 0):
        if not records:
            raise NPEditError("dataset: no records")
        self.records, self.buckets, self.num_workers = list(records), list(buckets), num_workers
        self.record_buckets = assign_buckets(self.records, self.buckets)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {
            "image": load_image(record, self.record_buckets[index]),
            "instruction": record.instruction,
            "edit_type": record.edit_type,
            "object": record.object,
            "edited_caption": record.edited_caption,
            "source_caption": record.source_caption,
            "row": record.row,
        }

    def load_batch(self, indices: list[int]) -> dict:
        return collate(self.records, indices, self.buckets, num_workers=self.num_workers)

"""The training-data layer: manifests, aspect buckets, resumable batches and the built-in demo data.

manifest.py  EditRecord, read_manifest (raise at the first bad row), scan_manifest (report them all)
buckets.py   make_buckets, assign_bucket, load_image (cover-resize + centre crop to the bucket)
batching.py  BucketBatchSampler: deterministic, resumable, rank-sliced same-bucket batches
dataset.py   EditDataset, collate: indices -> {"images": (B, 3, H, W), "instructions": [...], ...}
demo.py      demo_manifest: four scikit-image photos and a JSONL manifest of edits on them
"""

from .batching import BucketBatchSampler
from .buckets import Bucket, assign_bucket, assign_buckets, load_image, make_buckets
from .dataset import EditDataset, collate
from .demo import demo_manifest
from .manifest import ALIASES, EditRecord, ManifestProblem, ManifestReport, read_manifest, scan_manifest

__all__ = [
    "ALIASES", "Bucket", "BucketBatchSampler", "EditDataset", "EditRecord", "ManifestProblem", "ManifestReport",
    "assign_bucket", "assign_buckets", "collate", "demo_manifest", "load_image", "make_buckets", "read_manifest",
    "scan_manifest",
]

"""Deterministic, resumable same-bucket batches (every image in a batch has the same size).

Epoch plan, a pure function of (seed, epoch, records, buckets, batch_size, world_size):
1. shuffle all record indices with a generator seeded by (seed, epoch);
2. walk that order once per bucket and cut each bucket's indices into global batches of
   `batch_size`; a bucket's last batch may be smaller (kept, not dropped, so every record is seen
   once per epoch);
3. shuffle the order of the batches with the same generator.
`next_batch` hands out the plan's batches one by one and rolls over into the next epoch forever.
The state is just {"epoch", "position"} (position = global batches already handed out this epoch),
so a sampler restored from it continues with exactly the batches the uninterrupted one would give.

Several processes: `batch_size` is the global batch and must be a multiple of `world_size`; rank r
takes the r-th contiguous slice of each global batch, so the ranks' slices are disjoint and together
are the global batch. So that no rank gets an empty slice, with world_size > 1 a smaller last batch is
padded up to a multiple of world_size by repeating that bucket's first indices of the epoch (those
records are then seen twice in that epoch). Every rank must call `next_batch` the same number of times.
"""

from __future__ import annotations

import numpy as np

from ..errors import NPEditError
from .buckets import Bucket, assign_buckets


class BucketBatchSampler:
    """Yields lists of record indices, all in one aspect bucket; see the module docstring."""

    def __init__(self, records, buckets: list[Bucket], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not records:
            raise NPEditError("sampler: no records to sample from")
        if batch_size < 1:
            raise NPEditError(f"sampler: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise NPEditError(f"sampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise NPEditError(
                f"sampler: the global batch_size {batch_size} must be a multiple of world_size {world_size}"
            )
        if seed < 0:
            raise NPEditError(f"sampler: seed must be >= 0, got {seed}")
        self.buckets = list(buckets)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        # bucket of every record: index into self.buckets, from its displayed size
        self.bucket_of = np.array([self.buckets.index(b) for b in assign_buckets(records, self.buckets)])
        self.epoch, self.position = 0, 0
        self._plan: list[list[int]] = self._make_plan(0)

    def __len__(self) -> int:
        """Global batches per epoch."""
        return len(self._plan)

    def bucket(self, index: int) -> Bucket:
        """The (h, w) bucket of record `index`."""
        return self.buckets[int(self.bucket_of[index])]

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """All global batches of `epoch`, in the order they are handed out."""
        return [list(b) for b in (self._plan if epoch == self.epoch else self._make_plan(epoch))]

    def next_batch(self) -> list[int]:
        """This rank's slice of the next global batch (record indices, all in one bucket)."""
        if self.position >= len(self._plan):
            self.epoch, self.position = self.epoch + 1, 0
            self._plan = self._make_plan(self.epoch)
        batch = self._plan[self.position]
        self.position += 1
        per_rank = len(batch) // self.world_size
        return batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        """Endless: `next_batch()` over and over (across epochs)."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise NPEditError(f"sampler state: expected {{'epoch': int, 'position': int}}, got {state!r}") from None
        plan = self._make_plan(epoch)
        if epoch < 0 or not 0 <= position <= len(plan):
            raise NPEditError(
                f"sampler state: epoch {epoch}, position {position} is outside the {len(plan)} batches "
                "of an epoch (was the manifest or batch size changed?)"
            )
        self.epoch, self.position, self._plan = epoch, position, plan

    def _make_plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])  # same plan on every rank and every resume
        order = rng.permutation(len(self.bucket_of))
        order_bucket = self.bucket_of[order]
        batches = []
        for b in range(len(self.buckets)):
            members = order[order_bucket == b].tolist()  # this bucket's records, in the shuffled order
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                short = -len(batch) % self.world_size
                batch += [members[k % len(members)] for k in range(short)]  # pad for the ranks (see top)
                batches.append(batch)
        return [batches[i] for i in rng.permutation(len(batches))]

"""Two processes (torchrun, gloo on CPU): gradients are averaged, so the replicas stay identical."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.core.test_trainer import manifest  # noqa: F401  (the small image manifest fixture)

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(out: Path, manifest, no_sync: bool = False, extra=(), reuse: bool = False, mode: str | None = None,
                  timeout: int = 300) -> list[dict]:
    """Train with 2 processes; return each rank's final weights (and step)."""
    out.mkdir(parents=True, exist_ok=reuse)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()),
           str(ROOT / "tests/core/distributed_worker.py"), str(out), mode or ("nosync" if no_sync else "sync"),
           "model.backbone=z_image", "model.dtype=float32", "judge.dtype=float32", "data.resolution=32",
           f"data.manifest={manifest}", f"train.run_dir={out / 'run'}", "train.steps=2", "train.batch_size=1",
           "train.preview_every=0", "train.gradient_checkpointing=false", "loss.fake_updates=1", "lora.rank=4",
           "lora.alpha=4", "optim.lr=1e-2", "optim.fake_lr=1e-2", "loss.do_nothing_prob=0", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


def test_two_ranks_stay_in_sync_and_only_because_gradients_are_averaged(tmp_path, manifest):  # noqa: F811
    rank0, rank1 = run_two_ranks(tmp_path / "sync", manifest)
    for role in ("editor", "fake"):
        assert all(torch.equal(rank0[role][k], rank1[role][k]) for k in rank0[role]), role
    drift0, drift1 = run_two_ranks(tmp_path / "nosync", manifest, no_sync=True)
    assert any(not torch.allclose(drift0["editor"][k], drift1["editor"][k]) for k in drift0["editor"])


def test_a_nan_on_one_rank_skips_the_step_on_every_rank_and_never_hangs(tmp_path, manifest):  # noqa: F811
    """Rank 1 alone gets a NaN editor loss at step 1: both ranks skip that update, agree, and finish."""
    rank0, rank1 = run_two_ranks(tmp_path / "nan", manifest, mode="nan_on_rank1", timeout=150,
                                 extra=["train.log_every=1"])
    assert rank0["step"] == rank1["step"] == 2
    for role in ("editor", "fake"):
        assert all(torch.equal(rank0[role][k], rank1[role][k]) for k in rank0[role]), role
    metrics = [json.loads(line) for line in (tmp_path / "nan/run/metrics.jsonl").read_text().splitlines()]
    assert [m.get("skipped", 0) for m in metrics] == [1, 0]  # written by rank 0, whose own loss was finite

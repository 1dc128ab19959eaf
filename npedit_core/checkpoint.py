"""Training checkpoints in a run directory, written so that a crash or Ctrl-C never corrupts one.

Layout: RUN/checkpoints/step-00000120.pt (+ RUN/checkpoints/latest, a one-line pointer).
Each save writes a temporary file in the same folder, flushes it to disk, then renames it over the
final name (an atomic rename on POSIX and Windows), and only then moves the `latest` pointer the same
way. An interrupted save leaves at most a stray `.tmp` file; the last good checkpoint stays current.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

_POINTER = "latest"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as the checkpoint of `step`, point `latest` at it, keep the newest `keep` files."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    _atomic_write(path, lambda handle: torch.save(state, handle))
    _atomic_write(folder / _POINTER, lambda handle: handle.write(path.name.encode() + b"\n"))
    for old in sorted(folder.glob("step-*.pt"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None for a fresh run directory."""
    pointer = checkpoint_dir(run_dir) / _POINTER
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"{pointer} points at {path.name}, which does not exist")
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None


def rng_state() -> dict:
    """Every global random stream the trainer touches (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

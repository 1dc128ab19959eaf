"""Training checkpoints in a run directory, written so that a crash or Ctrl-C never corrupts one.

Layout: RUN/checkpoints/step-00000120.pt (+ RUN/checkpoints/latest, a one-line pointer).
Each save writes a temporary file in the same folder, flushes it to disk, then renames it over the
final name (an atomic rename on POSIX and Windows), and only then moves the `latest` pointer the same
way. An interrupted save leaves at most a stray `.tmp` file; the last good checkpoint stays current.
A failed save (a full disk) removes its temporary file and says how much space is left.

Checkpoints hold tensors and plain Python values only and are read with `torch.load(weights_only=True)`,
so a checkpoint from someone else cannot run code when it is loaded (resume, `train.init_from`, export).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

_POINTER = "latest"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
#: What a numpy RNG state needs to unpickle: checkpoints written before the state became a tensor hold one.
_NUMPY_ARRAY = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def free_space(folder: Path) -> str:
    """Free space on the disk of `folder` (or its nearest existing parent), e.g. '1.2 GiB'."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            return f"{shutil.disk_usage(candidate).free / 2**30:.1f} GiB"
    return "unknown"


def discard(path: Path) -> None:
    """Remove a temporary file if it is there (and can be: its folder may not even exist)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write(path: Path, write, what: str = "file") -> None:
    """`write(handle)` into a temporary file beside `path`, fsync, rename over `path`.

    Any failure (a full disk, a read-only folder) removes the temporary file and is one CheckpointError
    naming `path` and the space left, instead of a torch/OS traceback and a partial file.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise write_failure(f"{what} {path}", tmp, exc) from None


def write_failure(what: str, tmp: Path, exc: Exception) -> CheckpointError:
    """Remove the temporary file `tmp` of a failed write; the one-line error naming `what` and the space left."""
    discard(tmp)
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return CheckpointError(f"cannot write {what}: {reason} ({free_space(tmp.parent)} free there)")


def step_files(folder: Path) -> dict[int, Path]:
    """{step: path} of the `step-*.pt` files in a checkpoints folder."""
    found = {}
    for path in folder.glob("step-*.pt"):
        match = _STEP_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as the checkpoint of `step`, point `latest` at it, keep it and the `keep - 1` newest older ones.

    Files of LATER steps are never deleted (they belong to a run this one resumed before, see `resumable`).
    """
    folder = checkpoint_dir(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create {folder}: {exc.strerror or exc}") from None
    path = folder / f"step-{step:08d}.pt"
    atomic_write(path, lambda handle: torch.save(state, handle), "checkpoint")
    atomic_write(folder / _POINTER, lambda handle: handle.write(path.name.encode() + b"\n"), "checkpoint pointer")
    older = sorted(s for s in step_files(folder) if s < step)
    for old in older[: max(0, len(older) - (keep - 1))]:
        (folder / f"step-{old:08d}.pt").unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at; without a pointer the newest `step-*.pt`; None for a fresh run."""
    folder = checkpoint_dir(run_dir)
    pointer = folder / _POINTER
    if pointer.is_file():
        path = folder / pointer.read_text().strip()
        if not path.is_file():
            raise CheckpointError(f"{pointer} points at {path.name}, which does not exist")
        return path
    steps = step_files(folder)
    return steps[max(steps)] if steps else None


def resumable(run_dir: str | Path, log=print) -> tuple[Path, dict] | None:
    """(path, state) of the checkpoint to resume from: `latest`, else the newest readable `step-*.pt`.

    A missing pointer or an unreadable newest file is said (via `log`), never a silent restart at step 0.
    """
    folder = checkpoint_dir(run_dir)
    steps = step_files(folder)
    pointer = folder / _POINTER
    named = folder / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and named.is_file():
        return named, load_checkpoint(named)
    if not steps:
        if named is not None:
            raise CheckpointError(f"{pointer} points at {named.name}, which does not exist (and no step-*.pt is left)")
        return None
    log(f"{pointer} is {'missing' if named is None else f'stale ({named.name} does not exist)'}; "
        f"resuming from the newest readable checkpoint")
    for step in sorted(steps, reverse=True):
        try:
            return steps[step], load_checkpoint(steps[step])
        except CheckpointError as exc:
            log(f"skipping {exc}")
    raise CheckpointError(f"no readable checkpoint in {folder}")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state, read without running any code it may contain (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"checkpoint {path} holds Python objects that are not plain data{detail}; refusing to "
                              "load it (it could run code). Re-save it from the run that made it") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None


def rng_state() -> dict:
    """Every global random stream the trainer touches (python, numpy, torch CPU and CUDA), as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    else:  # written before the state became plain data
        np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

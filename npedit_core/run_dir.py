"""The run directory as the trainer guards it: writable, one process at a time, resumed exactly.

- `check_writable`: a run directory that cannot be written is refused before any model is built.
- `RunLock`: RUN/.lock holds "<pid> <host>" of the process that trains there. A second `train` on the
  same run directory refuses at once, naming the holder; a lock left by a process that no longer exists
  (kill -9, a crash) is taken over. The same process may take its own lock again (tests and notebooks
  build several Trainers on one run directory). On a shared filesystem a lock held from another host
  cannot be checked and is respected; delete the file when that process is gone.
- `config_changes`: what differs between a checkpoint's config and this run's, split into keys that
  change what the run computes (resume refuses them unless allowed) and keys that do not.
- `cut_metrics`: after a crash, metrics.jsonl may hold steps newer than the checkpoint resumed; they
  are dropped, so each step is in the file once after the redo.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path

from .checkpoint import atomic_write
from .errors import NPEditError

#: Keys that may differ on resume without changing any trained number (prefix match for sections).
HARMLESS_ON_RESUME = (
    "train.steps", "train.log_every", "train.save_every", "train.preview_every", "train.keep_checkpoints",
    "train.run_dir", "train.offload_text_encoder", "train.offload_judge", "train.tensorboard",
    "train.gradient_checkpointing", "train.allow_config_change", "train.max_skipped_steps", "train.init_from",
    "data.num_workers", "sampler.step", "critic.", "refine.",
)


def check_writable(run_dir: Path) -> None:
    """Create `run_dir` and write a probe file in it, or a one-line error naming it."""
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise NPEditError(f"train.run_dir {run_dir}: cannot write there ({exc.strerror or exc}); "
                          "choose another folder") from None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changes that break exact resume, harmless changes), each as "key: old -> new".

    Only keys both configs have are compared: a key added by a newer version of this code is not a change.
    """
    old, new = _flat(saved), _flat(current)
    breaking, harmless = [], []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            line = f"{key}: {old[key]!r} -> {new[key]!r}"
            (harmless if key.startswith(HARMLESS_ON_RESUME) else breaking).append(line)
    return breaking, harmless


def cut_metrics(path: Path, step: int) -> int:
    """Drop the rows of metrics.jsonl for steps after `step` (and torn lines); returns how many were dropped."""
    if not path.is_file():
        return 0
    rows = path.read_text().splitlines(keepends=True)

    def keep(row: str) -> bool:
        try:
            return int(json.loads(row).get("step", 0)) <= step
        except (ValueError, AttributeError, TypeError):
            return False

    kept = [row for row in rows if keep(row)]
    torn_end = bool(kept) and not kept[-1].endswith("\n")
    if torn_end:
        kept[-1] += "\n"
    if len(kept) != len(rows) or torn_end:
        atomic_write(path, lambda handle: handle.write("".join(kept).encode()), "metrics")
    return len(rows) - len(kept)


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.me = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._live_holder()
                if holder is None:  # stale (or our own): take it over
                    self.path.unlink(missing_ok=True)
                    continue
                raise NPEditError(f"train.run_dir {self.run_dir} is in use by another training process ({holder}); "
                                  f"wait for it or stop it (delete {self.path} if that process is gone)") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(self.me)
            if not self.held:
                atexit.register(self.release)
            self.held = True
            return
        raise NPEditError(f"cannot take the lock {self.path}: another process keeps replacing it")

    def _live_holder(self) -> str | None:
        """'pid N on HOST' of a live holder other than this process, else None."""
        try:
            pid_text, host = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None  # half-written or foreign: treat as stale
        if host != socket.gethostname():
            return f"pid {pid} on {host}"
        if pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return f"pid {pid}"

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text() == self.me:
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

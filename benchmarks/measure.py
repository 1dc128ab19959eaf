"""Timing and peak-memory measurement shared by the benchmarks.

GPU: CUDA events are not needed for whole-call timings; we synchronise and use perf_counter, and read
torch.cuda.max_memory_allocated (reset before each call). CPU: a background thread samples the
process's resident set size every millisecond; the peak above the pre-call RSS is reported.
"""

from __future__ import annotations

import json
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch


class _RssPeak:
    def __init__(self, interval: float = 0.001):
        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure(fn, device: torch.device) -> tuple[float, float]:
    """Run fn once; return (seconds, peak memory in MiB above the start of the call)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2**20
    with _RssPeak() as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, (rss.peak - rss.base) / 2**20


def interleaved(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Run each fn `warmup` times, then `repeats` rounds in turn (so drift hits all alike); medians."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(measure(fn, device))
    return {
        name: {"median_s": statistics.median(s for s, _ in runs), "min_s": min(s for s, _ in runs),
               "peak_mib": max(m for _, m in runs),
               "runs_s": [round(s, 4) for s, _ in runs]}
        for name, runs in samples.items()
    }


def machine() -> dict:
    info = {"platform": platform.platform(), "cpu_count": psutil.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path

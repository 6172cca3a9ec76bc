"""Helpers shared by the benchmark scripts: inputs, timing, machine description, peak memory.

Import from a script in this folder with ``from _common import ...`` (the script's own folder is
first on ``sys.path`` when it is run as ``python benchmarks/<script>.py``).
"""
from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(n: int, m: int, d: int, seed: int = 0):
    """x (n, d) ~ N(0, I) generated points and y (m, d) ~ N(0.1, I) references, float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) + 0.1


def time_once(fn, *args, **kw) -> float:
    """Wall-clock seconds of one call."""
    t0 = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t0


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def machine() -> str:
    """CPU model, logical CPU count, RAM and OS in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}"


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_memory(fn: Callable[[], object]) -> dict:
    """Run ``fn()`` once; peak resident set size during the call minus the RSS just before.

    Uses VmHWM (reset through /proc/self/clear_refs) and, when psutil is installed, a 1 ms RSS
    sampling thread. torch's CPU allocations bypass tracemalloc, so RSS is what counts. Call it
    in a fresh process (after a small warm-up call) so earlier peaks and lazy loading do not
    count. Returns {"extra_mb", "seconds", "method"}.
    """
    base = status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the VmHWM peak to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    peak = [base]
    stop = threading.Event()
    try:
        import psutil
        proc = psutil.Process()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss // 1024)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    except ImportError:
        sampler = None
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    stop.set()
    if sampler is not None:
        sampler.join()
    hwm = status_kb("VmHWM") if hwm_reset else 0
    return {"extra_mb": (max(peak[0], hwm) - base) / 1024, "seconds": seconds,
            "method": ("VmHWM" if hwm_reset else "") + (" + psutil sampler" if sampler else "")}

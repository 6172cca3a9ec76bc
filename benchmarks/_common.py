"""Helpers shared by the benchmark scripts: inputs, timing, machine description, peak memory.

Import from a script in this folder with ``from _common import ...`` (the script's own folder is
first on ``sys.path`` when it is run as ``python benchmarks/<script>.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

import torch

from mmdg_lite._argtypes import positive_float, positive_int  # noqa: F401 (the scripts import them from here)

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


def ratio_interval(guided: list[float], plain: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of median(guided) / median(plain), the repeats resampled as pairs
    (run r of each arm ran side by side). Seeded, so a table re-rendered from its JSON agrees."""
    import random
    import statistics

    if len(guided) != len(plain) or not plain:  # zip-like pairing dropped the extra runs, silently
        raise ValueError(f"ratio_interval: guided and plain must hold the same number (>= 1) of paired runs; "
                         f"got {len(guided)} and {len(plain)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"ratio_interval: draws must be an integer >= 1; got {draws!r}")
    if not all(t > 0 for t in plain):  # a median of 0 divides by zero; times are positive
        raise ValueError(f"ratio_interval: plain must hold positive times; got {min(plain)!r}")
    rng, n = random.Random(seed), len(plain)
    ratios = sorted(statistics.median(guided[i] for i in idx) / statistics.median(plain[i] for i in idx)
                    for idx in ([rng.randrange(n) for _ in range(n)] for _ in range(draws)))
    tail = int(0.025 * draws)  # as many draws below the interval as above it, for any draws
    return ratios[tail], ratios[draws - 1 - tail]


def command_line(prefix: str = "python") -> str:
    """The command that ran this script, as typed in the checkout's root: ``prefix``,
    ``benchmarks/<script>.py`` and every argument it was given, quoted for the shell (a table's
    header written by hand dropped the arguments that shaped it, such as ``--repeats 3``)."""
    return shlex.join([*prefix.split(), f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def quick_path(path: Path) -> Path:
    """Where a ``--quick`` smoke run writes ``path``'s file: a folder in the temp dir, never the
    committed table (which other scripts read) that a real run writes."""
    return Path(tempfile.gettempdir()) / "mmdg_benchmarks_quick" / path.name


def quick_defaults(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> None:
    """Fill the options left unset (``None``) with their ``--quick`` smoke-run value (``quick``) or
    their full-run default (``full``). An option given on the command line keeps its value in either
    run: ``--quick --n 50`` had run the smoke run's fixed sample count, silently."""
    for name, default in full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick[name] if args.quick else default)


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


def description(doc: str | None) -> str:
    """A script's ``--help`` description: its docstring's first paragraph (its first line alone
    stopped mid-sentence)."""
    return (doc or "").split("\n\n")[0]


def parse_no_options(doc: str | None) -> None:
    """``--help`` for a script without options (it printed nothing and ran the whole benchmark,
    overwriting its results); any other argument is refused."""
    argparse.ArgumentParser(description=description(doc)).parse_args()


def parse_jobs() -> int:
    """The ``--jobs`` option (1 or 2 worker processes) of the scripts that split their work."""
    parser = argparse.ArgumentParser(description=description(sys.modules["__main__"].__doc__))
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1)
    return parser.parse_args().jobs


def map_jobs(fn: Callable[[Any], Any], keys: Iterable[Hashable], jobs: int = 1) -> dict:
    """{key: fn(key)} for every key, in ``jobs`` worker processes (1: in this process). Each call
    must seed itself, so the numbers are the same for any ``jobs``."""
    keys = tuple(keys)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return dict(zip(keys, pool.map(fn, keys)))
    return {k: fn(k) for k in keys}


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
    try:
        fn()
    finally:  # a call that raised left the 1 ms sampling thread polling for the rest of the process
        seconds = time.perf_counter() - t0
        stop.set()
        if sampler is not None:
            sampler.join()
    hwm = status_kb("VmHWM") if hwm_reset else 0
    return {"extra_mb": (max(peak[0], hwm) - base) / 1024, "seconds": seconds,
            "method": ("VmHWM" if hwm_reset else "") + (" + psutil sampler" if sampler else "")}


def report_header(title: str, command: str, threads: int,
                  load: tuple[float, float, float] | None = None) -> list[str]:
    """The opening lines every results table shares: title, the command that wrote it, machine,
    torch version, threads and the load average when the run started (shared CPUs are noisy)."""
    import platform as _platform

    load = load if load is not None else load_average()
    return [f"# {title}", "",
            f"Generated by `{command}`; do not edit by hand.", "",
            f"- Machine: {machine()}",
            f"- torch {torch.__version__}, Python {_platform.python_version()}; torch threads {threads}; "
            f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"]


def write_report(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {path}")


def write_results(out: Path, data: dict, text: str) -> None:
    """Write ``data`` to ``out`` with suffix .json and the rendered ``text`` to ``out`` (.md), then print it."""
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    out.write_text(text)
    print(text)

"""Closed-form MMD^2 gradient (mmd2_grad) vs autograd (mmd2_grad_autograd): time and memory.

    python benchmarks/gradients.py                 # writes benchmarks/results/gradients.md
    python benchmarks/gradients.py --threads 1 2   # one timing table per thread count

Timing: Gaussian kernel (fixed bandwidth sqrt(D), so the median heuristic is not timed), float32,
B = 64 generated points, N_r = 1,000 references, D = 1,024 and 4,096; median of --repeats runs
after a warm-up. Memory: N_r = 100,000, D = 1,024, measured in a fresh subprocess per setting as
the peak resident set size (VmHWM, reset through /proc/self/clear_refs, and a 1 ms psutil
sampling thread when psutil is installed) minus the resident size once the inputs exist.
torch's CPU allocations bypass tracemalloc, so RSS is what counts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, description, peak_extra_memory, positive_int, report_header, time_once  # noqa: E402
from _common import make_inputs as _inputs  # noqa: E402
from mmdg_lite import GaussianKernel, mmd2_grad, mmd2_grad_autograd  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gradients.md"
B, NR_TIME, DIMS = 64, 1000, (1024, 4096)
NR_MEM, D_MEM = 100_000, 1024


# --- timing ------------------------------------------------------------------------------------

def time_gradients(d: int, repeats: int) -> dict:
    x, y = _inputs(B, NR_TIME, d)
    k = GaussianKernel(bandwidth=float(d) ** 0.5)
    g_closed, g_auto = mmd2_grad(x, y, k), mmd2_grad_autograd(x, y, k)  # warm-up + agreement
    err = float((g_closed - g_auto).norm() / g_auto.norm())
    res = {"D": d, "rel_err": err}
    for name, fn in (("closed", mmd2_grad), ("autograd", mmd2_grad_autograd)):
        ts = [time_once(fn, x, y, k) for _ in range(repeats)]
        res[name] = statistics.median(ts) * 1e3
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3  # --repeats 1 raised here
        res[name + "_iqr"] = (q[2] - q[0]) * 1e3
    return res


# --- memory (run in a child process) ----------------------------------------------------------

def memory_child(chunk_size: int | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    x, y = _inputs(B, NR_MEM, D_MEM)
    k = GaussianKernel(bandwidth=float(D_MEM) ** 0.5)
    mmd2_grad(x, y[:2000], k, chunk_size=chunk_size)  # load kernels and thread pools first
    r = peak_extra_memory(lambda: mmd2_grad(x, y, k, chunk_size=chunk_size))
    return {"chunk_size": chunk_size, "inputs_mb": (x.numel() + y.numel()) * 4 / 2**20, **r}


def measure_memory(chunk_size: int | None, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(chunk_size or 0), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- report ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--threads", type=positive_int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--chunk-size", type=positive_int, default=4096)  # 0 ran unchunked twice
    ap.add_argument("--no-unchunked", action="store_true", help="skip the unchunked memory run")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child or None, args.threads[0])))
        return

    default_threads = torch.get_num_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = report_header(
        "Closed-form vs autograd MMD² gradient",
        command_line(),
        default_threads, load) + [
        f"- Gaussian kernel, bandwidth √D (fixed), float32, biased estimator, B = {B}, "
        f"N_r = {NR_TIME:,}; median of {args.repeats} runs after one warm-up "
        "(IQR = interquartile range).",
        "- `mmd2_grad` evaluates Eq. 6 directly (two B×N_r matrix products); "
        "`mmd2_grad_autograd` back-propagates through `mmd2`, which also builds the "
        "N_r×N_r reference Gram matrix that the gradient does not need.",
        "",
        "## Time",
        "",
        "| threads | D | closed form (ms) | autograd (ms) | speed-up | rel. difference |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for d in DIMS:
            r = time_gradients(d, args.repeats)
            lines.append(
                f"| {threads} | {d:,} | {r['closed']:.1f} ± {r['closed_iqr'] / 2:.1f} | "
                f"{r['autograd']:.1f} ± {r['autograd_iqr'] / 2:.1f} | "
                f"**{r['autograd'] / r['closed']:.1f}×** | {r['rel_err']:.1e} |")
    torch.set_num_threads(default_threads)
    if load[0] > (os.cpu_count() or 1):
        lines += ["", f"Note: the machine was shared while this ran (load average {load[0]:.1f} on "
                  f"{os.cpu_count()} CPUs). Multi-threaded rows then measure OpenMP threads waiting "
                  "for a core (hence their wide IQR); the 1-thread rows are the reliable comparison."]

    mem_threads = args.threads[0]
    runs = [measure_memory(args.chunk_size, mem_threads)]
    if not args.no_unchunked:  # the unchunked run needs ~1 GB beyond the inputs: safe here
        runs.append(measure_memory(None, mem_threads))
    lines += [
        "",
        f"## Peak extra memory, N_r = {NR_MEM:,}, D = {D_MEM:,}, B = {B} (float32)",
        "",
        f"Inputs: {runs[0]['inputs_mb']:.0f} MiB. Extra = peak RSS during one `mmd2_grad` call "
        f"minus RSS with the inputs allocated (measured by {runs[0]['method'].strip()}; "
        f"{mem_threads} thread(s), fresh process per row).",
        "",
        "| chunk_size | peak extra memory (MiB) | time (s) | target ≤ 1 GB |",
        "|---:|---:|---:|:---:|",
    ]
    for r in runs:
        ok = "yes" if r["extra_mb"] <= 1000 * 1e6 / 2**20 else "no"
        cs = f"{r['chunk_size']:,}" if r["chunk_size"] else "none (all references at once)"
        lines.append(f"| {cs} | {r['extra_mb']:.0f} | {r['seconds']:.2f} | {ok} |")
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Untuned defaults: MMDGuidance(references) on the three synthetic tasks, and the sweep that
chose the default mechanism ([harden] item 1).

    python benchmarks/defaults.py            # writes benchmarks/results/defaults.md (~4 min: 238 s there)
    python benchmarks/defaults.py --quick    # 2 seeds, the default row only (a smoke run; no file)

Every row changes one mechanism; seeds as in toy_guidance.py (``make_task(name, seed=s)``: the
user's modes, 200 references, held-out samples; ``sample(..., seed=s)``), 1,000 samples, DDPM,
100 steps. Target for the default row: mode TV <= 0.10 and off-mode <= 3 % on every task
(mean over 5 seeds). A run that raises (GuidanceDivergenceError) is reported as such.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (command_line, description, load_average, positive_int, quick_defaults,  # noqa: E402
                     report_header, write_report)
from mmdg_lite import GaussianKernel, MMDGuidance, median_bandwidth, sample  # noqa: E402
from mmdg_lite.toys import evaluate, make_task, task_guidance  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "defaults.md"
CACHE = ROOT / "benchmarks" / "results" / "defaults.json"  # per-row results of the finished run
PARTIAL = CACHE.with_suffix(".partial.json")  # rows of an unfinished run, so --resume skips done rows
LEGACY = {"n": 1000, "seeds": 5, "sweep_seeds": 2}  # the settings of a cache written without them
TASKS = ("ring2d_4modes", "ring2d_dirichlet", "gmm100d_4modes")


class NoisedReferences:
    """Candidate mechanism (not adopted): compare x_t with the references noised to the current
    level, integrated analytically: E_eps k_sigma(x, sqrt(abar) y + s eps) =
    (sigma^2 / (sigma^2 + s^2))^(D/2) k_{sqrt(sigma^2 + s^2)}(x, sqrt(abar) y), s^2 = 1 - abar;
    sigma = 0.5 x the references' median distance; step c B sigma^2 grad, c = 1."""

    def __init__(self, refs, scale: float = 0.5, c: float = 1.0) -> None:
        self.y = refs.reshape(len(refs), -1)
        self.sigma = scale * median_bandwidth(self.y)
        self.c = c

    def __call__(self, st):
        z = st.x_t.reshape(len(st.x_t), -1)  # (B, D)
        B, D = z.shape
        s2, sig2 = 1 - st.alpha_bar_t, self.sigma ** 2
        rep = 2 * GaussianKernel(self.sigma).grad_weighted(z, z, z.new_full((B, B), 1 / B**2))
        f = math.exp(0.5 * D * math.log(sig2 / (sig2 + s2)))
        att = 2 * f * GaussianKernel(math.sqrt(sig2 + s2)).grad_weighted(
            z, math.sqrt(st.alpha_bar_t) * self.y, z.new_full((B, len(self.y)), 1 / (B * len(self.y))))
        return (st.x_prev.reshape(B, -1) - self.c * B * sig2 * (rep - att)).reshape(st.x_prev.shape)


def rows() -> dict[str, Callable[[Any], Any]]:
    """label -> hook factory on a task. The first row is the library's default."""
    def g(**kw):
        return lambda task: MMDGuidance(task.references, **kw)

    single = dict(normalization="none", stop=1.0)
    return {
        "**default: `MMDGuidance(refs)`** (two-scale Gaussian 0.5x/2x data scale read once per run, "
        "clipped 0.2, last 10 % unguided)": g(),
        "previous default (Gaussian, median re-read every step, c = 1, no clip, all steps)": g(
            kernel=GaussianKernel(), bandwidth_update="step", **single),
        "paper's literal Eq. 5: `MMDGuidance.paper(refs)` (lambda = 100)": lambda t: MMDGuidance.paper(t.references),
        "bandwidth once per run: Gaussian 1x data scale, no clip, all steps": g(kernel=GaussianKernel(), **single),
        "bandwidth once per run: Gaussian 0.5x data scale, no clip, all steps": g(
            kernel=GaussianKernel(median_scale=0.5), **single),
        "references noised to the current level (analytic), 0.5x the references' median": lambda t: NoisedReferences(t.references),
        "two-scale kernel, no clip, all steps": g(**single),
        "two-scale kernel, clipped 0.2, all steps (stop = 1)": g(stop=1.0),
        "default with normalization = 'norm_matched' (alpha = 0.1 default)": g(normalization="norm_matched"),
        "calibrated per-task preset (`task_guidance(task)`)": lambda t: task_guidance(t),
    }


def run(factory, name: str, seed: int, n: int) -> dict[str, float] | None:
    task = make_task(name, seed=seed)
    try:
        x = sample(task.denoiser, n, task.dim, num_steps=100, guidance=factory(task), seed=seed).samples
        return {k: float(v) for k, v in evaluate(x, task, full=False).items()}
    except FloatingPointError:
        return None


def cell(results: list[dict | None], key: str, pct: bool = False) -> str:
    vals = [r[key] for r in results if r is not None]
    fails = sum(r is None for r in results)
    if not vals:
        return "diverged"
    scale = 100.0 if pct else 1.0
    m = statistics.mean(vals) * scale
    s = statistics.stdev(vals) * scale if len(vals) > 1 else 0.0
    out = f"{m:.1f} %" if pct else f"{m:.3f} ± {s:.3f}"
    return out + (f" ({fails} raised)" if fails else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--seeds", type=positive_int, help="seeds for the default row and the preset row (default 5; "
                    "--quick 2)")
    ap.add_argument("--sweep-seeds", type=positive_int, help="seeds for the other (sweep) rows (default 2)")
    ap.add_argument("--n", type=positive_int, default=1000)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: the default row only, 2 seeds unless "
                    "given; no file written")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows of an interrupted run (defaults.partial.json), else of defaults.json, "
                         "if they were run with the same --n, --seeds and --sweep-seeds")
    args = ap.parse_args()
    if args.quick and (args.resume or args.sweep_seeds is not None):  # the smoke run has no sweep rows, no cache
        ap.error(f"argument {'--resume' if args.resume else '--sweep-seeds'}: does not apply to --quick "
                 "(the default row only, nothing read or written)")
    quick_defaults(args, {"seeds": 2, "sweep_seeds": 2}, {"seeds": 5, "sweep_seeds": 2})
    settings = {"n": args.n, "seeds": args.seeds, "sweep_seeds": args.sweep_seeds}
    cached = {}
    if args.resume:
        cache = PARTIAL if PARTIAL.is_file() else CACHE
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        have = cached.pop("settings", LEGACY) if cached else settings
        if have != settings:  # its rows would be reported under this run's settings
            ap.error(f"--resume: {cache.name} was run with {have}, not {settings}; "
                     "give those settings or run without --resume")
    torch.set_num_threads(args.threads)
    seeds = range(args.seeds)
    table = rows()
    if args.quick:
        table = dict(list(table.items())[:1])
    load, t0 = load_average(), time.perf_counter()
    results: dict[str, dict[str, list]] = {}
    for label, factory in table.items():
        if label in cached:
            results[label] = cached[label]
            continue
        full = label == next(iter(table)) or label.startswith(("previous default", "calibrated"))
        row_seeds = seeds if full or args.quick else range(args.sweep_seeds)
        results[label] = {name: [run(factory, name, s, args.n) for s in row_seeds] for name in TASKS}
        print(label[:70], {k: cell(v, "tv") for k, v in results[label].items()}, flush=True)
        if not args.quick:
            cached[label] = results[label]
            PARTIAL.write_text(json.dumps({"settings": settings, **cached}, indent=1) + "\n")
    if args.quick:
        return
    default = results[next(iter(table))]
    ok = all(all(r is not None for r in default[k]) and statistics.mean(r["tv"] for r in default[k]) <= 0.10
             and statistics.mean(r["off_mode"] for r in default[k]) <= 0.03 for k in TASKS)
    lines = report_header("Untuned defaults on the synthetic tasks, and the mechanism sweep",
                          command_line(), args.threads, load)
    lines += [f"- {args.n} samples, 200 references, DDPM, 100 steps; mean ± std over seeds of the mode "
              f"TV, mean off-mode fraction. Seeds 0–{args.seeds - 1} for the default, previous-default and "
              f"preset rows, 0–{args.sweep_seeds - 1} for the sweep rows. Total run time "
              f"{time.perf_counter() - t0:.0f} s.",
              f"- Target for the default row (mean TV <= 0.10 and off-mode <= 3 % on each task): "
              f"**{'PASS' if ok else 'FAIL'}**.", "",
              "| configuration | ring 4-of-8 TV | off-mode | ring Dirichlet TV | off-mode | 100-D 4-of-8 TV | off-mode |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, per in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{cell(per[k], 'tv')} | {cell(per[k], 'off_mode', True)}"
                                                  for k in TASKS) + " |")
    lines += ["", "Unguided base rates: TV 0.50 (ring 4-of-8), 0.80 (Dirichlet), 0.50 (100-D); "
              "see toy_guidance.md.", "",
              "Why this default: reading the bandwidth once per run stops the step (∝ σ²) from growing "
              "as the batch spreads, the cause of the old blow-up at strength 3; a narrow Gaussian "
              "(0.5×) separates neighbouring modes on the ring, a wide one (2×) moves mass between "
              "far-apart modes (the Dirichlet user), and per-sample clipping keeps a strong pull from "
              "throwing samples off the modes; leaving the last 10 % of the steps to the denoiser "
              "puts the remaining stragglers back on the data. Noising the references to the current "
              "level (the reviewers' objection to comparing noisy samples with clean references) "
              "weakens the early pull and did not help here."]
    write_report(OUT, lines)
    CACHE.write_text(json.dumps({"settings": settings, **results}, indent=1) + "\n")
    PARTIAL.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

"""How far the digits FD comparison (MMD guidance on x0_hat against classifier guidance) rests on
the sample count: the benchmark's 256 samples per seed against 1,024.

    .venv/bin/python benchmarks/fd_samples.py --jobs 2   # writes results/fd_samples.md (+ .json)

Per benchmark seed (0-4, each task built as in benchmarks/images.py) and method (the
``PRESETS["digits"]`` settings), 1,024 samples are drawn in batches of 128 with the benchmark's
sampling seed. For a deterministic sampler (DDIM eta 0: the classifier preset) the first 256 are
exactly the samples of ``images.json``; with DDIM's noise (the MMD preset's eta 0.25) the step
noise follows all n initial draws from the one generator, so its first 256 are another draw of
the same distribution (``sample(per_sample_seed=True)`` would make them equal). FD to the held-out
thick digits is measured on each of the four disjoint 256-sample quarters and on all 1,024.

FD estimated from n samples is biased upward by an amount that falls like 1 / n and grows with
the feature dimension (notebook 08, exercise 1), and its spread depends on the method's own
sample distribution, so a method whose samples vary more (heavier tails in the 64-D feature
space) gains more from a larger n. The table shows how many of the 5
seeds MMD guidance wins at each sample count.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mmdg_lite import MMDGuidance
from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method
from mmdg_lite.images.features import image_features
from mmdg_lite.metrics import frechet_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import description, load_average, machine, positive_int, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("mmd x0_hat", "classifier")
QUARTER = 256  # the benchmark's samples per method and seed


def measure(method: str, seed: int, n: int) -> dict:
    """FD of ``n`` samples of one method on one seed's task, and of each 256-sample block."""
    task = digits_task(n_refs=50, seed=seed)
    settings = dict(PRESETS["digits"][method])
    kind = settings.pop("method")
    if kind == "mmd":
        settings["guidance"] = MMDGuidance(task.references, **settings["guidance"])
    r = run_method(task, kind, n=n, seed=seed, num_steps=50, scheduler="ddim", batch_size=128, **settings)
    f, g = image_features(r.images), image_features(task.target_images)  # (n, 64), (M, 64)
    blocks = [frechet_distance(f[i:i + QUARTER], g) for i in range(0, n - QUARTER + 1, QUARTER)]
    return {"method": method, "seed": seed, "fd_all": r.fd, "fd_blocks": blocks,
            "style": r.style_rate, "valid": r.valid_rate}


def render(data: dict) -> str:
    meta, rows = data["meta"], data["rows"]
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["method"], r["seed"]): r for r in rows}
    n_blocks = len(rows[0]["fd_blocks"])
    lines = [f"# Digits FD at 256 and at {meta['n']:,} samples: MMD guidance on x0_hat against classifier guidance", "",
             f"`{meta['command']}`; seeds {seeds[0]}-{seeds[-1]} (benchmarks/images.py's tasks), "
             f"{meta['n']} samples per method and seed in batches of 128, DDIM 50, the `PRESETS['digits']` "
             f"settings; block 1 is exactly the benchmark's 256 samples for the classifier (DDIM eta 0), another "
             f"draw of 256 for MMD on x0_hat (its eta 0.25 noise depends on n). Machine: {meta['machine']}; load "
             f"average at start {meta['load']:.1f}; {meta['seconds']:.0f} s.", "",
             "| seed | method | FD, each block of 256 | FD of all |", "|---|---|---|---|"]
    for s in seeds:
        for m in METHODS:
            r = by[(m, s)]
            lines.append(f"| {s} | {m} | {' / '.join(f'{v:.0f}' for v in r['fd_blocks'])} | {r['fd_all']:.0f} |")
    lines += ["", "| samples | MMD x0_hat mean FD | classifier mean FD | seeds MMD wins |", "|---|---|---|---|"]
    for b in range(n_blocks):
        mm = [by[("mmd x0_hat", s)]["fd_blocks"][b] for s in seeds]
        cl = [by[("classifier", s)]["fd_blocks"][b] for s in seeds]
        wins = sum(a < c for a, c in zip(mm, cl))
        lines.append(f"| 256 (block {b + 1}) | {statistics.mean(mm):.0f} | {statistics.mean(cl):.0f} | "
                     f"{wins} of {len(seeds)} |")
    mm = [by[("mmd x0_hat", s)]["fd_all"] for s in seeds]
    cl = [by[("classifier", s)]["fd_all"] for s in seeds]
    lines.append(f"| {meta['n']} | {statistics.mean(mm):.0f} | {statistics.mean(cl):.0f} | "
                 f"{sum(a < c for a, c in zip(mm, cl))} of {len(seeds)} |")
    spread = {m: statistics.mean(statistics.pstdev(by[(m, s)]["fd_blocks"]) for s in seeds) for m in METHODS}
    lines += ["", "Spread of FD between the 256-sample blocks of one seed (population std, mean over seeds): "
              + ", ".join(f"{m} {v:.0f}" for m, v in spread.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--n", type=positive_int, default=1024, help="samples per method and seed (a multiple of 256)")
    parser.add_argument("--seeds", type=positive_int, default=5)
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes (every run is seeded: same numbers)")
    args = parser.parse_args()
    if args.n < QUARTER or args.n % QUARTER:
        parser.error(f"argument --n: must be a positive multiple of {QUARTER}; got {args.n}")  # exit 2
    t0, load = time.perf_counter(), load_average()
    pairs = [(m, s) for s in range(args.seeds) for m in METHODS]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        rows = list(pool.map(measure, *zip(*pairs), [args.n] * len(pairs)))
    flags = "".join(f" --{k} {v}" for k, v, d in (("n", args.n, 1024), ("seeds", args.seeds, 5),
                                                  ("jobs", args.jobs, 1)) if v != d)
    data = {"meta": {"command": f".venv/bin/python benchmarks/fd_samples.py{flags}", "n": args.n,
                     "machine": machine(), "load": load[0], "seconds": time.perf_counter() - t0},
            "rows": rows}
    write_results(RESULTS / "fd_samples.md", data, render(data) + "\n")


if __name__ == "__main__":
    main()

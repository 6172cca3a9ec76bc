"""Digits: how FD to held-out thick digits moves with the number of references, for MMD guidance
on x0_hat and classifier guidance (the pixel analog of the paper's Table 4).

    .venv/bin/python benchmarks/digits_reference_count.py            # writes results/digits_reference_count.md (+ .json)
    .venv/bin/python benchmarks/digits_reference_count.py --jobs 2   # seeds split over two processes (same numbers)

Issue 9 compares the methods at 50 references, where MMD guidance on x0_hat loses one seed of five
to classifier guidance (benchmarks/results/images.md). Is that the method or the 50 references?
Per seed (0-4): ``digits_task(n_refs=200, seed)`` draws 200 thick test digits as references, 20
of each class in round-robin order, so that the first n of them are class-balanced for every n
here; the other 300 test digits, thickened, are the targets of every row of that seed (so FD at 50
references differs from images.md, whose targets are the other 450). For n = 10, 25, 50, 100, 200:
MMD on x0_hat and classifier guidance, each with ``PRESETS["digits"]`` (calibrated at 50, not
re-tuned per n), toward the first n references; 256 samples in batches of 128, DDIM 50, the
seed's sampling seed. Two rows bound the table from below:

* real: 256 real thick digits of the training split (as in benchmarks/style_ceiling.py), FD to
  the same 300 targets; FD's finite-sample floor.
* rejection sampling: the base model's own thick digits, the first 256 unguided samples that
  ``detect_thick`` accepts (``style_ceiling.own_style_samples``, as in benchmarks/style_ceiling.py),
  FD to the same 300 targets: what a method that only selects the model's thick digits reaches.
* MMD toward the targets: guidance with the 300 targets themselves as references. It leaks the
  FD targets into the sampler, so it is no method: it shows how far pixel-kernel MMD guidance can
  move this base model when references are plentiful.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from mmdg_lite import MMDGuidance
from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method
from mmdg_lite.images.features import image_features
from mmdg_lite.metrics import frechet_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, map_jobs, parse_jobs, write_results  # noqa: E402
from style_ceiling import own_style_samples, real_style_images  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)
COUNTS = (10, 25, 50, 100, 200)
N = 256  # samples per FD, as in benchmarks/images.py
METHODS = ("mmd x0_hat", "classifier")
ORACLE = "MMD toward the targets (leaks them)"
OWN = "rejection sampling (the model's own thick digits)"


def _run(task, method: str, refs: torch.Tensor, seed: int) -> dict[str, float]:
    """One preset toward ``refs``; FD to the task's targets."""
    kw = dict(PRESETS["digits"][method])
    kind = kw.pop("method")
    guidance = MMDGuidance(refs, **kw.pop("guidance")) if kind == "mmd" else None
    task.references = task.reference_images = refs  # the classifier baseline trains on task.references
    r = run_method(task, kind, n=N, seed=seed, num_steps=50, guidance=guidance, batch_size=128, **kw)
    return {"fd": r.fd, "style": r.style_rate, "valid": r.valid_rate}


def seed_rows(seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """{row: {count: measures}} for one seed."""
    torch.set_num_threads(1)
    task = digits_task(n_refs=max(COUNTS), seed=seed)
    pool, targets = task.references, task.target_images  # (200, 1, 16, 16), (300, 1, 16, 16)
    rows: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    for n in COUNTS:
        for m in METHODS:
            rows[m][str(n)] = _run(task, m, pool[:n], seed)
            print(seed, m, n, {k: round(v, 3) for k, v in rows[m][str(n)].items()}, flush=True)
    rows[ORACLE] = {str(len(targets)): _run(task, "mmd x0_hat", targets, seed)}
    real = real_style_images("digits", seed)  # (N, 1, 16, 16) thickened training digits
    rows["real"] = {"-": {"fd": frechet_distance(image_features(real), image_features(targets)),
                          "style": float("nan"), "valid": float("nan")}}
    own, _ = own_style_samples(task, seed)
    rows[OWN] = {"-": {"fd": frechet_distance(image_features(own), image_features(targets)),
                       "style": 1.0, "valid": float(task.is_valid(own).float().mean())}}
    print(seed, ORACLE, rows[ORACLE], "real", rows["real"], OWN, rows[OWN], flush=True)
    return rows


def render(data: dict) -> str:
    meta, per_seed = data["meta"], data["seeds"]

    def col(row: str, count: str, key: str) -> list[float]:
        return [per_seed[str(s)][row][count][key] for s in SEEDS]

    lines = ["# Digits: FD against the number of references, MMD guidance on x0_hat and classifier guidance", "",
             f"`{meta['command']}`; machine: {meta['machine']}; load average at start {meta['load']:.1f}; "
             f"{meta['seconds']:.0f} s. Seeds {SEEDS[0]}-{SEEDS[-1]}: per seed 200 thick test digits as the "
             "reference pool (20 per class, round-robin, so the first n are class-balanced) and the other 300, "
             "thickened, as the FD targets of every row; 256 samples in batches of 128, DDIM 50, "
             "`PRESETS['digits']` (calibrated at 50 references, not re-tuned per count). FD in the project's "
             "feature space (stands in for DINOv2, not Inception); at 50 references it differs from "
             "images.md, whose targets are 450 other digits.", "",
             "| references | MMD on x0_hat: FD, mean (per seed) | classifier: FD, mean (per seed) | "
             "seeds MMD wins | thick rate MMD / classifier | valid MMD / classifier |", "|---|---|---|---|---|---|"]
    for n in map(str, COUNTS):
        fm, fc = col("mmd x0_hat", n, "fd"), col("classifier", n, "fd")
        wins = sum(a < b for a, b in zip(fm, fc))
        lines.append(
            f"| {n} | {statistics.mean(fm):.0f} ({' / '.join(f'{v:.0f}' for v in fm)}) | "
            f"{statistics.mean(fc):.0f} ({' / '.join(f'{v:.0f}' for v in fc)}) | {wins} of {len(SEEDS)} | "
            f"{statistics.mean(col('mmd x0_hat', n, 'style')):.3f} / {statistics.mean(col('classifier', n, 'style')):.3f} | "
            f"{statistics.mean(col('mmd x0_hat', n, 'valid')):.3f} / {statistics.mean(col('classifier', n, 'valid')):.3f} |")
    lines += ["", "| bound | references | FD to the same targets, mean (per seed) |", "|---|---|---|"]
    for row, refs in (("real", "none: 256 real thick digits (training split)"),
                      (OWN, "none: unguided samples kept by `detect_thick`"),
                      (ORACLE, "the 300 targets themselves")):
        f = col(row, next(iter(per_seed[str(SEEDS[0])][row])), "fd")
        lines.append(f"| {row} | {refs} | {statistics.mean(f):.0f} ({' / '.join(f'{v:.0f}' for v in f)}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    jobs = parse_jobs()
    t0, load = time.perf_counter(), load_average()
    measured = map_jobs(seed_rows, SEEDS, jobs)
    data = {"meta": {"command": ".venv/bin/python benchmarks/digits_reference_count.py"
                                + (" --jobs 2" if jobs == 2 else ""),
                     "machine": machine(), "load": load[0], "seconds": time.perf_counter() - t0},
            "seeds": {str(s): r for s, r in measured.items()}}
    write_results(RESULTS / "digits_reference_count.md", data, render(data))


if __name__ == "__main__":
    main()

"""Images: what a user who tunes nothing gets, ``MMDGuidance(references)`` on the shipped models.

    .venv/bin/python benchmarks/images_untuned.py            # writes results/images_untuned.md (+ .json)
    .venv/bin/python benchmarks/images_untuned.py --jobs 2   # the two domains in two processes (same numbers)

benchmarks/images.py measures the calibrated presets (``PRESETS``). Here the same tasks (seeds 0-4,
50 references, 256 samples in batches of 128, DDIM 50 at eta 0) run with the guidance object's
defaults: ``MMDGuidance(task.references)`` (the sampler's x_t, the two-scale Gaussian, clipped
steps, the last 10 % of the steps unguided), and the same with ``eval_point="x0_hat"`` alone
changed. The issue-9 measures (target rate >= 2x unguided and >= 0.7; valid >= 0.93) are checked
on these rows too; the presets' and the classifier's rows are read from images.json, so that the
table sets the untuned rows beside them without re-running them.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from mmdg_lite.images.adaptation import digits_task, shapes_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, map_jobs, parse_jobs, write_results  # noqa: E402
from images import adaptation_rows  # noqa: E402  (benchmarks/images.py: the seed x setting loop)

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)
N, BATCH = 256, 128  # as benchmarks/images.py
# label -> run settings: MMDGuidance(task.references, **guidance), nothing else given
ROWS = {"untuned `MMDGuidance(refs)`": {"method": "mmd", "guidance": {}},
        "untuned, `eval_point=\"x0_hat\"`": {"method": "mmd", "guidance": {"eval_point": "x0_hat"}}}
PRESET_ROWS = ("unguided", "mmd x_t", "mmd x0_hat", "classifier")  # read from images.json, both domains
TASKS = {"digits": digits_task, "shapes": shapes_task}


def measure(domain: str) -> dict[str, dict[str, list[float]]]:
    """{row: {measure: [per seed]}} for the untuned rows of one domain; any warning is an error."""
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an untuned run must not need a warning to be right
        return adaptation_rows(TASKS[domain], ROWS, SEEDS, N, num_steps=50, batch_size=BATCH)


def _cell(v: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def render(data: dict) -> str:
    meta = data["meta"]
    lines = ["# Images: the untuned defaults beside the calibrated presets", "",
             f"`{meta['command']}`; machine: {meta['machine']}; load average at start {meta['load']:.1f}; "
             f"{meta['seconds']:.0f} s. Seeds {SEEDS[0]}-{SEEDS[-1]} (benchmarks/images.py's tasks), 50 references, "
             f"{N} samples in batches of {BATCH}, DDIM 50 at eta 0. Untuned rows: `MMDGuidance(task.references)` "
             "with nothing else given (x_t, two-scale Gaussian, clipped steps, last 10 % unguided), and the same "
             "with `eval_point=\"x0_hat\"`; every warning raised as an error. Other rows: "
             "benchmarks/results/images.json (the presets, `PRESETS`, each at its own DDIM eta: 0.25 for digits' x0_hat). "
             "valid and class TV as in images.md (class TV: the content classes' histogram against uniform; a "
             f"uniform sampler of {N} shows about 0.075 for 10 classes, 0.035 for 3). Mean (min–max over seeds).", ""]
    for domain, style in (("digits", "thick"), ("shapes", "outlined")):
        rows = {**{k: data["presets"][domain][k] for k in PRESET_ROWS}, **data[domain]}
        base = statistics.mean(rows["unguided"]["style"])
        lines += [f"## {domain}", "",
                  f"| method | {style} rate | valid | class TV | FD to target | rate >= 2x unguided and >= 0.7 | "
                  "valid >= 0.93 |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            rate, valid = statistics.mean(r["style"]), statistics.mean(r["valid"])
            checks = ("", "") if name == "unguided" else (
                "yes" if rate >= max(2 * base, 0.7) else "no", "yes" if valid >= 0.93 else "no")
            lines.append(f"| {name} | {_cell(r['style'])} | {_cell(r['valid'])} | {_cell(r['class_tv'])} | "
                         f"{_cell(r['fd'], 0)} | {checks[0]} | {checks[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    jobs = parse_jobs()
    t0, load = time.perf_counter(), load_average()
    rows = map_jobs(measure, TASKS, jobs)
    images = json.loads((RESULTS / "images.json").read_text())
    presets = {d: {k: images[d][k] for k in PRESET_ROWS} for d in TASKS}
    data = {"meta": {"command": ".venv/bin/python benchmarks/images_untuned.py"
                                + (f" --jobs {jobs}" if jobs > 1 else ""),
                     "machine": machine(), "load": load[0], "seconds": time.perf_counter() - t0},
            **rows, "presets": presets}
    write_results(RESULTS / "images_untuned.md", data, render(data) + "\n")


if __name__ == "__main__":
    main()

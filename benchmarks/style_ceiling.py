"""What the base models allow: how close their own target-style samples come to the targets.

    .venv/bin/python benchmarks/style_ceiling.py            # writes benchmarks/results/style_ceiling.md (+ .json)
    .venv/bin/python benchmarks/style_ceiling.py --jobs 2   # the two domains in two processes (same numbers)

Issue 9's measures compare guided samples with held-out target-style images. A guidance method
steers the base model; it cannot draw better target-style images than the model can. This
measures that ceiling per benchmark seed (0-4, each seed's task as in benchmarks/images.py):

* real: 256 real target-style images that are not the targets (digits: the thickened training
  split; shapes: outlined shapes drawn with seed 3000 + seed), FD to the task's targets. The
  floor of FD at 256 samples, which the metric's finite-sample bias keeps above 0.
* rejection sampling: unguided samples of the shipped model (sampling seed 20000 + seed, DDIM
  50), keeping the first 256 that the detector calls target-style. This draws from the base
  model's own target-style distribution, which is what a guidance method toward the style
  aims at, at the price of ~1 / (style rate) draws per kept sample and a detector for the style.
* the unguided, MMD and classifier rows are read from benchmarks/results/images.json (same seeds, 256
  samples, DDIM 50), not re-run.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmdg_lite import sample
from mmdg_lite.images import make_shapes
from mmdg_lite.images.adaptation import digits_task, shapes_task
from mmdg_lite.images.digits import load_digit_set
from mmdg_lite.images.features import image_features
from mmdg_lite.metrics import frechet_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, map_jobs, parse_jobs, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4)
N = 256            # samples per FD, as in benchmarks/images.py
DRAW = 512         # unguided samples per sampling batch of the rejection sampler
MAX_DRAWS = 8192   # give up (and say so) past this many unguided samples
COMPARED = {"digits": ("unguided", "mmd x0_hat", "classifier"),
            "shapes": ("unguided", "mmd x_t", "mmd x0_hat", "classifier")}


def real_style_images(domain: str, seed: int) -> torch.Tensor:
    """N real target-style images that are not the task's targets (the "real" row)."""
    if domain == "digits":  # the pretraining split, every digit thickened (the targets: the test split's)
        train = load_digit_set("train", style_fraction=1.0).images
        return train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:N]]
    return make_shapes(N, {"fill": {"outlined": 1.0}}, seed=3000 + seed).images


def own_style_samples(task, seed: int) -> tuple[torch.Tensor, int]:
    """Rejection sampling: the first N unguided samples (sampling seeds 20000 + 100 seed + batch,
    DDIM 50) that the task's detector calls target-style, as images, and how many were drawn."""
    kept, drawn, batch = [], 0, 0
    while sum(len(k) for k in kept) < N and drawn < MAX_DRAWS:
        z = sample(task.denoiser, DRAW, task.shape, scheduler="ddim", num_steps=50,
                   seed=20_000 + 100 * seed + batch, batch_size=DRAW).samples
        images = task.decode(z)  # (DRAW, C, H, W)
        kept.append(images[task.has_style(images)])
        drawn, batch = drawn + DRAW, batch + 1
    own = torch.cat(kept)[:N]
    if len(own) < N:
        raise RuntimeError(f"{task.name} seed {seed}: only {len(own)} target-style samples in {drawn} draws")
    return own, drawn


def domain_rows(domain: str) -> dict:
    torch.set_num_threads(1)
    rows: dict[str, dict[str, list[float]]] = {k: {"fd": [], "valid": [], "draws": []}
                                               for k in ("real", "rejection sampling")}
    for seed in SEEDS:
        task = (digits_task if domain == "digits" else shapes_task)(n_refs=50, seed=seed)
        targets = image_features(task.target_images)  # (M, F)
        real = real_style_images(domain, seed)
        for k, v in (("fd", frechet_distance(image_features(real), targets)),
                     ("valid", float(task.is_valid(real).float().mean())), ("draws", float(N))):
            rows["real"][k].append(v)
        own, drawn = own_style_samples(task, seed)
        for k, v in (("fd", frechet_distance(image_features(own), targets)),
                     ("valid", float(task.is_valid(own).float().mean())), ("draws", float(drawn))):
            rows["rejection sampling"][k].append(v)
        print(domain, seed, {name: {k: round(v[-1], 3) for k, v in r.items()} for name, r in rows.items()},
              flush=True)
    return rows


def render(data: dict) -> str:
    meta = data["meta"]
    lines = ["# What the base models allow: their own target-style samples", "",
             f"`{meta['command']}`; machine: {meta['machine']}; load average at start {meta['load']:.1f}; "
             f"{meta['seconds']:.0f} s. Seeds {SEEDS[0]}-{SEEDS[-1]} (each seed's task as in "
             "benchmarks/images.py), 256 samples per FD in the project's feature space, DDIM 50. "
             "Rejection sampling: unguided samples the detector calls target-style (thick / outlined), "
             "the first 256; its draws are the unguided samples it needed. Unguided, MMD and classifier rows: "
             "benchmarks/results/images.json.", ""]
    for domain in ("digits", "shapes"):
        rows = {**data[domain], **{m: data["images"][domain][m] for m in COMPARED[domain]}}
        lines += [f"## {domain}", "", "| images | FD to the targets, mean (per seed) | valid, mean (per seed) | "
                  "samples drawn per seed |", "|---|---|---|---|"]
        for name, r in rows.items():
            fd = " / ".join(f"{v:.0f}" for v in r["fd"])
            valid = " / ".join(f"{v:.3f}" for v in r["valid"])
            draws = f"{statistics.mean(r['draws']):.0f}" if "draws" in r else str(meta["images_n"])
            lines.append(f"| {name} | {statistics.mean(r['fd']):.0f} ({fd}) | "
                         f"{statistics.mean(r['valid']):.3f} ({valid}) | {draws} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    jobs = parse_jobs()
    t0, load = time.perf_counter(), load_average()
    domains = ("digits", "shapes")
    measured = map_jobs(domain_rows, domains, jobs)
    images = json.loads((RESULTS / "images.json").read_text())
    data = {"meta": {"command": ".venv/bin/python benchmarks/style_ceiling.py"
                                + (" --jobs 2" if jobs == 2 else ""),
                     "machine": machine(), "load": load[0], "seconds": time.perf_counter() - t0,
                     "images_n": images["meta"]["n_adapt"]},  # samples per seed of the images.json rows
            **measured, "images": {d: {m: images[d][m] for m in COMPARED[d]} for d in domains}}
    write_results(RESULTS / "style_ceiling.md", data, render(data) + "\n")


if __name__ == "__main__":
    main()

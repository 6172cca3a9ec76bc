"""Does a kernel on learned features guide digits better than the pixel kernel? (issue 9's FD measure)

    .venv/bin/python benchmarks/feature_kernels.py            # writes benchmarks/results/feature_kernels.md (+ .json)
    .venv/bin/python benchmarks/feature_kernels.py --jobs 2   # two processes (same numbers)

FD is measured in a learned feature space, while the digits preset compares raw pixels. So a
natural idea is MMD guidance with ``FeatureKernel``: a Gaussian kernel on the embeddings of a
network, differentiated through it. Three feature maps, all on MMD guidance at x0_hat:

* random CNN: a small CNN (3x3 conv 32, then stride-2 convs 32 and 64), random weights (seed 0),
  never trained;
* digits UNet encoder: the shipped pixel UNet's down blocks and mid block at t = 0 (the
  pretrained model's own features);
* evaluation feature net: the network FD itself uses. This leaks the evaluation space into the
  sampler, so it is a diagnostic (the most this idea could give), never a candidate preset.

Each with a Gaussian kernel at the median bandwidth in feature space, recomputed every step
(``bandwidth_update="step"``), and the norm-matched step at a few strengths alpha. The pixel
preset (``PRESETS["digits"]["mmd x0_hat"]``), run at DDIM eta 0 like the other rows, is the reference row. Calibration seeds 100-101
(never the benchmark's 0-4), 128 samples per seed in one batch, DDIM 50, 50 references.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

from mmdg_lite import MMDGuidance
from mmdg_lite.guidance import GuidanceDivergenceError
from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method
from mmdg_lite.kernels import FeatureKernel, GaussianKernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import description, load_average, machine, positive_int, write_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "feature_kernels.md"
SEEDS = (100, 101)
N = 128
ALPHAS = (0.03, 0.05, 0.1)
MAPS = {"random CNN": "random", "digits UNet encoder (t = 0)": "unet",
        "evaluation feature net (leaks the FD space)": "eval"}


def _random_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
                         nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),      # 8x8
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),      # 4x4
                         nn.Flatten()).eval().requires_grad_(False)


def _unet_encoder(unet):
    """(N, 1, 16, 16) -> the down blocks' and the mid block's activations at t = 0, flattened."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        emb = unet.time_embedding(unet.time_proj(torch.zeros(len(x), dtype=torch.long)).to(x.dtype))
        h, feats = unet.conv_in(x), []
        for block in unet.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
            feats.append(h.flatten(1))
        feats.append(unet.mid_block(h, emb).flatten(1))
        return torch.cat(feats, 1)  # (N, 16*8*8 + 32*4*4 + 64*2*2 + 64*2*2)

    return encode


def _feature_map(kind: str, task):
    if kind == "random":
        return _random_cnn()
    if kind == "unet":
        return _unet_encoder(task.denoiser.unet)
    from mmdg_lite.images.features import load_feature_net

    net = load_feature_net()
    return lambda x: net.features(x.float())


def settings() -> list[tuple[str, float | None]]:
    return [("pixels (the x0_hat preset at DDIM eta 0)", None)] + [(name, a) for name in MAPS for a in ALPHAS]


def run_one(job: tuple[str, float | None, int]) -> dict:
    name, alpha, seed = job
    torch.set_num_threads(1)
    task = digits_task(n_refs=50, seed=seed)
    if alpha is None:
        hook = MMDGuidance(task.references, **PRESETS["digits"]["mmd x0_hat"]["guidance"])
    else:
        kernel = FeatureKernel(_feature_map(MAPS[name], task), task.shape, GaussianKernel())
        hook = MMDGuidance(task.references, kernel=kernel, strength=alpha, normalization="norm_matched",
                           eval_point="x0_hat", strength_scale="none", schedule="constant", start=0.0,
                           stop=0.9, bandwidth_update="step", estimator="biased", generated_set="batch")
    t0 = time.perf_counter()
    try:
        r = run_method(task, "mmd", n=N, seed=seed, num_steps=50, guidance=hook, batch_size=N)
    except GuidanceDivergenceError as e:
        return dict(name=name, alpha=alpha, seed=seed, diverged=str(e).split(" (")[0])
    out = dict(name=name, alpha=alpha, seed=seed, fd=r.fd, style=r.style_rate, valid=r.valid_rate,
               class_tv=r.class_tv, seconds=time.perf_counter() - t0)
    print(out, flush=True)
    return out


def render(data: dict) -> str:
    m = data["meta"]
    lines = ["# Digits: MMD guidance on x0_hat with kernels on learned features", "",
             f"Generated by `{m['command']}`; do not edit by hand.", "",
             f"- Machine: {m['machine']}; torch {m['torch']}; one thread per process, {m['jobs']} "
             f"process(es); load average at start {m['load'][0]:.2f}; {m['seconds']:.0f} s in all",
             f"- Calibration seeds {', '.join(map(str, m['seeds']))} (task references and sampling seed), "
             f"{m['n']} samples per seed in one batch, DDIM 50, 50 thick references. Feature kernels: Gaussian "
             "at the median bandwidth in feature space, recomputed every step, norm-matched step of "
             "strength alpha; differentiated through the network.",
             "- FD to the held-out thick digits in the project's feature space (lower is better); thick = "
             "target-style rate; valid = `detect_valid_digit` (the feature net's digit head >= 50 % "
             "confident, features typical of real digits).", "",
             "| kernel on | alpha | FD, mean (per seed) | thick | valid | s per run |",
             "|---|---|---|---|---|---|"]
    for name, alpha in settings():
        runs = [r for r in data["runs"] if r["name"] == name and r["alpha"] == alpha]
        ok = [r for r in runs if "fd" in r]
        a = "preset" if alpha is None else f"{alpha:g}"
        if len(ok) < len(runs):
            bad = [r for r in runs if "fd" not in r]
            lines.append(f"| {name} | {a} | diverged on seed {bad[0]['seed']}: {bad[0]['diverged']} | | | |")
            continue
        fd = " / ".join(f"{r['fd']:.0f}" for r in ok)
        mean = lambda k: statistics.mean(r[k] for r in ok)  # noqa: E731
        lines.append(f"| {name} | {a} | {mean('fd'):.0f} ({fd}) | {mean('style'):.3f} | {mean('valid'):.3f} "
                     f"| {mean('seconds'):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--jobs", type=positive_int, default=1, help="processes (each one torch thread)")
    args = ap.parse_args()
    load, t0 = load_average(), time.perf_counter()
    jobs = [(name, a, s) for name, a in settings() for s in SEEDS]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(j) for j in jobs]
    cmd = "python benchmarks/feature_kernels.py" + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    data = {"meta": dict(command=cmd, machine=machine(), torch=torch.__version__, jobs=args.jobs, load=load,
                         seconds=time.perf_counter() - t0, seeds=list(SEEDS), n=N),
            "runs": runs}
    write_results(OUT, data, render(data))


if __name__ == "__main__":
    main()

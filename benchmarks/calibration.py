"""How the image presets were chosen: every candidate setting on seeds the benchmark never uses.

    .venv/bin/python benchmarks/calibration.py --domain shapes   # writes results/calibration_shapes.md (+ .json)
    .venv/bin/python benchmarks/calibration.py --domain digits
    .venv/bin/python benchmarks/calibration.py --domain shapes --render   # re-render the .md from its .json

Seeds 100-103 (the task's references and the sampling seed; disjoint from benchmarks/images.py's
0-4), 128 samples each in one batch (MMD guidance sees the batch), DDIM 50 (the benchmark's). Each
method gets a small sweep and one rule per domain picks its preset (``pick``):

* digits: every setting keeps >= 97 % valid, so the lowest mean FD to held-out thick digits;
* shapes, where the realism bound of issue 9 (>= 93 % valid) binds, two presets per guidance
  method: "mmd x_t" and "classifier" the lowest mean FD among the settings with mean valid
  >= 0.93 (where none reaches it, the highest valid), "mmd x0_hat" and "classifier best FD" the
  lowest mean FD of all.

The classifier's scale is swept like MMD's strength: the method and its baseline get the same search.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method, shapes_task
from mmdg_lite.kernels import GaussianKernel, MultiGaussianKernel, PolynomialKernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, description, load_average, machine, positive_int, write_results  # noqa: E402
from images import adaptation_rows  # noqa: E402  (benchmarks/images.py: the seed x setting loop)

SEEDS = (100, 101, 102, 103)
VALID_BOUND = 0.93
RESULTS = Path(__file__).resolve().parent / "results"


def _mmd(base: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {"method": "mmd", "guidance": {**base, **change}}


def candidates(domain: str) -> dict[str, dict[str, dict[str, Any]]]:
    """method -> {label: run settings}: each label names its kernel and strength; the other knobs
    are the presets' (``PRESETS``, which fix every knob that shapes the step)."""
    if domain == "digits":
        x0 = PRESETS["digits"]["mmd x0_hat"]["guidance"]
        return {
            "mmd x0_hat": {
                **{f"gauss {m} x median, strength {s}": _mmd(x0, kernel=GaussianKernel(median_scale=m), strength=s)
                   for m, s in ((0.5, 1.0), (0.5, 1.5), (0.5, 2.0), (0.35, 1.5), (0.35, 2.0), (0.7, 1.5))},
                # the library's default kernel family (displacement-weighted Gaussians): its strength is
                # a fraction of the summed displacement of all bandwidths, so it diverges above about 0.5
                **{f"multi-gauss {'/'.join(map(str, sc))} x median, strength {s}":
                   _mmd(x0, kernel=MultiGaussianKernel(scales=sc, weighting="displacement"), strength=s)
                   for sc, s in (((0.5, 1.0, 2.0), 0.3), ((0.25, 0.5, 1.0), 0.5))},
                # DDIM's noise (eta > 0) removes the speckled samples that the deterministic sampler
                # leaves (data/README.md, digits_unet); each method gets the same two eta values
                **{f"gauss 0.5 x median, strength 1.5, DDIM eta {e}":
                   {**_mmd(x0, kernel=GaussianKernel(median_scale=0.5), strength=1.5), "eta": e} for e in (0.25, 0.5)}},
            "classifier": {**{f"scale {c}": {"method": "classifier", "classifier_scale": c}
                              for c in (1.5, 2.0, 2.5, 3.0)},
                           **{f"scale 2.5, DDIM eta {e}": {"method": "classifier", "classifier_scale": 2.5, "eta": e}
                              for e in (0.25, 0.5)}},
        }
    xt = PRESETS["shapes"]["mmd x_t"]["guidance"]
    x0 = PRESETS["shapes"]["mmd x0_hat"]["guidance"]
    return {
        "mmd x_t": {**{f"gauss 0.5 x median, alpha {a}": _mmd(xt, kernel=GaussianKernel(median_scale=0.5), strength=a)
                       for a in (0.05, 0.1, 0.15, 0.2)},
                    **{f"cubic, alpha {a}": _mmd(xt, kernel=PolynomialKernel(), strength=a) for a in (0.1, 0.15)}},
        "mmd x0_hat": {**{f"cubic, alpha {a}": _mmd(x0, kernel=PolynomialKernel(), strength=a) for a in (0.03, 0.05, 0.1)},
                       **{f"gauss 0.5 x median, alpha {a}": _mmd(x0, kernel=GaussianKernel(median_scale=0.5),
                                                                 strength=a) for a in (0.05, 0.1)}},
        "classifier": {f"scale {c}": {"method": "classifier", "classifier_scale": c} for c in (2.0, 3.0, 5.0, 7.0)},
    }


# preset -> (the method whose sweep it picks from, rule): "fd" the lowest mean FD, "bound" the
# lowest mean FD among settings with mean valid >= VALID_BOUND (else the highest valid)
KEEP = {"digits": {"mmd x0_hat": ("mmd x0_hat", "fd"), "classifier": ("classifier", "fd")},
        "shapes": {"mmd x_t": ("mmd x_t", "bound"), "mmd x0_hat": ("mmd x0_hat", "fd"),
                   "classifier": ("classifier", "bound"), "classifier best FD": ("classifier", "fd")}}


def pick(rows: dict[str, dict[str, list[float]]], rule: str) -> str:
    """The label ``rule`` ("fd" or "bound") keeps among one method's measured settings."""
    mean = {label: {k: statistics.mean(v) for k, v in r.items()} for label, r in rows.items()}
    within = [label for label, m in mean.items() if m["valid"] >= VALID_BOUND] if rule == "bound" else list(mean)
    if not within:
        return max(mean, key=lambda label: mean[label]["valid"])
    return min(within, key=lambda label: mean[label]["fd"])


def render(data: dict) -> str:
    meta = data["meta"]
    rule = ("the lowest mean FD" if meta["domain"] == "digits" else
            f"`mmd x_t` and `classifier`: the lowest mean FD among settings with mean valid >= {VALID_BOUND} "
            "(else the highest valid); `mmd x0_hat` and `classifier best FD`: the lowest mean FD")
    lines = [f"# Calibration of the {meta['domain']} presets", "",
             f"`{meta['command']}`; seeds {SEEDS[0]}-{SEEDS[-1]} (never used by benchmarks/images.py), {meta['n']} "
             f"samples per seed in one batch, DDIM {meta['num_steps']} steps (eta 0 unless a setting names it), 50 "
             f"references. Rule: {rule}. Machine: {meta['machine']}; load average at start {meta['load']:.1f}; "
             f"{meta['seconds']:.0f} s.", ""]
    for method, rows in data["rows"].items():
        lines += [f"## {method}", "", "| setting | target-style rate | valid | FD to target (per seed) | kept as |",
                  "|---|---|---|---|---|"]
        for label, r in rows.items():
            fd = " / ".join(f"{v:.0f}" for v in r["fd"])
            kept = ", ".join(f"**{p}**" for p, lab in data["kept"].items() if lab == label and
                             KEEP[meta["domain"]][p][0] == method)
            lines.append(f"| {label} | {statistics.mean(r['style']):.3f} | {statistics.mean(r['valid']):.3f} | "
                         f"{statistics.mean(r['fd']):.0f} ({fd}) | {kept} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--domain", choices=("digits", "shapes"), required=True)
    parser.add_argument("--n", type=positive_int, default=None, help="samples per seed, in one batch (default 128)")
    parser.add_argument("--render", action="store_true",
                        help="re-render results/calibration_DOMAIN.md from its committed .json (no sampling)")
    args = parser.parse_args()
    out = RESULTS / f"calibration_{args.domain}.md"
    if args.render and args.n is not None:  # the table keeps the sample count it ran with
        parser.error(f"argument --n: --render re-renders the committed run; got --n {args.n}")
    args.n = args.n or 128
    if args.render:
        out.write_text(render(json.loads(out.with_suffix(".json").read_text())) + "\n")
        print(f"wrote {out}")
        return
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), load_average()
    task_fn = digits_task if args.domain == "digits" else shapes_task
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method, settings in candidates(args.domain).items():  # one method's sweep, each seed's task built once
        swept = adaptation_rows(task_fn, settings, SEEDS, args.n, num_steps=50, batch_size=args.n)
        rows[method] = {label: {k: r[k] for k in ("style", "valid", "fd")} for label, r in swept.items()}
    data = {"meta": {"command": command_line(".venv/bin/python"),
                     "domain": args.domain, "n": args.n, "num_steps": 50,
                     "machine": machine(), "load": load[0], "seconds": time.perf_counter() - t0},
            "rows": rows, "kept": {p: pick(rows[m], rule) for p, (m, rule) in KEEP[args.domain].items()}}
    write_results(out, data, render(data) + "\n")


if __name__ == "__main__":
    main()

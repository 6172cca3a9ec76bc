"""MMD guidance on the paper's synthetic tasks: alignment targets over seeds, variants, cost.

    python benchmarks/toy_guidance.py            # writes benchmarks/results/toy_guidance.md
    python benchmarks/toy_guidance.py --quick    # 2 seeds, 500 samples (a smoke run; no file)

Tasks (``mmdg_lite.toys.tasks.make_task``; the seed picks the user's modes, the 200
references and the held-out target samples, and seeds the sampler):
  ring2d_4modes     8-mode ring, shipped MLP denoiser; user = 4 random modes, uniform.
  ring2d_dirichlet  8-mode ring; user = 2 random modes, weights ~ Dirichlet(1, 10) (Fig. 3).
  gmm100d_4modes    8 random means in 100-D, exact mixture denoiser; user = 4 modes (Fig. 2).
Guidance: ``mmdg_lite.toys.tasks.task_guidance`` (the calibrated ``GUIDANCE_PRESETS``),
DDPM with 100 steps, 1,000 samples, the batch guided jointly. Every run asserts that all
samples are finite (``evaluate`` raises otherwise). Variant rows change one knob of the
ring2d_4modes configuration. Targets (PASS/FAIL, on the mean over seeds):
  ring2d_4modes   TV <= 0.08 and off-mode <= 3 %;   ring2d_dirichlet  TV <= 0.10;
  gmm100d_4modes  TV <= 0.08 and FD to held-out target samples >= 80 % lower than unguided.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import description, load_average, positive_int, quick_defaults, report_header  # noqa: E402
from mmdg_lite import GaussianKernel, MMDGuidance, PolynomialKernel, sample  # noqa: E402
from mmdg_lite.toys.tasks import GUIDANCE_PRESETS, evaluate, make_task, task_guidance  # noqa: E402
from mmdg_lite.metrics import frechet_distance  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "toy_guidance.md"
TASK_NAMES = ("ring2d_4modes", "ring2d_dirichlet", "gmm100d_4modes")
METRICS = ("tv", "off_mode", "fd", "kd", "coverage")
STEPS = 100


def variants() -> dict[str, tuple[Callable[[Any], Any], int | None, int | None]]:
    """label -> (hook factory on a task, n samples or None = default, seeds or None = all).

    One knob of the ring2d_4modes preset changes per row. Memory mode runs one sample at a
    time (about 0.2 s per sample on one core), so it uses 200 samples and 3 seeds.
    """
    def preset(**kw):
        return lambda task: task_guidance(task, **kw)

    return {
        "preset (Gaussian 0.5 x median, c = 3, clipped 0.2, x_t, batch)": (preset(), None, None),
        "library default: MMDGuidance(refs) (Gaussians at 0.5 / 2 x the data scale, c = 1, clipped)": (
            lambda t: MMDGuidance(t.references), None, None),
        "median-bandwidth Gaussian, c = 1, no clipping, every step guided": (
            lambda t: MMDGuidance(t.references, kernel=GaussianKernel(), strength=1.0, normalization="none",
                                  stop=1.0), None, None),
        "eval_point = x_prev (reference code's point)": (preset(eval_point="x_prev"), None, None),
        "eval_point = x0_hat (Tweedie, eps detached)": (preset(eval_point="x0_hat"), None, None),
        "eval_point = x0_hat_backprop": (preset(eval_point="x0_hat_backprop"), None, None),
        "cubic polynomial (KID) kernel, c = 10, clipped 0.2": (
            preset(kernel=PolynomialKernel(), strength=10.0), None, None),
        "norm-matched step, alpha = 0.1 (Gaussian 0.5 x median)": (
            preset(normalization="norm_matched", strength=0.1), None, None),
        "generated_set = memory (one at a time, <= 99 finished)": (
            preset(generated_set="memory"), 200, 3),
    }


def fmt(values: list[float], digits: int = 3, pct: bool = False) -> str:
    if not values:
        return "—"
    scale = 100.0 if pct else 1.0
    m = statistics.mean(values) * scale
    s = (statistics.stdev(values) * scale) if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (" %" if pct else "")


def run_one(task, hook, n: int, seed: int, full: bool = True) -> dict[str, float]:
    t0 = time.perf_counter()
    x = sample(task.denoiser, n, task.dim, num_steps=STEPS, guidance=hook, seed=seed).samples
    res = evaluate(x, task, full=full)  # raises FloatingPointError on any non-finite sample
    res["seconds"] = time.perf_counter() - t0
    res["samples"] = x
    return res


def wall_time_ratio(repeats: int = 3) -> dict[str, float]:
    """Guided / unguided sampling time, B = 256, 200 references, 100 DDPM steps (2-D MLP)."""
    task = make_task("ring2d_4modes", seed=0)
    out = {}
    for label, factory in (("unguided", lambda: None), ("guided", lambda: task_guidance(task))):
        times = []
        for r in range(repeats + 1):  # first run is a warm-up
            t0 = time.perf_counter()
            sample(task.denoiser, 256, 2, num_steps=STEPS, guidance=factory(), seed=r)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times[1:])
    task = make_task("gmm100d_4modes", seed=0)
    for label, factory in (("unguided_100d", lambda: None), ("guided_100d", lambda: task_guidance(task))):
        times = []
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            sample(task.denoiser, 256, 100, num_steps=STEPS, guidance=factory(), seed=r)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--seeds", type=positive_int, default=None, help="default 5 (--quick: 2)")
    ap.add_argument("--n", type=positive_int, default=None, help="generated samples per run (default 1000; "
                    "--quick: 500)")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 500 samples unless given, no file written")
    args = ap.parse_args()
    quick_defaults(args, {"seeds": 2, "n": 500}, {"seeds": 5, "n": 1000})
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    start, load = time.perf_counter(), load_average()

    # ---- main table: unguided vs the calibrated preset on each task
    main_rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    floor_fd: list[float] = []  # 100-D unguided vs the full mixture (sampling floor)
    unguided_cache: dict[tuple[int, int], torch.Tensor] = {}
    for name in TASK_NAMES:
        for seed in seeds:
            task = make_task(name, seed=seed)
            for label in ("unguided", "guided"):
                acc = main_rows.setdefault((name, label), {m: [] for m in (*METRICS, "seconds")})
                if label == "unguided" and (task.dim, seed) in unguided_cache:
                    x = unguided_cache[(task.dim, seed)]  # same denoiser and seed: same samples
                    res = evaluate(x, task)
                    res["seconds"] = float("nan")
                else:
                    hook = None if label == "unguided" else task_guidance(task)
                    res = run_one(task, hook, args.n, seed)
                    x = res.pop("samples")
                    if label == "unguided":
                        unguided_cache[(task.dim, seed)] = x
                for m in acc:
                    if res[m] == res[m]:  # skip NaN (cached unguided timing)
                        acc[m].append(res[m])
                if name == "gmm100d_4modes" and label == "unguided":
                    full = task.base.sample(2000, 4000 + seed)[0]
                    floor_fd.append(frechet_distance(x, full))
            print(f"{name} seed {seed}: TV unguided {main_rows[(name, 'unguided')]['tv'][-1]:.3f} "
                  f"-> guided {main_rows[(name, 'guided')]['tv'][-1]:.3f}", flush=True)

    # ---- variants on ring2d_4modes
    var_rows: dict[str, dict[str, Any]] = {}
    for label, (factory, n_var, n_seeds) in variants().items():
        acc: dict[str, Any] = {"tv": [], "off_mode": [], "seconds": [], "diverged": 0,
                               "n": n_var or args.n, "seeds": 0}
        for seed in seeds[: n_seeds or len(seeds)]:
            task = make_task("ring2d_4modes", seed=seed)
            acc["seeds"] += 1
            try:
                res = run_one(task, factory(task), acc["n"], seed, full=False)
            except FloatingPointError:
                acc["diverged"] += 1
                continue
            for m in ("tv", "off_mode", "seconds"):
                acc[m].append(res[m])
        var_rows[label] = acc
        print(f"variant {label}: TV {fmt(acc['tv'])}, diverged {acc['diverged']}", flush=True)

    timing = wall_time_ratio()
    total = time.perf_counter() - start

    # ---- targets
    def mean(name, label, m):
        return statistics.mean(main_rows[(name, label)][m])

    fd_drop = 1 - mean("gmm100d_4modes", "guided", "fd") / mean("gmm100d_4modes", "unguided", "fd")
    targets = [
        ("ring2d_4modes: TV <= 0.08", mean("ring2d_4modes", "guided", "tv") <= 0.08,
         f"{mean('ring2d_4modes', 'guided', 'tv'):.3f} (unguided {mean('ring2d_4modes', 'unguided', 'tv'):.3f})"),
        ("ring2d_4modes: off-mode <= 3 %", mean("ring2d_4modes", "guided", "off_mode") <= 0.03,
         f"{100 * mean('ring2d_4modes', 'guided', 'off_mode'):.2f} %"),
        ("ring2d_dirichlet: TV <= 0.10", mean("ring2d_dirichlet", "guided", "tv") <= 0.10,
         f"{mean('ring2d_dirichlet', 'guided', 'tv'):.3f} (unguided {mean('ring2d_dirichlet', 'unguided', 'tv'):.3f})"),
        ("gmm100d_4modes: TV <= 0.08", mean("gmm100d_4modes", "guided", "tv") <= 0.08,
         f"{mean('gmm100d_4modes', 'guided', 'tv'):.3f} (unguided {mean('gmm100d_4modes', 'unguided', 'tv'):.3f})"),
        ("gmm100d_4modes: FD to target falls >= 80 %", fd_drop >= 0.80,
         f"{mean('gmm100d_4modes', 'unguided', 'fd'):.1f} -> {mean('gmm100d_4modes', 'guided', 'fd'):.2f} "
         f"({100 * fd_drop:.1f} % lower)"),
        ("every run finite", True, "evaluate() raises on any NaN/Inf sample; none raised in the main table"),
        ("script time <= 10 min", total <= 600, f"{total:.0f} s"),
    ]
    print()
    for what, ok, detail in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {detail}")
    ratio = timing["guided"] / timing["unguided"]
    ratio100 = timing["guided_100d"] / timing["unguided_100d"]
    print(f"wall time guided/unguided (B=256, 200 refs, {STEPS} steps): 2-D {ratio:.2f}x, 100-D {ratio100:.2f}x")
    if args.quick:
        return

    # ---- write the table
    L = report_header("MMD guidance on the synthetic tasks (paper Sec. 6)",
                      f"python benchmarks/toy_guidance.py --seeds {args.seeds} --n {args.n} "
                      f"--threads {args.threads}", args.threads, load) + [
         f"- Total run time {total:.0f} s.",
         f"- mean ± std over {args.seeds} seeds; seed s = `make_task(name, seed=s)` (user's modes, 200 references, "
         "2,000 held-out target samples) and `sample(..., seed=s)`. "
         f"{args.n} generated samples, DDPM, {STEPS} steps (1000 training steps, linear betas).",
         "- TV: total variation between nearest-mode proportions and the target weights. Off-mode: "
         "`metrics.off_mode_fraction` (beyond the 3σ-equivalent χ² radius of every mode). FD, KD (×10³, "
         "KID subsets of 500), coverage (k = 5): against the held-out target samples. "
         "Every run checks that all samples are finite.", "",
         "## Configurations (`mmdg_lite.toys.tasks.GUIDANCE_PRESETS`, built by `task_guidance(task)`)", ""]
    for name, comps in GUIDANCE_PRESETS.items():
        parts = []
        for c in comps:
            if "median_scale" not in c:
                parts.append("`MMDGuidance(refs" + "".join(f", {k}={v!r}" for k, v in c.items())
                             + ")` (the untuned default)")
                continue
            rest = ", ".join(f"{k}={v!r}" for k, v in c.items() if k != "median_scale")
            parts.append(f"`MMDGuidance(refs, kernel=GaussianKernel(median_scale={c['median_scale']}), {rest})`")
        L.append(f"- **{name}**: " + " + ".join(parts)
                 + (" (two hooks chained with `ChainedGuidance`)" if len(comps) > 1 else ""))
    L += ["", "All: evaluated on x_t (paper Eq. 5), batch guided jointly, constant schedule, the last 10 % "
          "of the steps unguided, biased estimator, strength scale λ_t = c·B·Σσ² (the library's defaults "
          "for every argument a preset does not name).", "",
          "## Targets", "", "| target | result | measured |", "|---|---|---|"]
    L += [f"| {w} | **{'PASS' if ok else 'FAIL'}** | {d} |" for w, ok, d in targets]
    L += ["", "## Results", "",
          "| task | sampler | TV | off-mode | FD | KD ×10³ | coverage | seconds / run |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in TASK_NAMES:
        for label in ("unguided", "guided"):
            a = main_rows[(name, label)]
            secs = fmt(a["seconds"], 1) if a["seconds"] else "(same samples as above)"
            L.append(f"| {name} | {label} | {fmt(a['tv'])} | {fmt(a['off_mode'], 2, pct=True)} | "
                     f"{fmt(a['fd'], 2)} | {fmt(a['kd'], 2)} | {fmt(a['coverage'], 3)} | {secs} |")
    L += ["", f"- 100-D base model at the sampling floor: unguided FD to **2,000 samples of the full "
          f"8-mode mixture** = {fmt(floor_fd, 2)} (vs {fmt(main_rows[('gmm100d_4modes', 'unguided')]['fd'], 1)} "
          "to the user's target). The exact `GaussianMixtureDenoiser` achieves this floor; an MLP "
          "trained for 4,000 steps in 100-D reaches a similar FD but leaves ~16 % of its samples off "
          "the modes (benchmarks/results/mlp_100d.md, `python benchmarks/mlp_100d.py`). The 2-D tasks use the "
          "shipped MLP (its own floor: ≈ 1 % off-mode with 100 DDPM steps, data/README.md).",
          f"- The two ring tasks share the unguided samples (same denoiser and sampler seed).",
          "", "## Variants (ring2d_4modes; one knob of the preset changed per row)", "",
          "| variant | TV | off-mode | diverged runs | samples × seeds | seconds / run |",
          "|---|---:|---:|---:|---:|---:|"]
    for label, a in var_rows.items():
        L.append(f"| {label} | {fmt(a['tv'])} | {fmt(a['off_mode'], 2, pct=True)} | {a['diverged']} / {a['seeds']} | "
                 f"{a['n']} × {a['seeds']} | {fmt(a['seconds'], 1)} |")
    L += ["", "## Cost", "",
          f"Median of 3 runs after a warm-up, B = 256, 200 references, {STEPS} DDPM steps, "
          f"{'one thread' if args.threads == 1 else f'{args.threads} threads'}:", "",
          "| model | unguided | guided (preset) | ratio |", "|---|---:|---:|---:|",
          f"| 2-D MLP (ring2d_4modes preset) | {timing['unguided']:.2f} s | {timing['guided']:.2f} s | **{ratio:.2f}×** |",
          f"| 100-D exact mixture (gmm100d preset) | {timing['unguided_100d']:.2f} s | {timing['guided_100d']:.2f} s | "
          f"**{ratio100:.2f}×** |", "",
          "The toy denoisers cost almost nothing, so the MMD gradient (a B × N_r kernel matrix and a median "
          "bandwidth per step) dominates here; with a UNet the same correction is a few percent of a step "
          "(paper Table 3: +9.7 % for SDXL)."]
    OUT.write_text("\n".join(L) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

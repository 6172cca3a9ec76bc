"""Image domain adaptation over 5 seeds (notebooks 05 and 06's measures, issue 9 item 7).

    .venv/bin/python benchmarks/images.py            # writes benchmarks/results/images.md (+ .json)
    .venv/bin/python benchmarks/images.py --quick    # 2 seeds, fewer samples and timing repeats (a smoke
                                                     # run, written to $TMPDIR/mmdg_benchmarks_quick, not results/)
    .venv/bin/python benchmarks/images.py --jobs 2   # the two domains in two processes (same numbers)

Pixel space: the shipped digits UNet (20 % thick strokes in pretraining), 50 thick references
from the held-out split, 5 of each class (``digits_task(stratified=True)``, the default), DDIM.
Latent space: the shipped shapes VAE + latent UNet (25 % outlined), 50 outlined references
encoded with the VAE's scaling factor once. Methods: unguided, MMD guidance (presets in
mmdg_lite.images.adaptation.PRESETS), classifier guidance, fine-tuning.
FD/KD in the project's feature space (data/images/feature_net; stands in for DINOv2, not
Inception) to held-out target-style images. Then the per-step wall time of guided vs unguided
sampling with the pixel UNet (batch 16, 50 references), interleaved in one run, and the latent
reference-count sweep (10 to 200).
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mmdg_lite import MMDGuidance, sample
from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method, shapes_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (command_line, description, load_average, machine, positive_int, quick_path,  # noqa: E402
                     ratio_interval, write_results)

OUT = Path(__file__).resolve().parent / "results" / "images.md"


def _mean_sd(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def adaptation_rows(task_fn, presets: dict, seeds, n: int, num_steps: int, batch_size: int | None = None) -> dict:
    res: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        task = task_fn(n_refs=50, seed=seed)
        for name, cfg in presets.items():
            kw = dict(cfg)
            method = kw.pop("method")
            guidance = MMDGuidance(task.references, **kw["guidance"]) if method == "mmd" else None
            extra = {k: v for k, v in kw.items() if k != "guidance"}
            r = run_method(task, method, n=n, seed=seed, num_steps=num_steps, guidance=guidance,
                           batch_size=batch_size, **extra)
            row = res.setdefault(name, {k: [] for k in ("style", "valid", "class_tv", "fd", "kd", "seconds",
                                                        "setup")})
            for k, v in zip(row, (r.style_rate, r.valid_rate, r.class_tv, r.fd, r.kd, r.seconds,
                                  r.setup_seconds)):
                row[k].append(v)
            print(task.name, seed, name, {k: round(v[-1], 3) for k, v in row.items()}, flush=True)
    return res


def step_time_ratio(repeats: int = 100, num_steps: int = 50) -> dict:
    """Guided vs unguided wall time per step, pixel UNet, batch 16, 50 references, interleaved.

    Both digits presets, each against unguided sampling with its own sampler: MMD on x_t (DDIM
    eta 0) and MMD on x0_hat (the preset that meets the FD measure, DDIM eta 0.25). Each ratio is
    of the medians of ``repeats`` runs of ``num_steps`` steps per arm, the four arms in a rotating
    order (so no arm always runs first or on a warm cache), with a 95 % bootstrap interval over
    the repeats. On these shared CPUs one 50-step run varies by about 4 % (CPU time as much as
    wall time: the CPU's speed varies, not the scheduling), so 30 repeats left the ratio moving by
    about +-0.02 from run to run (x0_hat preset, one Xeon: 1.024 to 1.062 in seven runs)."""
    task = digits_task(n_refs=50)
    arms = []  # (preset, guided?, eta)
    for name in ("mmd x_t", "mmd x0_hat"):
        eta = PRESETS["digits"][name].get("eta", 0.0)
        arms += [(name, False, eta), (name, True, eta)]
    times: dict[tuple, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        for i in range(len(arms)):
            name, guided, eta = arms[(i + r) % len(arms)]
            hook = MMDGuidance(task.references, **PRESETS["digits"][name]["guidance"]) if guided else None
            t0 = time.perf_counter()
            sample(task.denoiser, 16, task.shape, scheduler="ddim", num_steps=num_steps, seed=r, guidance=hook,
                   eta=eta)
            times[(name, guided, eta)].append((time.perf_counter() - t0) / num_steps)
    rows = {}
    for name, _, eta in arms[::2]:
        u, g = times[(name, False, eta)], times[(name, True, eta)]
        pairs = sorted(a / b for a, b in zip(g, u))  # (repeats,) same repeat, same seed
        rows[name] = {"eta": eta, "per_step_unguided_s": statistics.median(u),
                      "per_step_guided_s": statistics.median(g),
                      "ratio": statistics.median(g) / statistics.median(u), "pair_ratio_range": [pairs[0], pairs[-1]],
                      "ratio_interval": list(ratio_interval(g, u)), "all_unguided_s": u, "all_guided_s": g}
    return {"rows": rows, "repeats": repeats, "num_steps": num_steps}


def _timed(**kwargs: int) -> dict:
    """step_time_ratio(**kwargs) with the machine and load it ran on (a --timing re-run may use
    another machine than the method tables)."""
    load = load_average()[0]
    return {**step_time_ratio(**kwargs), "machine": machine(), "load": load}


def _timing_lines(timing: dict) -> list[str]:
    """The step-time table; results written before both presets were timed have one row (x_t)."""
    rows = timing.get("rows", {"mmd x_t": dict(timing, eta=0.0)})
    lines = ["| guidance (DDIM eta) | unguided s/step | guided s/step | ratio | 95 % interval (bootstrap) | "
             "ratio of single pairs (min-max) |", "|---|---|---|---|---|---|"]
    if "machine" in timing:
        lines = [f"Machine: {timing['machine']}; load average at start {timing['load']:.1f}.", "", *lines]
    for name, t in rows.items():
        span = "{:.2f}-{:.2f}".format(*t["pair_ratio_range"]) if "pair_ratio_range" in t else "not recorded"
        ci = "{:.3f}-{:.3f}".format(*t["ratio_interval"]) if "ratio_interval" in t else "not recorded"
        lines.append(f"| {name} ({t['eta']:g}) | {t['per_step_unguided_s']:.4f} | {t['per_step_guided_s']:.4f} | "
                     f"{t['ratio']:.3f} | {ci} | {span} |")
    return lines


def sweep(seeds, n: int, num_steps: int, counts=(10, 25, 50, 100, 200)) -> dict:
    out: dict[int, dict[str, list[float]]] = {}
    for m in counts:
        for seed in seeds:
            task = shapes_task(n_refs=m, seed=seed)
            g = MMDGuidance(task.references, **PRESETS["shapes"]["mmd x_t"]["guidance"])
            r = run_method(task, "mmd", n=n, seed=seed, num_steps=num_steps, guidance=g)
            row = out.setdefault(m, {"style": [], "valid": [], "fd": []})
            row["style"].append(r.style_rate)
            row["valid"].append(r.valid_rate)
            row["fd"].append(r.fd)
        print("sweep", m, {k: round(statistics.mean(v), 3) for k, v in out[m].items()}, flush=True)
    return out


def table(res: dict) -> list[str]:
    lines = ["| method | target-style rate | valid | class TV | FD to target | KD ×1e3 | sampling s | training s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {_mean_sd(r['style'])} | {_mean_sd(r['valid'])} | {_mean_sd(r['class_tv'])} | "
                     f"{_mean_sd(r['fd'])} | "
                     f"{_mean_sd(r['kd'])} | {statistics.mean(r['seconds']):.1f} | {statistics.mean(r['setup']):.1f} |")
    return lines


def _wins(res: dict, a: str, b: str) -> int:
    return sum(x < y for x, y in zip(res[a]["fd"], res[b]["fd"]))


def _shape_wins(shapes: dict, seeds: int) -> list[str]:
    if "classifier best FD" not in shapes:  # older results: one row per method
        return [f"MMD guidance on x_t beats classifier guidance on FD in {_wins(shapes, 'mmd x_t', 'classifier')} "
                f"of {seeds} seeds."]
    return [f"The realism-bounded presets (benchmarks/calibration.py: the lowest FD with valid >= 0.93 on seeds "
            f"100-103, or, as no setting reached it, the highest valid): MMD guidance on x_t beats classifier "
            f"guidance on FD in {_wins(shapes, 'mmd x_t', 'classifier')} of {seeds} seeds.",
            f"Each at its lowest calibration FD (no realism bound): MMD guidance on x0_hat beats classifier guidance "
            f"(best FD) in {_wins(shapes, 'mmd x0_hat', 'classifier best FD')} of {seeds} seeds, and beats the "
            f"realism-bounded classifier preset in {_wins(shapes, 'mmd x0_hat', 'classifier')} of {seeds}."]


def _tv_floor(k: int, n: int, draws: int = 20000) -> float:
    """Mean TV between the class histogram of n uniform draws over k classes and uniform (simulated)."""
    import numpy as np

    counts = np.random.default_rng(0).multinomial(n, [1 / k] * k, size=draws) / n
    return float(0.5 * np.abs(counts - 1 / k).sum(1).mean())


def _n_text(meta: dict) -> str:
    if "n_adapt" not in meta:  # older results: one sample count for everything
        return f"{meta['n']} samples"
    batches = f" in batches of {meta['batch']}, the batch the presets were calibrated at (benchmarks/calibration.py, seeds 100-103)" if meta.get("batch") else ""
    return (f"{meta['n_adapt']} samples in the method tables{batches} (the features are 64-D: FD needs far more "
            f"samples than 64 to estimate their covariance; at 128 one seed's FD still moves by about 100 between "
            f"sampling seeds), {meta['n_sweep']} in the reference-count sweep")


def _digits_stratified() -> bool:
    """Whether ``digits_task`` (called here without the argument) draws its references per class."""
    return bool(inspect.signature(digits_task).parameters["stratified"].default)


def _refs_text(meta: dict) -> str:
    if meta.get("digit_references") != "stratified":  # older results: a random draw of 50 digits
        return ""
    return (" (digits: 5 of each class, as the held-out targets are balanced; shapes: exact attribute "
            "proportions)")


def render(data: dict) -> str:
    """The markdown table of a results dict (as written to images.json)."""
    meta, digits, shapes, timing, sw = (data[k] for k in ("meta", "digits", "shapes", "timing", "sweep"))
    seeds = meta["seeds"]
    n_tab = meta.get("n_adapt", meta.get("n"))
    wins = [f"MMD guidance on {name[4:]} beats classifier guidance on FD in {_wins(digits, name, 'classifier')} "
            f"of {seeds} seeds." for name in digits if name.startswith("mmd")]
    return "\n".join([
        "# Image domain adaptation: pixel digits and latent shapes", "",
        f"`{meta['command']}`; {seeds} seeds, {_n_text(meta)} per method and seed, DDIM "
        f"{meta['num_steps']} steps, 50 references{_refs_text(meta)}; one torch thread. Machine: {meta['machine']}; load "
        f"average at start {meta['load']:.1f} (shared CPUs: times are noisy). Settings: "
        "`mmdg_lite.images.adaptation.PRESETS`. valid: digits recognised by the feature net's digit head "
        "(p >= 0.5) with features typical of real digits (`detect_valid_digit`: Mahalanobis distance within "
        "that of 99.5 % of the held-out real digits), shapes passing the deterministic shape detector. class TV: total variation between "
        "the content-class histogram (digit class / shape) and uniform, the second realism check "
        f"(guidance must not collapse the classes; a perfect uniform sampler of {n_tab} shows {_tv_floor(10, n_tab):.3f} "
        f"for 10 classes, {_tv_floor(3, n_tab):.3f} for 3 (multinomial mean)). FD/KD in the project's feature space (stands in for DINOv2, not Inception) to "
        "held-out target-style images; KD ×1e3 = 10³ × KID (unbiased, cubic kernel) of the features divided by the "
        "target features' std, 20 subsets of min(samples, targets, 1000) points (`run_method`). training s: the wall "
        "time before sampling (`MethodResult.setup_seconds`); for classifier guidance it includes drawing its 64 "
        "unguided negatives (max(references, 64), with the table's sampler) as well as training the classifier.", "",
        "## Pixel space: digits UNet, target style thick strokes (20 % of pretraining)", "",
        *table(digits), "", *wins, "",
        "## Latent space: shapes VAE + UNet, target style outlined (25 % of pretraining)", "",
        *table(shapes), "",
        *_shape_wins(shapes, seeds), "",
        "## Wall time per step, pixel UNet, batch 16, 50 references (interleaved, median of "
        f"{timing['repeats']})", "",
        *_timing_lines(timing), "",
        "## Latent reference-count sweep (MMD guidance on x_t)", "",
        "| references | outlined rate | valid | FD to target |", "|---|---|---|---|",
        *[f"| {m} | {_mean_sd(r['style'])} | {_mean_sd(r['valid'])} | {_mean_sd(r['fd'])} |" for m, r in sw.items()],
        "", f"Total {meta['seconds']:.0f} s.", ""])


def _write(data: dict, out: Path | None = None) -> None:
    """images.json and its rendered images.md (at ``out``, by default the committed OUT)."""
    write_results(out or OUT, data, render(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="2 seeds, 32 samples, 20 steps (the step timing: 2 "
                        "repeats of 20 steps); written to the temp dir, not results/ (other benchmarks read "
                        "images.json)")
    parser.add_argument("--render", action="store_true", help="re-render images.md from images.json")
    parser.add_argument("--timing", action="store_true", help="re-measure only the guided/unguided step time "
                        "into images.json (the method tables kept)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes for the method tables and the sweep "
                        "(every run is seeded, so the numbers do not depend on it; the timing runs alone)")
    args = parser.parse_args()
    if args.quick and (args.timing or args.render):  # both rewrite the committed images.json / .md
        parser.error("--quick cannot be combined with --timing or --render (they rewrite results/images.*)")
    if args.timing:  # re-measure the step-time ratio alone (on an otherwise idle machine)
        torch.set_num_threads(1)
        data = json.loads(OUT.with_suffix(".json").read_text())
        data["timing"] = _timed()
        _write(data)
        return
    if args.render:
        OUT.write_text(render(json.loads(OUT.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(1)
    seeds = range(2) if args.quick else range(5)
    n, n_sweep, steps, batch = (32, 32, 20, None) if args.quick else (256, 64, 50, 128)
    t_start, load = time.perf_counter(), load_average()
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        jobs = [pool.submit(adaptation_rows, digits_task, PRESETS["digits"], seeds, n, steps, batch),
                pool.submit(adaptation_rows, shapes_task, PRESETS["shapes"], seeds, n, steps, batch),
                pool.submit(sweep, seeds, n_sweep, steps)]
        digits, shapes, sw = (j.result() for j in jobs)
    timing = _timed(repeats=2, num_steps=steps) if args.quick else _timed()  # --quick: not 100 repeats of 50 steps
    meta = {"command": command_line(".venv/bin/python"),
            "seeds": len(seeds), "jobs": args.jobs, "n_adapt": n, "batch": batch, "n_sweep": n_sweep, "num_steps": steps,
            "digit_references": "stratified" if _digits_stratified() else "random",
            "machine": machine(), "load": load[0],
            "seconds": time.perf_counter() - t_start}
    _write({"meta": meta, "digits": digits, "shapes": shapes, "timing": timing, "sweep": sw},
           quick_path(OUT) if args.quick else OUT)  # a smoke run never replaces the committed table


if __name__ == "__main__":
    main()

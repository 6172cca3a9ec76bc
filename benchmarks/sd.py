"""[sd] measures on the embedded pipeline (data/sd/shapes_pipeline).

    python benchmarks/sd.py                 # writes benchmarks/results/sd.md and sd.json
    python benchmarks/sd.py --quick         # 2 seeds, 2 timing repeats (a smoke run)

1. Category -> style pairing (circles -> outlined, squares -> large; 50 references each, prompts
   that omit the style, 4 prompts x 4 images, DDIM 30 steps, CFG 3) over 5 seeds: per-category
   paired-style rate for unguided, plain MMD and prompt-aware MMD (mean and sd).
2. Guided/unguided wall time of the callback path at batch 16, 50 steps, 200 references:
   unguided and guided runs alternate in one process; the ratio of their median times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, report_header, write_report  # noqa: E402
from mmdg_lite.pipelines.adapt import EMBEDDED_PIPELINE, generate  # noqa: E402
from mmdg_lite.pipelines.pairing import METHODS, pairing_task, run_pairing  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "sd.md"
KEYS = ("circle->outlined", "square->large", "circle follows prompt", "square follows prompt", "valid")


def pairing(pipe, seeds) -> dict:
    task = pairing_task(pipe, n_refs=50, seed=0)
    rows = [{k: v for k, v in run_pairing(pipe, task, m, per_prompt=4, seed=s, steps=30).items() if k != "images"}
            for s in seeds for m in METHODS]
    out = {}
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        out[m] = {k: (statistics.mean(r[k] for r in rs), statistics.pstdev(r[k] for r in rs)) for k in KEYS}
    return {"rows": rows, "summary": out}


def timing(pipe, repeats: int) -> dict:
    from mmdg_lite import MMDGuidance, PolynomialKernel
    from mmdg_lite.images import make_shapes
    from mmdg_lite.pipelines import encode_images

    refs = encode_images(pipe, make_shapes(200, seed=5).images)  # (200, 4, 8, 8)
    prompts = ["a red circle", "a blue square"]
    plain, guided = [], []
    for r in range(repeats):
        plain.append(generate(pipe, prompts, 8, steps=50, guidance_scale=3.0, seed=r, progress=False)[1])
        g = MMDGuidance(refs, kernel=PolynomialKernel(), strength=0.1, normalization="norm_matched")
        guided.append(generate(pipe, prompts, 8, guidance=g, steps=50, guidance_scale=3.0, seed=r, progress=False)[1])
    return {"unguided_s": statistics.median(plain), "guided_s": statistics.median(guided),
            "ratio": statistics.median(guided) / statistics.median(plain), "repeats": repeats,
            "all_unguided": plain, "all_guided": guided}


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = load_average()
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_PIPELINE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    seeds = (0, 1) if args.quick else (0, 1, 2, 3, 4)
    pair = pairing(pipe, seeds)
    tim = timing(pipe, 2 if args.quick else 5)
    cmd = "python benchmarks/sd.py" + (" --quick" if args.quick else "")
    lines = report_header("[sd] embedded pipeline: category -> style pairing and callback overhead", cmd,
                          args.threads, load)
    lines += ["", f"## Pairing ({len(seeds)} seeds, 4 prompts x 4 images, 50 + 50 references, DDIM 30, CFG 3)", "",
              "| method | circles outlined | squares large | circles follow prompt | squares follow prompt | valid |",
              "|---|---|---|---|---|---|"]
    for m in METHODS:
        s = pair["summary"][m]
        lines.append(f"| {m} | " + " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in KEYS) + " |")
    lines += ["", "Base rate in the pretraining data: 0.25 outlined, 0.25 large (captions never name them).", "",
              "## Callback overhead (batch 16, 50 DDIM steps, CFG 3, 200 references, cubic kernel)", "",
              "| unguided s (median) | guided s (median) | ratio | repeats |", "|---|---|---|---|",
              f"| {tim['unguided_s']:.2f} | {tim['guided_s']:.2f} | {tim['ratio']:.3f} | {tim['repeats']} |"]
    write_report(OUT, lines)
    OUT.with_suffix(".json").write_text(json.dumps({"pairing": pair, "timing": tim}, indent=1) + "\n")


if __name__ == "__main__":
    main()

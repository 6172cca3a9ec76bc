"""No silent blow-up: strength x normalisation x evaluation point on the shipped 2-D model
([harden] item 2).

    python benchmarks/robustness.py      # writes benchmarks/results/robustness.md (~3 min: 168 s there)

Task ``ring2d_4modes`` seed 0 (200 references), 256 samples, DDPM, 100 steps; every other
argument at its default. Each cell is one of: the largest distance of a final sample from the
references' centre in units of the references' radius R (a sample on the ring is at about 1 R)
and the off-mode fraction; **refused** (ValueError at construction naming the knob); **raised**
(GuidanceDivergenceError during sampling naming the knob). A silent explosion would be a
finite result farther than 3 R; the table counts them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, parse_no_options, report_header, write_report  # noqa: E402
from mmdg_lite import MMDGuidance, off_mode_fraction, sample  # noqa: E402
from mmdg_lite.guidance import EVAL_POINTS, NORMALIZATIONS, GuidanceDivergenceError  # noqa: E402
from mmdg_lite.toys import make_task  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "robustness.md"
STRENGTHS = (0.0, 0.1, 1.0, 3.0, 10.0, 100.0, 1e4)


def main() -> None:
    parse_no_options(__doc__)
    torch.set_num_threads(1)
    load, t0 = load_average(), time.perf_counter()
    task = make_task("ring2d_4modes", seed=0)
    refs = task.references
    centre = refs.mean(0)
    radius = float((refs - centre).norm(dim=1).max())
    lines = report_header("Robustness grid: strength × normalisation × evaluation point",
                          "python benchmarks/robustness.py", 1, load)
    lines += ["- " + __doc__.split("\n\n", 2)[2].replace("\n", " ").strip(), ""]
    silent = 0
    counts = {"ok": 0, "refused": 0, "raised": 0}
    for norm in NORMALIZATIONS:
        lines += [f"## normalization = `{norm!r}`", "",
                  "| eval_point | " + " | ".join(f"strength {s:g}" for s in STRENGTHS) + " |",
                  "|---|" + "---|" * len(STRENGTHS)]
        for ep in EVAL_POINTS:
            cells = []
            for s in STRENGTHS:
                try:
                    guide = MMDGuidance(refs, strength=s, normalization=norm, eval_point=ep)
                except ValueError:
                    cells.append("refused")
                    counts["refused"] += 1
                    continue
                try:
                    x = sample(task.denoiser, 256, 2, num_steps=100, guidance=guide, seed=0).samples
                except GuidanceDivergenceError:
                    cells.append("raised")
                    counts["raised"] += 1
                    continue
                far = float((x - centre).norm(dim=1).max()) / radius
                silent += int(far > 3 or not bool(torch.isfinite(x).all()))
                counts["ok"] += 1
                off = off_mode_fraction(x, task.base.means, task.base.std)
                cells.append(f"{far:.2f} R, {100 * off:.0f} % off")
            lines.append(f"| `{ep}` | " + " | ".join(cells) + " |")
            print(norm, ep, cells, flush=True)
        lines.append("")
    lines += [f"**Silent explosions: {silent}** of {sum(counts.values())} combinations "
              f"({counts['ok']} finished within the data, {counts['refused']} refused up front, "
              f"{counts['raised']} raised during sampling). Run time {time.perf_counter() - t0:.0f} s.",
              "", "`norm_matched` refuses strength ≥ 1 (alpha is a fraction of ‖x‖ per step); a run that "
              "raises names `strength` and `normalization` and suggests `normalization='clipped'`."]
    write_report(OUT, lines)


if __name__ == "__main__":
    main()

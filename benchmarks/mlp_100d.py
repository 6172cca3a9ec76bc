"""Is a briefly trained MLP a good enough base model in 100-D? (the reason the 100-D task uses
the exact mixture denoiser). Writes benchmarks/results/mlp_100d.md.

    python benchmarks/mlp_100d.py [--steps 4000]

Trains ``MLPDenoiser(100, hidden=512, layers=4)`` on 50,000 samples of the 8-mode 100-D mixture
(``random_mixture(8, 100, seed=0)``, the base of ``make_task("gmm100d_4modes")``), then compares
its 1,000 samples (DDPM, 100 steps) with the exact ``GaussianMixtureDenoiser``'s against 2,000
fresh mixture samples: FD, mode TV to the uniform weights, off-mode fraction, and the sampling
floor (FD of a second fresh mixture sample of the same size).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mmdg_lite.toys.mixtures import random_mixture
from mmdg_lite.denoisers import GaussianMixtureDenoiser, MLPDenoiser
from mmdg_lite.metrics import frechet_distance, mode_proportions, off_mode_fraction, total_variation
from mmdg_lite.sampling import make_scheduler, sample
from mmdg_lite.seeding import seed_everything
from mmdg_lite.training import train_denoiser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import description, load_average, positive_int, report_header  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "mlp_100d.md"


def scores(x: torch.Tensor, mix, ref: torch.Tensor) -> dict[str, float]:
    finite = bool(torch.isfinite(x).all())
    xf = x[torch.isfinite(x).all(1)]
    return {"finite": finite, "fd": frechet_distance(xf, ref),
            "tv": total_variation(mode_proportions(xf, mix.means), mix.weights.double()),
            "off": off_mode_fraction(xf, mix.means, mix.std)}


def main() -> None:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--steps", type=positive_int, default=4000, help="MLP training steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start, load0 = time.perf_counter(), load_average()
    mix = random_mixture(8, 100, seed=0)
    data, _ = mix.sample(50_000, 0)
    ref, _ = mix.sample(2000, 1)
    floor, _ = mix.sample(1000, 2)
    seed_everything(0)
    model = MLPDenoiser(100, hidden=512, layers=4)
    t0 = time.perf_counter()
    losses = train_denoiser(model, data, make_scheduler("ddpm"), steps=args.steps, batch_size=256,
                            lr=1e-3, seed=0, progress=False)
    train_s = time.perf_counter() - t0
    exact = GaussianMixtureDenoiser.from_mixture(mix, make_scheduler("ddpm"))
    rows = {"exact mixture denoiser": scores(sample(exact, 1000, 100, num_steps=100, seed=3).samples, mix, ref),
            f"MLP, {args.steps} steps ({train_s:.0f} s)": scores(
                sample(model, 1000, 100, num_steps=100, seed=3).samples, mix, ref),
            "sampling floor (fresh mixture samples)": scores(floor, mix, ref)}
    lines = report_header("100-D base model: briefly trained MLP vs the exact mixture denoiser",
                          "python benchmarks/mlp_100d.py" + (f" --steps {args.steps}" if args.steps != 4000 else ""),
                          1, load0) + [
             "- Mixture `random_mixture(8, 100, seed=0)` (the base of `gmm100d_4modes`); MLP "
             "`MLPDenoiser(100, hidden=512, layers=4)` trained on 50,000 samples (batch 256, Adam "
             f"lr 1e-3 cosine, final loss {sum(losses[-200:]) / 200:.3f}); 1,000 samples each, DDPM "
             "100 steps; FD against 2,000 fresh mixture samples.", "",
             "| base model | FD to the full mixture ↓ | mode TV to uniform ↓ | off-mode ↓ | all finite |",
             "|---|---:|---:|---:|:---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['fd']:.2f} | {r['tv']:.3f} | {100 * r['off']:.1f} % | "
                     f"{'yes' if r['finite'] else 'no'} |")
    lines += ["", f"Run time {time.perf_counter() - start:.0f} s."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

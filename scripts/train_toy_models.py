"""Train the shipped 2-D ring model and write it to data/toy/mlp_2d/ (rerunnable, deterministic).

    .venv/bin/python scripts/train_toy_models.py            # train, save, evaluate
    .venv/bin/python scripts/train_toy_models.py --eval-only  # re-measure the saved model

Runs on one CPU thread so the weights do not depend on the machine's thread count.
"""
from __future__ import annotations

from _artifacts import build

from mmdg_lite.toys.mixtures import circle_mixture
from mmdg_lite.metrics import mode_proportions, off_mode_fraction
from mmdg_lite.sampling import sample
from mmdg_lite.toys.models import TOY_2D_DIR, TOY_2D_RECIPE, train_toy_2d

EVAL = [("ddpm", 1000), ("ddpm", 100), ("ddim", 50)]
N_EVAL, EVAL_SEED = 2000, 1


def evaluate(model, mixture) -> list[dict]:
    """Off-mode fraction (beyond the 3-sigma-equivalent radius of every mode, metrics.off_mode_fraction)
    and TV between nearest-mode proportions and the mixture weights."""
    rows = []
    for scheduler, steps in EVAL:
        x = sample(model, N_EVAL, (2,), scheduler=scheduler, num_steps=steps, seed=EVAL_SEED).samples
        p = mode_proportions(x, mixture.means)
        rows.append({"scheduler": scheduler, "num_steps": steps, "n": N_EVAL, "seed": EVAL_SEED,
                     "off_mode": round(off_mode_fraction(x, mixture.means, mixture.std), 4),
                     "tv_to_uniform": round(0.5 * float((p - mixture.weights.double()).abs().sum()), 4),
                     "proportions": [round(float(v), 4) for v in p]})
        print(rows[-1])
    return rows


if __name__ == "__main__":
    build(__doc__, TOY_2D_DIR, lambda: train_toy_2d(progress=True), circle_mixture, evaluate,
          {"recipe": TOY_2D_RECIPE, "mixture": "circle_mixture() (8 modes, radius 2, std 0.1)"})

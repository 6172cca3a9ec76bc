"""Train the shipped toy models and write them to data/toy/ (rerunnable, deterministic).

    .venv/bin/python scripts/train_toy_models.py            # train, save, evaluate
    .venv/bin/python scripts/train_toy_models.py --eval-only  # re-measure the saved model

Runs on one CPU thread so the weights do not depend on the machine's thread count.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mmdg_lite.data import circle_mixture
from mmdg_lite.metrics import mode_proportions, off_mode_fraction
from mmdg_lite.denoisers import load_denoiser, save_denoiser
from mmdg_lite.sampling import sample
from mmdg_lite.training import TOY_2D_DIR, TOY_2D_RECIPE, train_toy_2d

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-only", action="store_true", help="measure the saved model, do not train")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info_path = TOY_2D_DIR / "training.json"
    if args.eval_only:
        model, mixture = load_denoiser(TOY_2D_DIR), circle_mixture()
        info = json.loads(info_path.read_text())
    else:
        model, losses, mixture, secs = train_toy_2d(progress=True)
        save_denoiser(model, TOY_2D_DIR)
        info = {"recipe": TOY_2D_RECIPE, "mixture": "circle_mixture() (8 modes, radius 2, std 0.1)",
                "scheduler": "DDPMScheduler(1000, linear)", "train_seconds": round(secs, 1),
                "final_loss_mean_last_500": round(sum(losses[-500:]) / 500, 4),
                "torch": torch.__version__, "threads": 1}
        print(f"trained in {secs:.1f} s")
    info["quality"] = evaluate(model, mixture)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {TOY_2D_DIR}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")

"""Train the conditional 2-D toy model of notebook 04 and write it to data/toy/cond_2d/.

    .venv/bin/python scripts/train_conditional_toy.py            # train, save, evaluate
    .venv/bin/python scripts/train_conditional_toy.py --eval-only  # re-measure the saved model

World: ``mmdg_lite.prompts.toy_world()`` (3 categories x 4 styles). Recipe: ``COND_2D_RECIPE``
(seed 0, condition dropout 0.1 for classifier-free guidance). One CPU thread, so the weights do
not depend on the machine's thread count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

from mmdg_lite.denoisers import load_denoiser, save_denoiser
from mmdg_lite.prompt_world import COND_2D_DIR, COND_2D_RECIPE, train_cond_2d, toy_world
from mmdg_lite.sampling import sample

N_PER_PROMPT, EVAL_SEED = 1000, 1


def evaluate(model, world) -> dict:
    """Per-category style table of 1,000 samples per prompt (DDPM, 100 steps) vs the base rates."""
    prompts = [c for c in world.categories for _ in range(N_PER_PROMPT)]
    cond = world.encoder().encode(prompts)
    x = sample(model, len(prompts), (2,), cond=cond, num_steps=100, seed=EVAL_SEED).samples
    table, cols = world.style_table(x, prompts)
    out = {"n_per_prompt": N_PER_PROMPT, "seed": EVAL_SEED, "sampler": "ddpm, 100 steps",
           "columns": cols,
           "style_table": {c: [round(float(v), 4) for v in row] for c, row in zip(world.categories, table)},
           "base_rates": {c: [float(v) for v in row] for c, row in zip(world.categories, world.base_rates)}}
    for c, row in out["style_table"].items():
        print(f"{c:4s} " + "  ".join(f"{n}={v:.3f}" for n, v in zip(cols, row)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-only", action="store_true", help="measure the saved model, do not train")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info_path = COND_2D_DIR / "training.json"
    if args.eval_only:
        model, world = load_denoiser(COND_2D_DIR), toy_world()
        info = json.loads(info_path.read_text())
    else:
        model, losses, world, secs = train_cond_2d(progress=False)
        save_denoiser(model, COND_2D_DIR)
        info = {"recipe": COND_2D_RECIPE, "world": "mmdg_lite.prompts.toy_world()",
                "scheduler": "DDPMScheduler(1000, linear)", "train_seconds": round(secs, 1),
                "final_loss_mean_last_500": round(sum(losses[-500:]) / 500, 4),
                "sha256": hashlib.sha256((COND_2D_DIR / "model.safetensors").read_bytes()).hexdigest(),
                "torch": torch.__version__, "threads": 1}
        print(f"trained in {secs:.1f} s")
    info["quality"] = evaluate(model, world)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {COND_2D_DIR}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")

"""Train the conditional 2-D toy model of notebook 04 and write it to data/toy/cond_2d/.

    .venv/bin/python scripts/train_conditional_toy.py            # train, save, evaluate
    .venv/bin/python scripts/train_conditional_toy.py --eval-only  # re-measure the saved model

World: ``mmdg_lite.toys.prompt_world.toy_world()`` (3 categories x 4 styles). Recipe: ``COND_2D_RECIPE``
(seed 0, condition dropout 0.1 for classifier-free guidance). One CPU thread, so the weights do
not depend on the machine's thread count.
"""
from __future__ import annotations

from _artifacts import build

from mmdg_lite.toys import COND_2D_DIR, COND_2D_RECIPE, train_cond_2d, toy_world
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


if __name__ == "__main__":
    build(__doc__, COND_2D_DIR, lambda: train_cond_2d(progress=False), toy_world, evaluate,
          {"recipe": COND_2D_RECIPE, "world": "mmdg_lite.toys.prompt_world.toy_world()"})

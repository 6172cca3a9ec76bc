"""Build data/images/shapes_vae: a diffusers AutoencoderKL on 32x32 procedural shapes, ALL styles.

    .venv/bin/python scripts/train_shapes_vae.py          # train (several minutes, one CPU thread)
    .venv/bin/python scripts/train_shapes_vae.py --tiny   # 3 steps into a temp dir (tests)

Data: make_shapes(6000, size and fill balanced 50/50, seed 1), so the minority styles of the
latent UNet's pretraining set (outlined, large) are reconstructed well. The latents' 1/std is
stored as config.scaling_factor. samples.png: top rows originals, bottom rows reconstructions.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdg_lite.images.models import (SHAPES_VAE_DIR, SHAPES_VAE_RECIPE, TINY, build_cli, sample_grid,
                                     save_model, train_shapes_vae)
from mmdg_lite.images.references import decode_latents, encode_references
from mmdg_lite.images.shapes import make_shapes


def build(out: Path, tiny: bool) -> dict:
    overrides = TINY if tiny else {}
    vae, losses, secs, test_mse = train_shapes_vae(progress=not tiny, **overrides)
    test = make_shapes(32, {"size": [0.5, 0.5], "fill": [0.5, 0.5]}, seed=101)
    rec = decode_latents(vae, encode_references(vae, test.images))
    per_style = {}
    big = make_shapes(64 if tiny else 512, {"size": [0.5, 0.5], "fill": [0.5, 0.5]}, seed=102)
    rec_big = decode_latents(vae, encode_references(vae, big.images))
    err = (rec_big - big.images).pow(2).mean((1, 2, 3))  # (N,)
    for value in ("filled", "outlined"):
        per_style[value] = round(float(err[big.mask("fill", value)].mean()), 5)
    last = losses[-min(200, len(losses)):]
    info = {"recipe": {**SHAPES_VAE_RECIPE, **overrides}, "train_seconds": round(secs, 1),
            "final_loss_mean_last_200": round(sum(last) / len(last), 5),
            "test_mse": round(test_mse, 5), "test_mse_by_fill": per_style,
            "scaling_factor": float(vae.config.scaling_factor), "threads": 1}
    info = save_model(vae, out, info)
    sample_grid(torch.cat([test.images[:16], rec[:16]]), out / "samples.png")
    return info


if __name__ == "__main__":
    build_cli(__doc__, build, SHAPES_VAE_DIR)

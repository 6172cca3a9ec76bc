"""Build data/images/digits_unet: a pixel-space diffusers UNet2DModel on 16x16 real digits.

    .venv/bin/python scripts/train_digits_unet.py          # train (about 10 min on one CPU thread)
    .venv/bin/python scripts/train_digits_unet.py --tiny   # 3 steps into a temp dir (tests)

Pretraining set: load_digit_set("train") = 1,297 scikit-learn digits, exactly 20 % thick (seed 0).
Writes config.json, diffusion_pytorch_model.safetensors, training.json and samples.png.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmdg_lite import sample
from mmdg_lite.images.adapters import UNetDenoiser
from mmdg_lite.images.detectors import detect_thick
from mmdg_lite.images.models import (DIGITS_UNET_DIR, DIGITS_UNET_RECIPE, TINY, build_cli, sample_grid,
                                     save_model, train_digits_unet)


def build(out: Path, tiny: bool) -> dict:
    overrides = TINY if tiny else {}
    unet, losses, secs = train_digits_unet(progress=not tiny, **overrides)
    n, steps = (8, 2) if tiny else (256, 50)
    # clamped to the pixel range, as the digits task decodes samples (an undertrained --tiny model
    # strays far outside it, which the detector refuses as another scale)
    x = sample(UNetDenoiser(unet), n, (1, 16, 16), scheduler="ddim", num_steps=steps, seed=1).samples.clamp(-1, 1)
    last = losses[-min(500, len(losses)):]
    info = {"recipe": {**DIGITS_UNET_RECIPE, **overrides}, "train_seconds": round(secs, 1),
            "final_loss_mean_last_500": round(sum(last) / len(last), 4), "threads": 1,
            "samples": {"n": n, "scheduler": "ddim", "num_steps": steps, "seed": 1,
                        "thick_rate": round(float(detect_thick(x).float().mean()), 4)}}
    info = save_model(unet, out, info)
    sample_grid(x[:64], out / "samples.png")
    return info


if __name__ == "__main__":
    build_cli(__doc__, build, DIGITS_UNET_DIR)

"""Build data/images/shapes_unet: a latent diffusers UNet2DModel on shapes (25 % outlined, 25 % large).

    .venv/bin/python scripts/train_shapes_unet.py          # train (needs data/images/shapes_vae)
    .venv/bin/python scripts/train_shapes_unet.py --tiny   # 3 steps into a temp dir (tests)

Latents: encode_references(load_shapes_vae(), make_shapes(10000, defaults, seed 2)), the VAE's
posterior means times its scaling_factor (once). samples.png: decoded DDIM-50 samples.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from mmdg_lite import sample
from mmdg_lite.images.adapters import UNetDenoiser
from mmdg_lite.images.detectors import detect_shapes
from mmdg_lite.images.models import (SHAPES_UNET_DIR, SHAPES_UNET_RECIPE, SHAPES_VAE_DIR, TINY, build_cli, sample_shape,
                                     load_shapes_vae, sample_grid, save_model, train_shapes_unet)
from mmdg_lite.images.references import decode_latents


SECONDS_NOTE = ("train_seconds: CPU seconds of the training loop, build_cpu_seconds: of the whole script (one "
                "thread: the wall time on an idle core); build_wall_seconds: the script's wall time on 2 cores "
                "shared with other jobs at the load average given")


def build(out: Path, tiny: bool) -> dict:
    overrides = TINY if tiny else {}
    start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()
    vae = load_shapes_vae()
    unet, losses, secs = train_shapes_unet(vae, progress=not tiny, **overrides)
    n, steps = (8, 2) if tiny else (256, 50)
    z = sample(UNetDenoiser(unet), n, sample_shape(unet), scheduler="ddim", num_steps=steps, seed=1).samples
    x = decode_latents(vae, z)
    det = detect_shapes(x)
    last = losses[-min(500, len(losses)):]
    info = {"recipe": {**SHAPES_UNET_RECIPE, **overrides}, "vae": str(SHAPES_VAE_DIR.name),
            "train_seconds": round(secs, 1), "final_loss_mean_last_500": round(sum(last) / len(last), 4),
            "threads": 1, "build_wall_seconds": round(time.perf_counter() - start, 1),
            "build_cpu_seconds": round(time.process_time() - cpu, 1),
            "load_average_at_start": [round(v, 2) for v in load],
            "seconds_note": SECONDS_NOTE,
            "samples": {"n": n, "scheduler": "ddim", "num_steps": steps, "seed": 1,
                        "valid": round(float(det.valid.float().mean()), 4),
                        "outlined_rate": round(det.rate("fill", "outlined"), 4),
                        "large_rate": round(det.rate("size", "large"), 4)}}
    info = save_model(unet, out, info)
    sample_grid(x[:64], out / "samples.png")
    return info


if __name__ == "__main__":
    build_cli(__doc__, build, SHAPES_UNET_DIR)

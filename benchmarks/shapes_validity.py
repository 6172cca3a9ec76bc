"""Where the latent shapes' validity is lost: the VAE, the UNet, or the guidance (issue 9, item 7).

    .venv/bin/python benchmarks/shapes_validity.py    # writes benchmarks/results/shapes_validity.md

Three rates from the deterministic shape detector: real shapes, the VAE's reconstructions of them
(the ceiling of any latent model), and the shipped latent UNet unguided and guided with
``PRESETS["shapes"]["mmd x_t"]``, each task seed's references and sampling seed equal, 128 samples
per seed (the presets' calibration batch), DDIM 50. Seeds 100-103 are disjoint from the
benchmark's 0-4 and were never used for choosing a setting, so they show the model's own spread.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from mmdg_lite.images import decode_latents, detect_shapes, encode_references, load_shapes_vae, make_shapes
from mmdg_lite.images.adaptation import PRESETS, shapes_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine  # noqa: E402
from images import adaptation_rows  # noqa: E402  (benchmarks/images.py)

OUT = Path(__file__).resolve().parent / "results" / "shapes_validity.md"
SEEDS = (100, 101, 102, 103)


def main() -> None:
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), load_average()
    real = make_shapes(1000, seed=2000).images
    vae = load_shapes_vae()
    recon = decode_latents(vae, encode_references(vae, real))
    ceiling = {"real shapes": float(detect_shapes(real).valid.float().mean()),
               "VAE reconstructions": float(detect_shapes(recon).valid.float().mean())}
    presets = {name: PRESETS["shapes"][name] for name in ("unguided", "mmd x_t")}
    rows = adaptation_rows(shapes_task, presets, SEEDS, n=128, num_steps=50)  # the images benchmark's loop
    lines = ["# Latent shapes: where validity is lost", "",
             f"`.venv/bin/python benchmarks/shapes_validity.py`; machine: {machine()}; load average at start "
             f"{load[0]:.1f}; {time.perf_counter() - t0:.0f} s. Valid = the deterministic shape detector "
             "(`detect_shapes(...).valid`).", "",
             "| images | valid |", "|---|---|",
             *[f"| {k} (1,000, default mix, seed 2000) | {v:.3f} |" for k, v in ceiling.items()], "",
             f"Shipped latent UNet, seeds {SEEDS[0]}-{SEEDS[-1]} (task and sampling), 128 samples each, DDIM 50, "
             "50 outlined references:", "",
             "| method | valid (mean ± sd) | per seed | outlined rate |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {statistics.mean(r['valid']):.3f} ± {statistics.stdev(r['valid']):.3f} | "
                     f"{' / '.join(f'{v:.3f}' for v in r['valid'])} | {statistics.mean(r['style']):.3f} |")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()

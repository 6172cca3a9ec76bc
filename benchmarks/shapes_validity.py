"""Where the latent shapes' validity is lost: the VAE, the UNet, or the guidance (issue 9, item 7).

    .venv/bin/python benchmarks/shapes_validity.py    # writes benchmarks/results/shapes_validity.md

Rates from the deterministic shape detector: real shapes, the VAE's reconstructions of them
(the ceiling of any latent model; with the share whose shape, fill and colour the detector reads
as the originals'), the shipped models' build-time sample checks (training.json) read again by
today's detector, and the shipped latent UNet unguided and guided with
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

from mmdg_lite import sample
from mmdg_lite.images import (UNetDenoiser, decode_latents, detect_shapes, encode_references, load_shapes_unet,
                              load_shapes_vae, make_shapes)
from mmdg_lite.images.shapes import CAPTIONS, caption_labels
from mmdg_lite.images.models import sample_shape
from mmdg_lite.images.adaptation import PRESETS, shapes_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, parse_no_options, machine  # noqa: E402
from images import adaptation_rows  # noqa: E402  (benchmarks/images.py)

OUT = Path(__file__).resolve().parent / "results" / "shapes_validity.md"
SEEDS = (100, 101, 102, 103)


def main() -> None:
    parse_no_options(__doc__)
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), load_average()
    shapes = make_shapes(1000, seed=2000)
    real, truth = shapes.images, shapes.attributes
    vae = load_shapes_vae()
    recon = decode_latents(vae, encode_references(vae, real))
    ceiling = {}
    for name, images in (("real shapes", real), ("VAE reconstructions", recon)):
        det = detect_shapes(images)
        ceiling[name] = [float(det.valid.float().mean())] + [
            float((det.attributes[a] == truth[a]).float().mean()) for a in ("shape", "fill", "colour")]
    builds = build_checks(vae)
    presets = {name: PRESETS["shapes"][name] for name in ("unguided", "mmd x_t")}
    rows = adaptation_rows(shapes_task, presets, SEEDS, n=128, num_steps=50)  # the images benchmark's loop
    lines = ["# Latent shapes: where validity is lost", "",
             f"`.venv/bin/python benchmarks/shapes_validity.py`; machine: {machine()}; load average at start "
             f"{load[0]:.1f}; {time.perf_counter() - t0:.0f} s. Valid = the deterministic shape detector "
             "(`detect_shapes(...).valid`).", "",
             "| images | valid | shape read right | fill read right | colour read right |", "|---|---|---|---|---|",
             *[f"| {k} (1,000, default mix, seed 2000) | " + " | ".join(f"{v:.3f}" for v in vals) + " |"
               for k, vals in ceiling.items()], "",
             "The shipped models' build-time checks (the samples their build scripts draw, same seeds), read "
             "by today's detector (training.json keeps what the detector of the build time read):", "",
             "| model, samples | valid | outlined | large | shape follows caption | colour follows caption |",
             "|---|---|---|---|---|---|",
             *[f"| {k} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |"
               for k, vals in builds.items()], "",
             f"Shipped latent UNet, seeds {SEEDS[0]}-{SEEDS[-1]} (task and sampling), 128 samples each, DDIM 50, "
             "50 outlined references:", "",
             "| method | valid (mean ± sd) | per seed | outlined rate |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {statistics.mean(r['valid']):.3f} ± {statistics.stdev(r['valid']):.3f} | "
                     f"{' / '.join(f'{v:.3f}' for v in r['valid'])} | {statistics.mean(r['style']):.3f} |")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


def build_checks(vae) -> dict[str, list[float | None]]:
    """The samples of scripts/train_shapes_unet.py (256, DDIM 50, seed 1) and of
    scripts/train_sd_pipeline.py (16 per caption, DDIM 30, CFG 3, seed 1), detected again."""
    from mmdg_lite.pipelines.adapt import EMBEDDED_PIPELINE, load_pipeline

    unet = load_shapes_unet()
    z = sample(UNetDenoiser(unet), 256, sample_shape(unet), scheduler="ddim", num_steps=50, seed=1).samples
    det = detect_shapes(decode_latents(vae, z))
    out: dict[str, list[float | None]] = {
        "shapes_unet, 256 unconditional, DDIM 50": [float(det.valid.float().mean()), det.rate("fill", "outlined"),
                                                     det.rate("size", "large"), None, None]}
    pipe = load_pipeline(EMBEDDED_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe(list(CAPTIONS), num_images_per_prompt=16, num_inference_steps=30, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(1), output_type="pt").images * 2 - 1
    det = detect_shapes(images)
    want = {a: v.repeat_interleave(16) for a, v in caption_labels(CAPTIONS).items()}
    out["sd/shapes_pipeline, 16 per caption, DDIM 30, CFG 3"] = [
        float(det.valid.float().mean()), det.rate("fill", "outlined"), det.rate("size", "large"),
        float((det.attributes["shape"] == want["shape"]).float().mean()),
        float((det.attributes["colour"] == want["colour"]).float().mean())]
    return out


if __name__ == "__main__":
    main()

"""Shared command line of the scripts that build data/: train (or --eval-only), save, measure.

Each artifact is a folder with config.json + model.safetensors (``save_denoiser``) and a
training.json holding the recipe, the training time, the weights' sha256 and the measured quality.
Training runs on one CPU thread so the weights do not depend on the machine's thread count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mmdg_lite.denoisers import load_denoiser, save_denoiser


def build(doc: str, folder: Path, train: Callable[[], tuple], load_world: Callable[[], Any],
          evaluate: Callable[[Any, Any], Any], describe: dict[str, Any]) -> None:
    """``train() -> (model, losses, world, seconds)``; ``evaluate(model, world)`` -> JSON-able."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-only", action="store_true", help="measure the saved model, do not train")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)
    info_path = folder / "training.json"
    if args.eval_only:
        try:
            model, world = load_denoiser(folder), load_world()
            info = json.loads(info_path.read_text())
        except (OSError, ValueError) as err:  # a missing or damaged model: say how to rebuild it
            parser.error(f"--eval-only needs the saved model in {folder} ({type(err).__name__}: {err}); "
                         f"rebuild it by running {Path(sys.argv[0]).name} without --eval-only")
        info["quality"] = evaluate(model, world)
    else:
        model, losses, world, secs = train()
        print(f"trained in {secs:.1f} s")
        # measured before anything is written: a failed or interrupted evaluation left the new weights
        # beside the old training.json (another sha256, the old model's quality)
        quality = evaluate(model, world)
        save_denoiser(model, folder)
        info = {**describe, "scheduler": "DDPMScheduler(1000, linear)",
                "train_seconds": round(secs, 1),
                "final_loss_mean_last_500": round(sum(losses[-500:]) / 500, 4),
                "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                "torch": torch.__version__, "threads": 1, "quality": quality}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {folder}; total {time.perf_counter() - start:.1f} s")

"""Build data/images/feature_net: the project's image feature network (stands in for DINOv2).

    .venv/bin/python scripts/train_feature_net.py          # train (about a minute, one CPU thread)
    .venv/bin/python scripts/train_feature_net.py --tiny   # 3 steps into a temp dir (tests)

Measures on held-out real images (digits test split, half thick; 1,000 fresh balanced shapes,
seed 7): each head's accuracy, and how well the 64-D features separate the styles: FD between
the two styles vs FD between two halves of one style, and a linear probe's held-out accuracy.
"""
from __future__ import annotations

from pathlib import Path

from mmdg_lite.images.features import (FEATURE_NET_DIR, FEATURE_NET_RECIPE, save_feature_net,
                                       train_feature_net)
from mmdg_lite.images.models import TINY, build_cli
from mmdg_lite.images.evaluation import feature_net_report


def build(out: Path, tiny: bool) -> dict:
    overrides = {"steps": TINY["steps"], "n_shapes": TINY["n_data"]} if tiny else {}
    net, losses, secs = train_feature_net(progress=not tiny, **overrides)
    last = losses[-min(200, len(losses)):]
    info = {"recipe": {**FEATURE_NET_RECIPE, **overrides}, "train_seconds": round(secs, 1),
            "final_loss_mean_last_200": round(sum(last) / len(last), 4), "threads": 1,
            "held_out": feature_net_report(net, n_shapes=64 if tiny else 1000)}
    save_feature_net(net, out, info)
    return info


if __name__ == "__main__":
    build_cli(__doc__, build, FEATURE_NET_DIR)

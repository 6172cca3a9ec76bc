"""Held-out measurements of the detectors and of the feature network (what data/README.md quotes).

Held-out data: the digits test split (500 scans never used in training, half made thick with
seed 1) and fresh shapes with balanced size and fill (``make_shapes(n, ..., seed=7)``; the
training sets use seeds 1 and 2).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["held_out_digits", "held_out_shapes", "detector_report", "feature_net_report",
           "style_separation"]

HELD_OUT_SHAPES_SEED = 7


def held_out_digits():
    """The digits test split (500 scans never used in training), half made thick with seed 1."""
    from .digits import load_digit_set

    return load_digit_set("test", style_fraction=0.5, seed=1)


def held_out_shapes(n: int = 1000):
    """``n`` fresh shapes with balanced size and fill (seed 7; the training sets use 1 and 2)."""
    from .shapes import make_shapes

    return make_shapes(n, {"size": [0.5, 0.5], "fill": [0.5, 0.5]}, seed=HELD_OUT_SHAPES_SEED)


def detector_report(n_shapes: int = 1000) -> dict[str, float]:
    """Accuracy of each deterministic detector and the valid fraction on held-out real images."""
    from .._validation import check_int
    from .detectors import detect_shapes, detect_thick

    check_int(n_shapes, "n_shapes", 1)
    d = held_out_digits()
    s = held_out_shapes(n_shapes)
    det = detect_shapes(s.images)
    out = {"digits_thick": float((detect_thick(d.images) == d.styled).float().mean())}
    for k, v in det.attributes.items():
        out[f"shapes_{k}"] = float((v == s.attributes[k]).float().mean())
    out["shapes_valid"] = float(det.valid.float().mean())
    return {k: round(v, 4) for k, v in out.items()}


def style_separation(features: Tensor, styled: Tensor, seed: int = 0) -> dict[str, float]:
    """FD between the two styles, FD between two random halves of the unstyled rows (whichever
    style is the majority; each half has fewer points, and FD is biased upward with fewer), and a
    logistic-regression probe's accuracy on a held-out half. features (N, F), styled (N,) bool."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ..metrics import frechet_distance

    from ..seeding import check_seed

    seed = check_seed(seed)
    if not isinstance(features, Tensor) or features.ndim != 2 or len(features) < 4:
        raise ValueError(f"features must be a tensor (N, F) with N >= 4; got "
                         f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
    if not isinstance(styled, Tensor) or styled.shape != (len(features),):
        raise ValueError(f"styled must be a tensor ({len(features)},), one flag per row of features; got "
                         f"{tuple(styled.shape) if isinstance(styled, Tensor) else type(styled).__name__}")
    if styled.dtype != torch.bool:  # ~ on 0/1 integers is a bitwise NOT (-1, -2): rows by index, not by mask
        if not bool(((styled == 0) | (styled == 1)).all()):
            raise ValueError("styled must be bool, or 0/1 flags; got other values")
        styled = styled.bool()
    counts = (int((~styled).sum()), int(styled.sum()))
    if counts[1] < 2 or counts[0] < 4:
        raise ValueError(f"styled must flag at least 2 rows as styled and leave at least 4 unstyled (FD "
                         f"compares the styles, and two halves of the unstyled rows); got {counts[1]} styled "
                         f"and {counts[0]} not")
    features, styled = features.detach().cpu(), styled.detach().cpu()
    gen = torch.Generator().manual_seed(seed)
    a, b = features[~styled], features[styled]
    perm = torch.randperm(a.shape[0], generator=gen)
    half = a.shape[0] // 2
    order = torch.randperm(features.shape[0], generator=gen)
    tr, te = order[: len(order) // 2], order[len(order) // 2:]
    n_tr = int(styled[tr].sum())
    if n_tr in (0, len(tr)):  # the probe cannot be fitted on one class (sklearn's raw ValueError)
        raise ValueError(f"the probe's random training half (seed={seed}) holds {n_tr} styled rows of {len(tr)}: "
                         f"it needs both styles; styled flags {counts[1]} of {len(styled)} rows, so pass more "
                         "rows of the rarer style or another seed")
    fd_between = frechet_distance(a, b)
    fd_within = frechet_distance(a[perm[:half]], a[perm[half:]])
    x, y = features.double().numpy(), styled.numpy().astype(np.int64)
    probe = LogisticRegression(max_iter=2000).fit(x[tr], y[tr])
    return {"fd_between_styles": round(fd_between, 3), "fd_within_style": round(fd_within, 3),
            "ratio": round(fd_between / max(fd_within, 1e-12), 1),
            "probe_accuracy": round(float(probe.score(x[te], y[te])), 4)}


def feature_net_report(net: Any, n_shapes: int = 1000) -> dict[str, Any]:
    """Head accuracies and style separation of ``net`` (a ``FeatureNet``, e.g.
    ``load_feature_net()``) on the held-out digits and ``n_shapes`` (>= 8) held-out shapes."""
    from .._validation import _describe, check_int
    from .features import FeatureNet, image_features

    if not isinstance(net, FeatureNet):
        raise TypeError(f"net must be a FeatureNet (e.g. load_feature_net()); got {_describe(net)}")
    check_int(n_shapes, "n_shapes", 8)  # style_separation: >= 4 of each fill (the held-out fills are balanced)
    d, s = held_out_digits(), held_out_shapes(n_shapes)
    with torch.no_grad():
        out_d, out_s = net(d.images), net(s.images)
    acc = {"digit": float((out_d["digit"].argmax(1) == d.labels).float().mean()),
           "thick": float((out_d["thick"].argmax(1) == d.styled.long()).float().mean())}
    for k in ("shape", "colour", "size", "fill"):
        acc[k] = float((out_s[k].argmax(1) == s.attributes[k]).float().mean())
    return {"accuracy": {k: round(v, 4) for k, v in acc.items()},
            "digits_thick_vs_thin": style_separation(image_features(d.images, net), d.styled),
            "shapes_outlined_vs_filled": style_separation(image_features(s.images, net),
                                                          s.mask("fill", "outlined"))}

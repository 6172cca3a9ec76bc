"""Attribute detectors that measure images (real or generated), deterministic rules only.

Digits: stroke thickness from the fraction of ink that survives a 3x3 erosion (thin strokes
of 2-3 px vanish, dilated ones keep their core). Shapes: the ink mask (brightest channel >
0.5) and its hole-filled version give fill (outlined shapes enclose a hole: centre vs edge),
size (extent of the filled mask), shape (filled area / bounding-box area: square 1, circle
pi/4, triangle 1/2), colour (mean ink colour, nearest palette entry) and validity (one blob,
area ratio inside a shape's band, colour near the palette, sane extent, clean background).
Digit class and validity need a learned model: see ``features.FeatureNet`` (its digit head).
Accuracies on held-out real images are in data/README.md and checked by tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .shapes import PALETTE, SHAPE_ATTRIBUTES

__all__ = ["thickness_score", "detect_thick", "THICK_THRESHOLD", "ShapeDetection", "detect_shapes",
           "SHAPE_AREA_RATIO"]

# Midpoint region between the classes on the TRAIN split at 16 px (best single threshold 0.614,
# midpoint of the class means 0.573); accuracy is measured on the held-out test split.
THICK_THRESHOLD = 0.6
SHAPE_AREA_RATIO = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}
# Filled-area / bounding-box ratio bands on the 0.5-thresholded 32 px mask (measured on drawn
# shapes: triangle 0.50-0.64, circle 0.76-0.90 (small circles are squarish), square 0.99-1.0);
# a ratio between bands is an invalid shape.
_RATIO_BANDS = {"triangle": (0.44, 0.69), "circle": (0.72, 0.935), "square": (0.95, 1.001)}
_HOLE_THRESHOLD = 0.1      # outlined shapes: hole fraction 0.17 (small triangle) to 0.67 (large circle)
_SIZE_THRESHOLD = 17.0     # px extent: small ~12-13, large ~22-23
_COLOUR_TOL = 0.35         # validity: mean ink colour this close (L2 in RGB) to a palette entry
_BACKGROUND_TOL = 0.2      # validity: mean brightest channel of pixels away from the blob


def _to_unit(images: Tensor, name: str) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a tensor (N, C, H, W) in [-1, 1]; got {got}")
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def thickness_score(images: Tensor) -> Tensor:
    """(N,) fraction of ink mass that survives a 3x3 grey erosion; images (N, 1, H, W) in [-1, 1]."""
    x = _to_unit(images, "images")  # (N, 1, H, W) in [0, 1]
    eroded = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)  # (N, 1, H, W)
    return eroded.sum((1, 2, 3)) / x.sum((1, 2, 3)).clamp_min(1e-6)


def detect_thick(images: Tensor, threshold: float = THICK_THRESHOLD) -> Tensor:
    """(N,) bool: thick strokes (the digits' minority style)."""
    return thickness_score(images) > threshold


@dataclass
class ShapeDetection:
    """Per-image detected attributes (indices into SHAPE_ATTRIBUTES) and validity."""

    attributes: dict[str, Tensor]  # name -> (N,) long
    valid: Tensor                  # (N,) bool
    hole_fraction: Tensor          # (N,) float
    area_ratio: Tensor             # (N,) float

    def rate(self, attribute: str, value: str, valid_only: bool = False) -> float:
        """Fraction of images detected with ``attribute == value`` (among valid ones if asked)."""
        hit = self.attributes[attribute] == SHAPE_ATTRIBUTES[attribute].index(value)
        if valid_only:
            return float(hit[self.valid].float().mean()) if bool(self.valid.any()) else float("nan")
        return float(hit.float().mean())


def detect_shapes(images: Tensor) -> ShapeDetection:
    """Measure shape, colour, size, fill and validity of images (N, 3, H, W) in [-1, 1]."""
    from scipy import ndimage

    x = _to_unit(images, "images")
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB shapes); got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    palette = torch.tensor([PALETTE[c] for c in SHAPE_ATTRIBUTES["colour"]])  # (K, 3)
    cuts = (0.705, 0.9425)  # between the bands: triangle | circle | square
    scale = h / 32.0
    out = {k: torch.zeros(n, dtype=torch.long) for k in SHAPE_ATTRIBUTES}
    valid = torch.zeros(n, dtype=torch.bool)
    holes, area_ratio = torch.zeros(n), torch.zeros(n)
    bright = x.max(1).values.numpy()  # (N, H, W)
    for i in range(n):
        ink = bright[i] > 0.5
        labels, count = ndimage.label(ink)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        blob = labels == (1 + int(sizes.argmax()))
        filled = ndimage.binary_fill_holes(blob)
        ys, xs = np.nonzero(filled)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        bbox_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        ratio = filled.sum() / bbox_area
        hole = 1 - blob.sum() / filled.sum()
        colour = x[i][:, torch.from_numpy(blob)].mean(1)  # (3,) mean ink colour
        cdist = (palette - colour).norm(dim=1)  # (K,)
        shape = SHAPE_ATTRIBUTES["shape"].index(
            "triangle" if ratio < cuts[0] else "circle" if ratio < cuts[1] else "square")
        lo, hi = _RATIO_BANDS[SHAPE_ATTRIBUTES["shape"][shape]]
        out["shape"][i] = shape
        out["colour"][i] = int(cdist.argmin())
        out["size"][i] = int(extent > _SIZE_THRESHOLD * scale)
        out["fill"][i] = int(hole > _HOLE_THRESHOLD)
        holes[i], area_ratio[i] = float(hole), float(ratio)
        away = ~ndimage.binary_dilation(filled, iterations=2)
        clean = float(bright[i][away].mean()) < _BACKGROUND_TOL if away.any() else True
        other_ink = sizes.sum() - sizes.max() <= 0.05 * sizes.max()  # no second shape beside it
        valid[i] = bool(lo <= ratio <= hi and cdist.min() < _COLOUR_TOL and clean and other_ink
                        and 8 * scale <= extent <= 28 * scale)
    return ShapeDetection(attributes=out, valid=valid, hole_fraction=holes, area_ratio=area_ratio)

"""Attribute detectors that measure images (real or generated), deterministic rules only.

Digits: stroke thickness from the fraction of ink that survives a 3x3 erosion (thin strokes
of 2-3 px vanish, dilated ones keep their core). Shapes: the ink mask (brightest channel >
0.5) and its hole-filled version give fill (outlined shapes enclose a hole: centre vs edge),
size (extent of the filled mask), shape (filled area / bounding-box area: square 1, circle
pi/4, triangle 1/2), colour (mean ink colour, nearest palette entry) and validity (one blob,
area ratio inside a shape's band, colour near the palette, sane extent, clean background).
Squares against circles are read on a softer mask (brightest channel > 0.35) grown from the
blob: the VAE decoder dims square corners below 0.5, and on the 0.5 mask alone 8 % of its
reconstructions of real shapes read as circles or fall between the bands (data/README.md).
Digit class and validity need a learned model: see ``features.FeatureNet`` (its digit head).
Accuracies on held-out real images are in data/README.md and checked by tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import _describe, check_bool, check_finite, is_real_number
from .shapes import PALETTE, SHAPE_ATTRIBUTES, _value_index

__all__ = ["thickness_score", "detect_thick", "THICK_THRESHOLD", "speckle_score", "detect_speckle",
           "SPECKLE_THRESHOLD", "ShapeDetection", "detect_shapes", "SHAPE_AREA_RATIO", "SOFT_INK"]

# Midpoint region between the classes on the TRAIN split at 16 px (best single threshold 0.614,
# midpoint of the class means 0.573); accuracy is measured on the held-out test split.
THICK_THRESHOLD = 0.6
# Above every one of the 1,797 real digits at 16 px, thin or thickened (at most 0.40, mean 0.28-0.30);
# the digits UNet's speckled DDIM samples score 0.5-0.65 (data/README.md, images/digits_unet).
SPECKLE_THRESHOLD = 0.5
SHAPE_AREA_RATIO = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}
# Filled-area / bounding-box ratio bands, measured on 2,000 drawn shapes (seed 2001) and the VAE's
# reconstructions of them; a ratio between bands is an invalid shape. Triangles against the rest
# on the 0.5 mask (triangle 0.49-0.66, circle 0.70 and up): a triangle at most 0.69, a circle at
# least 0.72. Circles against squares on the soft mask (> SOFT_INK; circle 0.69-0.84, square
# 0.91-1.0, where the 0.5 mask reads reconstructed small squares as low as 0.84, inside the
# circles' 0.74-0.90): a circle at most 0.87, a square at least 0.895.
SOFT_INK = 0.35
_TRIANGLE_MIN, _TRIANGLE_MAX, _CIRCLE_MIN = 0.44, 0.69, 0.72  # 0.5-mask ratio
_CIRCLE_MAX, _SQUARE_MIN = 0.87, 0.895       # soft-mask ratio
_TRIANGLE_CUT, _SQUARE_CUT = 0.705, 0.8825   # the shape read (mid-gap)
_HOLE_THRESHOLD = 0.1      # outlined shapes: hole fraction 0.17 (small triangle) to 0.67 (large circle)
_SIZE_THRESHOLD = 17.0     # px extent: small ~12-13, large ~22-23
_COLOUR_TOL = 0.35         # validity: mean ink colour this close (L2 in RGB) to a palette entry
_BACKGROUND_TOL = 0.2      # validity: mean brightest channel of pixels away from the blob
# Inputs are clamped to [-1, 1]; generated samples overshoot it a little (up to about 1.2), but
# values beyond this bound mean another scale (0-255 pixels, [0, 1] images times 255, ...).
_MAX_ABS = 3.0
# The digits and shapes are drawn on a background at -1: every real image (the 1,797 digits, 1,000
# shapes) and every sample of the shipped UNets (DDIM 50, unguided and MMD-guided) has a pixel at
# -0.97 or below. A batch whose darkest pixel is above this has no background: images in [0, 1],
# which would be read as half-grey and mis-measured.
_MAX_BACKGROUND = -0.5
# Dark ink on a light background (a pen-on-paper scan, or -x of a digit) passes that check (its
# ink is dark) and was read inverted: detect_thick called 99 % of the inverted held-out digits
# thick, image_features embedded them without a word. The images' border (outer 1-px frame,
# brightest channel) is background: its median over a batch is -0.86 for the 1,797 real digits
# thickened (-1 thin), -1 for shapes (jitter 5) and the shipped models' samples in the explorer
# grids (strongest guidance included; at most -0.77 for any one image). Above this: refused.
_MAX_BORDER_MEDIAN = 0.5


def _check_scale(x: Tensor, name: str, what: str = "accepted") -> None:
    """Refuse values beyond +-_MAX_ABS (another scale: 0-255 pixels, ...) in images meant to be
    in [-1, 1]; ``what`` says what happens to the overshoot below that bound."""
    if x.numel():
        lo, hi = (float(v) for v in x.aminmax())
        if max(-lo, hi) > _MAX_ABS:
            raise ValueError(f"{name} must be in [-1, 1] (overshoot up to +-{_MAX_ABS:g} is {what}); got values "
                             f"in [{lo:.4g}, {hi:.4g}]; e.g. map 0-255 pixels with x / 127.5 - 1")


def _to_unit(images: Tensor, name: str, channels: int | None = None) -> Tensor:
    """images (N, C, H, W) in [-1, 1] (C == channels if given), finite -> [0, 1] on the CPU.

    The batch must be bright ink on a dark background: a darkest pixel above -0.5
    (``_MAX_BACKGROUND``) means images in [0, 1] (or blank white ones), a light border (median
    above ``_MAX_BORDER_MEDIAN``) inverted images, which the detectors would misread; both raise."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W) in [-1, 1]; got {_describe(images)}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be a tensor (N, C, H, W) in [-1, 1]; got shape {tuple(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) here, (N, {channels}, H, W); "
                         f"got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    check_finite(x, name)
    _check_scale(x, name, "clamped")
    _check_background(x, name)
    return ((x + 1) / 2).clamp(0, 1)


def _check_background(x: Tensor, name: str) -> None:
    """Refuse a batch x (N, C, H, W) meant to be bright ink on a dark background near -1 whose
    darkest pixel is above ``_MAX_BACKGROUND`` (images in [0, 1]) or whose border pixels have a
    median above ``_MAX_BORDER_MEDIAN`` (dark ink on a light background: inverted)."""
    if not x.numel():
        return
    lo, hi = float(x.min()), float(x.max())
    if lo > _MAX_BACKGROUND:
        raise ValueError(f"{name} must be in [-1, 1] on a dark background near -1; got values in "
                         f"[{lo:.4g}, {hi:.4g}] (no pixel below {_MAX_BACKGROUND:g}): "
                         "images in [0, 1]? map them with x * 2 - 1")
    bright = x.amax(1)  # (N, H, W) brightest channel
    frame = torch.ones(bright.shape[1:], dtype=torch.bool, device=bright.device)
    frame[1:-1, 1:-1] = False  # the outer 1-px ring
    border = float(bright[:, frame].median())
    if border > _MAX_BORDER_MEDIAN:
        raise ValueError(f"{name} must be bright ink on a dark background near -1; their border pixels have "
                         f"median {border:.3g} (above {_MAX_BORDER_MEDIAN:g}): dark ink on a light background "
                         "(a scan of pen on paper)? invert them with -x")


def _check_threshold(threshold: Any) -> None:
    if not is_real_number(threshold):
        raise TypeError(f"threshold must be a real number; got {_describe(threshold)}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")


def thickness_score(images: Tensor) -> Tensor:
    """(N,) fraction of ink mass that survives a 3x3 grey erosion; images (N, 1, H, W) in [-1, 1]."""
    x = _to_unit(images, "images", channels=1)  # (N, 1, H, W) in [0, 1]
    eroded = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)  # (N, 1, H, W)
    return eroded.sum((1, 2, 3)) / x.sum((1, 2, 3)).clamp_min(1e-6)


def _calibrated(images: Any, threshold: float | None, default: float, what: str) -> float:
    """The threshold to use: the given one, or the default, which holds for 16x16 digits only (a
    3x3 erosion or Laplacian means something else at another resolution: detect_thick on 32 px
    digits was 20 % accurate), so other sizes are refused without an explicit threshold."""
    if threshold is not None:
        _check_threshold(threshold)
        return threshold
    if isinstance(images, Tensor) and images.ndim == 4 and tuple(images.shape[2:]) != (16, 16):
        raise ValueError(f"images are {images.shape[2]}x{images.shape[3]}, but {what}'s default threshold "
                         f"was calibrated on 16x16 digits (the shipped digits size); resize them to 16x16 "
                         f"(F.interpolate(x, size=16, mode='area')), or pass a threshold calibrated for "
                         "your size")
    return default


def detect_thick(images: Tensor, threshold: float | None = None) -> Tensor:
    """(N,) bool: thick strokes (the digits' minority style); images (N, 1, 16, 16) in [-1, 1].
    ``threshold`` defaults to ``THICK_THRESHOLD``, calibrated on 16x16 digits; for another size
    give one calibrated there."""
    threshold = _calibrated(images, threshold, THICK_THRESHOLD, "detect_thick")
    return thickness_score(images) > threshold


def speckle_score(images: Tensor) -> Tensor:
    """(N,) mean |5-point Laplacian| over the interior pixels of images (N, C, H, W) in [-1, 1]:
    salt-and-pepper noise left in a sample scores high, smooth strokes low."""
    x = _to_unit(images, "images")  # (N, C, H, W) in [0, 1]
    if min(x.shape[2:]) < 3:
        raise ValueError(f"images must be at least 3x3 pixels for a Laplacian; got {tuple(images.shape)}")
    lap = (4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1]
           - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:])  # (N, C, H-2, W-2)
    return 2 * lap.abs().mean((1, 2, 3))  # in [-1, 1] units


def detect_speckle(images: Tensor, threshold: float | None = None) -> Tensor:
    """(N,) bool: a speckled sample (noise no real digit shows). ``threshold`` defaults to
    ``SPECKLE_THRESHOLD``, calibrated on 16x16 digits; for another size give one calibrated there."""
    threshold = _calibrated(images, threshold, SPECKLE_THRESHOLD, "detect_speckle")
    return speckle_score(images) > threshold


@dataclass
class ShapeDetection:
    """Per-image detected attributes (indices into SHAPE_ATTRIBUTES, -1 for an image with no
    ink: a blank image has no shape, colour, size or fill) and validity."""

    attributes: dict[str, Tensor]  # name -> (N,) long, -1 where the image is blank
    valid: Tensor                  # (N,) bool
    hole_fraction: Tensor          # (N,) float
    area_ratio: Tensor             # (N,) float, filled blob / its bounding box (0.5 mask)
    soft_area_ratio: Tensor        # (N,) float, the same on the soft mask (circle vs square)

    def rate(self, attribute: str, value: str, valid_only: bool = False) -> float:
        """Fraction of images detected with ``attribute == value`` (among valid ones if asked);
        a blank image counts as not having it."""
        index = _value_index(attribute, value)  # checks both names first
        hit = self.attributes[attribute] == index
        if check_bool(valid_only, "valid_only"):  # a str such as "no" was taken as True
            return float(hit[self.valid].float().mean()) if bool(self.valid.any()) else float("nan")
        return float(hit.float().mean())


def detect_shapes(images: Tensor) -> ShapeDetection:
    """Measure shape, colour, size, fill and validity of images (N, 3, H, W) in [-1, 1], square
    and at least 24 px (calibrated at 32; at 16 px outlines are one pixel wide and it reads 79 %
    of the fills and 76 % of the images valid)."""
    from scipy import ndimage

    x = _to_unit(images, "images", channels=3)  # RGB shapes
    n, _, h, w = x.shape
    if h != w or h < 24:
        raise ValueError(f"images must be square and at least 24x24 for detect_shapes (its thresholds are "
                         f"set on 32x32 shapes); got {h}x{w}")
    palette = torch.tensor([PALETTE[c] for c in SHAPE_ATTRIBUTES["colour"]])  # (K, 3)
    scale = h / 32.0
    out = {k: torch.zeros(n, dtype=torch.long) for k in SHAPE_ATTRIBUTES}
    valid = torch.zeros(n, dtype=torch.bool)
    holes, area_ratio, soft_ratio = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    bright = x.max(1).values.numpy()  # (N, H, W)
    for i in range(n):
        ink = bright[i] > 0.5
        labels, count = ndimage.label(ink)
        if count == 0:  # blank: no attribute at all (0 would read as red, small, filled circle)
            for k in out:
                out[k][i] = -1
            continue
        sizes = np.bincount(labels.ravel())[1:]
        blob = labels == (1 + int(sizes.argmax()))
        filled = ndimage.binary_fill_holes(blob)
        ys, xs = np.nonzero(filled)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        bbox_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        ratio = filled.sum() / bbox_area
        soft = _soft_ratio(bright[i], blob)
        hole = 1 - blob.sum() / filled.sum()
        colour = x[i][:, torch.from_numpy(blob)].mean(1)  # (3,) mean ink colour
        cdist = (palette - colour).norm(dim=1)  # (K,)
        name = "triangle" if ratio < _TRIANGLE_CUT else "circle" if soft < _SQUARE_CUT else "square"
        in_band = {"triangle": ratio <= _TRIANGLE_MAX, "circle": ratio >= _CIRCLE_MIN and soft <= _CIRCLE_MAX,
                   "square": soft >= _SQUARE_MIN}[name]
        shape = SHAPE_ATTRIBUTES["shape"].index(name)
        out["shape"][i] = shape
        out["colour"][i] = int(cdist.argmin())
        out["size"][i] = int(extent > _SIZE_THRESHOLD * scale)
        out["fill"][i] = int(hole > _HOLE_THRESHOLD)
        holes[i], area_ratio[i], soft_ratio[i] = float(hole), float(ratio), float(soft)
        away = ~ndimage.binary_dilation(filled, iterations=2)
        clean = float(bright[i][away].mean()) < _BACKGROUND_TOL if away.any() else True
        other_ink = sizes.sum() - sizes.max() <= 0.05 * sizes.max()  # no second shape beside it
        valid[i] = bool(ratio >= _TRIANGLE_MIN and in_band and cdist.min() < _COLOUR_TOL and clean and other_ink
                        and 8 * scale <= extent <= 28 * scale)
    return ShapeDetection(attributes=out, valid=valid, hole_fraction=holes, area_ratio=area_ratio,
                          soft_area_ratio=soft_ratio)


def _soft_ratio(bright: np.ndarray, blob: np.ndarray) -> float:
    """Filled area / bounding box of the soft-mask (> SOFT_INK) components that touch ``blob``.
    bright (H, W) brightest channel in [0, 1]; blob (H, W) bool, the 0.5-mask blob."""
    from scipy import ndimage

    labels, _ = ndimage.label(bright > SOFT_INK)
    ids = np.unique(labels[blob])
    filled = ndimage.binary_fill_holes(np.isin(labels, ids[ids > 0]))  # (H, W), contains blob
    ys, xs = np.nonzero(filled)
    return float(filled.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))

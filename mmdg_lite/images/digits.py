"""Real handwritten digits (scikit-learn's ``load_digits``) upscaled, with a known minority style.

The 1,797 8x8 scans ship inside scikit-learn (no download). They are upscaled bilinearly to
``size`` x ``size`` and mapped to [-1, 1] (background -1, ink +1). The style "thick" dilates the
strokes (grey dilation with a 3x3 footprint at the output resolution, about +2 px of stroke
width); it is applied to an exact, seeded ``style_fraction`` of the chosen split, so the
pretraining set holds a KNOWN minority of the style.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_int, check_nonnegative

__all__ = ["DigitSet", "load_digit_set", "thicken", "DIGIT_STYLES", "DIGIT_SPLITS", "N_TEST_DIGITS"]

DIGIT_STYLES = ("thick",)
DIGIT_SPLITS = ("train", "test", "all")
N_TEST_DIGITS = 500  # held out from every model: references and evaluation targets come from here
_SPLIT_SEED = 1234   # the train/test split is fixed, independent of the style seed


@dataclass
class DigitSet:
    """Digit images with their labels and which ones carry the style."""

    images: Tensor   # (N, 1, H, W) float32 in [-1, 1]
    labels: Tensor   # (N,) long, digit class 0..9
    styled: Tensor   # (N,) bool, True where the style was applied
    style: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, mask_or_index: Tensor) -> "DigitSet":
        return DigitSet(self.images[mask_or_index], self.labels[mask_or_index],
                        self.styled[mask_or_index], self.style)


def thicken(images: Tensor) -> Tensor:
    """Thick strokes: 3x3 grey dilation (a max filter) of images (N, 1, H, W) in [-1, 1]."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"shape {tuple(images.shape)}, {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W) in [-1, 1]; got {got}")
    return torch.nn.functional.max_pool2d(images, kernel_size=3, stride=1, padding=1)  # (N, 1, H, W)


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)  # (1797, 8, 8) in [0, 1]


def load_digit_set(split: str = "train", *, size: int = 16, style: str = "thick",
                   style_fraction: float = 0.2, seed: int = 0) -> DigitSet:
    """The ``split`` ("train": 1,297 images, "test": the 500 held out, "all") at ``size`` px.

    Exactly ``round(style_fraction * N)`` images, chosen by a permutation seeded with ``seed``,
    get ``style``; the rest stay as scanned. Same arguments, same tensors.
    """
    check_choice(split, "split", DIGIT_SPLITS)
    check_choice(style, "style", DIGIT_STYLES)
    size = check_int(size, "size", 8)
    style_fraction = check_nonnegative(style_fraction, "style_fraction")
    if style_fraction > 1:
        raise ValueError(f"style_fraction must be in [0, 1]; got {style_fraction}")
    check_int(seed, "seed", 0)
    raw, labels = _raw_digits()
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(raw))
    idx = {"train": perm[N_TEST_DIGITS:], "test": perm[:N_TEST_DIGITS], "all": np.arange(len(raw))}[split]
    x = torch.from_numpy(raw[idx]).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()  # (N, 1, size, size) in [-1, 1]
    n = x.shape[0]
    n_styled = int(round(style_fraction * n))
    chosen = torch.from_numpy(np.random.default_rng(seed).permutation(n)[:n_styled])
    styled = torch.zeros(n, dtype=torch.bool)
    styled[chosen] = True
    if n_styled:
        x[styled] = thicken(x[styled])
    return DigitSet(images=x, labels=torch.from_numpy(labels[idx]), styled=styled, style=style)

"""Solutions for notebooks/05_pixel_digits.ipynb (exercises 05.1 and 05.2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["erosion_survival", "tweedie_x0"]


def erosion_survival(images: Tensor) -> Tensor:
    """The stroke-thickness score of the thick-stroke detector: map images (N, 1, H, W) from
    [-1, 1] to [0, 1], erode with a 3x3 minimum filter (pixels outside the image ignored) and
    return the fraction of ink that survives, eroded.sum / image.sum per image, shape (N,)
    (0 for a blank image)."""
    x = ((images + 1) / 2).clamp(0, 1)
    eroded = -torch.nn.functional.max_pool2d(-x, kernel_size=3, stride=1, padding=1)  # min filter
    return eroded.sum((1, 2, 3)) / x.sum((1, 2, 3)).clamp_min(1e-6)  # a blank image: 0, not 0/0


def tweedie_x0(x_t: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
    """Tweedie's estimate of the clean image from a noisy one and the UNet's noise prediction,
    x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar); x_t, eps (B, C, H, W), the
    result has their shape. This is the point the kernel sees with eval_point="x0_hat"."""
    return (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)

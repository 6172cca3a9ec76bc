"""Digit validity: the digit head's confidence AND features typical of real digits.

The digit head alone was confident on images no real digit resembles (blotches of over-strong
guidance, smooth random blobs, a blank image); the Mahalanobis atypicality in the feature space
refuses them while keeping the held-out real digits, thin and thick."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import EmpiricalCovariance

from mmdg_lite.images.digits import load_digit_set
from mmdg_lite.images.features import (DIGIT_TYPICAL_QUANTILE, detect_valid_digit, digit_atypicality,
                                       digit_typicality_threshold, image_features, predict)


def test_atypicality_is_the_mahalanobis_distance_to_real_digits():
    train = image_features(load_digit_set("train", style_fraction=0.5).images).double().numpy()
    x = load_digit_set("test", style_fraction=0.5, seed=3).images[:40]
    # sklearn's covariance divides by N, torch.cov by N - 1; the 1e-3 ridge is far below the
    # smallest eigenvalue of the features' covariance (about 1), so it moves nothing at 1e-3
    oracle = np.sqrt(EmpiricalCovariance().fit(train).mahalanobis(image_features(x).double().numpy())
                     * (len(train) - 1) / len(train))
    np.testing.assert_allclose(digit_atypicality(x).numpy(), oracle, rtol=1e-3)


def test_threshold_is_the_stated_quantile_of_the_held_out_digits():
    held_out = digit_atypicality(load_digit_set("test", style_fraction=0.5).images)  # (500,)
    beyond = float((held_out > digit_typicality_threshold()).float().mean())
    assert beyond == pytest.approx(1 - DIGIT_TYPICAL_QUANTILE, abs=1 / len(held_out))


@pytest.mark.parametrize("style_fraction", [0.0, 1.0])  # thin scans and thickened ones
def test_real_digits_are_valid(style_fraction):
    for split in ("train", "test"):
        x = load_digit_set(split, style_fraction=style_fraction).images
        assert float(detect_valid_digit(x).float().mean()) >= 0.99, split


def test_confident_non_digits_are_invalid():
    g = torch.Generator().manual_seed(0)
    k = torch.exp(-torch.arange(-3, 4.0) ** 2 / 4)
    k = (k[:, None] * k[None] / k.sum() ** 2)[None, None]  # (1, 1, 7, 7) Gaussian blur
    blobs = (F.conv2d(torch.randn(200, 1, 16, 16, generator=g), k, padding=3) > 0.1).float() * 2 - 1
    blank = -torch.ones(10, 1, 16, 16)
    for name, x in (("blobs", blobs), ("blank", blank)):
        confident = predict(x, "digit").max(1).values >= 0.5
        assert float(confident.float().mean()) > 0.9, name  # the head alone calls them digits
        assert float(detect_valid_digit(x).float().mean()) <= 0.02, name

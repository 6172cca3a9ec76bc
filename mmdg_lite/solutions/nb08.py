"""Solutions for notebooks/08_evaluation.ipynb (exercises 08.1 and 08.2)."""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg
from torch import Tensor

__all__ = ["frechet_distance_by_hand", "tv_floor"]


def frechet_distance_by_hand(x: Tensor, y: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to x (n, D) and y (m, D):
    ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^{1/2}), sample covariances (divisor n - 1)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b).real  # (S_x S_y)^{1/2}; tiny imaginary parts are round-off
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def tv_floor(weights: Tensor, n: int) -> float:
    """Expected total variation between the mode proportions of n exact samples and the mode
    weights p (normal approximation of each count): 0.5 sum_k sqrt(2 p_k (1 - p_k) / (pi n))."""
    p = np.asarray(weights, dtype=np.float64)
    return float(0.5 * np.sqrt(2 * p * (1 - p) / (math.pi * n)).sum())

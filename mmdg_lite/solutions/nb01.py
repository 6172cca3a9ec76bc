"""Solutions for notebooks/01_mmd_basics.ipynb (exercises 01.1 and 01.2)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["unbiased_mmd2", "eq6_gradient"]


def unbiased_mmd2(x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """Unbiased MMD^2 (U-statistic) between x (B, D) and y (N_r, D), Gaussian kernel of
    bandwidth sigma: the within-set sums skip i = i' (divided by B(B-1) and N_r(N_r-1)),
    the cross term keeps every pair. Returns a 0-d tensor."""
    def gram(a: Tensor, b: Tensor) -> Tensor:  # k(a_i, b_j), (n, m)
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * sigma**2))

    B, N = len(x), len(y)
    kxx, kyy = gram(x, x), gram(y, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (B * (B - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (N * (N - 1))
    return xx + yy - 2 * gram(x, y).mean()


def eq6_gradient(x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """Eq. 6 for the Gaussian kernel: the gradient of the biased MMD^2 with respect to every
    generated point x_i, shape (B, D). Use grad_1 k(u, v) = k(u, v) (v - u) / sigma^2."""
    def summed_grad(a: Tensor, b: Tensor) -> Tensor:  # sum_j grad_1 k(a_i, b_j), (n, D)
        diff = b[None, :, :] - a[:, None, :]  # (n, m, D): v - u
        k = torch.exp(-(diff**2).sum(-1) / (2 * sigma**2))  # (n, m)
        return (k[..., None] * diff).sum(1) / sigma**2

    B, N = len(x), len(y)
    repulsion = 2 / B**2 * summed_grad(x, x)
    attraction = -2 / (B * N) * summed_grad(x, y)
    return repulsion + attraction

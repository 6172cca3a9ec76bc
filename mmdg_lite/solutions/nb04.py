"""Solutions for notebooks/04_prompt_aware.ipynb (exercises 04.1 and 04.2)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["eq11_prompt_weights", "eq11_gradient"]


def eq11_prompt_weights(sample_features: Tensor, reference_features: Tensor,
                        prompt_bandwidth: float) -> Tensor:
    """The prompt kernel of Eq. 11, k_p(p_i, p_j^r) = exp(-||u_i - v_j||^2 / (2 sigma_p^2)) on
    L2-normalised prompt features u = p / ||p||: (n, P), (N_r, P) -> (n, N_r)."""
    u = sample_features / sample_features.norm(dim=1, keepdim=True)
    v = reference_features / reference_features.norm(dim=1, keepdim=True)
    d2 = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * prompt_bandwidth**2))


def eq11_gradient(x: Tensor, y: Tensor, x_prompts: Tensor, y_prompts: Tensor, sigma_z: float,
                  sigma_p: float) -> Tensor:
    """Eq. 11: the gradient of the product-kernel MMD^2 with respect to every generated point,
    (B, D). Gaussian k_z (bandwidth sigma_z) on the samples, Gaussian k_p (sigma_p) on the
    L2-normalised prompt features; the prompt weights multiply the terms of Eq. 6."""
    def prompt_k(a: Tensor, b: Tensor) -> Tensor:  # (n, m)
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        return torch.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma_p**2))

    def weighted_grad(a: Tensor, b: Tensor, w: Tensor) -> Tensor:  # sum_j w_ij grad_1 k_z(a_i, b_j)
        diff = b[None, :, :] - a[:, None, :]  # (n, m, D)
        k = torch.exp(-(diff**2).sum(-1) / (2 * sigma_z**2))  # (n, m)
        return ((w * k)[..., None] * diff).sum(1) / sigma_z**2

    B, N = len(x), len(y)
    repulsion = 2 / B**2 * weighted_grad(x, x, prompt_k(x_prompts, x_prompts))
    attraction = -2 / (B * N) * weighted_grad(x, y, prompt_k(x_prompts, y_prompts))
    return repulsion + attraction

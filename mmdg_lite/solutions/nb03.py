"""Solutions for notebooks/03_mmd_guidance_2d.ipynb (exercises 03.1 and 03.2)."""
from __future__ import annotations

from torch import Tensor

from mmdg_lite import GaussianKernel, mmd2_grad

__all__ = ["guided_step", "x0_hat_guidance_term"]


def guided_step(x_t: Tensor, x_prev: Tensor, references: Tensor, sigma: float,
                strength: float) -> Tensor:
    """The guided update of Eq. 5 with a constant schedule and mmdg_lite's strength scale:
    x_{t-1} = x_prev - lambda grad_{x_t} MMD^2(x_t, references), lambda = c B sigma^2,
    Gaussian kernel of bandwidth sigma (no clipping). Shapes (B, D) -> (B, D)."""
    lam = strength * len(x_t) * sigma**2
    return x_prev - lam * mmd2_grad(x_t, references, GaussianKernel(sigma))


def x0_hat_guidance_term(x_t: Tensor, eps: Tensor, alpha_bar: float, references: Tensor,
                         sigma: float) -> Tensor:
    """The MMD gradient evaluated at the Tweedie estimate x0_hat and chained back to x_t with
    eps held fixed: grad_{x_t} MMD^2(x0_hat(x_t), references), shape (B, D)."""
    x0_hat = (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
    return mmd2_grad(x0_hat, references, GaussianKernel(sigma)) / alpha_bar**0.5

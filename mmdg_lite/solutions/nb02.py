"""Solutions for notebooks/02_diffusion_2d.ipynb (exercises 02.1 and 02.2)."""
from __future__ import annotations

from torch import Tensor

__all__ = ["tweedie_x0", "ddim_step"]


def tweedie_x0(x_t: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
    """The denoiser's estimate of the clean point (Tweedie / DDPM):
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), same shape as x_t."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_prev: float) -> Tensor:
    """One deterministic DDIM step (eta = 0): estimate x0_hat from x_t and the predicted noise,
    then re-noise it to the next level with the same noise:
    x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps."""
    x0_hat = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    return alpha_bar_prev**0.5 * x0_hat + (1 - alpha_bar_prev) ** 0.5 * eps

"""Where the kernel sees the sample: the evaluation point of MMD guidance.

Every point is an affine image z = a x + b of a sampler tensor, taken in the DDPM-normalised
space in which noisy samples have unit-variance noise: a scheduler whose latents are
sigma-scaled (Euler, Karras: x_t = x_0 + sigma_t eps) feeds its denoiser scale_model_input(x_t) =
x_t / sqrt(sigma_t^2 + 1), and the state's ``input_scale`` is that factor (1 for DDPM/DDIM).

* "x_t": z = c_in x_t, before the step (paper Eq. 5).
* "x_prev": z = c_in' x_{t-1}, after the step; the gradient is subtracted from x_{t-1}
  (public reference code).
* "x0_hat": Tweedie's estimate z = (c_in x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) with eps
  detached, so a = c_in / sqrt(abar_t) (for sigma-scaled latents this is x_t - sigma_t eps).
* "x0_hat_backprop": the same point with the gradient back-propagated through the denoiser
  (a vector-Jacobian product; the reviewers' "compare clean with clean").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .._validation import check_autograd

__all__ = ["EVAL_POINTS", "EvalPoint", "Located"]

EVAL_POINTS = ("x_t", "x_prev", "x0_hat", "x0_hat_backprop")


@dataclass
class Located:
    z: Tensor  # (B, D) the points the kernel sees, in the work dtype
    scale: float  # a = dz/dx (the linear part; the backprop point adds the denoiser's Jacobian)
    pull_back: Callable[[Tensor], Tensor]  # grad_z (B, D) -> grad_x (B, D)


def _linear(z: Tensor, a: float) -> Located:
    return Located(z, a, lambda g: a * g)


class EvalPoint:
    """Maps a sampler step to the kernel's points and the kernel's gradient back to x."""

    def __init__(self, name: str) -> None:
        if name not in EVAL_POINTS:
            raise ValueError(f"eval_point must be one of {', '.join(map(repr, EVAL_POINTS))}; got {name!r}")
        self.name = name

    def noisy_point(self, state: Any, dtype: torch.dtype) -> Tensor:
        """c_in x_t (B, D): the DDPM-normalised noisy batch (used to read the data scale)."""
        return state.x_t.detach().reshape(len(state.x_t), -1).to(dtype) * _input_scale(state)

    def locate(self, state: Any, dtype: torch.dtype) -> Located:
        n = len(state.x_t)
        c_in = _input_scale(state)
        if self.name == "x_t":
            return _linear(state.x_t.detach().reshape(n, -1).to(dtype) * c_in, c_in)
        if self.name == "x_prev":
            c_prev = float(getattr(state, "input_scale_prev", 1.0))
            return _linear(state.x_prev.detach().reshape(n, -1).to(dtype) * c_prev, c_prev)
        ab = float(state.alpha_bar_t)
        if ab == 0.0:  # x0_hat = (x_t - eps) / 0
            raise ValueError(f"x0_hat is undefined at step {state.step_index}, where alpha_bar_t = 0 (pure noise: the "
                             "first step of a zero-terminal-SNR schedule, rescale_betas_zero_snr=True with 'trailing' "
                             "spacing); start the guided window after it (e.g. start=0.05) or use eval_point 'x_t' "
                             "or 'x_prev'")
        if not 0.0 < ab <= 1.0:
            raise ValueError(f"x0_hat needs 0 < alpha_bar_t <= 1; got {ab!r} at step {state.step_index}")
        a = c_in / math.sqrt(ab)
        if self.name == "x0_hat":
            x = state.x_t.detach().reshape(n, -1).to(dtype)
            eps = state.eps.detach().reshape(n, -1).to(dtype)
            return _linear(a * x - math.sqrt((1 - ab) / ab) * eps, a)
        # x0_hat_backprop: eps through the denoiser, so dz/dx = a (I - sqrt(1 - abar) J_eps)
        check_autograd("eval_point='x0_hat_backprop'")
        denoiser = getattr(state, "denoiser", None)
        if not callable(denoiser):
            raise ValueError("eval_point='x0_hat_backprop' backpropagates through the model: the step's state needs "
                             f"denoiser, callable as denoiser(c_in * x_t, t, cond); got {type(denoiser).__name__}")
        with torch.enable_grad():
            xt = state.x_t.detach().requires_grad_(True)
            t = torch.full((n,), int(state.t), dtype=torch.long, device=xt.device)
            eps = denoiser(xt * c_in, t, getattr(state, "cond", None))
            if isinstance(eps, Tensor) and not eps.requires_grad:  # else silently x0_hat's gradient
                raise ValueError("eval_point='x0_hat_backprop' backpropagates through the denoiser, but its output "
                                 "carries no gradient (computed under torch.no_grad(), detached, through numpy, or "
                                 "constant in x_t), so the step would be the same as with eval_point='x0_hat', at "
                                 "the cost of a second model call; make the denoiser differentiable in x_t, or use "
                                 "eval_point='x0_hat'")
            z = (xt * c_in - math.sqrt(1 - ab) * eps) / math.sqrt(ab)  # (B, *S)

        def pull_back(g: Tensor) -> Tensor:
            (gx,) = torch.autograd.grad(z, xt, grad_outputs=g.reshape(z.shape).to(z.dtype))
            return gx.reshape(n, -1).to(g.dtype)

        return Located(z.detach().reshape(n, -1).to(dtype), a, pull_back)


def _input_scale(state: Any) -> float:
    c = float(getattr(state, "input_scale", 1.0))
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"state.input_scale must be a finite number > 0 (scale_model_input's factor); "
                         f"got {c!r}")
    return c

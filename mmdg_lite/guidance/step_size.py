"""The step-size policy of MMD guidance: lambda_t = strength * s(t) * scale (paper Eq. 5).

* schedule s(t): "constant" (paper), "linear", "cosine", "alpha_bar", "last", or a callable
  (step_index, num_steps, alpha_bar_t) -> weight >= 0; guidance runs only for step fractions
  u = step_index / num_steps in [start, stop).
* strength scale: "batch_bandwidth" multiplies by B * sigma^2 / a^2 (sigma^2: a Gaussian kernel's;
  sum_k sigma_k^2 for a "displacement"-weighted MultiGaussianKernel, 1 / sum_k sigma_k^-2 for an
  "equal" one, which averages its bandwidths' displacements), so that the step is
  2c times each sample's kernel-weighted displacement toward the references, less the same
  toward the batch (the 2 of Eq. 6), in the kernel's own space: c is scale-free (independent of
  B, of the data scale, and of where the kernel is evaluated: a is d(point)/dx, see
  ``eval_point``). Other kernels have no bandwidth: sigma^2 = 1, and c keeps the data's units.
  "none" is the paper's literal lambda_t.
* normalisation: "none" (paper); "norm_matched": alpha * ||x|| * g / (||g|| + 1e-5) per sample
  (public reference code); "clipped": each sample's step norm capped at ``clip_norm`` in the
  kernel's space (default 0.2 x the data scale read off the first guided step).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._validation import check_choice, check_int, check_nonnegative, check_positive, is_real_number

__all__ = ["StepSize", "SCHEDULES", "NORMALIZATIONS", "STRENGTH_SCALES", "schedule_weight"]

SCHEDULES = ("constant", "linear", "cosine", "alpha_bar", "last")
NORMALIZATIONS = ("none", "norm_matched", "clipped")
STRENGTH_SCALES = ("batch_bandwidth", "none")
Schedule = str | Callable[[int, int, float], float]
# alpha of the norm-matched step when no strength is given (benchmarks/results/defaults.md)
DEFAULT_ALPHA = 0.1


def schedule_weight(schedule: Schedule, step_index: int, num_steps: int,
                    alpha_bar_t: float, last_fraction: float = 0.3) -> float:
    """s(t) in lambda_t = strength * s(t); u = step_index / (num_steps - 1) runs 0 (noise) -> 1
    (u = 1 in a one-step run, so "linear" and "cosine" guide its only step).

    constant: 1. linear: u (ramps up toward the clean end). cosine: (1 - cos(pi u)) / 2.
    alpha_bar: abar_t (small while the sample is mostly noise). last: 1 on the last
    ``last_fraction`` of the steps, else 0 (the reviewers' "only late steps need guidance").
    A callable's value must be a finite number >= 0 (TypeError for a non-number such as "1" or a
    tensor, ValueError for NaN, Inf or a negative value).
    """
    num_steps = check_int(num_steps, "num_steps", 1)
    if check_int(step_index, "step_index", 0) >= num_steps:
        raise ValueError(f"step_index must be from 0 to num_steps - 1 = {num_steps - 1}; got {step_index}")
    alpha_bar_t = _check_alpha_bar(alpha_bar_t)
    if not 0 < check_positive(last_fraction, "last_fraction") <= 1:
        raise ValueError(f"last_fraction must be in (0, 1]; got {last_fraction!r}")
    if callable(schedule):
        try:
            value = schedule(step_index, num_steps, alpha_bar_t)
        except TypeError as err:  # e.g. a callable of the wrong arity
            raise TypeError(f"the schedule callable is called as schedule(step_index, num_steps, alpha_bar_t) "
                            f"and raised TypeError: {err}") from err
        if not is_real_number(value):  # a str such as "1" would pass float()
            raise TypeError(f"the schedule callable must return a number; got {value!r} at step "
                            f"{step_index}")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"the schedule callable returned {value!r} at step {step_index} of "
                             f"{num_steps}; a guidance weight must be a finite number >= 0")
        return v
    u = step_index / (num_steps - 1) if num_steps > 1 else 1.0  # one step is the clean end too
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return u
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * u))
    if schedule == "alpha_bar":
        return alpha_bar_t
    if schedule == "last":
        return 1.0 if step_index >= num_steps * (1.0 - last_fraction) - 1e-9 else 0.0
    raise ValueError(f"schedule must be one of {SCHEDULES} or a callable; got {schedule!r}")


def _check_alpha_bar(value: object) -> float:
    """alpha_bar_t as a float in [0, 1]: a number or a one-element tensor (a scheduler's entry).
    A NaN, negative or > 1 value made s(t) NaN, or a negative weight that pushes samples away."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        value = float(value)
    if not is_real_number(value):
        raise TypeError(f"alpha_bar_t must be a number in [0, 1] (the cumulative alpha product at step t); "
                        f"got {value!r}"[:200])
    v = float(value)  # type: ignore[arg-type]
    if not 0.0 <= v <= 1.0:  # also refuses NaN
        raise ValueError(f"alpha_bar_t must be a number in [0, 1] (the cumulative alpha product at step t); "
                         f"got {value!r}")
    return v


class StepSize:
    """Turns the MMD^2 gradient into the step subtracted from x_{t-1}."""

    def __init__(self, strength: float | None = None, schedule: Schedule = "constant", *,
                 start: float = 0.0, stop: float = 1.0, last_fraction: float = 0.3,
                 strength_scale: str = "batch_bandwidth", normalization: str = "clipped",
                 clip_norm: float | None = None, clip_fraction: float = 0.2) -> None:
        self.normalization = check_choice(normalization, "normalization", NORMALIZATIONS)
        if strength is None:  # the default is per normalisation: alpha is a fraction of ||x||
            strength = DEFAULT_ALPHA if self.normalization == "norm_matched" else 1.0
        self.strength = strength  # validated by the property
        if not callable(schedule) and (not isinstance(schedule, str) or schedule not in SCHEDULES):
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))} or a callable "
                             f"(step_index, num_steps, alpha_bar_t) -> weight >= 0; got {schedule!r}")
        self.schedule = schedule
        self.start = check_nonnegative(start, "start")
        self.stop = check_nonnegative(stop, "stop")
        if not self.start < self.stop <= 1.0:
            raise ValueError(f"start and stop are fractions of the run with 0 <= start < stop <= 1; "
                             f"got start={start!r}, stop={stop!r}")
        self.last_fraction = check_positive(last_fraction, "last_fraction")
        if self.last_fraction > 1:
            raise ValueError(f"last_fraction must be in (0, 1]; got {last_fraction!r}")
        if schedule == "last" and 1.0 - self.last_fraction >= self.stop - 1e-9:
            raise ValueError(
                f"schedule='last' guides step fractions from 1 - last_fraction = {1 - self.last_fraction:g} "
                f"on, but stop={stop!r} ends guidance before that, so no step would be guided; use "
                f"last_fraction > {1 - self.stop:g}, or stop=1.0")
        self.strength_scale = check_choice(strength_scale, "strength_scale", STRENGTH_SCALES)
        self.clip_norm = None if clip_norm is None else check_positive(clip_norm, "clip_norm")
        self.clip_fraction = check_positive(clip_fraction, "clip_fraction")

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        v = check_nonnegative(value, "strength")
        if self.normalization == "norm_matched" and v >= 1:
            raise ValueError(
                f"with normalization='norm_matched' the strength is the reference code's alpha, the "
                f"step's length as a fraction of ||x|| (0.002-0.1 in practice); got strength="
                f"{value!r}, which moves every sample by at least its own norm per step. "
                "Lower strength, or use normalization='clipped'")
        self._strength = v

    def window(self) -> tuple[float, float] | None:
        """[lo, stop): the step fractions i / num_steps this step size can guide ([start, stop),
        and for "last" only the last ``last_fraction``); None when nothing is refused for it
        (strength 0, or a callable schedule whose support is its own)."""
        if self.strength == 0 or callable(self.schedule):
            return None
        return max(self.start, 1.0 - self.last_fraction if self.schedule == "last" else 0.0), self.stop

    def guides_any(self, steps: range, num_steps: int) -> bool:
        """Whether a step of ``steps`` (indices into a ``num_steps`` schedule) falls in the window
        (step 0 does not for "linear" and "cosine", whose s(t) is 0 there in a run of two or more)."""
        w = self.window()
        ramp = self.schedule in ("linear", "cosine") and num_steps > 1
        return w is None or any(w[0] - 1e-9 <= i / num_steps < w[1] and not (ramp and i == 0) for i in steps)

    def check_window(self, num_steps: int) -> None:
        """Refuse a run of ``num_steps`` in which the window [start, stop) (and, for "last", the
        last ``last_fraction``) holds no step: guidance would silently do nothing."""
        if not self.guides_any(range(num_steps), num_steps):
            raise ValueError(
                f"no step of this {num_steps}-step run falls in the guided window (start={self.start:g}, "
                f"stop={self.stop:g}" + (f", last_fraction={self.last_fraction:g}" if self.schedule == "last" else "")
                + f"; step i sits at the fraction i / {num_steps}" + (
                    f"; schedule={self.schedule!r} is 0 at step 0" if self.schedule in ("linear", "cosine") else "")
                + "): widen the window or use more steps")

    def weight(self, step_index: int, num_steps: int, alpha_bar_t: float) -> float:
        """strength * s(t), or 0 outside [start, stop) (start with the tolerance of ``guides_any``)."""
        u = step_index / num_steps
        if self.strength == 0 or not (self.start - 1e-9 <= u < self.stop):
            return 0.0
        return self.strength * schedule_weight(self.schedule, step_index, num_steps, alpha_bar_t,
                                               self.last_fraction)

    def step(self, grad_x: Tensor, base: Tensor, weight: float, displacement: float,
             point_scale: float, data_scale: float, landing: float = 1.0) -> Tensor:
        """The (B, D) step for the gradient ``grad_x`` w.r.t. x (B, D) at ``base`` = x_{t-1} (B, D).

        displacement: B * sigma^2 (batch_bandwidth scale, see the module docstring); point_scale: a = d point / dx;
        data_scale: the median distance read off the first guided step (for the default cap);
        landing: x_{t-1}'s units per unit of the point's x (c_in / c_in' for points of step t:
        1 for DDPM / DDIM; for sigma-scaled latents the scale-free step, sized in step t's
        normalised space, lands on x_{t-1}, whose unit differs: 10 Euler steps, 2.9x at the first).
        The paper's literal lambda ("none") stays in the sampler's own units.
        """
        if self.normalization == "norm_matched":
            gn = grad_x.norm(dim=1, keepdim=True)  # (B, 1)
            return weight * base.norm(dim=1, keepdim=True) * grad_x / (gn + 1e-5)
        scale_free = self.strength_scale == "batch_bandwidth"
        lam = weight * (displacement / point_scale**2 * landing if scale_free else 1.0)
        step = lam * grad_x  # (B, D)
        if self.normalization == "clipped":  # cap measured in the kernel's space: ||a * step||
            cap = (self.clip_norm if self.clip_norm is not None else self.clip_fraction * data_scale)
            cap = cap / point_scale * (landing if scale_free else 1.0)
            norm = step.norm(dim=1, keepdim=True)  # (B, 1)
            if not bool(torch.isfinite(norm).all()):  # lam * ||g|| overflowed (a huge strength): the
                tiny = torch.finfo(grad_x.dtype).tiny  # capped step along g, without forming lam * g
                top = grad_x.abs().amax(dim=1, keepdim=True)  # (B, 1); u's norm is in [1, sqrt(D)]
                u = grad_x / top.clamp_min(tiny)  # (B, D), so ||g|| neither overflows nor underflows
                return u * torch.minimum(top * lam, cap / u.norm(dim=1, keepdim=True).clamp_min(tiny))
            step = step * (cap / norm.clamp_min(cap))
        return step

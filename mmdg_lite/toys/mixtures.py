"""Toy data: isotropic Gaussian mixtures (paper Sec. 6, Fig. 2-3) and reference-set helpers.

A ``GaussianMixture`` is the "pretrained" distribution P; ``subset_mixture`` and
``dirichlet_mixture`` build a user's target Q over the same components; ``draw_references``
draws the small reference set R from Q. Mode metrics live in ``mmdg_lite.metrics``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .._validation import (_describe, as_float_tensor, check_finite, check_has_values, check_int, check_points,
                           check_positive, is_real_number)
from ..seeding import check_seed, make_generator

__all__ = ["GaussianMixture", "circle_mixture", "random_mixture", "subset_mixture",
           "dirichlet_mixture", "draw_references"]


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if generator is None:
        return make_generator(0)
    if isinstance(generator, torch.Generator):
        return generator
    try:  # check_seed named the argument 'seed', which sample() does not have
        return make_generator(check_seed(generator, "generator"))
    except ValueError:
        raise ValueError(f"generator must be a torch.Generator, a seed (an integer in [0, 2**63)) or None; "
                         f"got {generator!r}") from None


@dataclass
class GaussianMixture:
    """Isotropic mixture sum_k w_k N(mu_k, std^2 I).

    means (K, D), weights (K,) (non-negative, normalised to sum to 1 on construction), std > 0.
    """

    means: Tensor
    weights: Tensor
    std: float

    def __post_init__(self) -> None:
        self.means = check_points(self.means, "means", flatten=False)
        check_has_values(self.means, "means")
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got shape {tuple(self.means.shape)}")
        w = as_float_tensor(self.weights, "weights")
        k = self.means.shape[0]
        if w.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), one per mean; got shape {tuple(w.shape)}")
        check_finite(w, "weights")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum; got {w.tolist()}")
        if not bool(torch.isfinite(w.sum())):  # huge weights: their sum overflows, and w / inf made every weight 0
            w = w / w.max()  # (only then: ordinary weights keep their exact normalisation)
        self.weights = (w / w.sum()).to(self.means)
        self.std = check_positive(self.std, "std")

    @property
    def n_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | int | None = None) -> tuple[Tensor, Tensor]:
        """Draw n points; returns (x (n, D), labels (n,) long). ``generator`` may be a seed. The same
        seed gives the same points (up to rounding) whatever the dtype of the means."""
        n = check_int(n, "n", 1)
        gen = _generator(generator)
        labels = torch.multinomial(self.weights.cpu().double(), n, replacement=True, generator=gen)
        # drawn in float32 and cast: torch draws other numbers in float64, and float64 means (numpy's
        # default) must give the same points as float32 ones
        noise = torch.randn(n, self.dim, generator=gen, dtype=torch.float32).to(self.means.dtype)  # (n, D)
        x = self.means.cpu()[labels] + self.std * noise  # (n, D)
        return x.to(self.means.device), labels.to(self.means.device)

    def mode_radius(self, quantile: float = 0.999) -> float:
        """Distance from a mean within which a fraction ``quantile`` of that mode's samples fall."""
        from scipy.stats import chi2

        if not is_real_number(quantile):  # '0.5' raised "'<' not supported between 'int' and 'str'"
            raise TypeError(f"quantile must be a number in (0, 1); got {_describe(quantile)}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1); got {quantile!r}")
        return self.std * math.sqrt(float(chi2.ppf(quantile, self.dim)))

    def with_weights(self, weights: Tensor | Sequence[float]) -> "GaussianMixture":
        """Same components, new mixing weights."""
        try:
            w = torch.as_tensor(weights, dtype=self.means.dtype)
        except (TypeError, ValueError, RuntimeError):  # torch's "new(): invalid data type 'str'" names nothing
            raise TypeError(f"weights must be {self.n_modes} non-negative numbers (a sequence, array or tensor); "
                            f"got {_describe(weights)}") from None
        return GaussianMixture(self.means.clone(), w, self.std)


def circle_mixture(n_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """The 2-D ring: ``n_modes`` equal-weight modes evenly spaced on a circle."""
    n_modes = check_int(n_modes, "n_modes", 1)
    radius = check_positive(radius, "radius")
    angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes  # (K,)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (K, 2)
    return GaussianMixture(means.float(), torch.ones(n_modes), std)


def random_mixture(n_modes: int = 8, dim: int = 100, seed: int = 0, mean_scale: float = 1.0,
                   std: float = 0.5, min_separation: float | None = None) -> GaussianMixture:
    """Equal-weight mixture with means ~ N(0, mean_scale^2 I) in ``dim`` dimensions (paper Fig. 2).

    Means are redrawn until every pair is at least ``min_separation`` apart (default 10 * std).
    """
    n_modes = check_int(n_modes, "n_modes", 1)
    dim = check_int(dim, "dim", 1)
    mean_scale = check_positive(mean_scale, "mean_scale")
    std = check_positive(std, "std")
    sep = 10 * std if min_separation is None else check_positive(min_separation, "min_separation")
    gen = make_generator(seed)
    for _ in range(100):
        means = mean_scale * torch.randn(n_modes, dim, generator=gen, dtype=torch.float32)  # (K, D)
        d = torch.cdist(means, means) + torch.eye(n_modes) * 1e9  # (K, K)
        if n_modes == 1 or float(d.min()) >= sep:
            return GaussianMixture(means, torch.ones(n_modes), std)
    raise ValueError(
        f"could not draw {n_modes} means at least min_separation={sep} apart in dim={dim} with "
        f"mean_scale={mean_scale}; lower min_separation or raise mean_scale"
    )


def _check_mixture(mixture: Any) -> None:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, e.g. circle_mixture(); got {_describe(mixture)}")


def _check_modes(mixture: GaussianMixture, modes: Sequence[int]) -> list[int]:
    _check_mixture(mixture)
    valid = f"a sequence of distinct integer indices in [0, {mixture.n_modes - 1}], e.g. [0, 2]"
    if isinstance(modes, (np.ndarray, Tensor)) and modes.ndim == 1:
        modes = modes.tolist()  # integer arrays give ints; float or bool arrays are refused below
    if not isinstance(modes, Sequence) or isinstance(modes, (str, bytes)):
        raise TypeError(f"modes must be {valid}; got {_describe(modes)}")
    bad = [m for m in modes if isinstance(m, bool) or not isinstance(m, (int, np.integer))]
    if bad:
        raise TypeError(f"modes must be {valid}; got non-integer entries {bad!r} in {modes!r}")
    modes = [int(m) for m in modes]
    if not modes or len(set(modes)) != len(modes) or not all(0 <= m < mixture.n_modes for m in modes):
        raise ValueError(
            f"modes must be distinct indices in [0, {mixture.n_modes - 1}]; got {modes!r}"
        )
    return modes


def subset_mixture(mixture: GaussianMixture, modes: Sequence[int]) -> GaussianMixture:
    """Same components; weights uniform over ``modes`` and zero elsewhere (the 4-of-8 user)."""
    modes = _check_modes(mixture, modes)
    w = torch.zeros(mixture.n_modes)
    w[modes] = 1.0
    return mixture.with_weights(w)


def dirichlet_mixture(mixture: GaussianMixture, n_active: int = 2,
                      alpha: float | Sequence[float] = (1.0, 10.0), seed: int = 0) -> GaussianMixture:
    """``n_active`` random components with Dirichlet(alpha) weights (paper Fig. 3: 2, (1, 10))."""
    _check_mixture(mixture)
    n_active = check_int(n_active, "n_active", 1)
    if n_active > mixture.n_modes:
        raise ValueError(f"n_active must be <= the number of modes {mixture.n_modes}; got {n_active}")
    valid = f"alpha must be a positive number or {n_active} positive numbers"
    if isinstance(alpha, tuple) and alpha == (1.0, 10.0) and n_active != 2:  # the default was not chosen by the caller
        valid += " (the default (1.0, 10.0) is the paper's 2-mode user: pass alpha= for other n_active)"
    try:
        a = np.full(n_active, float(alpha)) if np.isscalar(alpha) else np.asarray(alpha, dtype=float)
    except (TypeError, ValueError):  # "x", None, a ragged list: numpy's message names no argument
        raise ValueError(f"{valid}; got {alpha!r}") from None
    if isinstance(alpha, (str, bool)) or a.shape != (n_active,) or not np.all(np.isfinite(a) & (a > 0)):
        raise ValueError(f"{valid}; got {alpha!r}")
    rng = np.random.default_rng(check_seed(seed))
    modes = rng.choice(mixture.n_modes, size=n_active, replace=False)
    w = torch.zeros(mixture.n_modes, dtype=torch.float32)  # a float64 default dtype failed in the assignment
    w[torch.as_tensor(modes)] = torch.as_tensor(rng.dirichlet(a), dtype=torch.float32)
    return mixture.with_weights(w)


def draw_references(mixture: GaussianMixture, n: int = 200, seed: int = 0) -> Tensor:
    """The user's reference set: n points (n, D) from ``mixture`` (use ``sample`` for labels)."""
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, e.g. subset_mixture(circle_mixture(), [0, 1]); "
                        f"got {type(mixture).__name__}")
    return mixture.sample(n, make_generator(seed))[0]

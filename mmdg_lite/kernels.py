"""Kernels with Gram matrices and closed-form weighted gradients (paper Sec. 2, Eq. 6 and 10).

Every kernel maps two point sets x (n, D) and y (m, D) to a Gram matrix (n, m) and gives

    grad_weighted(x, y, w)[i] = sum_j w[i, j] * grad_1 k(x_i, y_j)        # (n, D)

the weighted gradient with respect to the first argument. MMD gradients (Eq. 6, Eq. 11) are
sums of this form, so one method serves every estimator. A kernel without a closed form
inherits an autograd implementation of ``grad_weighted``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from ._validation import check_pair, check_points, check_positive

__all__ = [
    "Kernel", "GaussianKernel", "MultiGaussianKernel", "InverseMultiquadricKernel",
    "PolynomialKernel", "CallableKernel", "ProductKernel", "pairwise_sq_dists",
    "median_bandwidth",
]


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 as (n, m), via ||x||^2 + ||y||^2 - 2 x.y clamped at 0.

    No square root is taken, so the gradient 2 (x_i - y_j) stays finite at zero distance.
    """
    xx = (x * x).sum(-1, keepdim=True)  # (n, 1)
    yy = (y * y).sum(-1)  # (m,)
    return (xx + yy - 2.0 * x @ y.T).clamp_min(0.0)  # (n, m)


def median_bandwidth(x: Tensor, y: Tensor | None = None, max_points: int = 100) -> float:
    """Median heuristic: the median pairwise distance over the pooled points.

    At most ``max_points`` evenly spaced points of each set are used (as good as all of them,
    and much cheaper; no random numbers, so the same inputs give the same bandwidth).
    """
    def thin(z: Tensor) -> Tensor:
        z = z.detach().reshape(z.shape[0], -1)
        if z.shape[0] <= max_points:
            return z
        idx = torch.linspace(0, z.shape[0] - 1, max_points, device=z.device).long()
        return z[idx]

    pooled = thin(x) if y is None else torch.cat([thin(x), thin(y)])
    d2 = pairwise_sq_dists(pooled, pooled)
    iu = torch.triu_indices(len(pooled), len(pooled), offset=1, device=pooled.device)
    med = float(d2[iu[0], iu[1]].median().sqrt()) if iu.shape[1] else 0.0
    return med if med > 0 else 1.0


class Kernel:
    """Base class: subclasses implement ``gram``; ``grad_weighted`` defaults to autograd."""

    has_closed_form: bool = False

    def gram(self, x: Tensor, y: Tensor) -> Tensor:  # (n, D), (m, D) -> (n, m)
        raise NotImplementedError

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "Kernel":
        """A copy with data-dependent settings (median bandwidth) fixed from x and y."""
        return self

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """sum_j w_ij grad_1 k(x_i, y_j), shape (n, D); autograd version."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            k = self.gram(xg, y.detach())  # (n, m)
            (g,) = torch.autograd.grad((k * w.detach()).sum(), xg)
        return g

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Validated Gram matrix for user code: (n, *S) and (m, *S) -> (n, m)."""
        x, y = check_pair(check_points(x, "x"), check_points(y, "y"), "x", "y")
        return self.resolve(x, y).gram(x, y)


@dataclass(frozen=True)
class GaussianKernel(Kernel):
    """k(u, v) = exp(-||u - v||^2 / (2 sigma^2)); grad_1 k = k (v - u) / sigma^2 (paper Sec. 2).

    ``bandwidth=None`` uses the median heuristic times ``median_scale``, recomputed by
    ``resolve`` for each new pair of sets (a wider scale helps far-away samples feel the pull).
    """

    bandwidth: float | None = None
    median_scale: float = 1.0
    has_closed_form = True

    def __post_init__(self) -> None:
        if self.bandwidth is not None:
            check_positive(self.bandwidth, "bandwidth")
        check_positive(self.median_scale, "median_scale")

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "GaussianKernel":
        if self.bandwidth is not None:
            return self
        return replace(self, bandwidth=self.median_scale * median_bandwidth(x, y))

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        s = float(self.resolve(x, y).bandwidth)  # type: ignore[arg-type]
        return torch.exp(-pairwise_sq_dists(x, y) / (2 * s * s))  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        k = self.resolve(x, y)  # the median bandwidth is computed once, not per call
        s = float(k.bandwidth)  # type: ignore[arg-type]
        a = w * k.gram(x, y) / (s * s)  # (n, m)
        return a @ y - a.sum(1, keepdim=True) * x  # (n, D)


@dataclass(frozen=True)
class MultiGaussianKernel(Kernel):
    """Sum of Gaussian kernels over several bandwidths (robust to a badly chosen single sigma).

    ``bandwidths`` are absolute; with ``bandwidths=None`` they are ``scales`` x the median.
    """

    bandwidths: tuple[float, ...] | None = None
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    has_closed_form = True

    def __post_init__(self) -> None:
        for name, vals in (("bandwidths", self.bandwidths), ("scales", self.scales)):
            if vals is None:
                continue
            if len(vals) == 0:
                raise ValueError(f"{name} must hold at least one value; got {vals!r}")
            for v in vals:
                check_positive(v, name)
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.bandwidths is not None:
            object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "MultiGaussianKernel":
        if self.bandwidths is not None:
            return self
        med = median_bandwidth(x, y)
        return replace(self, bandwidths=tuple(s * med for s in self.scales))

    def _parts(self, x: Tensor, y: Tensor) -> list[GaussianKernel]:
        return [GaussianKernel(b) for b in self.resolve(x, y).bandwidths]  # type: ignore[union-attr]

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return sum(k.gram(x, y) for k in self._parts(x, y))  # type: ignore[return-value]

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        return sum(k.grad_weighted(x, y, w) for k in self._parts(x, y))  # type: ignore[return-value]


@dataclass(frozen=True)
class InverseMultiquadricKernel(Kernel):
    """k(u, v) = (c^2 + ||u - v||^2)^(-beta); grad_1 k = 2 beta (c^2 + d^2)^(-beta-1) (v - u).

    Heavy tails: distant samples still feel a pull, unlike the Gaussian.
    """

    c: float = 1.0
    beta: float = 0.5
    has_closed_form = True

    def __post_init__(self) -> None:
        check_positive(self.c, "c")
        check_positive(self.beta, "beta")

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.c**2 + pairwise_sq_dists(x, y)) ** (-self.beta)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        base = self.c**2 + pairwise_sq_dists(x, y)  # (n, m)
        a = w * 2 * self.beta * base ** (-self.beta - 1)  # (n, m)
        return a @ y - a.sum(1, keepdim=True) * x  # (n, D)


@dataclass(frozen=True)
class PolynomialKernel(Kernel):
    """k(u, v) = (gamma u.v + coef0)^degree; the defaults give the KID kernel (u.v / D + 1)^3.

    The public reference code guides with this cubic kernel. ``gamma=None`` means 1/D.
    grad_1 k = degree * gamma * (gamma u.v + coef0)^(degree-1) v.
    """

    degree: int = 3
    gamma: float | None = None
    coef0: float = 1.0
    has_closed_form = True

    def __post_init__(self) -> None:
        if not isinstance(self.degree, int) or isinstance(self.degree, bool) or self.degree < 1:
            raise ValueError(f"degree must be an integer >= 1; got {self.degree!r}")
        if self.gamma is not None:
            check_positive(self.gamma, "gamma")
        if not isinstance(self.coef0, (int, float)) or self.coef0 < 0:
            raise ValueError(f"coef0 must be a number >= 0; got {self.coef0!r}")

    def _g(self, x: Tensor) -> float:
        return float(self.gamma) if self.gamma is not None else 1.0 / x.shape[1]

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return (self._g(x) * (x @ y.T) + self.coef0) ** self.degree  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        g = self._g(x)
        a = w * self.degree * g * (g * (x @ y.T) + self.coef0) ** (self.degree - 1)  # (n, m)
        return a @ y  # (n, D)


class CallableKernel(Kernel):
    """Any differentiable function gram(x, y) -> (n, m); gradients come from autograd."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "custom") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(x, y) -> (n, m) Gram matrix; got {fn!r}")
        self.fn, self.name = fn, name

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(x, y)

    def __repr__(self) -> str:
        return f"CallableKernel({self.name})"


@dataclass(frozen=True)
class ProductKernel:
    """k((p, z), (p', z')) = k_p(p, p') k_z(z, z') (paper Eq. 10).

    Prompts are fixed during sampling, so only k_z is differentiated (Eq. 11): the prompt Gram
    matrix multiplies the weights given to the sample kernel. With ``normalize_prompts`` the
    prompt features are L2-normalised first (the usual choice for text-encoder features).
    """

    prompt_kernel: Kernel
    sample_kernel: Kernel
    normalize_prompts: bool = True

    def __post_init__(self) -> None:
        for name in ("prompt_kernel", "sample_kernel"):
            if not isinstance(getattr(self, name), Kernel):
                raise TypeError(f"{name} must be a Kernel; got {getattr(self, name)!r}")

    @property
    def has_closed_form(self) -> bool:
        return self.sample_kernel.has_closed_form

    def _prep(self, p: Tensor) -> Tensor:
        return torch.nn.functional.normalize(p, dim=-1) if self.normalize_prompts else p

    def prompt_gram(self, px: Tensor, py: Tensor) -> Tensor:
        px, py = self._prep(px), self._prep(py)
        return self.prompt_kernel.resolve(px, py).gram(px, py)  # (n, m)

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "ProductKernel":
        return replace(self, sample_kernel=self.sample_kernel.resolve(x, y))

    def gram(self, x: Tensor, y: Tensor, px: Tensor, py: Tensor) -> Tensor:
        return self.prompt_gram(px, py) * self.sample_kernel.gram(x, y)  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor, px: Tensor, py: Tensor) -> Tensor:
        return self.sample_kernel.grad_weighted(x, y, w * self.prompt_gram(px, py))


"""Kernels with Gram matrices and closed-form weighted gradients (paper Sec. 2, Eq. 6 and 10).

Every kernel maps two point sets x (n, D) and y (m, D) to a Gram matrix (n, m) and gives

    grad_weighted(x, y, w)[i] = sum_j w[i, j] * grad_1 k(x_i, y_j)        # (n, D)

the weighted gradient with respect to the first argument. MMD gradients (Eq. 6, Eq. 11) are
sums of this form, so one method serves every estimator. A kernel without a closed form
inherits an autograd implementation of ``grad_weighted``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ._validation import (check_autograd, check_bool, check_has_values, check_int, check_layouts, check_pair,
                          check_points, check_positive, from_numpy, is_real_number)

__all__ = [
    "Kernel", "GaussianKernel", "MultiGaussianKernel", "InverseMultiquadricKernel",
    "PolynomialKernel", "CallableKernel", "FeatureKernel", "ProductKernel", "pairwise_sq_dists",
    "median_bandwidth", "work_dtype", "magnitude_scale",
]


HALF_DTYPES = (torch.float16, torch.bfloat16)
# Points whose largest magnitude lies outside [2^-24, 2^24] are divided by a power of two (exact in
# floating point) before squared distances are formed, so float32 neither overflows (1e20^2) nor
# underflows (1e-30^2). Gaussian kernels are scale-invariant given a scaled bandwidth.
_SAFE_LOG2 = 24


def work_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype computations run in: float32 for half-precision inputs (float16 squared distances
    of SDXL-size latents overflow at 65,504), else the widest input dtype."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in HALF_DTYPES else dtype


def magnitude_scale(*tensors: Tensor) -> float:
    """1.0 for ordinary data, else the power of two nearest the largest |entry| (see _SAFE_LOG2)."""
    top = max(float(t.detach().amax().abs().max(t.detach().amin().abs())) for t in tensors)
    if top == 0.0 or not math.isfinite(top) or abs(math.log2(top)) <= _SAFE_LOG2:
        return 1.0
    return 2.0 ** round(math.log2(top))


def _rescaled(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """(x, y, ||x_i - y_j||^2, c): the points in the work dtype, divided by a power of two c when
    they are at an extreme scale (no copy otherwise), and their squared distances (n, m).

    The scale test reads the row norms the distances need anyway: only when the largest norm is
    0, not finite, or outside [2^-24, 2^24] are the entries themselves inspected."""
    dt = work_dtype(x, y)
    same = y is x  # a set against itself (the repulsion): its norms are read once
    x = x.to(dt)
    y = x if same else y.to(dt)
    nx = torch.linalg.vector_norm(x, dim=-1)  # (n,)
    ny = nx if same else torch.linalg.vector_norm(y, dim=-1)  # (m,)
    top = float(nx.detach().max()) if same else max(float(nx.detach().max()), float(ny.detach().max()))
    c = 1.0
    if top == 0.0 or not math.isfinite(top) or abs(math.log2(top)) > _SAFE_LOG2:
        c = magnitude_scale(x, y)
        if c != 1.0:
            x, y = x / c, y / c
            nx, ny = torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(y, dim=-1)
    # ||x||^2 + ||y||^2 - 2 x y^T in one fused product, clamped in place (rounding can go below 0)
    sx = nx.square()  # (n,)
    sy = sx if same and c == 1.0 else ny.square()  # (m,)
    d2 = torch.addmm(sx[:, None] + sy, x, y.T, alpha=-2.0).clamp_min_(0.0)  # (n, m)
    if _cancels(d2, (top / c) ** 2):  # points far from the origin for their spread: centre them first
        shift = y.detach().mean(0)  # (D,)
        x, y = x - shift, y - shift
        nx, ny = torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(y, dim=-1)
        d2 = torch.addmm(nx.square()[:, None] + ny.square(), x, y.T, alpha=-2.0).clamp_min_(0.0)
    return x, y, d2, c


# The expansion ||x||^2 + ||y||^2 - 2 x.y loses the distances when the points sit far from the
# origin for their spread (float32 data offset by 3,000x its spread: the Gaussian MMD gradient was
# 30 % off); below this ratio of the largest squared distance to the largest squared norm the
# points are centred on the second set's mean first. Data around the origin never trigger it.
_CANCEL_RATIO = 0.1


def _cancels(d2: Tensor, top2: float) -> bool:
    """d2 (n, m) non-empty; top2 the largest squared norm of the points."""
    return top2 > 0 and float(d2.detach().max()) < _CANCEL_RATIO * top2


def _scaled_bandwidth(bandwidth: float, c: float, dtype: torch.dtype) -> float:
    """bandwidth / c, the bandwidth for the points divided by c (see ``_rescaled``). One whose
    1 / bandwidth^2 overflows the work dtype is refused: 0 * inf made k(x_i, x_i) NaN (float32,
    bandwidth 1e-20), and a squared bandwidth of 0 (1e-170 and below) raised ZeroDivisionError."""
    s = bandwidth / c
    if not s * s * torch.finfo(dtype).max > 1e4:  # the margin keeps w / s^2 and a @ y finite too
        raise ValueError(f"bandwidth {bandwidth:.4g} is too small for these points in {dtype}: 1 / bandwidth^2 "
                         f"overflows {dtype} (every kernel value between distinct points would be 0); use a "
                         "bandwidth comparable to the distances between the points, e.g. median_bandwidth(x, y)")
    return s


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 as (n, m), via ||x||^2 + ||y||^2 - 2 x.y clamped at 0, in ``work_dtype``.

    No square root is taken, so the gradient 2 (x_i - y_j) stays finite at zero distance. A set
    against itself (the same tensor, or two views of the same rows) gets an exact 0 diagonal.
    Shapes are checked (cheaply: this runs inside the kernels); values are the caller's. numpy
    arrays are read as tensors, as by every other public function.
    """
    x, y = (from_numpy(v) if isinstance(v, np.ndarray) else v for v in (x, y))
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, Tensor) or v.ndim != 2:
            raise ValueError(f"{name} must be a tensor of points (n, D); got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: x has {x.shape[1]} features per point, y has {y.shape[1]}")
    for name, v in (("x", x), ("y", y)):  # torch's errors for these come from deep inside linalg
        if not v.dtype.is_floating_point:
            raise TypeError(f"{name} has dtype {v.dtype}; pass a floating-point tensor, e.g. {name}.float()")
    check_pair(x, y, "x", "y")  # one device, not meta
    # a set against itself (mmd2's self-terms pass it as two views): its diagonal is exactly 0, which the
    # expansion rounds to ~eps ||x||^2 (float32, D = 65,536: ~0.04, and the IMQ kernel's MMD^2 was 6 % off)
    same = x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype
    dt = work_dtype(x, y)
    x, y = x.to(dt), y.to(dt)
    xx = torch.linalg.vector_norm(x, dim=-1).square()[:, None]  # (n, 1), one pass, no (n, D) temporary
    yy = torch.linalg.vector_norm(y, dim=-1).square()  # (m,)
    d2 = (xx + yy - 2.0 * x @ y.T).clamp_min(0.0)  # (n, m)
    if d2.numel() and _cancels(d2, max(float(xx.detach().max()), float(yy.detach().max()))):
        shift = y.detach().mean(0)  # (D,) far from the origin for their spread: centre first
        d2 = pairwise_sq_dists(x - shift, y - shift)
    return d2.fill_diagonal_(0.0) if same else d2


def median_bandwidth(x: Tensor, y: Tensor | None = None, max_points: int = 100) -> float:
    """Median heuristic: the median positive pairwise distance over the pooled points (of an
    even count, the lower of the two middle values, as ``torch.median``).

    At most ``max_points`` evenly spaced points of each set are used (as good as all of them,
    and much cheaper; no random numbers, so the same inputs give the same bandwidth). Computed in
    float32 or wider and scale-invariant (1e20- and 1e-30-scale data work). Raises on NaN/Inf.
    If every pooled point coincides, every bandwidth gives the same Gram matrix, and 1.0 is returned.
    """
    x = check_points(x, "x", flatten=False)  # (n, *S), finite, n >= 1
    if y is not None:  # compared flattened, as mmd2 does: (n, C, H, W) against (m, C*H*W) was refused
        y = check_points(y, "y", flatten=False)  # as 'x has 12 features per point ... but y has 12'
        check_layouts(x, y, "x", "y")
        x, y = check_pair(x.reshape(len(x), -1), y.reshape(len(y), -1), "x", "y")
    else:
        check_has_values(x, "x")
    max_points = check_int(max_points, "max_points", 2)

    def thin(z: Tensor) -> Tensor:
        z = z.detach().reshape(z.shape[0], -1)
        if z.shape[0] <= max_points:
            return z
        # float32 on the CPU whatever torch's default dtype or device: .long() truncates, and a
        # float64 (or another device's) linspace rounds some spacings to the next point
        idx = torch.linspace(0, z.shape[0] - 1, max_points, dtype=torch.float32, device="cpu").long()
        return z[idx.to(z.device)]

    pooled = thin(x) if y is None else torch.cat([thin(x).to(work_dtype(x, y)), thin(y).to(work_dtype(x, y))])
    pooled = pooled.to(work_dtype(pooled))  # finite: check_points refused NaN/Inf above
    scale = magnitude_scale(pooled)
    pooled = pooled / scale
    d2 = pairwise_sq_dists(pooled, pooled)
    iu = torch.triu_indices(len(pooled), len(pooled), offset=1, device=pooled.device)
    # exact duplicates have distance 0, which the expansion ||a||^2 + ||b||^2 - 2 a.b rounds to a
    # small positive number in float32 (D = 3,072: ~1e-3), so they are identified by their rows
    _, ids = torch.unique(pooled, dim=0, return_inverse=True)  # (N,) one id per distinct row
    d2 = d2[iu[0], iu[1]][ids[iu[0]] != ids[iu[1]]]
    d2 = d2[d2 > 0]
    if d2.numel() == 0:  # every point coincides: any bandwidth gives the same Gram matrix
        return 1.0
    return float(d2.median().sqrt()) * scale


def _in_work_dtype(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """x and y in ``work_dtype(x, y)`` (no copy when they already are, as on every mmd2 path)."""
    dt = work_dtype(x, y)
    return x.to(dt), y.to(dt)


def _python_numbers(obj: object, *names: str) -> None:
    """Store numpy scalar settings of a frozen dataclass as Python numbers: np.float32 arithmetic
    (c**2) ran in float32 / float16 although the kernel compared equal to its float64 twin, and the
    distributed settings digest described such a value by its type alone."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, np.generic):
            object.__setattr__(obj, name, v.item())


class Kernel:
    """Base class: subclasses implement ``gram``; ``grad_weighted`` defaults to autograd."""

    has_closed_form: bool = False

    def gram(self, x: Tensor, y: Tensor) -> Tensor:  # (n, D), (m, D) -> (n, m)
        raise NotImplementedError(f"{type(self).__name__} must implement gram(x, y) -> (n, m) Gram matrix "
                                  "(a Kernel subclass defines gram, and optionally grad_weighted)")

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "Kernel":
        """A copy with data-dependent settings (median bandwidth) fixed from x and y."""
        return self

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """sum_j w_ij grad_1 k(x_i, y_j), shape (n, D); autograd version."""
        check_autograd(f"{self!r}")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            try:
                k = self.gram(xg, y.detach())  # (n, m)
            except RuntimeError as e:  # torch's own words name neither the kernel nor the way out
                if "numpy()" not in str(e):
                    raise
                raise ValueError(f"{self!r}: the Gram matrix went through numpy, so guidance has no gradient; "
                                 "compute it with differentiable torch operations") from e
            if not isinstance(k, Tensor) or tuple(k.shape) != (len(x), len(y)):
                got = tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__
                raise ValueError(f"{self!r}.gram must return a tensor of shape ({len(x)}, {len(y)}) for {len(x)} "
                                 f"and {len(y)} points; got {got}")
            if not k.requires_grad:
                raise ValueError(f"{self!r}: the Gram matrix does not depend differentiably on x (built "
                                 "under no_grad, detached, or through numpy), so guidance has no gradient; "
                                 "compute it with differentiable torch operations")
            (g,) = torch.autograd.grad((k * w.detach()).sum(), xg)
        return g

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Validated Gram matrix for user code: (n, *S) and (m, *S) -> (n, m)."""
        check_layouts(x, y, "x", "y")
        x, y = check_pair(check_points(x, "x"), check_points(y, "y"), "x", "y")
        x, y = x.to(work_dtype(x, y)), y.to(work_dtype(x, y))  # half precision runs in float32
        return checked_resolve(self, x, y).gram(x, y)


def checked_resolve(kernel: "Kernel | ProductKernel", x: Tensor, y: Tensor | None) -> "Kernel | ProductKernel":
    """``kernel.resolve(x, y)``, refusing a result that is not a kernel (a subclass's resolve that
    forgot ``return``: None raised "'NoneType' object has no attribute 'gram'" at the first use)."""
    out = kernel.resolve(x, y)
    if not isinstance(out, (Kernel, ProductKernel)):
        raise TypeError(f"{kernel!r}.resolve(x, y) must return a kernel (self, or a copy with its data-dependent "
                        f"settings fixed); got {out!r}")
    return out


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
        _python_numbers(self, "bandwidth", "median_scale")

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "GaussianKernel":
        if self.bandwidth is not None:
            return self
        return replace(self, bandwidth=self.median_scale * median_bandwidth(x, y))

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        s = float(self.resolve(x, y).bandwidth)  # type: ignore[arg-type]
        _, _, d2, c = _rescaled(x, y)  # c = 1 unless the data are at an extreme scale
        s = _scaled_bandwidth(s, c, d2.dtype)
        return torch.exp(d2 * (-0.5 / (s * s)))  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        k = self.resolve(x, y)  # the median bandwidth is computed once, not per call
        s = float(k.bandwidth)  # type: ignore[arg-type]
        x, y, d2, c = _rescaled(x, y)
        s = _scaled_bandwidth(s, c, d2.dtype)
        if torch.is_grad_enabled() and (d2.requires_grad or w.requires_grad):
            # a graph is being built: out of place (in place, its backward raised 'modified by an inplace operation')
            a = (d2 * (-0.5 / (s * s))).exp() * w.to(x.dtype) / (s * s)  # (n, m)
        else:
            a = d2.mul_(-0.5 / (s * s)).exp_().mul_(w.to(x.dtype)).div_(s * s)  # (n, m), in place
        g = torch.addmm(x * -a.sum(1, keepdim=True), a, y)  # sum_j a_ij (y_j - x_i): (n, D)
        return g if c == 1.0 else g / c


@dataclass(frozen=True)
class MultiGaussianKernel(Kernel):
    """k = sum_k omega_k exp(-||u - v||^2 / (2 sigma_k^2)) over several bandwidths.

    ``bandwidths`` are absolute; with ``bandwidths=None`` they are ``scales`` x the median.
    ``weighting="equal"``: omega_k = 1 (a plain sum). ``weighting="displacement"``:
    omega_k = sigma_k^2 / sum_j sigma_j^2, so that grad_1 k = sum_k k_k (v - u) / sum_j sigma_j^2:
    every bandwidth contributes its kernel-weighted displacement on an equal footing (a narrow
    one separates neighbouring modes, a wide one moves mass between far-apart modes; the
    default kernel of ``MMDGuidance``, see benchmarks/results/defaults.md).
    """

    bandwidths: tuple[float, ...] | None = None
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    weighting: str = "equal"
    has_closed_form = True

    def __post_init__(self) -> None:
        for name, vals in (("bandwidths", self.bandwidths), ("scales", self.scales)):
            if vals is None and name == "bandwidths":  # scales=None failed in tuple(): 'NoneType' not iterable
                continue
            if isinstance(vals, np.ndarray) and vals.ndim == 1:  # np.geomspace(0.5, 2, 3): read as the tuple it lists
                vals = vals.tolist()
                object.__setattr__(self, name, vals)
            if not isinstance(vals, (tuple, list)):
                raise TypeError(f"{name} must be a tuple of positive numbers, e.g. (0.5, 2.0); got {vals!r}")
            if len(vals) == 0:
                raise ValueError(f"{name} must hold at least one value; got {vals!r}")
            for v in vals:
                check_positive(v, name)
        if self.weighting not in ("equal", "displacement"):
            raise ValueError(f"weighting must be 'equal' or 'displacement'; got {self.weighting!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if self.bandwidths is not None:
            object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "MultiGaussianKernel":
        if self.bandwidths is not None:
            return self
        med = median_bandwidth(x, y)
        return replace(self, bandwidths=tuple(s * med for s in self.scales))

    def weights(self) -> tuple[float, ...]:
        """omega_k per bandwidth (needs resolved bandwidths)."""
        bw = self.bandwidths
        if bw is None:
            raise ValueError("resolve the kernel first (bandwidths=None means median x scales)")
        if self.weighting == "equal":
            return tuple(1.0 for _ in bw)
        total = sum(b * b for b in bw)
        if not 0.0 < total < math.inf:  # bandwidths near 1e+-160 (data at that scale): squares over/underflow
            bw = tuple(b / max(bw) for b in bw)
            total = sum(b * b for b in bw)
        return tuple(b * b / total for b in bw)

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        k = self.resolve(x, y)
        x, y, d2, c = _rescaled(x, y)  # c * c / b^2 overflowed (data at 1e200) or b^2 underflowed (1e-200)
        ss = [_scaled_bandwidth(b, c, d2.dtype) for b in k.bandwidths]  # type: ignore[union-attr]
        return sum(om * torch.exp(-d2 * (0.5 / (s * s)))
                   for om, s in zip(k.weights(), ss))  # type: ignore[return-value]

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        k = self.resolve(x, y)
        x, y, d2, c = _rescaled(x, y)
        ss = [_scaled_bandwidth(b, c, d2.dtype) for b in k.bandwidths]  # type: ignore[union-attr]
        a = sum(om * torch.exp(-d2 * (0.5 / (s * s))) * (1.0 / (s * s))
                for om, s in zip(k.weights(), ss)) * w.to(d2.dtype)  # (n, m)
        g = a @ y - a.sum(1, keepdim=True) * x  # (n, D)
        return g if c == 1.0 else g / c


@dataclass(frozen=True)
class InverseMultiquadricKernel(Kernel):
    """k(u, v) = (c^2 + ||u - v||^2)^(-beta); grad_1 k = 2 beta (c^2 + d^2)^(-beta-1) (v - u).

    Heavy tails: distant samples still feel a pull, unlike the Gaussian.
    """

    c: float = 1.0
    beta: float = 0.5
    has_closed_form = True

    def __post_init__(self) -> None:
        if check_positive(self.c, "c") >= 1e150:  # c**2 raised a bare OverflowError in every call
            raise ValueError(f"c must be below 1e150 (c^2 must be a finite float); got {self.c!r}")
        check_positive(self.beta, "beta")
        _python_numbers(self, "c", "beta")

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.c**2 + pairwise_sq_dists(x, y)) ** (-self.beta)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        d2 = pairwise_sq_dists(x, y)  # (n, m)
        a = w * 2 * self.beta * (self.c**2 + d2) ** (-self.beta - 1)  # (n, m)
        return _displacements(a, x.to(a.dtype), y.to(a.dtype), d2, skip_diagonal=y is x)


# Pairs closer than this (relative to their norms; float32: 1e-3) are summed one by one: a duplicate
# (or near-duplicate) pair's weight dominates its row for a heavy-peaked kernel (IMQ with c far below
# the spacing), and its a_ij y_j - a_ij x_i = 0 cancelled the fused a @ y - a.sum * x away
# (scale 1e2: 10 % off, 1e3: 38 %). At most n + m pairs are treated so; more (collapsed or far
# off-centre data) keep the fused sum.
def _near_pairs(x: Tensor, y: Tensor, d2: Tensor, skip_diagonal: bool) -> tuple[Tensor, Tensor] | None:
    tau = 64 * torch.finfo(d2.dtype).eps
    xx = torch.linalg.vector_norm(x, dim=-1).square()  # (n,)
    yy = xx if skip_diagonal else torch.linalg.vector_norm(y, dim=-1).square()  # (m,)
    near = d2 <= tau * (xx[:, None] + yy)  # (n, m)
    if skip_diagonal:
        near.fill_diagonal_(False)
    count = int(near.sum())
    if count == 0 or count > len(x) + len(y):
        return None
    i, j = near.nonzero(as_tuple=True)
    return i, j


def _displacements(a: Tensor, x: Tensor, y: Tensor, d2: Tensor, skip_diagonal: bool = False) -> Tensor:
    """sum_j a_ij (y_j - x_i): (n, D), fused as a @ y - a.sum(1) x, with near-duplicate pairs
    (``_near_pairs``) summed exactly one by one. ``skip_diagonal`` (y is x, the repulsion): the
    i = i pairs add a_ii (x_i - x_i) = 0 and are left out of a (in place); for a kernel peaked far
    below the spacing a_ii would dominate the fused sum and cancel it away."""
    if skip_diagonal:
        a = a.fill_diagonal_(0.0)
    pairs = _near_pairs(x, y, d2, skip_diagonal)
    if pairs is None:
        return a @ y - a.sum(1, keepdim=True) * x  # (n, D)
    i, j = pairs
    a_near = a[i, j]  # (p,)
    a = a.index_put((i, j), a.new_zeros(()))
    g = a @ y - a.sum(1, keepdim=True) * x  # (n, D)
    return g.index_add_(0, i, a_near[:, None] * (y[j] - x[i]))  # exactly 0 for duplicates


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
        if not isinstance(self.degree, (int, np.integer)) or isinstance(self.degree, bool) or self.degree < 1:
            raise ValueError(f"degree must be an integer >= 1; got {self.degree!r}")
        if self.gamma is not None:
            check_positive(self.gamma, "gamma")
        if not is_real_number(self.coef0) or not math.isfinite(self.coef0) or self.coef0 < 0:
            raise ValueError(f"coef0 must be a finite number >= 0; got {self.coef0!r}")
        if isinstance(self.degree, np.integer):  # numpy scalars become Python numbers
            object.__setattr__(self, "degree", int(self.degree))
        if isinstance(self.coef0, np.generic):
            object.__setattr__(self, "coef0", float(self.coef0))
        _python_numbers(self, "gamma")

    def _g(self, x: Tensor) -> float:
        return float(self.gamma) if self.gamma is not None else 1.0 / x.shape[1]

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = _in_work_dtype(x, y)
        return (self._g(x) * (x @ y.T) + self.coef0) ** self.degree  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        x, y = _in_work_dtype(x, y)  # and w: float64 weights met float32 points in a bare matmul error
        g = self._g(x)
        a = w.to(x.dtype) * self.degree * g * (g * (x @ y.T) + self.coef0) ** (self.degree - 1)  # (n, m)
        return a @ y  # (n, D)


class CallableKernel(Kernel):
    """Any differentiable function gram(x, y) -> (n, m); gradients come from autograd."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "custom") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(x, y) -> (n, m) Gram matrix; got {fn!r}")
        self.fn, self.name = fn, name

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        k = self.fn(x, y)
        if not isinstance(k, Tensor) or tuple(k.shape) != (len(x), len(y)):
            got = tuple(k.shape) if isinstance(k, Tensor) else type(k).__name__
            raise ValueError(f"{self!r}: fn(x, y) must return the ({len(x)}, {len(y)}) Gram matrix for "
                             f"{len(x)} and {len(y)} points; got {got}")
        if not k.dtype.is_floating_point:  # an integer Gram matrix met the float weights deep in a matmul
            raise TypeError(f"{self!r}: fn(x, y) must return a floating-point Gram matrix; got dtype {k.dtype}")
        return k

    def __repr__(self) -> str:
        return f"CallableKernel({self.name})"


# Layers whose output in train mode is random (dropout, RReLU) or depends on the batch and updates
# the module's running statistics (batch norm): a FeatureKernel on them is not a fixed kernel.
_TRAIN_MODE_LAYERS = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm, torch.nn.RReLU)


def _check_not_training(m: torch.nn.Module) -> None:
    """Refuse a feature map with a dropout / batch-norm / RReLU layer in train mode."""
    bad = [f"{name or 'feature_map'} ({type(mod).__name__})" for name, mod in m.named_modules()
           if mod.training and isinstance(mod, _TRAIN_MODE_LAYERS)]
    if bad:
        raise ValueError(f"feature_map has layers in train mode ({', '.join(bad[:3])}): dropout draws new random "
                         "features at every call and batch norm normalises by the batch (and updates its running "
                         "statistics), so the kernel would change from call to call; call feature_map.eval() first")


@dataclass(frozen=True)
class FeatureKernel(Kernel):
    """k(u, v) = base(phi(u), phi(v)): a kernel on the embeddings of a feature map.

    ``feature_map`` takes a batch (n, *shape), e.g. images for a CNN, and returns (n, F); the
    flattened points the guidance works with are reshaped to ``shape`` first. Data-dependent
    settings of ``base`` (the median bandwidth) are fixed in feature space. Gradients come from
    autograd through ``feature_map``, which must be differentiable; an ``nn.Module`` is run in
    its parameters' dtype, anything else in the points' dtype. An ``nn.Module`` with dropout,
    batch-norm or RReLU layers in train mode is refused (call ``.eval()``): its features would be
    random or depend on the batch.

    A kernel on a learned network's features is not automatically better than one on pixels:
    a pixel step along such a network's gradient can move its features without moving the
    image toward the references (benchmarks/results/feature_kernels.md).
    """

    feature_map: Callable[[Tensor], Tensor]
    shape: tuple[int, ...]
    base: Kernel = GaussianKernel()

    def __post_init__(self) -> None:
        if not callable(self.feature_map):
            raise TypeError(f"feature_map must be callable as feature_map(x (n, *shape)) -> (n, F); "
                            f"got {self.feature_map!r}")
        if not (isinstance(self.shape, tuple) and self.shape and all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in self.shape)):
            raise ValueError(f"shape must be a tuple of positive ints (one sample's shape); got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not isinstance(self.base, Kernel) or isinstance(self.base, FeatureKernel):
            raise TypeError(f"base must be a mmdg_lite Kernel on the features; got {self.base!r}")

    def features(self, x: Tensor) -> Tensor:
        """(n, D) flattened points -> (n, F) embeddings, in x's dtype."""
        d = math.prod(self.shape)
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"points must be (n, {d}) for shape={self.shape}; got {tuple(x.shape)}")
        m = self.feature_map
        if isinstance(m, torch.nn.Module):
            _check_not_training(m)
        p = next(m.parameters(), None) if isinstance(m, torch.nn.Module) else None
        f = m(x.reshape(len(x), *self.shape).to(p.dtype if p is not None else x.dtype))
        if not isinstance(f, Tensor) or f.ndim < 1 or len(f) != len(x):
            raise ValueError(f"feature_map must return one row per point ({len(x)}); got "
                             f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")
        return f.reshape(len(x), -1).to(x.dtype)  # (n, F)

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "FeatureKernel":
        with torch.no_grad():
            fy = None if y is None else self.features(y)
            return replace(self, base=self.base.resolve(self.features(x), fy))

    def gram(self, x: Tensor, y: Tensor) -> Tensor:
        return self.base.gram(self.features(x), self.features(y))  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """Chain rule: J_phi(x_i)^T sum_j w_ij grad_1 base(phi(x_i), phi(y_j)), one pass of the
        feature map through x (reused as phi(y) for the repulsion, where y is x)."""
        check_autograd("FeatureKernel")
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            fx = self.features(xg)  # (n, F)
            if not fx.requires_grad:  # autograd's own message ("element 0 ... does not require grad") hides why
                raise ValueError(
                    "feature_map must be differentiable in its input (FeatureKernel's gradient comes from "
                    "autograd through it); its output carries no gradient: it was detached, computed under "
                    "torch.no_grad(), or taken through numpy or an integer op (argmax, round)")
            with torch.no_grad():
                fy = fx.detach() if y is x else self.features(y)  # (m, F)
            g_f = self.base.grad_weighted(fx.detach(), fy, w)  # (n, F)
            (g,) = torch.autograd.grad(fx, xg, grad_outputs=g_f)
        return g  # (n, D)


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
        # a str such as "no" (truthy) normalised silently; numpy bools stored as bool
        object.__setattr__(self, "normalize_prompts", check_bool(self.normalize_prompts, "normalize_prompts"))

    @property
    def has_closed_form(self) -> bool:
        return self.sample_kernel.has_closed_form

    def _prep(self, p: Tensor, name: str = "prompt features") -> Tensor:
        """The prompt features the prompt kernel sees: L2-normalised rows (with ``normalize_prompts``)."""
        if not self.normalize_prompts:
            return p
        if p.shape[-1] == 1:  # normalize keeps only the sign: labels 1., 2., 3. all become 1.
            raise ValueError(f"{name} have 1 feature per prompt, which L2 normalisation reduces to its sign "
                             f"(values 1.0 and 2.0 become the same prompt); got shape {tuple(p.shape)}: give "
                             "vectors, e.g. one-hot labels torch.eye(C)[labels] or a PromptEncoder's features")
        zero = p.detach().norm(dim=-1) == 0  # normalize maps 0 to 0: a fake prompt at distance 1 from all
        if bool(zero.any()):
            raise ValueError(f"{name} must be non-zero vectors (they are L2-normalised); row(s) "
                             f"{zero.nonzero().flatten().tolist()[:5]} are all zero")
        return torch.nn.functional.normalize(p, dim=-1)

    def prompt_gram(self, px: Tensor, py: Tensor) -> Tensor:
        px, py = self._prep(px), self._prep(py)
        return self.prompt_kernel.resolve(px, py).gram(px, py)  # (n, m)

    def resolve(self, x: Tensor, y: Tensor | None = None) -> "ProductKernel":
        return replace(self, sample_kernel=self.sample_kernel.resolve(x, y))

    def gram(self, x: Tensor, y: Tensor, px: Tensor, py: Tensor) -> Tensor:
        # the prompt weights in the points' work dtype: float64 prompts turned a float32 Gram matrix
        # float64, and the polynomial kernel's gradient failed in a bare matmul dtype error
        return self.prompt_gram(px, py).to(work_dtype(x, y)) * self.sample_kernel.gram(x, y)  # (n, m)

    def grad_weighted(self, x: Tensor, y: Tensor, w: Tensor, px: Tensor, py: Tensor) -> Tensor:
        return self.sample_kernel.grad_weighted(x, y, w * self.prompt_gram(px, py).to(work_dtype(x, y)))


"""Sample-quality metrics on arbitrary features (paper Sec. 6: FD, KD, RRKE, density, coverage).

Every metric takes feature sets as numpy arrays or torch tensors of shape (n, D) (or (n, *S),
flattened), computes in float64 on the CPU, and returns python floats, small dataclasses or
small tensors. Nothing here downloads weights: pass features from an encoder you own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ._validation import (_describe, as_float_tensor, check_choice, check_finite, check_has_values,
                          check_int, check_layouts, check_pair,
                          check_points, check_positive, is_real_number)
from .kernels import GaussianKernel, PolynomialKernel, magnitude_scale, pairwise_sq_dists
from .mmd import mmd2
from .seeding import check_seed

__all__ = ["frechet_distance", "kernel_distance", "KIDResult", "density_coverage",
           "DensityCoverage", "rke", "rrke", "vendi_score", "mode_assignment",
           "mode_proportions", "total_variation", "off_mode_fraction", "off_mode_radius", "attribute_rate",
           "attribute_rates"]


def _feats(x: Any, name: str, min_count: int = 1) -> Tensor:
    """Validated (n, D) float64 CPU copy, detached from any graph."""
    x = check_points(x, name, min_count=min_count)
    check_has_values(x, name)
    return x.detach().to("cpu", torch.float64)


def _pair(x: Any, y: Any, x_name: str, y_name: str, min_count: int = 1) -> tuple[Tensor, Tensor]:
    check_layouts(x, y, x_name, y_name)  # (n, C, H, W) against (m, H, W, C): unrelated pixels once flattened
    return check_pair(_feats(x, x_name, min_count), _feats(y, y_name, min_count), x_name, y_name)


def _unit_scale(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
    """(x / c, y / c, c): c a power of two (exact) for data whose squares would overflow or
    underflow float64 (entries beyond about 2^+-24 of 1), else 1 (no copy)."""
    c = magnitude_scale(x, y)
    return (x, y, c) if c == 1.0 else (x / c, y / c, c)


# ---------------------------------------------------------------- Frechet and kernel distance

def frechet_distance(x: Any, y: Any) -> float:
    """FD = ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^{1/2}), covariances with ddof=1.

    Tr (S_x S_y)^{1/2} = Tr (S_x^{1/2} S_y S_x^{1/2})^{1/2}, a PSD square root. Writing
    S_x = A A^T, S_y = B B^T, it equals the nuclear norm of A^T B, with A = X_c^T / sqrt(n-1)
    ((n, m) cross product) or, when that is larger than (D, D), A = R_x^T / sqrt(n-1) from the QR
    factor of X_c (at most (D, D)). No square root of a covariance's eigenvalues is taken, so
    singular covariances (n < D, or features of low rank) keep full accuracy. Data at extreme
    scales (entries beyond about 2^+-24) are divided by a power of two first.
    """
    x, y = _pair(x, y, "x", "y", min_count=2)
    x, y, c = _unit_scale(x, y)
    n, m, d = len(x), len(y), x.shape[1]
    xc, yc = x - x.mean(0), y - y.mean(0)  # (n, D), (m, D)
    mean_term = float(((x.mean(0) - y.mean(0)) ** 2).sum())
    tr_x = float((xc**2).sum()) / (n - 1)
    tr_y = float((yc**2).sum()) / (m - 1)
    if n * m <= d * d:
        cross = xc @ yc.T  # (n, m), sqrt((n-1)(m-1)) A^T B
    else:
        rx, ry = torch.linalg.qr(xc, mode="r").R, torch.linalg.qr(yc, mode="r").R  # (<= D, D) each
        cross = rx @ ry.T  # X_c^T X_c = R_x^T R_x, so the same nuclear norm
    tr_sqrt = float(torch.linalg.svdvals(cross).sum()) / math.sqrt((n - 1) * (m - 1))
    return max(0.0, mean_term + tr_x + tr_y - 2 * tr_sqrt) * c * c


@dataclass
class KIDResult:
    mean: float  # mean unbiased MMD^2 over subsets
    std: float  # standard deviation over subsets (ddof=0)
    subset_size: int
    n_subsets: int


def kernel_distance(x: Any, y: Any, subset_size: int | None = None, n_subsets: int = 100,
                    seed: int = 0) -> KIDResult:
    """KID: unbiased MMD^2 with the cubic kernel (u.v / D + 1)^3, averaged over random subsets.

    Each subset draws min(subset_size or 1000, n, m) points of each set without replacement.
    With subset_size = n = m every subset is the full sets and KID is the full U-statistic.
    """
    if subset_size is not None:
        subset_size = check_int(subset_size, "subset_size", 2)  # numpy integers become ints
    n_subsets = check_int(n_subsets, "n_subsets", 1)
    seed = check_seed(seed)
    x, y = _pair(x, y, "x", "y")
    size = min(subset_size or 1000, len(x), len(y))
    if size < 2:
        raise ValueError(f"kernel_distance needs at least 2 points in each set for the unbiased "
                         f"estimator; got x with {len(x)} and y with {len(y)} points")
    kernel, gen = PolynomialKernel(degree=3, coef0=1.0), torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_subsets):
        ix = torch.randperm(len(x), generator=gen)[:size]
        iy = torch.randperm(len(y), generator=gen)[:size]
        try:
            vals.append(float(mmd2(x[ix], y[iy], kernel, estimator="unbiased")))
        except FloatingPointError:  # mmd2's advice (another kernel) does not apply: KID's is fixed
            top = float(torch.maximum(x.abs().max(), y.abs().max()))
            raise FloatingPointError(
                f"KID is not finite: its cubic kernel (u.v / D + 1)^3 overflows float64 for features this "
                f"large (largest |entry| {top:.3g}); KID depends on the features' scale, so rescale them "
                "(e.g. standardise with the real features' mean and std)") from None
    arr = np.asarray(vals)
    return KIDResult(float(arr.mean()), float(arr.std()), size, n_subsets)


# ---------------------------------------------------------------- density and coverage

@dataclass
class DensityCoverage:
    density: float  # mean number of real k-NN balls holding a fake point, / k (can exceed 1)
    coverage: float  # fraction of real k-NN balls holding at least one fake point, in [0, 1]


def _dists(a: Tensor, b: Tensor) -> Tensor:
    """(n, m) Euclidean distances from the differences themselves, not ||a||^2 + ||b||^2 - 2 a.b,
    whose round-off breaks the ties that the strict ``<`` of density and coverage must decide
    (integer or duplicated features)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def density_coverage(real: Any, fake: Any, k: int = 5, chunk_size: int = 2048) -> DensityCoverage:
    """Density and coverage of Naeem et al. 2020 with k-nearest-neighbour balls around reals.

    r_i = distance from real_i to its k-th nearest other real point;
    density = 1/(k M) sum_j sum_i 1[d(fake_j, real_i) < r_i];
    coverage = 1/N sum_i 1[min_j d(fake_j, real_i) < r_i].  Rows are processed in chunks.
    """
    k = check_int(k, "k", 1)  # numpy integers become ints (density a float, not np.float64)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    real, fake = _pair(real, fake, "real", "fake")
    real, fake, _ = _unit_scale(real, fake)  # both measures are scale-free
    n = len(real)
    if k >= n:
        raise ValueError(f"k must be smaller than the number of real points ({n}) so each real "
                         f"point has k other neighbours; got k={k}")
    radii = torch.cat([_dists(real[s:s + chunk_size], real).kthvalue(k + 1, dim=1).values
                       for s in range(0, n, chunk_size)])  # (N,) self distance 0 is the 1st
    inside = 0.0
    nearest = torch.full((n,), math.inf, dtype=torch.float64)  # (N,) closest fake per real
    for s in range(0, len(fake), chunk_size):
        d = _dists(real, fake[s:s + chunk_size])  # (N, c)
        inside += float((d < radii[:, None]).sum())
        nearest = torch.minimum(nearest, d.min(1).values)
    return DensityCoverage(inside / (k * len(fake)), float((nearest < radii).double().mean()))


# ---------------------------------------------------------------- diversity: RKE, RRKE, Vendi

def rke(x: Any, bandwidth: float) -> float:
    """RKE mode count (Jalali et al. 2023), order-2 Renyi kernel entropy exponentiated:

    1 / ||K / n||_F^2 with the Gaussian Gram K_ij = exp(-||x_i - x_j||^2 / (2 bandwidth^2)),
    diagonal included. Roughly the number of clusters wider apart than the bandwidth.
    """
    check_positive(bandwidth, "bandwidth")
    x = _feats(x, "x")
    K = GaussianKernel(bandwidth).gram(x, x) / len(x)  # (n, n)
    return float(1.0 / (K**2).sum())


def rrke(x: Any, y: Any, bandwidth: float) -> float:
    """Relative RKE of generated x to reference y, as in Jalali et al.'s reference code.

    RRKE = -log ||C_x^{1/2} C_y^{1/2}||_*^2 with C the empirical kernel covariance operators
    (Gaussian kernel): the order-1/2 (sandwiched) relative Renyi entropy, i.e. -log fidelity.
    Computed as -log (sum of singular values of K_xy / sqrt(n m))^2 with K_xy (n, m) the cross
    Gram matrix. 0 when x and y coincide, > 0 otherwise; lower is closer to the reference.
    """
    check_positive(bandwidth, "bandwidth")
    x, y = _pair(x, y, "x", "y")
    cross = GaussianKernel(bandwidth).gram(x, y) / math.sqrt(len(x) * len(y))  # (n, m)
    nuclear = float(torch.linalg.svdvals(cross).sum())
    return max(0.0, -2.0 * math.log(nuclear)) if nuclear > 0 else math.inf


VENDI_KERNELS = ("cosine", "gaussian")


def vendi_score(x: Any, kernel: str = "cosine", bandwidth: float | None = None) -> float:
    """Vendi score exp(-sum_i l_i log l_i), l = eigenvalues of K / n (Friedman & Dieng 2023).

    ``kernel='cosine'``: K_ij = <x_i, x_j> / (|x_i| |x_j|); ``'gaussian'``: the Gaussian Gram
    with the given ``bandwidth`` (required). Both have unit diagonal, so l sums to one.
    """
    check_choice(kernel, "kernel", VENDI_KERNELS)
    x = _feats(x, "x")
    if kernel == "cosine":
        if bandwidth is not None:  # a user tuning it would otherwise see no effect
            raise ValueError(f"kernel='cosine' has no bandwidth; got bandwidth={bandwidth!r} "
                             "(use kernel='gaussian' for a bandwidth)")
        x = x / x.abs().amax(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)  # no over/underflow
        norms = x.norm(dim=1)
        if bool((norms == 0).any()):
            raise ValueError(f"x has {int((norms == 0).sum())} all-zero row(s); the cosine "
                             "kernel needs non-zero vectors (use kernel='gaussian')")
        u = x / norms[:, None]
        K = u @ u.T  # (n, n)
    else:
        if bandwidth is None:
            raise ValueError("kernel='gaussian' needs a bandwidth > 0; got bandwidth=None")
        K = GaussianKernel(check_positive(bandwidth, "bandwidth")).gram(x, x)
    lam = torch.linalg.eigvalsh((K + K.T) / 2 / len(x)).clamp_min(0)  # (n,)
    lam = lam[lam > 0]
    return float(torch.exp(-(lam * lam.log()).sum()))


# ---------------------------------------------------------------- modes and attributes

def _means(x: Any, means: Any) -> tuple[Tensor, Tensor]:
    return _pair(x, means, "x", "means")


def mode_assignment(x: Any, means: Any, max_dist: float | None = None) -> Tensor:
    """Index of the nearest mean for each point: (n, D), (K, D) -> (n,) int64.

    With ``max_dist``, points farther than it from every mean get -1 (off-mode).
    """
    x, mu = _means(x, means)
    if max_dist is not None:
        check_positive(max_dist, "max_dist")
    x, mu, c = _unit_scale(x, mu)
    d2 = pairwise_sq_dists(x, mu)  # (n, K)
    dist2, idx = d2.min(1)
    if max_dist is not None:
        r = max_dist / c  # r * r, not r ** 2: a huge max_dist squares to inf (no point is off-mode)
        idx = torch.where(dist2 > r * r, -1, idx)  # instead of raising OverflowError
    return idx


def mode_proportions(x: Any, means: Any, n_modes: int | None = None,
                     max_dist: float | None = None) -> Tensor:
    """Fraction of points nearest to each mean, (K,) float64 summing to 1.

    ``n_modes`` defaults to len(means); if given it must equal it (a consistency check).
    With ``max_dist`` only on-mode points count (all zeros if none is on a mode).
    """
    x, mu = _means(x, means)
    if n_modes is not None and check_int(n_modes, "n_modes", 1) != len(mu):
        raise ValueError(f"n_modes={n_modes} but means holds {len(mu)} rows (shape "
                         f"{tuple(mu.shape)}); they must agree")
    idx = mode_assignment(x, mu, max_dist)
    counts = torch.bincount(idx[idx >= 0], minlength=len(mu)).double()  # (K,)
    return counts / counts.sum().clamp_min(1)


def _prob_vector(p: Any, name: str) -> Tensor:
    what = f"{name} must be a non-empty 1-D probability vector (a sequence, array or tensor of numbers)"
    if not isinstance(p, (np.ndarray, Tensor)):
        if isinstance(p, (str, bytes, dict, set)):
            raise TypeError(f"{what}; got {_describe(p)}")
        try:
            p = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{what}; got {_describe(p)} ({err})") from None
    if isinstance(p, np.ndarray) and p.dtype.kind not in "biuf":
        raise TypeError(f"{what}; got an array of dtype {p.dtype}")
    t = torch.as_tensor(p).detach().to("cpu")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{what}; got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        t = t.double()
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D probability vector; got shape {tuple(t.shape)}")
    check_finite(t, name)
    t = t.double()
    if bool((t < 0).any()) or abs(float(t.sum()) - 1.0) > 1e-5:
        raise ValueError(f"{name} must be non-negative and sum to 1; got minimum "
                         f"{float(t.min()):.4g} and sum {float(t.sum()):.6g}")
    return t


def total_variation(p: Any, q: Any) -> float:
    """TV(p, q) = 0.5 sum |p - q| between two probability vectors of the same length."""
    p, q = _prob_vector(p, "p"), _prob_vector(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p has {len(p)} entries but q has {len(q)}; both must describe the same modes")
    return 0.5 * float((p - q).abs().sum())


def off_mode_radius(std: float, dim: int, n_std: float = 3.0) -> float:
    """std * sqrt(chi2_D.isf(p)), p = 2 (1 - Phi(n_std)): the distance from an isotropic Gaussian
    mode N(mu, std^2 I_D) that a true sample exceeds with the probability of the 1-D n_std-sigma
    rule (0.27 % for 3; 0.344 for std 0.1 in 2-D)."""
    return check_positive(std, "std") * math.sqrt(off_mode_quantile(dim, n_std))


def off_mode_quantile(dim: int, n_std: float = 3.0) -> float:
    """chi2_D.isf(2 (1 - Phi(n_std))): the squared off-mode radius in units of std^2."""
    dim = check_int(dim, "dim", 1)
    return float(stats.chi2.isf(2 * stats.norm.sf(check_positive(n_std, "n_std")), df=dim))


def off_mode_fraction(x: Any, means: Any, std: Any, n_std: float = 3.0) -> float:
    """Fraction of points farther than a chi-quantile radius from every mode.

    For an isotropic Gaussian mode N(mu, std^2 I_D), ||x - mu||^2 / std^2 ~ chi^2_D. The radius
    r = std * sqrt(chi2.isf(p, D)) with p = 2 (1 - Phi(n_std)) flags a true sample with the
    probability of the 1-D n_std-sigma rule (0.27 % for 3); for D = 1 it is n_std * std.
    ``std`` is one number or one per mode (K,).
    """
    x, mu = _means(x, means)
    check_positive(n_std, "n_std")
    if isinstance(std, (list, tuple)) and all(is_real_number(v) for v in std):
        std = np.asarray(std, dtype=np.float64)  # one per mode, as a sequence
    if isinstance(std, (np.ndarray, Tensor)):
        s = as_float_tensor(std, "std").detach().to("cpu", torch.float64)
    elif is_real_number(std):
        s = torch.tensor(check_positive(std, "std"), dtype=torch.float64)
    else:
        raise TypeError(f"std must be a positive number or {len(mu)} positive numbers (one per mode, "
                        f"a sequence, array or tensor of shape ({len(mu)},)); got {_describe(std)}")
    if s.ndim > 1 or (s.ndim == 1 and len(s) != len(mu)):
        raise ValueError(f"std must be a number or have shape ({len(mu)},), one per mode; "
                         f"got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"std must be finite and > 0; got {s.tolist()}")
    x, mu, c = _unit_scale(x, mu)
    radius2 = (s / c) ** 2 * off_mode_quantile(x.shape[1], n_std)  # () or (K,)
    off = (pairwise_sq_dists(x, mu) > radius2).all(1)  # (n,)
    return float(off.double().mean())


def _labels(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence; got shape {arr.shape}")
    if isinstance(labels, (list, tuple)) and arr.dtype.kind in "US" and not all(
            isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in labels):
        raise TypeError("labels mix strings with other types (numpy would turn 1 into '1' and miss it); "
                        "give labels of one kind: all strings, all numbers or all bools")
    if arr.dtype.kind not in "biufUS":
        raise TypeError(f"labels must be numbers, bools or strings of one kind; got an array of dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"labels contains {int((~np.isfinite(arr)).sum())} NaN or Inf value(s)")
    return arr


def attribute_rate(labels: Any, target: Any) -> float:
    """Fraction of labels equal to ``target``, one label (e.g. classifier outputs 'has sunglasses')."""
    arr = _labels(labels)
    if isinstance(target, (Tensor, np.ndarray)):
        if (target.size if isinstance(target, np.ndarray) else target.numel()) != 1:
            raise ValueError(f"target must be one label (a scalar); got an array of shape {tuple(target.shape)}")
        target = target.item()
    elif isinstance(target, (list, tuple, set, dict)):
        raise TypeError(f"target must be one label (a scalar), compared with every entry of labels; got "
                        f"{_describe(target)}")
    # a label of another kind equals none of them (1 never equals '1'): the rate would be 0 silently
    kinds = {"U": ("str", (str,)), "S": ("bytes", (bytes,))}
    kind, types = kinds.get(arr.dtype.kind, ("numbers or bools", (bool, np.bool_, int, float, np.number)))
    if not isinstance(target, types):
        raise TypeError(f"target must be a label of the kind labels hold ({kind}, dtype {arr.dtype}); "
                        f"got {_describe(target)}")
    return float(np.mean(arr == target))


def attribute_rates(labels: Any) -> dict[Any, float]:
    """Fraction of each distinct label, sorted by label: {label: rate}."""
    values, counts = np.unique(_labels(labels), return_counts=True)
    return {v.item(): float(c / counts.sum()) for v, c in zip(values, counts)}

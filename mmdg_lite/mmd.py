"""MMD^2 estimators, their closed-form gradient (paper Eq. 6 / Eq. 11), witness, permutation test.

Conventions: x (n, *S) are generated points, y (m, *S) are references. Optional weights are
normalised to sum to one; without weights every point weighs 1/n (1/m). Prompts (n, P) and
(m, P) are given when the kernel is a ``ProductKernel`` (paper Sec. 5) and only then.
References are processed in chunks of ``chunk_size`` rows, so the memory of the cross term is
O(n * chunk_size) for any m; the gradient's repulsion among n > chunk_size generated points runs
in blocks of ``chunk_size`` rows too (O(chunk_size * n), not one (n, n) matrix).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch import Tensor

from ._validation import (all_finite, as_float_tensor, check_autograd, check_choice, check_int, check_layouts,
                          check_pair, check_points, check_weights)
from .kernels import (CallableKernel, FeatureKernel, GaussianKernel, Kernel, MultiGaussianKernel, ProductKernel,
                      checked_resolve, work_dtype)
from .seeding import check_seed

__all__ = ["mmd2", "mmd2_grad", "mmd2_grad_autograd", "witness", "permutation_test",
           "PermutationTestResult", "ESTIMATORS", "PROMPT_WEIGHTINGS"]

ESTIMATORS = ("biased", "unbiased")
AnyKernel = Kernel | ProductKernel


@dataclass
class _Prepared:
    x: Tensor  # (n, D)
    y: Tensor  # (m, D)
    wx: Tensor  # (n,) sums to 1
    wy: Tensor  # (m,) sums to 1
    px: Tensor | None  # (n, P)
    py: Tensor | None  # (m, P)
    kernel: AnyKernel
    shape: torch.Size  # original shape of x


def _prepare(x, y, kernel, estimator, x_weights, y_weights, x_prompts, y_prompts) -> _Prepared:
    check_choice(estimator, "estimator", ESTIMATORS)
    if not isinstance(kernel, (Kernel, ProductKernel)):
        raise TypeError(f"kernel must be a mmdg_lite Kernel or ProductKernel; got {kernel!r}")
    need = 2 if estimator == "unbiased" else 1
    why = "the unbiased estimator leaves out the i = i' pairs" if need == 2 else ""
    check_layouts(x, y, "x", "y")
    xs = check_points(x, "x", min_count=need, why=why)
    ys = check_points(y, "y", min_count=need, why=why)
    shape = torch.Size(x.shape)  # a tensor or numpy array, checked above
    xs, ys = check_pair(xs, ys, "x", "y")
    xs, ys = xs.to(work_dtype(xs)), ys.to(work_dtype(ys))  # float16 / bfloat16 run in float32
    wx = check_weights(x_weights, "x_weights", len(xs), xs)
    wy = check_weights(y_weights, "y_weights", len(ys), ys)
    wx = wx if wx is not None else xs.new_full((len(xs),), 1.0 / len(xs))
    wy = wy if wy is not None else ys.new_full((len(ys),), 1.0 / len(ys))
    if estimator == "unbiased":  # its within-set sums skip i = i' and divide by 1 - sum w^2
        for name, w in (("x_weights", wx), ("y_weights", wy)):
            if int((w > 0).sum()) < 2:
                raise ValueError(f"estimator='unbiased' needs at least 2 positive {name} (it leaves out the "
                                 f"i = i' pairs, so one weighted point has no pair); got "
                                 f"{int((w > 0).sum())} positive of {len(w)}")
            # it divides by 1 - sum w^2, which rounding takes to 0 (MMD^2 inf, blamed on the points and
            # bandwidths) or leaves without digits when one point holds all but ~1e-5 of the mass
            norm, eps = float(1.0 - (w.detach()**2).sum()), torch.finfo(w.dtype).eps
            if not norm >= 1e3 * eps:
                raise ValueError(f"estimator='unbiased' divides by 1 - sum of squared normalised {name}, which is "
                                 f"{norm:.3g} here in {w.dtype} (one point holds almost all the weight), below "
                                 f"{1e3 * eps:.3g} where rounding leaves it fewer than 3 correct digits; "
                                 + ("pass float64 points, or " if w.dtype != torch.float64 else "")
                                 + "use estimator='biased'")
    px = py = None
    if isinstance(kernel, ProductKernel):
        if x_prompts is None or y_prompts is None:
            raise ValueError("a ProductKernel needs x_prompts (n, P) and y_prompts (m, P); got None")
        px = check_points(x_prompts, "x_prompts")
        py = check_points(y_prompts, "y_prompts")
        if len(px) != len(xs):
            raise ValueError(f"x_prompts has {len(px)} rows but x has {len(xs)} points; one prompt per point")
        if len(py) != len(ys):
            raise ValueError(f"y_prompts has {len(py)} rows but y has {len(ys)} points; one prompt per point")
        px, py = check_pair(px, py, "x_prompts", "y_prompts")
        px, py = px.to(xs), py.to(xs)
        # Fix a data-dependent prompt bandwidth once from all prompts, so every term and every
        # chunk uses the same prompt kernel (otherwise each (px, py[chunk]) pair got its own).
        kernel = replace(kernel, prompt_kernel=checked_resolve(kernel.prompt_kernel, kernel._prep(px, "x_prompts"),
                                                               kernel._prep(py, "y_prompts")))
    elif x_prompts is not None or y_prompts is not None:
        raise ValueError("x_prompts / y_prompts are only used with a ProductKernel; "
                         f"got kernel {type(kernel).__name__}")
    return _Prepared(xs, ys, wx, wy, px, py, checked_resolve(kernel, xs, ys), shape)


def _not_finite_advice(kernel: AnyKernel) -> str:
    """What to do when MMD^2 or its gradient is NaN/Inf, for this kind of kernel: a user function
    may return NaN itself, and a Gaussian kernel is already the scale-invariant one."""
    k = kernel.sample_kernel if isinstance(kernel, ProductKernel) else kernel
    if isinstance(k, (CallableKernel, FeatureKernel)):
        what = "fn(x, y)" if isinstance(k, CallableKernel) else "feature_map"
        return (f"the kernel's {what} returned NaN/Inf for these points, or they overflow it: check "
                f"{what} on them")
    if isinstance(k, (GaussianKernel, MultiGaussianKernel)):
        return "the Gaussian computation is scale-invariant, so check the points and bandwidths"
    return "the data overflow this kernel: rescale them, or use a Gaussian kernel, whose computation is scale-invariant"


def _chunks(m: int, chunk_size: int | None) -> Iterator[slice]:
    step = m if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
    for start in range(0, m, step):
        yield slice(start, min(start + step, m))


def _checked(out, kernel: AnyKernel, method: str, shape: tuple[int, int], a: Tensor, b: Tensor) -> Tensor:
    """A kernel's ``method`` output, checked as the (n, m) / (n, D) float tensor the sums need and in
    the points' work dtype (built-in kernels already return it: unchanged). A subclass's wrong
    shape or a float16 / float64 result failed deep in a matmul, naming neither kernel nor method."""
    if not isinstance(out, Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{kernel!r}.{method} must return a tensor of shape {shape} for {len(a)} and {len(b)} "
                         f"points; got {got}")
    if not out.dtype.is_floating_point:
        raise TypeError(f"{kernel!r}.{method} must return a floating-point tensor; got dtype {out.dtype}")
    dt = work_dtype(a, b)
    return out if out.dtype == dt else out.to(dt)


def _gram(p: _Prepared, a: Tensor, b: Tensor, pa: Tensor | None, pb: Tensor | None) -> Tensor:
    if isinstance(p.kernel, ProductKernel):
        out = p.kernel.gram(a, b, pa, pb)
    else:
        out = p.kernel.gram(a, b)
    return _checked(out, p.kernel, "gram", (len(a), len(b)), a, b)


def _gradw(p: _Prepared, a: Tensor, b: Tensor, w: Tensor, pa, pb) -> Tensor:
    if isinstance(p.kernel, ProductKernel):
        out = p.kernel.grad_weighted(a, b, w, pa, pb)
    else:
        out = p.kernel.grad_weighted(a, b, w)
    return _checked(out, p.kernel, "grad_weighted", (len(a), a.shape[1]), a, b)


def _sl(t: Tensor | None, s: slice) -> Tensor | None:
    return None if t is None else t[s]


def _self_term(p: _Prepared, z: Tensor, w: Tensor, pz, estimator: str, chunk_size) -> Tensor:
    """sum_{i,i'} w_i w_i' k(z_i, z_i'), diagonal removed and renormalised if unbiased."""
    total = z.new_zeros(())
    diag = z.new_zeros(())
    for s in _chunks(len(z), chunk_size):
        for r in _chunks(len(z), chunk_size):
            K = _gram(p, z[s], z[r], _sl(pz, s), _sl(pz, r))  # (cs, cr)
            total = total + w[s] @ K @ w[r]
            if s == r and estimator == "unbiased":
                diag = diag + (w[s] ** 2 * K.diagonal()).sum()
    if estimator == "biased":
        return total
    return (total - diag) / (1.0 - (w**2).sum())


def mmd2(x, y, kernel: AnyKernel, *, estimator: str = "biased", x_weights=None, y_weights=None,
         x_prompts=None, y_prompts=None, chunk_size: int | None = None) -> Tensor:
    """MMD^2 between x and y (paper Sec. 2). Biased = V-statistic (the paper's), >= 0 for a
    positive-definite kernel up to rounding (float32: about -5e-7 for two orderings of one set).
    Not chunked by default: the y self-term then builds the (m, m) Gram matrix; pass
    ``chunk_size`` for large m.

    Unbiased = U-statistic: the within-set sums skip i = i' (with weights, renormalised by
    1 - sum w^2), so its mean over draws equals the population MMD^2; it can be negative.
    Differentiable with respect to x (and y, and weights that require grad). Half-precision inputs
    are computed (and returned) in float32.
    """
    p = _prepare(x, y, kernel, estimator, x_weights, y_weights, x_prompts, y_prompts)
    xx = _self_term(p, p.x, p.wx, p.px, estimator, chunk_size)
    yy = _self_term(p, p.y, p.wy, p.py, estimator, chunk_size)
    xy = p.x.new_zeros(())
    for s in _chunks(len(p.y), chunk_size):
        xy = xy + p.wx @ _gram(p, p.x, p.y[s], p.px, _sl(p.py, s)) @ p.wy[s]
    out = xx + yy - 2 * xy
    if not bool(torch.isfinite(out)):
        raise FloatingPointError(
            f"MMD^2 is not finite (kernel {type(p.kernel).__name__}); {_not_finite_advice(p.kernel)}")
    return out


def mmd2_grad(x, y, kernel: AnyKernel, *, estimator: str = "biased", x_weights=None,
              y_weights=None, x_prompts=None, y_prompts=None,
              chunk_size: int | None = None) -> Tensor:
    """Closed-form gradient of MMD^2 with respect to every generated point, shape of x.

    Eq. 6:  grad_i = 2 w_i sum_j w_j grad_1 k(x_i, x_j) - 2 w_i sum_j v_j grad_1 k(x_i, y_j),
    with w_i = 1/B, v_j = 1/N_r in the paper. The first term repels generated points from each
    other, the second attracts them to the references. With a ProductKernel every weight is
    multiplied by the prompt kernel k_p(p_i, p_j) (Eq. 11). Kernels without a closed form are
    differentiated by autograd inside ``grad_weighted``. Half-precision inputs are computed
    (and returned) in float32.
    """
    p = _prepare(x, y, kernel, estimator, x_weights, y_weights, x_prompts, y_prompts)
    return _grad(p, estimator, chunk_size).reshape(p.shape)


PROMPT_WEIGHTINGS = ("joint", "conditional")


def _prompt_factors(kernel: ProductKernel, px: Tensor, pg: Tensor, Wxx: Tensor, py: Tensor,
                    wy: Tensor, chunk_size: int | None, unbiased: bool = False) -> tuple[Tensor, Tensor]:
    """Row factors of the conditional prompt weighting for rows with prompts px (n, P), against
    the batch's prompts pg (B, P) with weights Wxx (n, B) and the references' prompts py (m, P)
    with weights wy (m,). Returns (rho_i / rep_i, rho_i / att_i), (n,) each, where

    rep_i = sum_k W_ik k_p(p_i, p_k) / sum_k W_ik   (the batch's mass near i's prompt),
    att_i = sum_j v_j k_p(p_i, p_j^r)               (the references' mass near it, v = wy / sum wy),
    rho_i = max_j k_p(p_i, p_j^r)                   (1 when a reference has i's prompt, -> 0 for
                                                     prompts far from every reference prompt).

    ``unbiased`` (Wxx without its diagonal): rep_i is taken as at least one sample's share,
    max_k W_ik / sum_k W_ik, the share i itself holds in the biased rep_i. A sample alone with its
    prompt has no pair to be pushed from; without the floor its near-zero rep_i scaled the
    k_p ~ 1e-5 weights of the other prompts' samples up to the full repulsion of a plain MMD.
    """
    tiny = torch.finfo(px.dtype).tiny
    rep = (Wxx * kernel.prompt_gram(px, pg)).sum(1) / Wxx.sum(1)  # (n,)
    if unbiased:
        rep = torch.maximum(rep, Wxx.amax(1) / Wxx.sum(1))
    v = wy / wy.sum()  # (m,)
    att, rho = px.new_zeros(len(px)), px.new_zeros(len(px))
    for s in _chunks(len(py), chunk_size):
        Kp = kernel.prompt_gram(px, py[s])  # (n, cs)
        att = att + Kp @ v[s]
        rho = torch.maximum(rho, Kp.max(1).values)
    return rho / rep.clamp_min(tiny), rho / att.clamp_min(tiny)


def _grad(p: _Prepared, estimator: str, chunk_size: int | None,
          prompt_weighting: str = "joint") -> Tensor:
    """Eq. 6 / Eq. 11 as weighted-gradient calls: the repulsion among the n generated points,
    then the attraction to each chunk of references (two matrix products per chunk).

    ``prompt_weighting="conditional"`` (ProductKernel only) rescales each sample's prompt
    weights (``_prompt_factors``) so that it feels the repulsion and attraction of an unweighted
    MMD, spread over the samples and references whose prompts resemble its own, times rho_i,
    the prompt kernel to the nearest reference prompt (so nothing where none resembles it). For
    a prompt kernel that is 1 within prompt groups and 0 across, grad_i is |G|/n times the plain
    MMD gradient of i's group G against G's references (a conditional MMD), and 0 for groups
    without references; Eq. 11's joint weights give that only when every group's share of the
    batch equals its share of the references.
    """
    chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
    x_, wx = p.x.detach(), p.wx
    conditional = prompt_weighting == "conditional" and isinstance(p.kernel, ProductKernel)
    # the repulsion by blocks of rows: (chunk, n) weight matrices, one (n, n) block without chunk_size
    parts = [_repulsion_rows(p, x_, s, estimator, conditional, chunk_size) for s in _chunks(len(x_), chunk_size)]
    g = parts[0][0] if len(parts) == 1 else torch.cat([r for r, _ in parts])  # (n, D)
    pull = None  # conditional weighting: per-row factors of the pull, (n,)
    if conditional:
        pull = parts[0][1] if len(parts) == 1 else torch.cat([f for _, f in parts])
    for s in _chunks(len(p.y), chunk_size):
        Wxy = wx[:, None] * p.wy[None, s]  # (n, cs)
        if pull is not None:
            Wxy = Wxy * pull[:, None]
        g = g - 2 * _gradw(p, x_, p.y[s].detach(), Wxy, p.px, _sl(p.py, s))  # attraction
    if not all_finite(g):
        raise FloatingPointError(
            f"the MMD^2 gradient is not finite (kernel {type(p.kernel).__name__}; largest |entry| of the "
            f"points {float(p.x.abs().max()):.3g}); {_not_finite_advice(p.kernel)}")
    return g


def _repulsion_rows(p: _Prepared, x_: Tensor, s: slice, estimator: str, conditional: bool,
                    chunk_size: int | None) -> tuple[Tensor, Tensor | None]:
    """The repulsion term of ``_grad`` for the rows s of the batch (and their pull factors under
    conditional weighting, else None), with the rows s of the (n, n) weight matrix, (cs, n)."""
    wx = p.wx
    Wxx = wx[s, None] * wx[None, :]  # (cs, n)
    if estimator == "unbiased":  # leave out i = i' (the block's diagonal starts at column s.start)
        Wxx.diagonal(s.start).zero_()
        Wxx = Wxx / (1.0 - (wx**2).sum())
    pull = None
    if conditional:
        push, pull = _prompt_factors(p.kernel, p.px[s], p.px, Wxx, p.py, p.wy, chunk_size, estimator == "unbiased")
        Wxx = Wxx * push[:, None]
    if s.stop - s.start == len(x_):  # the whole batch: x_ itself (a kernel drops i = i' when y is x)
        return 2 * _gradw(p, x_, x_, Wxx, p.px, p.px), pull  # (n, D)
    return 2 * _gradw(p, x_[s], x_, Wxx, _sl(p.px, s), p.px), pull  # (cs, D)


def mmd2_grad_autograd(x, y, kernel: AnyKernel, **kwargs) -> Tensor:
    """The same gradient by differentiating ``mmd2`` with autograd (an oracle for tests).

    The data-dependent bandwidth is fixed from (x, y) first, as in ``mmd2_grad``. Half-precision
    inputs are differentiated (and returned) in float32, as ``mmd2_grad`` computes them.
    """
    xs = check_points(x, "x")
    ys = check_points(y, "y")
    if isinstance(kernel, (Kernel, ProductKernel)):
        xs, ys = check_pair(xs, ys, "x", "y")
        kernel = kernel.resolve(xs, ys)
    check_autograd("mmd2_grad_autograd")
    with torch.enable_grad():
        x = as_float_tensor(x, "x")  # checked above: a tensor, or a numpy array read as one
        xg = x.detach().to(work_dtype(x), copy=True).requires_grad_(True)  # half: float32
        (g,) = torch.autograd.grad(mmd2(xg, y, kernel, **kwargs), xg)
    return g


#: ``witness`` evaluates at most this many kernel entries per Gram block (a fine plotting grid
#: against a large set would otherwise build a (T, N) matrix of gigabytes)
WITNESS_GRAM_ENTRIES = 2**24


def witness(points, x, y, kernel: Kernel, *, x_weights=None, y_weights=None) -> Tensor:
    """Witness function f(t) = E_x k(t, x) - E_y k(t, y) at ``points`` (T, *S) -> (T,).

    Positive where the generated set x has too much mass relative to the references y; the
    MMD gradient flow moves samples down this function. Points are taken in blocks, so memory
    stays bounded (``WITNESS_GRAM_ENTRIES``) for any grid.
    """
    if isinstance(kernel, ProductKernel):
        raise TypeError("witness takes a sample Kernel, not a ProductKernel")
    p = _prepare(x, y, kernel, "biased", x_weights, y_weights, None, None)
    check_layouts(points, x, "points", "x")
    t = check_points(points, "points")
    t, x = check_pair(t, p.x, "points", "x")  # float64 points (a numpy grid) promote float32 sets
    y, wx, wy = p.y.to(x.dtype), p.wx.to(x.dtype), p.wy.to(x.dtype)
    rows = max(1, WITNESS_GRAM_ENTRIES // max(len(x), len(y)))  # points per block: bounded Gram matrices
    return torch.cat([_gram(p, t[s], x, None, None) @ wx - _gram(p, t[s], y, None, None) @ wy  # (T_s,)
                      for s in _chunks(len(t), rows)])


@dataclass
class PermutationTestResult:
    statistic: float  # MMD^2 of the observed split
    p_value: float  # (1 + #{null >= statistic, ties within rounding}) / (1 + n_permutations)
    null: Tensor  # (n_permutations,) MMD^2 under random relabelling


def permutation_test(x, y, kernel: Kernel, *, n_permutations: int = 500,
                     estimator: str = "unbiased", seed: int = 0) -> PermutationTestResult:
    """Two-sample test of H0: x and y come from one distribution, by relabelling the pool.

    The Gram matrix of the pooled sample is computed once; each permutation only re-indexes
    it. The p-value counts the observed split as one of the permutations, so it is valid
    (its false-positive rate is at most the level) for any sample size. A relabelling that
    gives a statistic equal to the observed one (the observed split again, its mirror image,
    duplicated points) sums the same Gram entries in another order, so null values within
    rounding of the statistic (16 eps max |K|) count as ties, i.e. as >= it.
    """
    n_permutations = check_int(n_permutations, "n_permutations", 1)
    seed = check_seed(seed)
    if isinstance(kernel, ProductKernel):
        raise TypeError("permutation_test takes a sample Kernel, not a ProductKernel")
    p = _prepare(x, y, kernel, estimator, None, None, None, None)
    z = torch.cat([p.x, p.y])  # (n + m, D)
    with torch.no_grad():  # a FeatureKernel's network would keep its graph alive in ``null``
        K = _gram(p, z, z, None, None)  # (N, N)
    if not bool(torch.isfinite(K).all()):  # NaN statistics compare False: p would be its minimum
        raise FloatingPointError(f"the pooled Gram matrix is not finite (kernel {type(p.kernel).__name__}); "
                                 f"{_not_finite_advice(p.kernel)}")
    n, N = len(p.x), len(z)

    def stat(idx: Tensor) -> Tensor:
        a, b = idx[:n], idx[n:]
        kxx, kyy, kxy = K[a][:, a], K[b][:, b], K[a][:, b]
        if estimator == "biased":
            return kxx.mean() + kyy.mean() - 2 * kxy.mean()
        na, nb = len(a), len(b)
        return ((kxx.sum() - kxx.trace()) / (na * (na - 1))
                + (kyy.sum() - kyy.trace()) / (nb * (nb - 1)) - 2 * kxy.mean())

    gen = torch.Generator().manual_seed(seed)
    observed = stat(torch.arange(N))
    null = torch.stack([stat(torch.randperm(N, generator=gen).to(z.device))
                        for _ in range(n_permutations)])
    tol = 16 * torch.finfo(K.dtype).eps * float(K.abs().max())  # rounding of a sum of Gram means
    p_value = (1 + int((null >= observed - tol).sum())) / (1 + n_permutations)
    return PermutationTestResult(float(observed), p_value, null)

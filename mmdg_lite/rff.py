"""Random Fourier features for the Gaussian kernel (beyond the paper).

Bochner: k(x, y) = exp(-||x-y||^2 / (2 sigma^2)) = E_w,b[2 cos(w.x + b) cos(w.y + b)] with
w ~ N(0, I / sigma^2), b ~ U[0, 2 pi]; with F features phi(x) = sqrt(2/F) cos(W x + b),
k(x, y) ~= phi(x).phi(y). For the Gaussian kernel the MMD reference term is

    c_i = sum_j v_j grad_1 k(x_i, y_j) = (1/sigma^2) [sum_j v_j k(x_i, y_j) y_j - (sum_j v_j k(x_i, y_j)) x_i]
        ~= (1/sigma^2) [phi(x_i)^T M - (phi(x_i).mu) x_i],

with the reference summaries mu = sum_j v_j phi(y_j) (F,) and M = sum_j v_j phi(y_j) y_j^T (F, D)
computed ONCE. Each guidance step then costs O(B F D) whatever the number of references N_r (the
exact term costs O(B N_r D)). Only kernel *values* are approximated, so the relative gradient
error is ~ C / sqrt(F) with C that does not grow with D: C ~ 1.6 at the median-heuristic bandwidth
(measured C = 1.68 at D = 1,024, 1.56 at D = 100), larger only in the lowest dimensions (scratch,
5 seeds: C ~ 3.7 at D = 1, 2.8 at D = 2, 1.8 at D = 3-8). The features' absolute error does not shrink with the
kernel values, so C grows fast for a fixed bandwidth below the points' distances (scratch
measurement, D = 3 and 32: C ~ 2 at the median, ~10 at half of it, 60-600 at a quarter).
Differentiating the features instead (J_phi(x)^T mu) points along the random frequencies W and
has error ~ 1.6 sqrt(D / F) (benchmarks/results/rff.md).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validation import check_has_values, check_int, check_pair, check_points, check_positive, check_weights
from .kernels import GaussianKernel, work_dtype
from .seeding import check_seed

__all__ = ["RFFReferenceEmbedding", "mmd2_grad_rff"]


class RFFReferenceEmbedding:
    """The reference set summarised by mu = sum_j v_j phi(y_j) (F,) and M = sum_j v_j phi(y_j) y_j^T (F, D)."""

    def __init__(self, references, bandwidth: float, n_features: int = 2048, *,
                 weights=None, seed: int = 0, chunk_size: int = 8192) -> None:
        y = check_points(references, "references")
        check_has_values(y, "references")
        self.sample_shape = tuple(references.shape[1:])  # (*S): mmd2_grad_rff refuses samples in another layout
        # half-precision references: the summaries are sums, kept in float32; constants, as the references in
        # mmd2_grad (references from an encoder kept its graph alive, and every gradient required grad)
        y = y.detach().to(work_dtype(y))
        self.bandwidth = check_positive(bandwidth, "bandwidth")
        self.n_features = check_int(n_features, "n_features", 1)
        check_int(chunk_size, "chunk_size", 1)
        self.dim = y.shape[1]
        gen = torch.Generator().manual_seed(check_seed(seed))
        self.W = (torch.randn(self.n_features, self.dim, generator=gen, dtype=torch.float64)
                  / self.bandwidth).to(y)  # (F, D)
        self.b = (2 * math.pi * torch.rand(self.n_features, generator=gen,
                                           dtype=torch.float64)).to(y)  # (F,)
        v = check_weights(weights, "weights", len(y), y)
        v = v if v is not None else y.new_full((len(y),), 1.0 / len(y))
        self.mean = y.new_zeros(self.n_features)  # (F,)
        self.weighted_refs = y.new_zeros(self.n_features, self.dim)  # (F, D)
        for s in range(0, len(y), chunk_size):
            phi_v = self.features(y[s:s + chunk_size]) * v[s:s + chunk_size, None]  # (c, F)
            self.mean += phi_v.sum(0)
            self.weighted_refs += phi_v.T @ y[s:s + chunk_size]

    def features(self, x: Tensor) -> Tensor:
        """phi(x) = sqrt(2/F) cos(W x + b): (n, D) -> (n, F)."""
        x, W, b = self._promoted(x, self.W, self.b)
        return math.sqrt(2.0 / self.n_features) * torch.cos(x @ W.T + b)

    def cross_grad(self, x: Tensor) -> Tensor:
        """sum_j v_j grad_1 k(x_i, y_j) ~= (phi(x_i)^T M - (phi(x_i).mu) x_i) / sigma^2: (n, D)."""
        x, refs, mean = self._promoted(x, self.weighted_refs, self.mean)
        phi = self.features(x)  # (n, F)
        # divided by sigma twice: sigma^2 overflows (sigma = 1e20) or underflows (1e-25) in float32
        return (phi @ refs - (phi @ mean)[:, None] * x) / self.bandwidth / self.bandwidth

    def derivative_cross_grad(self, x: Tensor) -> Tensor:
        """The textbook alternative J_phi(x_i)^T mu = -sqrt(2/F) W^T (sin(W x_i + b) * mu): (n, D).

        Kept for comparison only: its error grows like sqrt(D / F) (see the module docstring).
        """
        x, W, b, mean = self._promoted(x, self.W, self.b, self.mean)
        s = torch.sin(x @ W.T + b)  # (n, F)
        return -math.sqrt(2.0 / self.n_features) * (s * mean) @ W  # (n, D)

    def _promoted(self, x: Tensor, *parts: Tensor) -> list[Tensor]:
        """x and the stored parts in their promoted dtype (e.g. float64 points, float32 summaries)."""
        dtype = torch.promote_types(x.dtype, self.W.dtype)
        return [t.to(dtype) for t in (x, *parts)]


def mmd2_grad_rff(x, embedding: RFFReferenceEmbedding) -> Tensor:
    """Biased MMD^2 gradient (Eq. 6) with the exact repulsion term among the B generated
    points and the RFF reference term: grad_i = (2/B^2) sum_j grad k(x_i, x_j) - (2/B) c_i."""
    xs = check_points(x, "x")
    if not isinstance(embedding, RFFReferenceEmbedding):
        raise TypeError(f"embedding must be an RFFReferenceEmbedding of the references; got {type(embedding).__name__}")
    if xs.shape[1] != embedding.dim:  # check_pair against W would quote W's shape as the references'
        raise ValueError(f"dimension mismatch: x has {xs.shape[1]} features per point (shape "
                         f"{tuple(x.shape)}) "
                         f"but the embedding's references have {embedding.dim}; both sets must live in the same space")
    sx = tuple(x.shape[1:])  # as mmd2_grad: (B, C, H, W) samples against (N, H, W, C) references compared
    if len(sx) > 1 and len(embedding.sample_shape) > 1 and sx != embedding.sample_shape:  # unrelated pixels
        raise ValueError(f"x has per-point shape {sx} but the embedding's references have {embedding.sample_shape}; "
                         "both sets must share one layout, e.g. channels first")
    xs, _ = check_pair(xs, embedding.W[:1], "x", "references")
    B = len(xs)
    kernel = GaussianKernel(embedding.bandwidth)
    W = xs.new_full((B, B), 1.0 / B**2)
    g = 2 * kernel.grad_weighted(xs, xs, W) - (2.0 / B) * embedding.cross_grad(xs)
    return g.reshape(torch.as_tensor(x).shape)

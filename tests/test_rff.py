"""Random Fourier features converge to the exact Gaussian-kernel MMD gradient."""
import math

import pytest
import torch

from mmdg_lite.kernels import GaussianKernel
from mmdg_lite.mmd import mmd2_grad
from mmdg_lite.rff import RFFReferenceEmbedding, mmd2_grad_rff


def _data(D=16, B=32, N=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=g, dtype=torch.float64),
            torch.randn(N, D, generator=g, dtype=torch.float64) + 0.3)


def test_features_reproduce_the_gaussian_gram_matrix():
    x, y = _data(D=4, B=20, N=30)
    emb = RFFReferenceEmbedding(y, bandwidth=2.0, n_features=200_000, seed=1)
    approx = emb.features(x) @ emb.features(y).T
    exact = GaussianKernel(2.0).gram(x, y)
    assert float((approx - exact).abs().max()) < 0.02


def test_rff_gradient_error_shrinks_like_one_over_sqrt_features():
    x, y = _data()
    exact = mmd2_grad(x, y, GaussianKernel(4.0))
    errs = []
    for F in (256, 4096, 65536):
        emb = RFFReferenceEmbedding(y, bandwidth=4.0, n_features=F, seed=3)
        errs.append(float((mmd2_grad_rff(x, emb) - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.1
    assert errs[0] / errs[2] > 8  # 256x more features: ~16x smaller error (Monte Carlo rate)


def test_chunked_embedding_equals_single_pass():
    _, y = _data(N=100)
    a = RFFReferenceEmbedding(y, 3.0, 64, seed=5, chunk_size=7)
    b = RFFReferenceEmbedding(y, 3.0, 64, seed=5, chunk_size=1000)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.weighted_refs, b.weighted_refs)  # M too: the cross term reads both
    w = torch.rand(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # with weights
    torch.testing.assert_close(RFFReferenceEmbedding(y, 3.0, 64, weights=w, seed=5, chunk_size=7).weighted_refs,
                               RFFReferenceEmbedding(y, 3.0, 64, weights=w, seed=5).weighted_refs)


def test_rff_validation():
    _, y = _data(N=10)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0; got 0"):
        RFFReferenceEmbedding(y, 0.0)
    emb = RFFReferenceEmbedding(y, 1.0, 8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        mmd2_grad_rff(torch.randn(3, 5, dtype=torch.float64), emb)


def test_value_based_reference_term_beats_the_feature_derivative_in_high_dimension():
    """Only kernel values are approximated: error ~ 1/sqrt(F) at any D, while J_phi^T mu
    (the derivative of the features) has error ~ sqrt(D / F)."""
    g = torch.Generator().manual_seed(0)
    errs = {}
    for D in (16, 512):
        x = torch.randn(32, D, generator=g, dtype=torch.float64)
        y = torch.randn(300, D, generator=g, dtype=torch.float64) + 1.0
        sigma = float(torch.cdist(x, y).median())
        exact = GaussianKernel(sigma).grad_weighted(x, y, torch.full((32, 300), 1 / 300, dtype=torch.float64))
        emb = RFFReferenceEmbedding(y, sigma, 4096, seed=2)
        rel = lambda c: float((c - exact).norm() / exact.norm())  # noqa: E731
        errs[D] = (rel(emb.cross_grad(x)), rel(emb.derivative_cross_grad(x)))
    assert errs[512][0] < 0.05  # value-based: accurate in 512-D with 4096 features
    assert errs[512][1] > 5 * errs[512][0]  # the derivative estimator is far worse there
    assert errs[512][0] < 2 * errs[16][0] + 0.01  # and the value-based error does not grow with D


@pytest.mark.parametrize("seed", [1.5, -1])
def test_rff_seed_must_be_a_valid_seed(seed):
    with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*63\); got {seed}"):
        RFFReferenceEmbedding(torch.randn(8, 2), 1.0, 16, seed=seed)


def test_rff_gradient_runs_in_the_promoted_dtype():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, generator=g), torch.randn(16, 2, generator=g)
    emb32 = RFFReferenceEmbedding(y, 1.0, 16)
    g64 = mmd2_grad_rff(x.double(), emb32)  # float64 points, float32 summaries
    assert g64.dtype == torch.float64
    assert torch.allclose(g64.float(), mmd2_grad_rff(x, emb32), atol=1e-5)
    emb64 = RFFReferenceEmbedding(y.double(), 1.0, 16)
    assert emb64.cross_grad(x).dtype == emb64.derivative_cross_grad(x).dtype == torch.float64


def test_mmd2_grad_rff_names_the_references_dimension():
    """The mismatch check ran against W[:1], so the message quoted 'references ... (shape (1, 3))',
    and a plain tensor in place of the embedding raised AttributeError ('W')."""
    emb = RFFReferenceEmbedding(torch.randn(7, 3), 1.0, 8)
    with pytest.raises(ValueError, match=r"x has 4 features per point \(shape \(6, 1, 2, 2\)\) but the "
                                         r"embedding's references have 3"):
        mmd2_grad_rff(torch.randn(6, 1, 2, 2), emb)
    with pytest.raises(TypeError, match=r"embedding must be an RFFReferenceEmbedding of the references; got Tensor"):
        mmd2_grad_rff(torch.randn(6, 3), torch.randn(7, 3))


@pytest.mark.parametrize("scale", [1e-25, 1e20, 1e30])
def test_rff_reference_term_holds_at_extreme_data_scales(scale):
    # the Gaussian kernel is scale-invariant (its bandwidth scales with the data); the RFF reference
    # term divided by sigma^2 as one float32 number, which overflowed (0 at 1e20) or underflowed (inf)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, generator=g), torch.randn(50, 8, generator=g) + 0.3
    unit = RFFReferenceEmbedding(y, 1.5, 256, seed=0).cross_grad(x)  # (4, 8)
    scaled = RFFReferenceEmbedding(y * scale, 1.5 * scale, 256, seed=0).cross_grad(x * scale)
    assert scaled.dtype == torch.float32 and bool(torch.isfinite(scaled).all())
    assert torch.allclose(scaled.double() * scale, unit.double(), rtol=1e-4, atol=1e-5 * float(unit.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rff_summaries_of_half_precision_references_are_float32(dtype):
    # like every kernel computation, half-precision references are summarised in float32: the sums
    # mu and M were accumulated and stored in bfloat16 (0.7 % off the float32 summaries of the same
    # rounded references, 0.4 % on the reference term)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 64, generator=g).to(dtype), torch.randn(300, 64, generator=g).to(dtype)
    half = RFFReferenceEmbedding(y, 8.0, 512, seed=0)
    oracle = RFFReferenceEmbedding(y.float(), 8.0, 512, seed=0)  # the same (rounded) references
    assert half.mean.dtype == half.weighted_refs.dtype == torch.float32
    assert torch.allclose(half.mean, oracle.mean) and torch.allclose(half.weighted_refs, oracle.weighted_refs)
    c, c_oracle = half.cross_grad(x), oracle.cross_grad(x.float())
    assert c.dtype == torch.float32 and torch.allclose(c, c_oracle, rtol=1e-5, atol=1e-7)


def test_rff_error_constant_grows_for_a_bandwidth_below_the_median():
    # the docs gave the RFF gradient error as ~1.6/sqrt(F) for any fixed bandwidth; it holds at the
    # median heuristic, and a narrower bandwidth (small kernel values, same absolute feature error)
    # makes it several times larger, as mmdg_lite.rff now says. Oracle: the exact float64 gradient.
    from mmdg_lite.kernels import median_bandwidth
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, generator=g), 1.0 + 0.5 * torch.randn(3000, 3, generator=g)
    med, F = median_bandwidth(x, y), 2048

    def c(bw):
        exact = mmd2_grad(x.double(), y.double(), GaussianKernel(bw))
        errs = [float((mmd2_grad_rff(x, RFFReferenceEmbedding(y, bw, F, seed=s)).double() - exact).norm()
                      / exact.norm()) for s in range(3)]
        return sum(errs) / 3 * math.sqrt(F)

    at_median, at_half = c(med), c(med / 2)
    assert 0.5 < at_median < 4 and at_half > 3 * at_median


def test_mmd2_grad_rff_refuses_samples_in_another_layout_than_the_references():
    # mmd2_grad refuses (B, C, H, W) samples against (N, H, W, C) references (same size, unrelated
    # pixels); mmd2_grad_rff flattened both and returned a plausible gradient without a word
    emb = RFFReferenceEmbedding(torch.randn(10, 4, 4, 3), 1.0, 64)  # channels last
    with pytest.raises(ValueError, match=r"x has per-point shape \(3, 4, 4\) but the embedding's references "
                                         r"have \(4, 4, 3\); both sets must share one layout"):
        mmd2_grad_rff(torch.randn(5, 3, 4, 4), emb)
    assert mmd2_grad_rff(torch.randn(5, 4, 4, 3), emb).shape == (5, 4, 4, 3)  # the same layout
    assert mmd2_grad_rff(torch.randn(5, 48), emb).shape == (5, 48)  # flat points, as mmd2_grad takes them


def test_rff_summaries_of_references_with_a_graph_are_constants():
    # references straight from an encoder (no torch.no_grad) carry its graph: the summaries kept it
    # alive and every mmd2_grad_rff result required grad, so x = x - lr * g grew one graph node per
    # step (300 steps: a chain 300 deep) where mmd2_grad, which takes the references as constants,
    # returns plain tensors. Oracle: the same embedding of the detached references
    enc = torch.nn.Linear(3, 3)
    refs = enc(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)))
    emb, plain = RFFReferenceEmbedding(refs, 1.0, 64), RFFReferenceEmbedding(refs.detach(), 1.0, 64)
    assert not emb.mean.requires_grad and not emb.weighted_refs.requires_grad
    x = torch.randn(4, 3)
    g = mmd2_grad_rff(x, emb)
    assert not g.requires_grad and not mmd2_grad(x, refs, GaussianKernel(1.0)).requires_grad
    assert torch.equal(g, mmd2_grad_rff(x, plain))

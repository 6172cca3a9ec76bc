"""Kernels against independent oracles: scikit-learn Gram matrices, autograd, finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel

from conftest import KERNEL_NAMES, build_kernel, central_fd, rel_err
from mmdg_lite import MMDGuidance, mmd2_grad_autograd
from mmdg_lite.kernels import (FeatureKernel, GaussianKernel, InverseMultiquadricKernel,
                               MultiGaussianKernel, PolynomialKernel, ProductKernel, median_bandwidth,
                               pairwise_sq_dists)

SHAPES = [(3, 4, 2), (5, 3, 4), (2, 6, 1)]  # (n, m, D)


def _points(seed: int, n: int, m: int, d: int, p_dim: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(m, d, generator=g, dtype=torch.float64)
    w = torch.rand(n, m, generator=g, dtype=torch.float64) - 0.3  # signed weights: any w works
    px = torch.randn(n, p_dim, generator=g, dtype=torch.float64)
    py = torch.randn(m, p_dim, generator=g, dtype=torch.float64)
    return x, y, w, px, py


# --- Gram matrices ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_gaussian_gram_matches_sklearn_rbf(seed, sigma):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    ours = GaussianKernel(bandwidth=sigma)(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, rbf_kernel(x, y, gamma=1 / (2 * sigma**2)), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polynomial_gram_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    d = 6
    x, y = rng.normal(size=(7, d)), rng.normal(size=(9, d))
    ours = PolynomialKernel()(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    ref = polynomial_kernel(x, y, degree=3, gamma=1 / d, coef0=1)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-13)


def test_gram_flattens_image_shaped_points():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 2, 3, 3)), rng.normal(size=(5, 2, 3, 3))
    ours = GaussianKernel(bandwidth=2.0)(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    ref = rbf_kernel(x.reshape(4, -1), y.reshape(5, -1), gamma=1 / 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_multi_gaussian_is_sum_of_sklearn_rbfs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(8, 3))
    bws = (0.5, 1.0, 3.0)
    ours = MultiGaussianKernel(bandwidths=bws)(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    ref = sum(rbf_kernel(x, y, gamma=1 / (2 * b * b)) for b in bws)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_inverse_multiquadric_gram_matches_formula():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(8, 3))
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    ours = InverseMultiquadricKernel(c=0.7, beta=0.8)(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, (0.49 + d2) ** -0.8, rtol=1e-10)


def test_median_bandwidth_is_median_pairwise_distance():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(30, 3))
    z = np.concatenate([x, y])
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    assert median_bandwidth(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(np.median(d), rel=1e-10)
    k = GaussianKernel(median_scale=2.0).resolve(torch.from_numpy(x), torch.from_numpy(y))
    assert k.bandwidth == pytest.approx(2 * np.median(d), rel=1e-10)


def test_pairwise_sq_dists_non_negative_and_zero_on_duplicates():
    x = torch.randn(50, 8, dtype=torch.float32) * 100
    d2 = pairwise_sq_dists(x, x)
    assert bool((d2 >= 0).all())
    ref = ((x[:, None].double() - x[None].double()) ** 2).sum(-1)
    assert torch.allclose(d2.double(), ref, rtol=1e-4, atol=1e-1)


def test_pairwise_sq_dists_names_bad_shapes():
    with pytest.raises(ValueError, match=r"dimension mismatch: x has 3 features per point, y has 2"):
        pairwise_sq_dists(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"y must be a tensor of points \(n, D\); got \(5,\)"):
        pairwise_sq_dists(torch.randn(4, 3), torch.randn(5))
    with pytest.raises(ValueError, match=r"x must be a tensor of points \(n, D\); got list"):
        pairwise_sq_dists([[0.0, 1.0]], torch.randn(5, 2))


# --- closed-form weighted gradients --------------------------------------------------------------

def _grad_cases(name, seed, n, m, d):
    """(closed-form gradient, scalar function of x it differentiates, x)."""
    x, y, w, px, py = _points(seed, n, m, d)
    kernel = build_kernel(name)
    kernel = kernel.resolve(x, y)  # data-dependent bandwidth held fixed
    if isinstance(kernel, ProductKernel):
        closed = kernel.grad_weighted(x, y, w, px, py)
        f = lambda xx: (w * kernel.gram(xx, y, px, py)).sum()  # noqa: E731
    else:
        closed = kernel.grad_weighted(x, y, w)
        f = lambda xx: (w * kernel.gram(xx, y)).sum()  # noqa: E731
    return closed, f, x


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_grad_weighted_matches_autograd_and_finite_differences(name, seed, shape):
    closed, f, x = _grad_cases(name, seed, *shape)
    assert closed.shape == x.shape and closed.dtype == torch.float64
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(f(xg), xg)
    fd = central_fd(f, x)
    assert rel_err(closed, auto) <= 1e-9
    assert rel_err(closed, fd) <= 1e-6


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_grad_weighted_finite_at_zero_distance(name):
    x, y, w, px, py = _points(7, 4, 5, 3)
    x[1] = x[0]  # two generated points coincide
    y[0] = x[0]  # and a reference sits on one of them
    kernel = build_kernel(name).resolve(x, y)
    if isinstance(kernel, ProductKernel):
        g_xy = kernel.grad_weighted(x, y, w, px, py)
        g_xx = kernel.grad_weighted(x, x, torch.ones(4, 4, dtype=x.dtype), px, px)
    else:
        g_xy = kernel.grad_weighted(x, y, w)
        g_xx = kernel.grad_weighted(x, x, torch.ones(4, 4, dtype=x.dtype))
    assert bool(torch.isfinite(g_xy).all()) and bool(torch.isfinite(g_xx).all())


def test_gaussian_gradient_formula_by_hand():
    # grad_1 k(u, v) = k(u, v) (v - u) / sigma^2 for one pair, no library code in the oracle
    u = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    v = torch.tensor([[1.1, 0.4]], dtype=torch.float64)
    s = 0.9
    k = math.exp(-float(((u - v) ** 2).sum()) / (2 * s * s))
    g = GaussianKernel(s).grad_weighted(u, v, torch.ones(1, 1, dtype=torch.float64))
    assert torch.allclose(g, k * (v - u) / s**2, rtol=1e-12)


def test_product_kernel_gram_is_elementwise_product():
    x, y, _, px, py = _points(8, 4, 5, 3)
    kp, kz = GaussianKernel(0.8), PolynomialKernel()
    prod = ProductKernel(kp, kz, normalize_prompts=False)
    assert torch.allclose(prod.gram(x, y, px, py), kp.gram(px, py) * kz.gram(x, y), rtol=1e-12)
    normed = ProductKernel(kp, kz)
    pxn = px / px.norm(dim=1, keepdim=True)
    pyn = py / py.norm(dim=1, keepdim=True)
    assert torch.allclose(normed.gram(x, y, px, py), kp.gram(pxn, pyn) * kz.gram(x, y), rtol=1e-12)


# --- kernels on a feature map's embeddings -------------------------------------------------------

def _tanh_features(seed: int, shape: tuple[int, ...], f: int = 5):
    """A fixed nonlinear map (n, *shape) -> (n, f) and its weights, float64."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(math.prod(shape), f, generator=g, dtype=torch.float64)
    return (lambda z: torch.tanh(z.reshape(len(z), -1) @ a)), a


def test_feature_kernel_gram_is_sklearn_rbf_on_the_features():
    phi, a = _tanh_features(0, (2, 3))
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    k = FeatureKernel(phi, (2, 3), GaussianKernel(bandwidth=0.9))
    fx, fy = np.tanh(x.numpy() @ a.numpy()), np.tanh(y.numpy() @ a.numpy())
    ref = rbf_kernel(fx, fy, gamma=1 / (2 * 0.9**2))
    assert np.allclose(k.gram(x, y).numpy(), ref, rtol=1e-12, atol=1e-14)


def test_feature_kernel_median_bandwidth_is_fixed_in_feature_space():
    phi, _ = _tanh_features(1, (6,))
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    k = FeatureKernel(phi, (6,), GaussianKernel(median_scale=0.5)).resolve(x, y)
    assert k.base.bandwidth == pytest.approx(0.5 * median_bandwidth(phi(x), phi(y)), rel=1e-12)
    identity = FeatureKernel(lambda z: z, (6,), GaussianKernel()).resolve(x, y)
    assert identity.base.bandwidth == pytest.approx(GaussianKernel().resolve(x, y).bandwidth, rel=1e-12)


def test_feature_kernel_gradient_is_the_chain_rule_through_the_map():
    """Linear map z -> z A: grad_1 k = A (closed-form base gradient at the features); a nonlinear
    map: autograd-free central finite differences."""
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    w = torch.rand(6, 5, dtype=torch.float64)
    a = torch.randn(4, 3, dtype=torch.float64)
    base = GaussianKernel(bandwidth=1.7)
    lin = FeatureKernel(lambda z: z @ a, (4,), base)
    expected = base.grad_weighted(x @ a, y @ a, w) @ a.T  # (6, 4)
    assert rel_err(lin.grad_weighted(x, y, w), expected) <= 1e-12
    phi, _ = _tanh_features(2, (2, 2))
    k = FeatureKernel(phi, (2, 2), PolynomialKernel())
    fd = central_fd(lambda xx: (w * k.gram(xx, y)).sum(), x)
    assert rel_err(k.grad_weighted(x, y, w), fd) <= 1e-6


def test_feature_kernel_runs_a_module_in_its_dtype_and_guides_a_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Flatten())
    k = FeatureKernel(net.requires_grad_(False), (1, 4, 4))
    refs = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    z = torch.randn(5, 16, dtype=torch.float64)
    g = MMDGuidance(refs, kernel=k).gradient(z)  # float64 points through a float32 network
    assert g.shape == z.shape and g.dtype == torch.float64 and bool(torch.isfinite(g).all())
    oracle = mmd2_grad_autograd(z, refs.reshape(8, -1), k)
    assert rel_err(g, oracle) <= 1e-5


@pytest.mark.parametrize("phi", [lambda z: torch.as_tensor(z.detach().numpy() ** 2),  # through numpy
                                 lambda z: z.detach() * 2.0,
                                 lambda z: z.argmax(1, keepdim=True).float()])
def test_feature_kernel_says_when_its_map_is_not_differentiable(phi):
    k = FeatureKernel(phi, (4,), GaussianKernel(bandwidth=1.0))
    x, y = torch.randn(3, 4), torch.randn(2, 4)
    assert k.gram(x, y).shape == (3, 2)  # the Gram matrix needs no gradient
    with pytest.raises(ValueError, match="feature_map must be differentiable in its input"):
        k.grad_weighted(x, y, torch.ones(3, 2))


def test_feature_kernel_bad_arguments_name_what_is_valid():
    with pytest.raises(TypeError, match="feature_map must be callable"):
        FeatureKernel("resnet", (1, 4, 4))
    with pytest.raises(ValueError, match=r"shape must be a tuple of positive ints.*\[1, 4\]"):
        FeatureKernel(lambda z: z, [1, 4])
    with pytest.raises(TypeError, match="base must be a mmdg_lite Kernel"):
        FeatureKernel(lambda z: z, (4,), base="gaussian")
    k = FeatureKernel(lambda z: z.flatten(1), (1, 4, 4))
    with pytest.raises(ValueError, match=r"points must be \(n, 16\) for shape=\(1, 4, 4\); got \(3, 9\)"):
        k.gram(torch.randn(3, 9), torch.randn(2, 9))
    bad = FeatureKernel(lambda z: z[:1].flatten(1), (4,))
    with pytest.raises(ValueError, match=r"one row per point \(3\); got \(1, 4\)"):
        bad.gram(torch.randn(3, 4), torch.randn(2, 4))


def test_kernels_called_on_half_inputs_compute_in_float32():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 20  # cubic values up to ~1e7
    k16 = PolynomialKernel()(x.half(), x.half())
    assert k16.dtype == torch.float32 and bool(torch.isfinite(k16).all())
    torch.testing.assert_close(k16, PolynomialKernel()(x.half().float(), x.half().float()))


@pytest.mark.parametrize("coef0", [float("nan"), float("inf"), True, -1.0, "1"])
def test_polynomial_coef0_must_be_a_finite_number(coef0):
    with pytest.raises(ValueError, match="coef0 must be a finite number >= 0"):
        PolynomialKernel(coef0=coef0)


def test_multi_gaussian_scales_must_be_a_tuple():
    with pytest.raises(TypeError, match=r"scales must be a tuple of positive numbers.*got 1.0"):
        MultiGaussianKernel(scales=1.0)


def test_callable_kernel_checks_what_fn_returns():
    from mmdg_lite import mmd2_grad
    from mmdg_lite.kernels import CallableKernel
    x, y = torch.randn(3, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"must return the \(3, 4\) Gram matrix.*got \(3,\)"):
        CallableKernel(lambda a, b: torch.ones(len(a)))(x, y)
    flat = CallableKernel(lambda a, b: torch.as_tensor(np.exp(-((a[:, None] - b[None]) ** 2).sum(-1).detach().numpy())),
                          name="numpy")
    with pytest.raises(ValueError, match="does not depend differentiably on x"):
        mmd2_grad(x, y, flat)


def test_numpy_scalars_are_accepted_as_python_numbers():
    k = PolynomialKernel(degree=np.int64(3), coef0=np.float32(1))
    assert k == PolynomialKernel(degree=3, coef0=1.0) and type(k.degree) is int and type(k.coef0) is float
    x, y = torch.randn(3, 2), torch.randn(4, 2)
    assert torch.equal(k(x, y), PolynomialKernel()(x, y))
    fk = FeatureKernel(lambda z: z, shape=(np.int64(2),))
    assert fk.shape == (2,) and type(fk.shape[0]) is int
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        FeatureKernel(lambda z: z, shape=(True, 2))


@pytest.mark.parametrize("offset", [30.0, 1_000.0, 3_000.0])
def test_float32_points_far_from_the_origin_keep_their_distances(offset):
    """||x||^2 + ||y||^2 - 2 x.y cancels for points offset by 3,000x their spread: in float32 the
    median bandwidth was 2.00 against 1.71 and the Gaussian MMD gradient 26-36 % off. The float64
    computation (sklearn's rbf_kernel for the Gram matrix) is the oracle."""
    from mmdg_lite import mmd2, mmd2_grad
    from mmdg_lite.kernels import median_bandwidth

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64) + offset
    y = torch.randn(60, 8, generator=g, dtype=torch.float64) + offset + 0.5
    xf, yf = x.float(), y.float()
    x, y = xf.double(), yf.double()  # the oracle sees exactly the float32 inputs
    bw = median_bandwidth(x, y)
    assert abs(median_bandwidth(xf, yf) - bw) / bw < 1e-3
    k = GaussianKernel(bandwidth=bw)
    gram = rbf_kernel(xf.numpy().astype(np.float64), yf.numpy().astype(np.float64), gamma=0.5 / bw**2)
    assert np.abs(k.gram(xf, yf).double().numpy() - gram).max() < 1e-4
    assert abs(float(mmd2(xf, yf, k)) - float(mmd2(x, y, k))) < 1e-4
    want = mmd2_grad(x, y, k)
    assert rel_err(mmd2_grad(xf, yf, k).double(), want) < 1e-3


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_pairwise_sq_dists_refuses_non_float_dtypes_by_name(dtype):
    """Integer, bool and complex points reached torch.linalg ('linalg.vector_norm: Expected a
    floating point ...', or NotImplementedError from clamp) without naming the argument."""
    with pytest.raises(TypeError, match=rf"y has dtype {dtype}; pass a floating-point tensor"):
        pairwise_sq_dists(torch.randn(4, 3), torch.ones(5, 3).to(dtype))


def test_pairwise_sq_dists_refuses_mixed_devices_by_name():
    with pytest.raises(ValueError, match=r"x is on device cpu but y is on device meta; move both to one device"):
        pairwise_sq_dists(torch.randn(4, 3), torch.randn(5, 3, device="meta"))


@pytest.mark.parametrize("scale", [1e200, 1e-200])
@pytest.mark.parametrize("weighting", ["equal", "displacement"])
def test_multi_gaussian_is_scale_invariant_at_extreme_scales(scale, weighting):
    """MultiGaussianKernel (the guidance default) formed c^2 / b^2 and b^2 in Python floats: data at
    1e200 gave inf / inf (FloatingPointError advising 'use a Gaussian kernel') and data at 1e-200
    a bare ZeroDivisionError. With median bandwidths, MMD^2 is unchanged by scaling the data by c
    and its gradient scales by 1 / c: the unit-scale computation is the oracle."""
    from mmdg_lite import mmd2, mmd2_grad

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    k = MultiGaussianKernel(scales=(0.5, 2.0), weighting=weighting)
    assert float(mmd2(x * scale, y * scale, k)) == pytest.approx(float(mmd2(x, y, k)), rel=1e-9)
    assert rel_err(mmd2_grad(x * scale, y * scale, k) * scale, mmd2_grad(x, y, k)) < 1e-9


@pytest.mark.parametrize("dtype,bandwidth", [(torch.float32, 1e-20), (torch.float64, 1e-160), (torch.float64, 1e-320)])
@pytest.mark.parametrize("make", [GaussianKernel, lambda b: MultiGaussianKernel(bandwidths=(b, 1.0))],
                         ids=["gaussian", "multi"])
def test_too_small_a_bandwidth_is_refused_by_name(dtype, bandwidth, make):
    """1 / bandwidth^2 overflowing the work dtype gave NaN on the Gram diagonal (0 * inf, float32
    at 1e-20) or a bare ZeroDivisionError (the square underflowing to 0 in Python)."""
    from mmdg_lite import mmd2_grad

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    for call in (lambda: make(bandwidth)(x, x), lambda: mmd2_grad(x, x + 1, make(bandwidth))):
        with pytest.raises(ValueError, match=rf"bandwidth {bandwidth:.4g} is too small for these points in {dtype}"):
            call()


def test_inverse_multiquadric_refuses_a_c_whose_square_overflows():
    """c = 1e200 passed construction and raised a bare OverflowError (c**2) in every call."""
    with pytest.raises(ValueError, match=r"c must be below 1e150 \(c\^2 must be a finite float\); got 1e\+200"):
        InverseMultiquadricKernel(c=1e200)


def test_median_bandwidth_leaves_out_duplicates_in_float32():
    # duplicate points are at distance 0 and are left out; in float32 the expansion of ||a - b||^2
    # rounded them to small positive distances, which moved the median (3072-D: 78.47 vs 78.48)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3072, generator=g), torch.randn(9, 3072, generator=g) + 0.2
    x[1] = x[0]
    y[3] = x[0]
    y[5] = y[4]
    z = torch.cat([x, y]).double().numpy()
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    d = np.sort(d[d > 0])
    oracle = d[(len(d) - 1) // 2]  # the lower middle value, as documented
    assert median_bandwidth(x, y) == pytest.approx(oracle, rel=1e-6)
    assert median_bandwidth(x.double(), y.double()) == pytest.approx(oracle, rel=1e-12)


def test_autograd_kernels_under_inference_mode_say_why():
    """CallableKernel blamed the kernel ('does not depend differentiably on x') and
    mmd2_grad_autograd / FeatureKernel raised torch's bare 'does not require grad' under
    torch.inference_mode(), where autograd records nothing."""
    from mmdg_lite.kernels import CallableKernel
    from mmdg_lite.mmd import mmd2_grad

    x, y = torch.randn(5, 2), torch.randn(6, 2)
    kernels = (CallableKernel(lambda a, b: torch.exp(-torch.cdist(a, b) ** 2)),
               FeatureKernel(torch.tanh, (2,), GaussianKernel(1.0)))
    for kernel in kernels:
        want = mmd2_grad(x, y, kernel)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            mmd2_grad(x, y, kernel)
        with torch.no_grad():
            torch.testing.assert_close(mmd2_grad(x, y, kernel), want)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="mmd2_grad_autograd.*inference_mode"):
        mmd2_grad_autograd(x, y, GaussianKernel(1.0))


@pytest.mark.parametrize("grad", [False, True])
def test_callable_kernel_refuses_an_integer_gram_matrix(grad):
    """An integer Gram matrix reached mmd2's matmul with the float weights ('expected m1 and m2 to
    have the same dtype, but got: float != long int')."""
    from mmdg_lite import mmd2, mmd2_grad
    from mmdg_lite.kernels import CallableKernel

    k = CallableKernel(lambda a, b: (a @ b.T).round().long())
    with pytest.raises(TypeError, match=r"fn\(x, y\) must return a floating-point Gram matrix; got dtype torch.int64"):
        (mmd2_grad if grad else mmd2)(torch.randn(4, 3), torch.randn(5, 3), k)


@pytest.mark.parametrize("layer", [torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(8)])
def test_feature_kernel_refuses_a_network_in_train_mode(layer):
    """A feature network left in train mode gave a different kernel at every call (dropout: two
    mmd2 calls on the same sets differed and the biased MMD^2 came out negative) or normalised by
    the batch and moved the user's batch-norm running statistics, silently."""
    from mmdg_lite import mmd2, mmd2_grad

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), layer, torch.nn.Linear(8, 3))
    x, y = torch.randn(6, 4), torch.randn(5, 4)
    kernel = FeatureKernel(net, (4,), GaussianKernel(1.0))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for fn in (mmd2, mmd2_grad):
        with pytest.raises(ValueError, match=rf"feature_map has layers in train mode \(1 \({type(layer).__name__}\)\)"
                                             r".*feature_map.eval\(\)"):
            fn(x, y, kernel)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # nothing was updated
    net.eval()
    assert float(mmd2(x, y, kernel).detach()) == float(mmd2(x, y, kernel).detach()) >= 0.0  # a fixed PSD kernel


@pytest.mark.parametrize("np_type", [np.float32, np.float16])
def test_numpy_scalar_settings_are_python_numbers(np_type):
    """InverseMultiquadricKernel(c=np.float32(0.7)) formed c**2 in float32 (np.float16: float16),
    so its float64 Gram matrix was 2e-9 (2e-5) off the formula at that c although the kernel
    compared equal to InverseMultiquadricKernel(float(c)); the distributed settings digest
    described such a bandwidth by its type ('float32'), so processes with different ones agreed."""
    from mmdg_lite.distributed import _describe

    c = np_type(0.7)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    d2 = torch.cdist(x, y).square()
    want = (float(c) ** 2 + d2) ** -1.5
    torch.testing.assert_close(InverseMultiquadricKernel(c, np_type(1.5)).gram(x, y), want, rtol=1e-12, atol=0)
    kernels = (GaussianKernel(c, np_type(2.0)), InverseMultiquadricKernel(c, np_type(1.5)), PolynomialKernel(gamma=c))
    for k in kernels:
        assert all(not isinstance(getattr(k, f), np.generic) for f in vars(k))
    assert _describe(GaussianKernel(np_type(1.0))) != _describe(GaussianKernel(np_type(2.0)))


def test_multi_gaussian_refuses_scales_none():
    """scales=None raised tuple()'s bare "'NoneType' object is not iterable", naming nothing."""
    with pytest.raises(TypeError, match=r"scales must be a tuple of positive numbers.*got None"):
        MultiGaussianKernel(scales=None)  # type: ignore[arg-type]


def test_callable_kernel_through_numpy_names_the_kernel():
    """A CallableKernel computing its Gram matrix in numpy gave a clear error from mmd2 but, in the
    gradient, torch's bare "Can't call numpy() on Tensor that requires grad"."""
    from mmdg_lite import mmd2_grad
    from mmdg_lite.kernels import CallableKernel

    k = CallableKernel(lambda a, b: torch.from_numpy(np.exp(-rbf_kernel(a.numpy(), b.numpy()))), name="np_rbf")
    with pytest.raises(ValueError, match=r"CallableKernel\(np_rbf\): the Gram matrix went through numpy"):
        mmd2_grad(torch.randn(4, 3), torch.randn(5, 3), k)


def test_kernel_subclass_mistakes_name_the_kernel():
    """A Kernel subclass whose resolve forgot its return, whose gram or grad_weighted has the wrong
    shape, or that defines no gram failed inside mmd2 / mmd2_grad with AttributeError
    ("'NoneType' object has no attribute 'gram'"), torch's matmul / broadcast errors or a bare
    NotImplementedError, naming neither the kernel nor the method."""
    from mmdg_lite import mmd2, mmd2_grad
    from mmdg_lite.kernels import Kernel

    def rbf(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2)

    class NoReturn(Kernel):
        def resolve(self, x, y=None):
            pass

        def gram(self, x, y):
            return rbf(x, y)

    class Transposed(Kernel):
        def gram(self, x, y):
            return rbf(x, y).T

    class WideGrad(Kernel):
        def gram(self, x, y):
            return rbf(x, y)

        def grad_weighted(self, x, y, w):
            return torch.zeros(len(x), x.shape[1] + 1)

    class NoGram(Kernel):
        pass

    x, y = torch.randn(6, 3), torch.randn(5, 3)
    for fn in (mmd2, mmd2_grad):
        with pytest.raises(TypeError, match=r"NoReturn.*\.resolve\(x, y\) must return a kernel.*got None"):
            fn(x, y, NoReturn())
        with pytest.raises(ValueError, match=r"Transposed.*\.gram must return a tensor of shape \(6, 5\).*got \(5, "):
            fn(x, y, Transposed())
        with pytest.raises(NotImplementedError, match="NoGram must implement gram"):
            fn(x, y, NoGram())
    with pytest.raises(ValueError, match=r"WideGrad.*\.grad_weighted must return a tensor of shape \(6, 3\)"):
        mmd2_grad(x, y, WideGrad())
    with pytest.raises(TypeError, match=r"NoReturn.*\.resolve\(x, y\) must return a kernel"):
        NoReturn()(x, y)
    with pytest.raises(TypeError, match=r"NoReturn.*\.resolve\(x, y\) must return a kernel"):
        mmd2(x, y, ProductKernel(NoReturn(), GaussianKernel(1.0)), x_prompts=torch.eye(6), y_prompts=torch.eye(6)[:5])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_callable_kernel_gram_in_another_dtype(dtype):
    """A CallableKernel returning its Gram matrix in float16 or float64 for float32 points failed in
    mmd2 / witness with torch's 'expected m1 and m2 to have the same dtype'; it is taken in the
    points' dtype, as the same values handed back in float32."""
    from mmdg_lite import mmd2, witness
    from mmdg_lite.kernels import CallableKernel

    def rbf(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2).to(dtype)

    x, y = torch.randn(6, 3), torch.randn(5, 3)
    other, same = CallableKernel(rbf), CallableKernel(lambda a, b: rbf(a, b).float())
    assert float(mmd2(x, y, other)) == float(mmd2(x, y, same))
    assert torch.equal(witness(x[:3], x, y, kernel=other), witness(x[:3], x, y, kernel=same))


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (1e30, 0.0), (1e-30, 0.0), (1.0, 3000.0)])
@pytest.mark.parametrize("make", [GaussianKernel,
                                  lambda bandwidth: MultiGaussianKernel(bandwidths=(bandwidth, 2 * bandwidth))])
def test_a_set_against_itself_matches_a_copy_of_it(scale, offset, make):
    """The repulsion passes the batch as both arguments, and the distances then read its norms
    once: bit-identical to the same points passed as a separate tensor, at ordinary, extreme
    (rescaled) and far-offset (centred) scales."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(7, 4, generator=g) + offset) * scale  # float32: the centring path triggers at 3000
    w = torch.rand(7, 7, generator=g)
    k = make(bandwidth=float(median_bandwidth(x)))
    assert torch.equal(k.gram(x, x), k.gram(x, x.clone()))
    assert torch.equal(k.grad_weighted(x, x, w), k.grad_weighted(x, x.clone(), w))
    assert float(k.gram(x, x).diagonal().min()) == pytest.approx(1.0 if make is GaussianKernel else 2.0)


def test_median_bandwidth_takes_an_image_shaped_set_against_a_flat_one():
    # mmd2 compares (n, C, H, W) points with (m, C*H*W) references, but median_bandwidth refused the
    # pair as 'x has 12 features per point ... but y has 12' (it compared the unflattened shapes)
    from scipy.spatial.distance import pdist
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 12, generator=g, dtype=torch.float64)
    d = np.sort(pdist(torch.cat([x.reshape(5, -1), y]).numpy()))
    assert median_bandwidth(x, y) == pytest.approx(d[(len(d) - 1) // 2], rel=1e-12)  # the lower middle value
    s, t = x[:, 0, 0, 0], y[:, :1]  # scalar samples (n,) against (m, 1) ('1 features ... but y has 1')
    d = np.sort(pdist(torch.cat([s, t[:, 0]])[:, None].numpy()))
    assert median_bandwidth(s, t) == pytest.approx(d[(len(d) - 1) // 2], rel=1e-12)
    with pytest.raises(ValueError, match="per-point shape"):  # another layout of the same size: refused
        median_bandwidth(x, y.reshape(4, 2, 2, 3))



@pytest.mark.parametrize("same", [False, True], ids=["y", "y-is-x"])
def test_gaussian_grad_weighted_can_be_differentiated_again(same):
    # GaussianKernel.grad_weighted worked on its (n, m) matrix in place, so backpropagating through it
    # (a Hessian-vector product of MMD^2; every other kernel allows it) raised torch's 'one of the
    # variables needed for gradient computation has been modified by an inplace operation'.
    # Oracle: autograd's double backward through the Gram matrix, first and second argument as leaves
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    w = torch.rand(4, 4 if same else 5, generator=g, dtype=torch.float64)
    k = GaussianKernel(1.0)
    xg = x.clone().requires_grad_(True)
    out = k.grad_weighted(xg, xg if same else y, w)
    (got,) = torch.autograd.grad(out.sum(), xg)
    xa, xb = x.clone().requires_grad_(True), (x if same else y).clone().requires_grad_(True)
    (first,) = torch.autograd.grad((k.gram(xa, xb) * w).sum(), xa, create_graph=True)  # sum_j w_ij grad_1 k
    da, db = torch.autograd.grad(first.sum(), (xa, xb))
    assert rel_err(got, da + db if same else da) < 1e-12
    # with a graph the matrix is formed out of place: the same numbers as the in-place path
    assert torch.equal(out.detach(), k.grad_weighted(x, x if same else y, w))


@pytest.mark.parametrize("name", ["gaussian", "multi", "imq", "cubic"])
def test_product_kernel_takes_prompts_of_another_dtype_in_the_points_dtype(name):
    # float64 prompt features (numpy's default) with float32 points: the Gram matrix came back float64 and
    # the cubic kernel's gradient failed with torch's 'expected m1 and m2 to have the same dtype'.
    # Oracle: the same (float32-exact) points in float64
    g = torch.Generator().manual_seed(13)
    x, y = torch.randn(3, 2, generator=g), torch.randn(4, 2, generator=g)
    w = torch.rand(3, 4, generator=g)
    px, py = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    sample = {"gaussian": GaussianKernel(1.0), "multi": MultiGaussianKernel((1.0, 2.0)),
              "imq": InverseMultiquadricKernel(), "cubic": PolynomialKernel()}[name]
    k = ProductKernel(GaussianKernel(1.0), sample)
    for got, want in ((k.gram(x, y, px, py), k.gram(x.double(), y.double(), px, py)),
                      (k.grad_weighted(x, y, w, px, py), k.grad_weighted(x.double(), y.double(), w.double(), px, py))):
        assert got.dtype == torch.float32 and rel_err(got.double(), want) < 1e-5
    got = PolynomialKernel().grad_weighted(x, y, w.double())  # float64 weights on their own, too
    assert got.dtype == torch.float32
    assert rel_err(got.double(), PolynomialKernel().grad_weighted(x.double(), y.double(), w.double())) < 1e-5


def test_median_bandwidth_picks_the_same_points_under_any_default_dtype():
    """The thinned points came from linspace(...).long() in torch's default dtype: after
    torch.set_default_dtype(torch.float64) a float64 linspace rounded some spacings the other way
    (111 points: the 55th pick row 60 instead of 59; 118: three picks), so the same sets got
    another bandwidth (2.090 instead of 2.080 here)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(111, 3, generator=g).double(), torch.randn(118, 3, generator=g).double()
    want = median_bandwidth(x, y)
    thinned = [z[torch.linspace(0, len(z) - 1, 100, dtype=torch.float32).long()] for z in (x, y)]
    assert want == median_bandwidth(*thinned)  # oracle: the float32 CPU spacing, thinned by hand
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert median_bandwidth(x, y) == want
    finally:
        torch.set_default_dtype(default)


def test_pairwise_sq_dists_reads_numpy_arrays():
    # every other public function reads numpy arrays; pairwise_sq_dists refused them as 'x must be a
    # tensor of points (n, D); got ndarray'. Oracle: the pairwise differences summed directly
    g = np.random.default_rng(3)
    x, y = g.normal(size=(4, 3)), g.normal(size=(5, 3))
    d2 = pairwise_sq_dists(x, y)
    assert d2.dtype == torch.float64 and torch.equal(d2, pairwise_sq_dists(torch.from_numpy(x), torch.from_numpy(y)))
    assert np.allclose(d2.numpy(), ((x[:, None] - y[None]) ** 2).sum(-1), rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="y has dtype torch.int64; pass a floating-point tensor"):
        pairwise_sq_dists(x, np.ones((5, 3), dtype=np.int64))


def test_multi_gaussian_reads_a_numpy_array_of_bandwidths_or_scales():
    # MultiGaussianKernel took a list but refused a 1-D numpy array (np.geomspace(0.5, 2, 3)) as 'bandwidths
    # must be a tuple of positive numbers'; it is read as the tuple it lists. Oracle: the sum of Gaussians
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    k = MultiGaussianKernel(bandwidths=np.geomspace(0.5, 2.0, 3))
    assert k == MultiGaussianKernel(bandwidths=(0.5, 1.0, 2.0)) and k.bandwidths == (0.5, 1.0, 2.0)
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    assert torch.allclose(k(x, y), sum(torch.exp(-d2 / (2 * s * s)) for s in (0.5, 1.0, 2.0)), rtol=1e-12, atol=0)
    assert MultiGaussianKernel(scales=np.array([0.5, 2.0])).scales == (0.5, 2.0)
    for bad in (np.ones((2, 1)), np.array([1.0, -1.0])):
        with pytest.raises((TypeError, ValueError), match="bandwidths must be"):
            MultiGaussianKernel(bandwidths=bad)


def test_product_kernel_checks_normalize_prompts_is_a_bool():
    # normalize_prompts='no' (truthy) L2-normalised the prompts silently, and 0 / None switched it off
    from mmdg_lite.kernels import ProductKernel
    for bad in ("no", 0, None):
        with pytest.raises(TypeError, match=r"normalize_prompts must be True or False; got"):
            ProductKernel(GaussianKernel(0.3), GaussianKernel(1.0), normalize_prompts=bad)
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # oracle: the Gaussian of the (un)normalised rows
    for flag, rows in ((True, p / p.norm(dim=1, keepdim=True)), (False, p)):
        k = ProductKernel(GaussianKernel(0.3), GaussianKernel(1.0), normalize_prompts=flag)
        d2 = ((rows[:, None] - rows[None]) ** 2).sum(-1)
        assert torch.allclose(k.prompt_gram(p, p), torch.exp(-d2 / (2 * 0.3**2)), rtol=1e-6, atol=1e-12)


def test_a_set_against_itself_has_exact_zero_self_distances_in_float32():
    # the expansion ||x||^2 + ||y||^2 - 2 x.y left ~eps ||x||^2 on the diagonal of a set against itself
    # (float32, D = 65,536: ~0.04), so the IMQ kernel's k(x_i, x_i) was below c^(-2 beta) and its
    # float32 MMD^2 6 % off; autograd through those entries cancelled catastrophically (IMQ c = 1e-3:
    # mmd2_grad_autograd 150x off). mmd2's self-terms pass the set as two views of the same rows.
    # Oracles: the float64 MMD^2 and the float64 closed-form gradient
    from mmdg_lite.mmd import mmd2, mmd2_grad
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 65536, generator=g)
    assert torch.equal(pairwise_sq_dists(x, x).diagonal(), torch.zeros(4))
    assert torch.equal(pairwise_sq_dists(x[0:4], x[0:4]).diagonal(), torch.zeros(4))  # two views
    assert float(pairwise_sq_dists(x, x.clone()).diagonal().max()) > 0  # a copy: rounding, as before
    y = 0.8 * torch.randn(6, 65536, generator=g) + 0.1
    k = InverseMultiquadricKernel()
    assert rel_err(mmd2(x, y, k).double(), mmd2(x.double(), y.double(), k)) < 1e-5
    x2, y2 = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g)
    k2 = InverseMultiquadricKernel(c=1e-3)
    assert rel_err(mmd2_grad_autograd(x2, y2, k2).double(), mmd2_grad(x2.double(), y2.double(), k2)) < 1e-5

"""MMD^2, its closed-form gradient (Eq. 6 / Eq. 11), witness and permutation test, each checked
against an oracle that does not share the code under test: autograd, finite differences, closed
forms for Gaussians, brute-force loops and binomial confidence bands."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom

from conftest import KERNEL_NAMES, build_kernel, central_fd, rel_err
from mmdg_lite.kernels import GaussianKernel, InverseMultiquadricKernel, PolynomialKernel, ProductKernel
from mmdg_lite.mmd import mmd2, mmd2_grad, mmd2_grad_autograd, permutation_test, witness

ESTIMATORS = ("biased", "unbiased")
# (seed, n, m, point shape): several shapes, image-shaped points included
CASES = [(0, 4, 6, (3,)), (1, 5, 3, (2, 2)), (2, 2, 7, (1,))]


def _data(seed, n, m, shape, weighted, p_dim=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = 0.7 + torch.randn(m, *shape, generator=g, dtype=torch.float64)
    kw = {}
    if weighted:
        kw["x_weights"] = 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
        kw["y_weights"] = 0.2 + torch.rand(m, generator=g, dtype=torch.float64)
    px = torch.randn(n, p_dim, generator=g, dtype=torch.float64)
    py = torch.randn(m, p_dim, generator=g, dtype=torch.float64)
    return x, y, kw, px, py


def _setup(name, x, y, px, py, kw):
    kernel = build_kernel(name)
    if isinstance(kernel, ProductKernel):
        kw = {**kw, "x_prompts": px, "y_prompts": py}
    return kernel, kw


# --- gradient: closed form vs autograd vs finite differences -------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}-n{c[1]}-m{c[2]}-S{'x'.join(map(str, c[3]))}")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_mmd2_grad_matches_autograd_and_finite_differences(name, estimator, weighted, case):
    seed, n, m, shape = case
    x, y, kw, px, py = _data(seed, n, m, shape, weighted)
    kernel, kw = _setup(name, x, y, px, py, kw)
    closed = mmd2_grad(x, y, kernel, estimator=estimator, **kw)
    auto = mmd2_grad_autograd(x, y, kernel, estimator=estimator, **kw)
    # The median bandwidth is a constant of the gradient: fix it from (x, y) before differencing.
    fixed = kernel.resolve(x.reshape(n, -1), y.reshape(m, -1))
    fd = central_fd(lambda xx: mmd2(xx, y, fixed, estimator=estimator, **kw), x)
    assert closed.shape == x.shape and closed.dtype == torch.float64
    assert rel_err(closed, auto) <= 1e-9
    assert rel_err(closed, fd) <= 1e-6


def test_mmd2_grad_float32_close_to_float64():
    x, y, _, _, _ = _data(3, 16, 40, (8,), False)
    k = GaussianKernel(bandwidth=2.0)
    g64 = mmd2_grad(x, y, k)
    g32 = mmd2_grad(x.float(), y.float(), k)
    assert g32.dtype == torch.float32
    assert rel_err(g32.double(), g64) <= 1e-4


def test_gaussian_gradient_is_eq6_written_out():
    # Eq. 6 with the paper's weights 1/B and 1/N_r, by explicit loops.
    x, y, _, _, _ = _data(4, 3, 4, (2,), False)
    s = 0.8
    B, N = len(x), len(y)

    def g1(u, v):
        return math.exp(-float(((u - v) ** 2).sum()) / (2 * s * s)) * (v - u) / s**2

    ref = torch.stack([2 / B**2 * sum(g1(x[i], x[j]) for j in range(B))
                       - 2 / (B * N) * sum(g1(x[i], y[j]) for j in range(N)) for i in range(B)])
    assert torch.allclose(mmd2_grad(x, y, GaussianKernel(s)), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_gradient_finite_when_points_coincide(name, estimator):
    x, y, _, px, py = _data(5, 4, 5, (3,), False)
    x[1] = x[0]  # zero distance between two generated points
    y[2] = x[0]  # and between a generated point and a reference
    kernel, kw = _setup(name, x, y, px, py, {})
    g = mmd2_grad(x, y, kernel, estimator=estimator, **kw)
    assert bool(torch.isfinite(g).all())
    assert rel_err(g, mmd2_grad_autograd(x, y, kernel, estimator=estimator, **kw)) <= 1e-8


# --- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_biased_mmd_zero_on_identical_sets_and_never_negative(name):
    kernel = build_kernel(name)
    for seed in range(15):
        g = torch.Generator().manual_seed(100 + seed)
        n, m, d = 2 + seed % 5, 3 + (seed * 7) % 6, 1 + seed % 4
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randn(m, d, generator=g, dtype=torch.float64) * (0.5 + seed / 10) + seed % 3
        px, py = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(m, 2, generator=g, dtype=torch.float64)
        wx = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        kw_xy = {"x_prompts": px, "y_prompts": py} if isinstance(kernel, ProductKernel) else {}
        kw_xx = {"x_prompts": px, "y_prompts": px} if isinstance(kernel, ProductKernel) else {}
        assert float(mmd2(x, y, kernel, **kw_xy)) >= -1e-12
        assert float(mmd2(x, y, kernel, x_weights=wx, **kw_xy)) >= -1e-12
        assert abs(float(mmd2(x, x, kernel, **kw_xx))) <= 1e-12
        assert abs(float(mmd2(x, x, kernel, x_weights=wx, y_weights=wx, **kw_xx))) <= 1e-12


def _gaussian_population_mmd2(sigma: float, d: int, shift: float) -> tuple[float, float]:
    """Closed form for P = N(0, I_d), Q = N(mu, I_d), |mu| = shift, Gaussian kernel:
    E k(z, z') over z - z' ~ N(m, 2 I) is (s^2 / (s^2 + 2))^(d/2) exp(-|m|^2 / (2 (s^2 + 2)))."""
    c = (sigma**2 / (sigma**2 + 2)) ** (d / 2)
    e_same, e_cross = c, c * math.exp(-shift**2 / (2 * (sigma**2 + 2)))
    return 2 * e_same - 2 * e_cross, e_same


def test_population_formula_agrees_with_a_huge_sample():
    pop, _ = _gaussian_population_mmd2(1.0, 2, 1.0)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3000, 2, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    est = float(mmd2(x, y, GaussianKernel(1.0), estimator="unbiased", chunk_size=1000))
    assert est == pytest.approx(pop, abs=0.01)


def test_unbiased_estimator_is_unbiased_and_biased_one_is_not():
    sigma, d, shift, n, m, draws = 1.0, 2, 1.0, 5, 5, 3000
    pop, e_same = _gaussian_population_mmd2(sigma, d, shift)
    k = GaussianKernel(sigma)
    g = torch.Generator().manual_seed(12)
    mu = torch.tensor([shift, 0.0], dtype=torch.float64)
    wx = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5], dtype=torch.float64)  # fixed design weights
    est = {"unbiased": [], "biased": [], "unbiased_weighted": []}
    for _ in range(draws):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randn(m, d, generator=g, dtype=torch.float64) + mu
        est["unbiased"].append(float(mmd2(x, y, k, estimator="unbiased")))
        est["biased"].append(float(mmd2(x, y, k, estimator="biased")))
        est["unbiased_weighted"].append(float(mmd2(x, y, k, estimator="unbiased", x_weights=wx)))
    for key in ("unbiased", "unbiased_weighted"):
        v = torch.tensor(est[key])
        se = float(v.std() / math.sqrt(draws))
        assert abs(float(v.mean()) - pop) <= 4 * se, (key, float(v.mean()), pop, se)
    vb = torch.tensor(est["biased"])
    se_b = float(vb.std() / math.sqrt(draws))
    bias = float(vb.mean()) - pop
    expected_bias = (1 - e_same) / n + (1 - e_same) / m  # the diagonal k(z, z) = 1 terms
    assert bias > 10 * se_b  # a visible bias
    assert abs(bias - expected_bias) <= 4 * se_b


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", ["gaussian_median", "polynomial", "callable", "product"])
def test_chunked_equals_unchunked(name, estimator, weighted):
    x, y, kw, px, py = _data(6, 6, 11, (3,), weighted)
    kernel, kw = _setup(name, x, y, px, py, kw)
    v0 = mmd2(x, y, kernel, estimator=estimator, **kw)
    g0 = mmd2_grad(x, y, kernel, estimator=estimator, **kw)
    for cs in (1, 7, len(y)):
        v = mmd2(x, y, kernel, estimator=estimator, chunk_size=cs, **kw)
        g = mmd2_grad(x, y, kernel, estimator=estimator, chunk_size=cs, **kw)
        assert float(v) == pytest.approx(float(v0), rel=1e-12, abs=1e-14)
        assert rel_err(g, g0) <= 1e-12


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("sample", ["gaussian_fixed", "gaussian_median", "polynomial"])
def test_product_kernel_with_identical_prompts_equals_sample_kernel(sample, estimator):
    x, y, kw, _, _ = _data(7, 5, 8, (4,), True)
    kz = build_kernel(sample)
    prompt = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    px, py = prompt.expand(5, 3).clone(), prompt.expand(8, 3).clone()
    for kp in (GaussianKernel(), GaussianKernel(0.3)):
        prod = ProductKernel(kp, kz)
        pkw = {**kw, "x_prompts": px, "y_prompts": py}
        assert float(mmd2(x, y, prod, estimator=estimator, **pkw)) == pytest.approx(
            float(mmd2(x, y, kz, estimator=estimator, **kw)), rel=1e-12)
        assert rel_err(mmd2_grad(x, y, prod, estimator=estimator, **pkw),
                       mmd2_grad(x, y, kz, estimator=estimator, **kw)) <= 1e-12


def test_prompt_kernel_weights_references_by_prompt_similarity():
    # Eq. 11: a reference with an orthogonal prompt (k_p ~ 0) exerts (almost) no pull.
    x = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    px = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    py = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g = mmd2_grad(x, y, ProductKernel(GaussianKernel(0.1), GaussianKernel(1.0)), x_prompts=px, y_prompts=py)
    assert g[0, 0] < 0 and abs(float(g[0, 1])) < 1e-12 * abs(float(g[0, 0]))  # pulled only toward y[0]



def test_unusable_prompt_features_are_named_by_argument():
    """A zero or one-feature row of x_prompts or y_prompts was refused as 'prompt features ...',
    leaving open which of the two sets held it."""
    pk = ProductKernel(GaussianKernel(0.3), GaussianKernel(1.0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, generator=g), torch.randn(5, 2, generator=g)
    px, py = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    zx = px.clone()
    zx[1] = 0.0
    for fn in (mmd2, mmd2_grad):
        with pytest.raises(ValueError, match=r"^x_prompts must be non-zero vectors.*row\(s\) \[1\]"):
            fn(x, y, pk, x_prompts=zx, y_prompts=py)
        with pytest.raises(ValueError, match=r"^y_prompts must be non-zero vectors.*row\(s\) \[0, 1, 2, 3, 4\]"):
            fn(x, y, pk, x_prompts=px, y_prompts=torch.zeros(5, 3))
        with pytest.raises(ValueError, match=r"^x_prompts have 1 feature per prompt"):
            fn(x, y, pk, x_prompts=px[:, :1], y_prompts=py[:, :1])

# --- witness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_witness_equals_brute_force_loop(weighted):
    x, y, kw, _, _ = _data(8, 6, 9, (3,), weighted)
    t = torch.randn(7, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    s = 1.1
    wx = kw.get("x_weights", torch.ones(6, dtype=torch.float64))
    wy = kw.get("y_weights", torch.ones(9, dtype=torch.float64))
    wx, wy = (wx / wx.sum()).tolist(), (wy / wy.sum()).tolist()

    def k(a, b):
        return math.exp(-sum((float(ai) - float(bi)) ** 2 for ai, bi in zip(a, b)) / (2 * s * s))

    ref = [sum(wx[i] * k(tt, x[i]) for i in range(6)) - sum(wy[j] * k(tt, y[j]) for j in range(9)) for tt in t]
    got = witness(t, x, y, GaussianKernel(s), **kw)
    assert got.shape == (7,)
    assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_witness_matches_polynomial_kernel_loop():
    x, y, _, _, _ = _data(10, 4, 5, (2,), False)
    t = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def k(a, b):
        return (float(a @ b) / 2 + 1) ** 3

    ref = [sum(k(tt, xi) for xi in x) / 4 - sum(k(tt, yj) for yj in y) / 5 for tt in t]
    assert torch.allclose(witness(t, x, y, PolynomialKernel()), torch.tensor(ref, dtype=torch.float64), rtol=1e-12)


# --- permutation test --------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_permutation_test_keeps_nominal_false_positive_rate(estimator):
    reps, level, n_perm = 200, 0.05, 99
    rejections = 0
    for r in range(reps):
        g = torch.Generator().manual_seed(1000 + r)
        x = torch.randn(12, 2, generator=g, dtype=torch.float64)
        y = torch.randn(12, 2, generator=g, dtype=torch.float64)  # same distribution: H0 holds
        res = permutation_test(x, y, GaussianKernel(), n_permutations=n_perm, estimator=estimator, seed=r)
        assert 0 < res.p_value <= 1 and res.null.shape == (n_perm,)
        rejections += res.p_value <= level
    # With 99 permutations, P(p <= 0.05) = 5/100 exactly under H0; 99.9 % binomial band.
    lo, hi = binom.interval(0.999, reps, 0.05)
    assert lo <= rejections <= hi, (rejections, lo, hi)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_permutation_test_detects_mean_shift(estimator):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    res = permutation_test(x, y, GaussianKernel(), n_permutations=500, estimator=estimator, seed=0)
    assert res.p_value < 0.01
    assert res.statistic == pytest.approx(float(mmd2(x, y, GaussianKernel(), estimator=estimator)), rel=1e-10)


def test_permutation_test_is_reproducible():
    x, y, _, _, _ = _data(12, 10, 10, (2,), False)
    a = permutation_test(x, y, GaussianKernel(1.0), n_permutations=50, seed=5)
    b = permutation_test(x, y, GaussianKernel(1.0), n_permutations=50, seed=5)
    assert a.p_value == b.p_value and torch.equal(a.null, b.null)


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e3])
def test_imq_float32_gradient_holds_when_c_is_far_below_the_spacing(scale):
    # the i = i repulsion pairs weigh most for c << spacing; they add exactly 0, but left in they
    # cancelled the float32 result away (63 % off at 1e2, 130 % at 1e3, against float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g) * scale
    y = torch.randn(20, 8, generator=g) * scale + 0.5 * scale
    k = InverseMultiquadricKernel()
    for est in ("biased", "unbiased"):
        g32, g64 = mmd2_grad(x, y, k, estimator=est), mmd2_grad(x.double(), y.double(), k, estimator=est)
        assert g32.dtype == torch.float32
        assert float((g32.double() - g64).norm() / g64.norm()) < 1e-5
    oracle = mmd2_grad_autograd(x.double(), y.double(), k)  # the float64 path against autograd (whose
    # own squared-distance expansion loses ~1e-6 at 1e3)
    assert float((mmd2_grad(x.double(), y.double(), k) - oracle).norm() / oracle.norm()) < 1e-5


def test_unbiased_estimator_needs_two_weighted_points_per_set():
    # all weight on one point: 1 - sum w^2 = 0 made a 0/0, reported as a kernel overflow
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    for kw, name in ((dict(x_weights=torch.eye(7, dtype=torch.float64)[0]), "x_weights"),
                     (dict(y_weights=torch.eye(5, dtype=torch.float64)[2]), "y_weights")):
        for fn in (mmd2, mmd2_grad):
            with pytest.raises(ValueError, match=f"estimator='unbiased' needs at least 2 positive {name}.*got 1 positive"):
                fn(x, y, GaussianKernel(bandwidth=1.0), estimator="unbiased", **kw)
    w = torch.zeros(7, dtype=torch.float64)
    w[:2] = 1.0  # two points are enough, and the biased estimator takes one
    assert torch.isfinite(mmd2(x, y, GaussianKernel(bandwidth=1.0), estimator="unbiased", x_weights=w))
    assert torch.isfinite(mmd2(x, y, GaussianKernel(bandwidth=1.0), x_weights=torch.eye(7, dtype=torch.float64)[0]))


@pytest.mark.parametrize("fn", [mmd2, mmd2_grad], ids=["mmd2", "mmd2_grad"])
def test_a_callable_kernel_returning_nan_is_named_not_blamed_on_the_data(fn):
    """A CallableKernel whose fn returns NaN was reported as 'the data overflow this kernel; rescale
    them, or use a Gaussian kernel': the advice pointed away from the user's function."""
    from mmdg_lite.kernels import CallableKernel

    x, y = torch.randn(4, 3), torch.randn(5, 3)
    k = CallableKernel(lambda a, b: (a @ b.T) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"the kernel's fn\(x, y\) returned NaN/Inf for these points") as err:
        fn(x, y, k)
    assert "use a Gaussian kernel" not in str(err.value)


@pytest.mark.parametrize("call", ["mmd2", "mmd2_grad", "witness", "kernel"])
def test_image_sets_of_another_layout_are_refused(call):
    """Both sets image-shaped with the same size but another layout (channels-last points against
    channels-first references) were flattened and compared pixel by unrelated pixel, silently."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 2, 3, generator=g), torch.randn(5, 1, 2, 3, generator=g)
    xl, k = x.permute(0, 2, 3, 1), GaussianKernel(1.0)
    calls = {"mmd2": lambda: mmd2(xl, y, k), "mmd2_grad": lambda: mmd2_grad(xl, y, k),
             "witness": lambda: witness(xl, x, y, k), "kernel": lambda: k(xl, y)}
    with pytest.raises(ValueError, match=r"has per-point shape \(2, 3, 1\) but .* has \(1, 2, 3\) .*share one layout"):
        calls[call]()
    assert mmd2_grad(x.reshape(4, 6), y, k).shape == (4, 6)  # a flat set against an image-shaped one is fine


@pytest.mark.parametrize("scale", [1e2, 1e3])
def test_imq_float32_gradient_holds_with_duplicate_points(scale):
    # a duplicate pair (two generated points, or a generated point and a reference) weighs most of
    # its row for c far below the spacing; its zero displacement cancelled the float32 result away
    # like the i = i pairs did (1e2: 10 % off, 1e3: 38 %)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g) * scale
    y = torch.randn(20, 8, generator=g) * scale + 0.5 * scale
    x[1] = x[0]  # within the batch (the repulsion)
    y[0] = x[2]  # between the batch and the references (the attraction)
    k = InverseMultiquadricKernel()
    for est in ("biased", "unbiased"):
        g32, g64 = mmd2_grad(x, y, k, estimator=est), mmd2_grad(x.double(), y.double(), k, estimator=est)
        assert float((g32.double() - g64).norm() / g64.norm()) < 1e-5
        oracle = mmd2_grad_autograd(x.double(), y.double(), k, estimator=est)
        assert float((g64 - oracle).norm() / oracle.norm()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autograd_oracle_differentiates_half_inputs_in_float32(dtype):
    # mmd2_grad computes half-precision inputs in float32; the oracle returned its gradient rounded
    # to the input's half dtype (1e-3 off in float16, 1e-2 in bfloat16), so it could not check it
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g).to(dtype), torch.randn(9, 4, generator=g).to(dtype)
    for kernel in (GaussianKernel(bandwidth=1.0), PolynomialKernel()):
        auto, closed = mmd2_grad_autograd(x, y, kernel), mmd2_grad(x, y, kernel)
        assert auto.dtype == closed.dtype == torch.float32
        oracle = mmd2_grad_autograd(x.double(), y.double(), kernel)  # the same rounded points in float64
        assert rel_err(auto.double(), oracle) <= 1e-5 and rel_err(closed.double(), oracle) <= 1e-5


def test_permutation_test_with_a_network_kernel_keeps_no_graph():
    # a FeatureKernel's Gram matrix carried the network's autograd graph into every statistic, so
    # ``null`` held it (and the whole pooled Gram matrix) alive, and float() of it warned
    from mmdg_lite.kernels import FeatureKernel
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 4, generator=g), torch.randn(12, 4, generator=g)
    net = torch.nn.Linear(4, 3)
    res = permutation_test(x, y, FeatureKernel(net, (4,), GaussianKernel(bandwidth=1.0)), n_permutations=20)
    assert not res.null.requires_grad
    with torch.no_grad():
        same = permutation_test(x, y, FeatureKernel(net, (4,), GaussianKernel(bandwidth=1.0)), n_permutations=20)
    assert torch.equal(res.null, same.null) and res.p_value == same.p_value


def _split_statistics(z: torch.Tensor, estimator: str) -> dict[tuple[int, ...], float]:
    """Brute-force MMD^2 of every split of z into two halves (Gaussian kernel, bandwidth 1), one
    value per split: the half holding point 0 comes first, so a split and its mirror agree."""
    import itertools
    pts = z.double().tolist()
    N = len(pts)
    K = [[math.exp(-sum((a - b) ** 2 for a, b in zip(p, q)) / 2) for q in pts] for p in pts]

    def within(s):
        total = sum(K[i][j] for i in s for j in s if estimator == "biased" or i != j)
        return total / (len(s) ** 2 if estimator == "biased" else len(s) * (len(s) - 1))

    out = {}
    for a in itertools.combinations(range(N), N // 2):
        if 0 in a:
            b = [i for i in range(N) if i not in a]
            out[a] = within(a) + within(b) - 2 * sum(K[i][j] for i in a for j in b) / (len(a) * len(b))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_permutation_test_p_value_matches_exact_enumeration_of_splits(estimator, dtype):
    # a relabelling that re-creates the observed split (or its mirror) sums the same Gram entries in
    # another order; rounding put most of them just below the statistic, so they were not counted
    # and the p-value came out ~10x too small (0.002 for an exact 0.022: anti-conservative)
    g = torch.Generator().manual_seed(0)
    x = (0.3 * torch.randn(4, 2, generator=g, dtype=torch.float64)).to(dtype)
    y = (2 + 0.3 * torch.randn(4, 2, generator=g, dtype=torch.float64)).to(dtype)
    res = permutation_test(x, y, GaussianKernel(1.0), n_permutations=1000, estimator=estimator, seed=0)
    stats = _split_statistics(torch.cat([x, y]), estimator)  # the 35 splits, by exact enumeration
    values = sorted(set(stats.values()))
    observed = stats[(0, 1, 2, 3)]
    assert observed == values[-1] and min(b - a for a, b in zip(values, values[1:])) > 1e-6
    # each null value is one split's statistic up to rounding: name it, and count the splits >= observed
    splits = [min(values, key=lambda v: abs(v - s)) for s in res.null.tolist()]
    assert max(abs(v - s) for v, s in zip(splits, res.null.tolist())) < 1e-5
    assert res.p_value == (1 + sum(v >= observed for v in splits)) / 1001
    assert abs(res.statistic - observed) < 1e-5


@pytest.mark.parametrize("kernel", [GaussianKernel(1.1), PolynomialKernel(), InverseMultiquadricKernel()],
                         ids=["gaussian", "cubic", "imq"])
def test_witness_at_float64_points_of_float32_sets(kernel):
    # a float64 grid (numpy's meshgrid) over float32 samples raised torch's 'expected m1 and m2 to
    # have the same dtype' / 'addmv input tensors must have the same dtype': only the points were promoted
    x, y, kw, _, _ = _data(8, 6, 9, (3,), True)
    t = torch.randn(7, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x32, y32 = x.float(), y.float()
    kw32 = {k: v.float() for k, v in kw.items()}
    got = witness(t, x32, y32, kernel, **kw32)
    oracle = witness(t, x32.double(), y32.double(), kernel, **kw32)  # the same float32 values, in float64
    assert got.dtype == torch.float64 and torch.equal(got, oracle)


def test_permutation_test_refuses_a_gram_matrix_that_is_not_finite():
    # the cubic kernel overflows at this scale: every statistic was NaN, NaN >= NaN is False, and
    # the p-value came back as its minimum 1 / (1 + n_permutations), a "significant" difference
    from mmdg_lite.kernels import CallableKernel
    g = torch.Generator().manual_seed(0)
    x, y = 1e120 * torch.randn(10, 3, generator=g, dtype=torch.float64), 1e120 * torch.randn(10, 3, generator=g,
                                                                                               dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="not finite.*PolynomialKernel.*rescale"):
        mmd2(x, y, PolynomialKernel(), estimator="unbiased")  # what mmd2 says of the same data
    with pytest.raises(FloatingPointError, match="Gram matrix is not finite.*PolynomialKernel.*rescale"):
        permutation_test(x, y, PolynomialKernel(), n_permutations=99)
    with pytest.raises(FloatingPointError, match="fn\\(x, y\\) returned NaN"):
        permutation_test(x / 1e120, y / 1e120, CallableKernel(lambda a, b: (a @ b.T).sqrt()), n_permutations=9)


def test_witness_on_a_fine_grid_builds_bounded_gram_blocks_and_equals_the_whole_grid(monkeypatch):
    # witness built the whole (T, N) Gram matrix: a 1000 x 1000 plotting grid against 1,000 samples asked for
    # 4 GB (and three times that in temporaries); it now evaluates blocks of points
    import mmdg_lite.mmd as mmd_mod
    g = torch.Generator().manual_seed(3)
    x, y, t = torch.randn(40, 2, generator=g), torch.randn(30, 2, generator=g) + 1, torch.randn(101, 2, generator=g)
    k = GaussianKernel(0.8)
    whole = witness(t, x, y, k)
    brute = torch.stack([torch.exp(-((ti - x) ** 2).sum(1) / (2 * 0.64)).mean()
                         - torch.exp(-((ti - y) ** 2).sum(1) / (2 * 0.64)).mean() for ti in t])
    torch.testing.assert_close(whole, brute)
    sizes = []
    gram = GaussianKernel.gram
    monkeypatch.setattr(GaussianKernel, "gram", lambda self, a, b: sizes.append(a.shape[0] * b.shape[0])
                        or gram(self, a, b))
    monkeypatch.setattr(mmd_mod, "WITNESS_GRAM_ENTRIES", 400)  # 10 points per block against 40 samples
    torch.testing.assert_close(witness(t, x, y, k), brute)
    assert max(sizes) <= 400 and len(sizes) == 2 * 11


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("which", ["gaussian", "imq", "product"])
def test_gradient_repulsion_of_a_large_batch_runs_in_blocks_of_chunk_size(monkeypatch, estimator, which):
    # chunk_size bounded only the references: the repulsion among n generated points was one (n, n)
    # weight and Gram matrix at any chunk_size (B = 8,192, D = 4: 780 MB in mmd2_grad; 19 MB now
    # with chunk_size=64). Rows now go in blocks; the gradient is autograd's to rounding.
    import mmdg_lite.mmd as mmd_module
    g = torch.Generator().manual_seed(3)
    n, m, cs = 23, 9, 5
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(m, 2, generator=g, dtype=torch.float64)
    kw = dict(estimator=estimator, x_weights=0.2 + torch.rand(n, generator=g, dtype=torch.float64),
              y_weights=0.2 + torch.rand(m, generator=g, dtype=torch.float64))
    kernel = {"gaussian": GaussianKernel(0.8), "imq": InverseMultiquadricKernel(0.5),
              "product": ProductKernel(GaussianKernel(0.7), GaussianKernel(0.8))}[which]
    if which == "product":
        kw.update(x_prompts=torch.randn(n, 3, generator=g, dtype=torch.float64),
                  y_prompts=torch.randn(m, 3, generator=g, dtype=torch.float64))
    sizes = []
    gradw = mmd_module._gradw
    monkeypatch.setattr(mmd_module, "_gradw",
                        lambda p, a, b, w, pa, pb: sizes.append(w.numel()) or gradw(p, a, b, w, pa, pb))
    got = mmd2_grad(x, y, kernel, chunk_size=cs, **kw)
    assert max(sizes) <= cs * n < n * n
    assert rel_err(got, mmd2_grad_autograd(x, y, kernel, **kw)) < 1e-12
    if which == "product":  # the conditional weighting's factors, per block of rows
        p = mmd_module._prepare(x, y, kernel, estimator, kw["x_weights"], kw["y_weights"], kw["x_prompts"],
                                kw["y_prompts"])
        whole = mmd_module._grad(p, estimator, None, "conditional")
        assert rel_err(mmd_module._grad(p, estimator, cs, "conditional"), whole) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_half_precision_weights_are_normalised_like_the_same_weights_in_float64(dtype, estimator):
    # weights were normalised in their own dtype: bfloat16 thirds summed to 1.002 (float16 to 0.9998), so
    # MMD^2 and its gradient were off by that factor's rounding. Oracle: the same (exact) values in float64
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(3, 2, generator=g), 0.5 + torch.randn(4, 2, generator=g)
    wx, wy = torch.tensor([1.0, 1.0, 1.0], dtype=dtype), torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=dtype)
    kernel = GaussianKernel(0.9)
    for f in (mmd2, mmd2_grad):
        got = f(x, y, kernel, estimator=estimator, x_weights=wx, y_weights=wy)
        want = f(x.double(), y.double(), kernel, estimator=estimator, x_weights=wx.double(), y_weights=wy.double())
        assert rel_err(got.double(), want) < 1e-6


@pytest.mark.parametrize("weights", [torch.full((3,), 6e4, dtype=torch.float16), torch.full((3,), 3e38)],
                         ids=["float16", "float32"])
def test_weights_whose_sum_overflows_their_dtype_are_still_normalised(weights):
    # three float16 weights of 60,000 sum past 65,504 (inf): every normalised weight became 0, so MMD^2
    # lost the x-x and x-y terms and the gradient was 0, silently. Equal weights mean uniform ones.
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(3, 2, generator=g), 0.5 + torch.randn(4, 2, generator=g)
    kernel = GaussianKernel(0.9)
    for f in (mmd2, mmd2_grad):
        assert rel_err(f(x, y, kernel, x_weights=weights), f(x, y, kernel)) < 1e-6


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mmd2_is_differentiable_in_its_unnormalised_weights(estimator):
    # the weights were divided by their sum as a Python float: autograd saw w / const, so d MMD^2 / d w
    # missed the normalisation (every entry off by the same shift) and torch warned about float() of
    # a tensor that requires grad. Oracle: central finite differences in float64
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(4, 2, generator=g, dtype=torch.float64), 1 + torch.randn(5, 2, generator=g, dtype=torch.float64)
    wx0 = 0.5 + torch.rand(4, generator=g, dtype=torch.float64)
    wy0 = 0.5 + torch.rand(5, generator=g, dtype=torch.float64)
    kernel = GaussianKernel(1.0)
    wx, wy = wx0.clone().requires_grad_(True), wy0.clone().requires_grad_(True)
    got = torch.autograd.grad(mmd2(x, y, kernel, estimator=estimator, x_weights=wx, y_weights=wy), (wx, wy))
    for w0, grad, name in ((wx0, got[0], "x_weights"), (wy0, got[1], "y_weights")):
        def f(w):
            other = {"x_weights": wx0, "y_weights": wy0, name: w}
            return mmd2(x, y, kernel, estimator=estimator, **other)
        assert rel_err(grad, central_fd(f, w0)) < 1e-6


@pytest.mark.parametrize("f", [mmd2, mmd2_grad])
def test_unbiased_estimator_names_weights_that_leave_its_normaliser_to_rounding(f):
    # 1 - sum w^2 for weights (1, 1e-8, 1e-8) rounds to 0 in float32: MMD^2 came out inf and the error
    # blamed 'the points and bandwidths'; at (1, 1e-6, 1e-6) the value was 3 % off float64's, silently
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(3, 2, generator=g), torch.randn(4, 2, generator=g)
    for tiny in (1e-8, 1e-6):
        with pytest.raises(ValueError, match=r"x_weights.*one point holds almost all.*float64 points"):
            f(x, y, GaussianKernel(1.0), estimator="unbiased", x_weights=torch.tensor([1.0, tiny, tiny]))
    w = torch.tensor([1.0, 1e-6, 1e-6], dtype=torch.float64)  # float64 keeps it: close to autograd's oracle
    got = f(x.double(), y.double(), GaussianKernel(1.0), estimator="unbiased", x_weights=w)
    if f is mmd2_grad:
        assert rel_err(got, mmd2_grad_autograd(x.double(), y.double(), GaussianKernel(1.0), estimator="unbiased",
                                               x_weights=w)) < 1e-9


def test_mmd2_grad_is_differentiable_in_weights_that_require_grad_without_warnings():
    # the closed-form gradient keeps the weights' graph (e.g. to tune reference weights through a guided
    # step), but its finiteness check read float() of that tensor and torch warned at every call.
    # Oracle for the graph: central finite differences of the same functional in float64
    import warnings
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    v = torch.randn(4, 2, generator=g, dtype=torch.float64)
    wy0 = 0.5 + torch.rand(5, generator=g, dtype=torch.float64)
    kernel = GaussianKernel(1.0)
    wy = wy0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (got,) = torch.autograd.grad((mmd2_grad(x, y, kernel, y_weights=wy) * v).sum(), wy)
    fd = central_fd(lambda w: (mmd2_grad(x, y, kernel, y_weights=w) * v).sum(), wy0)
    assert rel_err(got, fd) < 1e-6

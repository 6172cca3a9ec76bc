"""Metrics against independent oracles (scipy sqrtm, brute-force loops, sklearn, numpy eigen)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from mmdg_lite.metrics import (DensityCoverage, KIDResult, attribute_rate, attribute_rates,
                               density_coverage, frechet_distance, kernel_distance,
                               mode_assignment, mode_proportions, off_mode_fraction, off_mode_quantile,
                               off_mode_radius, rke, rrke, total_variation, vendi_score)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- Frechet distance

def fd_sqrtm(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(sx @ sy)
    return float(((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * np.real(root)))


@pytest.mark.parametrize("n,m,d", [(40, 50, 5), (8, 9, 12), (30, 30, 30), (200, 150, 3), (5, 100, 8)])
def test_fd_matches_sqrtm(n, m, d):
    # (8, 9, 12), (30, 30, 30): (n, m) SVD route; others: (D, D) eigen route ((5, 100, 8): singular S_x)
    r = rng(n + d)
    x = r.normal(size=(n, d)) @ r.normal(size=(d, d))
    y = r.normal(size=(m, d)) * 2 + 0.5
    assert frechet_distance(x, y) == pytest.approx(fd_sqrtm(x, y), rel=1e-6, abs=1e-8)


def test_fd_identical_and_symmetric_and_input_types():
    x = rng(1).normal(size=(20, 6))
    y = rng(2).normal(size=(25, 6)) + 1
    assert abs(frechet_distance(x, x)) < 1e-9
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    assert frechet_distance(torch.tensor(x), y) == pytest.approx(frechet_distance(x, y))
    assert frechet_distance(torch.tensor(x, dtype=torch.float32), y) == pytest.approx(
        frechet_distance(x, y), rel=1e-5)
    # identical singular sets (n < D): still ~0, no NaN
    z = rng(3).normal(size=(5, 40))
    assert abs(frechet_distance(z, z)) < 1e-8


def test_fd_gaussian_shift():
    r, d = rng(4), 4
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    x = r.normal(size=(20000, d))
    y = r.normal(size=(20000, d)) + shift
    assert frechet_distance(x, y) == pytest.approx((shift**2).sum(), abs=0.05)


# ---------------------------------------------------------------- kernel distance

def kid_bruteforce(x: np.ndarray, y: np.ndarray) -> float:
    n, m, d = len(x), len(y), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_kid_single_subset_equals_bruteforce():
    r = rng(5)
    x, y = r.normal(size=(15, 3)), r.normal(size=(15, 3)) + 0.7
    res = kernel_distance(x, y, subset_size=15, n_subsets=1)
    assert isinstance(res, KIDResult) and res.subset_size == 15 and res.n_subsets == 1
    assert res.mean == pytest.approx(kid_bruteforce(x, y), rel=1e-9)
    # every subset is the whole set when subset_size = n = m: std 0
    many = kernel_distance(x, y, subset_size=15, n_subsets=20)
    assert many.mean == pytest.approx(res.mean, rel=1e-9) and many.std < 1e-9


def test_kid_small_sets_subsets_and_seed():
    r = rng(6)
    x, y = r.normal(size=(10, 4)), r.normal(size=(12, 4))
    res = kernel_distance(x, y)  # default subset size clamps to min(1000, 10, 12)
    assert res.subset_size == 10 and res.std > 0
    assert kernel_distance(x, y, seed=3) == kernel_distance(x, y, seed=3)
    subsets = kernel_distance(x, y, subset_size=5, n_subsets=50)
    assert subsets.subset_size == 5 and math.isfinite(subsets.mean)


def test_kid_near_zero_same_distribution_and_positive_when_shifted():
    r = rng(7)
    x, y = r.normal(size=(400, 8)), r.normal(size=(400, 8))
    same = kernel_distance(x, y, subset_size=200, n_subsets=20)
    shifted = kernel_distance(x, y + 1.0, subset_size=200, n_subsets=20)
    assert abs(same.mean) < 0.02 and shifted.mean > 0.3


# ---------------------------------------------------------------- density and coverage

def dc_bruteforce(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    dist = lambda a, b: math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))  # noqa: E731
    radii = []
    for i, a in enumerate(real):
        ds = sorted(dist(a, b) for j, b in enumerate(real) if j != i)
        radii.append(ds[k - 1])
    inside = sum(dist(f, real[i]) < radii[i] for f in fake for i in range(len(real)))
    covered = sum(any(dist(f, real[i]) < radii[i] for f in fake) for i in range(len(real)))
    return inside / (k * len(fake)), covered / len(real)


def dc_sklearn(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    radii = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, -1]
    d_rf = NearestNeighbors(n_neighbors=len(real)).fit(real).kneighbors(fake)  # sorted per fake
    inside = np.zeros((len(fake), len(real)), bool)
    for j, (ds, idx) in enumerate(zip(*d_rf)):
        inside[j, idx] = ds < radii[idx]
    nearest_fake = NearestNeighbors(n_neighbors=1).fit(fake).kneighbors(real)[0][:, 0]
    return inside.sum() / (k * len(fake)), float((nearest_fake < radii).mean())


@pytest.mark.parametrize("seed,n,m,d,k", [(0, 20, 15, 3, 3), (1, 12, 30, 2, 1), (2, 25, 25, 5, 5)])
def test_density_coverage_oracles(seed, n, m, d, k):
    r = rng(seed)
    real, fake = r.normal(size=(n, d)), r.normal(size=(m, d)) * 1.3 + 0.3
    res = density_coverage(real, fake, k=k)
    assert isinstance(res, DensityCoverage)
    for dens, cov in (dc_bruteforce(real, fake, k), dc_sklearn(real, fake, k)):
        assert res.density == pytest.approx(dens, abs=1e-12)
        assert res.coverage == pytest.approx(cov, abs=1e-12)
    chunked = density_coverage(torch.tensor(real), torch.tensor(fake), k=k, chunk_size=4)
    assert chunked == res


def test_density_coverage_extremes():
    r = rng(8)
    real = r.normal(size=(100, 3))
    far = density_coverage(real, real + 100.0, k=3)
    assert far.density == 0.0 and far.coverage == 0.0
    near = density_coverage(real, r.normal(size=(2000, 3)), k=5)
    assert near.coverage > 0.9 and 0.7 < near.density < 1.3


# ---------------------------------------------------------------- RKE, RRKE, Vendi

def clusters(n_modes: int, per: int, d: int = 3, spread: float = 0.01, sep: float = 20.0,
             seed: int = 9) -> np.ndarray:
    r = rng(seed)
    centres = r.normal(size=(n_modes, d)) * sep
    return np.concatenate([c + spread * r.normal(size=(per, d)) for c in centres])


def gauss_gram(a: np.ndarray, b: np.ndarray, bw: float) -> np.ndarray:
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * bw**2))


@pytest.mark.parametrize("n_modes", [1, 3, 6])
def test_rke_and_vendi_count_separated_modes(n_modes):
    x = clusters(n_modes, 20)  # spread 0.01 << bandwidth 1 << separation ~20
    assert rke(x, bandwidth=1.0) == pytest.approx(n_modes, rel=1e-3)
    # von Neumann entropy feels the tiny within-cluster eigenvalues more than Renyi-2 does
    assert vendi_score(x, kernel="gaussian", bandwidth=1.0) == pytest.approx(n_modes, rel=1e-2)
    assert rke(x, bandwidth=1e4) == pytest.approx(1.0, rel=1e-3)  # huge bandwidth: one mode


def test_rke_and_vendi_vs_numpy():
    r = rng(10)
    x = r.normal(size=(30, 4))
    K = gauss_gram(x, x, 1.5) / len(x)
    assert rke(x, 1.5) == pytest.approx(1 / (K**2).sum(), rel=1e-9)
    lam = np.clip(np.linalg.eigvalsh(K), 0, None)
    lam = lam[lam > 1e-15]
    assert vendi_score(x, "gaussian", 1.5) == pytest.approx(np.exp(-(lam * np.log(lam)).sum()), rel=1e-6)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / len(x)), 0, None)
    lam = lam[lam > 1e-15]
    assert vendi_score(x) == pytest.approx(np.exp(-(lam * np.log(lam)).sum()), rel=1e-6)
    # cosine kernel: parallel vectors count as one, orthogonal ones as n
    assert vendi_score(np.ones((5, 3)) * np.arange(1, 6)[:, None]) == pytest.approx(1.0)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0)


def test_rrke_vs_numpy_and_properties():
    r = rng(11)
    x, y = r.normal(size=(20, 3)), r.normal(size=(25, 3)) + 0.5
    nuclear = np.linalg.svd(gauss_gram(x, y, 2.0) / np.sqrt(20 * 25), compute_uv=False).sum()
    assert rrke(x, y, 2.0) == pytest.approx(-np.log(nuclear**2), rel=1e-9)
    assert rrke(x, x, 2.0) == pytest.approx(0.0, abs=1e-9)
    assert rrke(x, y, 2.0) > 0
    # a generator that covers 2 of 4 reference modes is farther than one covering all 4
    ref = clusters(4, 20, seed=12)
    half = np.concatenate([ref[:40], ref[:40]])
    assert rrke(half, ref, 1.0) > rrke(ref[::-1].copy(), ref, 1.0) + 0.5


# ---------------------------------------------------------------- modes, TV, off-mode, attributes

def test_mode_assignment_and_proportions():
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.array([[0.1, 0.2], [9.0, 1.0], [9.5, -1.0], [1.0, 8.0]])
    assert mode_assignment(x, means).tolist() == [0, 1, 1, 2]
    props = mode_proportions(x, means)
    assert props.tolist() == [0.25, 0.5, 0.25]
    assert mode_proportions(x[:3], means, n_modes=3).tolist() == [1 / 3, 2 / 3, 0.0]


def test_total_variation_hand_cases():
    assert total_variation([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == 1.0
    assert total_variation(np.array([0.2, 0.3, 0.5]), torch.tensor([0.3, 0.3, 0.4])) == pytest.approx(0.1)
    means = np.array([[0.0], [5.0]])
    x = np.array([[0.0], [0.1], [4.9], [0.2]])
    assert total_variation(mode_proportions(x, means), [0.5, 0.5]) == pytest.approx(0.25)


def test_off_mode_fraction_true_samples_and_far_points():
    r, d, n = rng(13), 10, 200_000
    means = np.array([np.zeros(d), np.full(d, 50.0)])
    x = np.concatenate([r.normal(size=(n // 2, d)) * 2.0, 50 + r.normal(size=(n // 2, d)) * 2.0])
    p = 2 * stats.norm.sf(3.0)  # 0.0027
    frac = off_mode_fraction(x, means, std=2.0)
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert off_mode_fraction(x + 1000.0, means, std=2.0) == 1.0
    per_mode = off_mode_fraction(x, means, std=np.array([2.0, 2.0]))
    assert per_mode == frac


def test_off_mode_fraction_one_dimension_is_the_three_sigma_rule():
    means = np.array([[0.0]])
    x = np.array([[2.99], [-2.99], [3.01], [-3.5]])
    assert off_mode_fraction(x, means, std=1.0) == 0.5
    assert off_mode_fraction(x * 2, means, std=2.0, n_std=3.0) == 0.5
    assert off_mode_fraction(x, means, std=1.0, n_std=4.0) == 0.0


def test_attribute_rates():
    assert attribute_rate([1, 0, 1, 1], 1) == 0.75
    assert attribute_rate(torch.tensor([True, False]), True) == 0.5
    assert attribute_rate(np.array(["blond", "black", "blond"]), "red") == 0.0
    assert attribute_rates(["a", "b", "a", "a"]) == {"a": 0.75, "b": 0.25}


# ---------------------------------------------------------------- validation errors

X = np.zeros((10, 3)) + np.arange(30).reshape(10, 3) % 7
Y = X + 1.0
NAN = X.copy()
NAN[2, 1] = np.nan

ERRORS = [
    (lambda: frechet_distance(X, np.zeros((10, 4))), ValueError, "dimension mismatch"),
    (lambda: frechet_distance(X[:1], Y), ValueError, "at least 2"),
    (lambda: frechet_distance(NAN, Y), ValueError, "NaN"),
    (lambda: frechet_distance(np.zeros(5), Y), ValueError, r"shape \(n, D\)"),
    (lambda: frechet_distance(X.astype(int), Y), TypeError, "floating-point"),
    (lambda: frechet_distance([[1.0]], Y), TypeError, "numpy array"),
    (lambda: kernel_distance(X[:1], Y), ValueError, "at least 2 points"),
    (lambda: kernel_distance(X, Y, subset_size=1), ValueError, "subset_size"),
    (lambda: kernel_distance(X, Y, n_subsets=0), ValueError, "n_subsets"),
    (lambda: kernel_distance(np.zeros((0, 3)), Y), ValueError, "at least 1"),
    (lambda: density_coverage(X, Y, k=10), ValueError, "k must be smaller"),
    (lambda: density_coverage(X, Y, k=0), ValueError, "k must be an integer >= 1"),
    (lambda: density_coverage(X, Y, k=2.5), TypeError, "k must be an integer"),
    (lambda: density_coverage(X, NAN), ValueError, "fake contains"),
    (lambda: rke(X, bandwidth=0.0), ValueError, "bandwidth"),
    (lambda: rrke(X, np.zeros((4, 2)), bandwidth=1.0), ValueError, "dimension mismatch"),
    (lambda: vendi_score(X, kernel="rbf"), ValueError, "kernel must be one of"),
    (lambda: vendi_score(X, kernel="gaussian"), ValueError, "needs a bandwidth"),
    (lambda: vendi_score(X, bandwidth=0.5), ValueError, r"kernel=.cosine. has no bandwidth; got bandwidth=0.5"),
    (lambda: vendi_score(np.zeros((3, 2))), ValueError, "all-zero"),
    (lambda: mode_assignment(X, np.zeros((2, 4))), ValueError, "dimension mismatch"),
    (lambda: mode_proportions(X, np.zeros((2, 3)), n_modes=3), ValueError, "n_modes=3"),
    (lambda: total_variation([0.5, 0.5], [0.3, 0.3, 0.4]), ValueError, "same modes"),
    (lambda: total_variation([0.5, 0.6], [0.5, 0.5]), ValueError, "sum to 1"),
    (lambda: total_variation([1.5, -0.5], [0.5, 0.5]), ValueError, "non-negative"),
    (lambda: total_variation([], []), ValueError, "non-empty"),
    (lambda: total_variation([[0.5, 0.5]], [0.5, 0.5]), ValueError, "1-D"),
    (lambda: total_variation([np.nan, 1.0], [0.5, 0.5]), ValueError, "NaN"),
    (lambda: off_mode_fraction(X, np.zeros((2, 3)), std=-1.0), ValueError, "std"),
    (lambda: off_mode_fraction(X, np.zeros((2, 3)), std=np.ones(3)), ValueError, r"shape \(2,\)"),
    (lambda: off_mode_fraction(X, np.zeros((2, 3)), std="1"), TypeError, "std"),
    (lambda: off_mode_fraction(X, np.zeros((2, 3)), std=1.0, n_std=0), ValueError, "n_std"),
    (lambda: off_mode_fraction(X, np.zeros((2, 3)), std={"a": 1}), TypeError,
     r"std must be a positive number or 2 positive numbers \(one per mode"),
    (lambda: off_mode_radius(-1.0, 2), ValueError, "std must be a finite number > 0; got -1.0"),
    (lambda: off_mode_radius("0.1", 2), TypeError, "std must be a positive number; got str"),
    (lambda: off_mode_radius(0.1, 0), ValueError, "dim must be an integer >= 1; got 0"),
    (lambda: off_mode_radius(0.1, 2.5), TypeError, "dim must be an integer >= 1; got float 2.5"),
    (lambda: off_mode_quantile(0), ValueError, "dim must be an integer >= 1; got 0"),
    (lambda: attribute_rate([], 1), ValueError, "non-empty"),
    (lambda: attribute_rate([[1, 0]], 1), ValueError, "1-D"),
    (lambda: attribute_rate([1.0, np.nan], 1.0), ValueError, "NaN"),
    # raw numpy / torch errors, or silent nonsense, before
    (lambda: attribute_rate([1, 0, 1, 1], [1, 0, 1, 1]), TypeError, "target must be one label"),
    (lambda: attribute_rate([1, 2], np.array([1, 2])), ValueError, r"target must be one label.*\(2,\)"),
    (lambda: attribute_rate(["b", 1, "a"], 1), TypeError, "labels mix strings with other types"),
    (lambda: attribute_rates(np.array([1, None], dtype=object)), TypeError, "dtype object"),
    (lambda: total_variation(["a", "b"], [1.0, 0.0]), TypeError, "p must be a non-empty 1-D probability vector"),
    (lambda: total_variation({"a": 1.0}, [1.0]), TypeError, "p must be .* got dict"),
    (lambda: total_variation([0.5, 0.5], np.array([0.5 + 0j, 0.5])), TypeError, "q must be .*complex128"),
    (lambda: kernel_distance(X, Y, seed=2**64), ValueError, r"seed must be an integer in \[0, 2\*\*63\)"),
    (lambda: kernel_distance(X * 1e120, Y * 1e120), FloatingPointError, "KID depends on the features' scale"),
]


@pytest.mark.parametrize("call,exc,match", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_off_mode_fraction_takes_one_std_per_mode_as_a_sequence():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[0.05, 0.0], [10.5, 0.0], [5.0, 0.0]])
    # mode 0 narrow (radius 0.34), mode 1 wide (radius 3.4): only the midpoint is off-mode
    per_mode = off_mode_fraction(x, means, [0.1, 1.0])
    assert per_mode == off_mode_fraction(x, means, np.array([0.1, 1.0])) == pytest.approx(1 / 3)
    assert off_mode_fraction(x, means, (0.1, 0.1)) == off_mode_fraction(x, means, 0.1) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- found by an outside probe

def test_fd_low_rank_features_keep_full_accuracy():
    # 128-D features of rank 3, n m > D^2: the eigen route took square roots of round-off
    # eigenvalues and was 2.8e-4 off; the oracle is sqrtm in the exact 3-D span
    r = rng(5)
    w = r.normal(size=(3, 128))
    x, y = r.normal(size=(1500, 3)) @ w, (r.normal(size=(1500, 3)) * 1.2 + 0.1) @ w  # all in the span
    basis, _ = np.linalg.qr(w.T)  # (128, 3)
    assert frechet_distance(x, y) == pytest.approx(fd_sqrtm(x @ basis, y @ basis), rel=1e-9)


@pytest.mark.parametrize("scale", [1e77, 1e-90])
def test_metrics_hold_at_extreme_scales(scale):
    r = rng(6)
    x, y = r.normal(size=(50, 4)), r.normal(size=(60, 4)) + 1.0
    assert frechet_distance(x * scale, y * scale) == pytest.approx(frechet_distance(x, y) * scale**2, rel=1e-9)
    assert density_coverage(x * scale, y * scale, k=3) == density_coverage(x, y, k=3)
    assert vendi_score(x * scale) == pytest.approx(vendi_score(x), rel=1e-9)
    means = np.array([[0.0, 0, 0, 0], [1.0, 1, 1, 1]])
    torch.testing.assert_close(mode_proportions(x * scale, means * scale), mode_proportions(x, means))
    assert off_mode_fraction(y * scale, means * scale, std=0.5 * scale) == off_mode_fraction(y, means, std=0.5)
    assert 0 < off_mode_fraction(y, means, std=0.5) < 1  # the check compares something


def test_density_coverage_decides_ties_like_exact_distances():
    # integer features: ||a||^2 + ||b||^2 - 2 a.b put a distance of 1 at 1.0000000000000018 and
    # flipped the strict "<" ties (density 0.79 against 0.60)
    g = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
    f = g[::2] + 1
    res = density_coverage(g, f, k=4)
    assert (res.density, res.coverage) == pytest.approx(dc_bruteforce(g, f, 4), abs=1e-12)
    ints = rng(7).integers(0, 4, size=(60, 6)).astype(float)
    res = density_coverage(ints[:40], ints[40:], k=3)
    assert (res.density, res.coverage) == pytest.approx(dc_bruteforce(ints[:40], ints[40:], 3), abs=1e-12)


def test_attribute_rate_takes_a_tensor_or_array_target():
    labels = torch.tensor([1, 0, 1, 1])
    assert attribute_rate(labels, torch.tensor(1)) == 0.75
    assert attribute_rate(labels.numpy(), np.int64(0)) == 0.25
    assert attribute_rate(["b", "a", "b"], np.array("b")) == pytest.approx(2 / 3)


def test_mode_assignment_takes_a_huge_max_dist():
    """(max_dist / c) ** 2 in Python raised OverflowError for max_dist = 1e300; a radius that large
    leaves every point on its mode, as without max_dist."""
    g = torch.Generator().manual_seed(0)
    x, means = torch.randn(20, 2, generator=g), torch.randn(3, 2, generator=g)
    assert torch.equal(mode_assignment(x, means, max_dist=1e300), mode_assignment(x, means))


def test_results_hold_python_numbers_for_numpy_integer_arguments():
    # numpy integers (e.g. from a config array) reached the results: KIDResult.subset_size and
    # n_subsets were np.int64, which json.dumps refuses, and density / the p-value np.float64
    import dataclasses
    import json

    from mmdg_lite.kernels import GaussianKernel
    from mmdg_lite.mmd import permutation_test

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(25, 3, generator=g, dtype=torch.float64)
    kid = kernel_distance(x, y, subset_size=np.int64(10), n_subsets=np.int64(3), seed=np.int64(2))
    assert kid == kernel_distance(x, y, subset_size=10, n_subsets=3, seed=2)
    assert type(kid.subset_size) is int and type(kid.n_subsets) is int
    json.dumps(dataclasses.asdict(kid))
    dc = density_coverage(x, y, k=np.int64(3), chunk_size=np.int64(4))
    assert type(dc.density) is float and type(dc.coverage) is float
    assert dc == density_coverage(x, y, k=3, chunk_size=4)
    res = permutation_test(x, y, GaussianKernel(1.0), n_permutations=np.int64(5))
    assert type(res.p_value) is float and len(res.null) == 5


def test_two_set_metrics_refuse_image_sets_of_different_layouts():
    # channels-first against channels-last features of the same size were flattened and compared
    # pixel by unrelated pixel without a word (mmd2 and the guidance already refuse this)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.rand(12, 3, 4, 4, generator=g, dtype=torch.float64)
    y_last = y.permute(0, 2, 3, 1)  # (12, 4, 4, 3)
    calls = {"frechet_distance": lambda a, b: frechet_distance(a, b),
             "kernel_distance": lambda a, b: kernel_distance(a, b, n_subsets=2).mean,
             "density_coverage": lambda a, b: density_coverage(a, b, k=2).coverage,
             "rrke": lambda a, b: rrke(a, b, 1.0)}
    for name, fn in calls.items():
        with pytest.raises(ValueError, match=r"per-point shape \(3, 4, 4\) but .* has \(4, 4, 3\)"):
            fn(x, y_last)
        assert fn(x, y) == fn(x.flatten(1), y) == fn(x, y.flatten(1)), name  # one layout, or flat: accepted


def test_attribute_rate_refuses_a_target_of_another_kind_than_the_labels():
    # 1 never equals '1': a classifier's int labels against a str target (or the reverse, or
    # bytes against str, or None) gave a rate of 0.0 without a word
    for labels, target in ((["1", "0", "1"], 1), (torch.tensor([1, 0, 1]), "1"), ([1, 0, 1], None),
                           ([b"a", b"b"], "a"), (["a", "b"], b"a")):
        with pytest.raises(TypeError, match=r"target must be a label of the kind labels hold .* got "):
            attribute_rate(labels, target)
    assert attribute_rate(["1", "0", "1"], "1") == pytest.approx(2 / 3)
    assert attribute_rate([True, False, True], 1) == attribute_rate([1, 0, 1], True) == pytest.approx(2 / 3)
    assert attribute_rate(np.array([1.0, 0.0]), np.int64(1)) == 0.5

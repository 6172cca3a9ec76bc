"""Bad input fails early with a ValueError/TypeError whose message names the argument, the value
received and what would be valid. One test per case; each runs through every public entry point
that takes the input (mmd2, mmd2_grad, mmd2_grad_autograd, witness, permutation_test, kernels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdg_lite.kernels import (GaussianKernel, InverseMultiquadricKernel, MultiGaussianKernel,
                               PolynomialKernel, ProductKernel)
from mmdg_lite.mmd import mmd2, mmd2_grad, mmd2_grad_autograd, permutation_test, witness

K = GaussianKernel(bandwidth=1.0)
FUNCS = [mmd2, mmd2_grad, mmd2_grad_autograd]
fn_ids = lambda f: f.__name__  # noqa: E731


def _xy(n=4, m=5, d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


# --- point sets --------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_empty_generated_set(fn):
    _, y = _xy()
    with pytest.raises(ValueError, match=r"x holds 0 point\(s\) \(shape \(0, 3\)\); at least 1 required"):
        fn(torch.empty(0, 3), y, K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_empty_reference_set(fn):
    x, _ = _xy()
    with pytest.raises(ValueError, match=r"y holds 0 point\(s\) \(shape \(0, 3\)\); at least 1 required"):
        fn(x, torch.empty(0, 3), K)


def test_empty_witness_points():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"points holds 0 point\(s\).*at least 1 required"):
        witness(torch.empty(0, 3), x, y, K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_dimension_mismatch(fn):
    x, _ = _xy(d=3)
    _, y = _xy(d=5)
    with pytest.raises(ValueError, match=r"dimension mismatch: x has 3 features.*but y has 5.*same space"):
        fn(x, y, K)


def test_dimension_mismatch_in_kernel_call():
    with pytest.raises(ValueError, match=r"dimension mismatch: x has 2 features.*y has 4"):
        K(torch.zeros(3, 2), torch.zeros(3, 4))


def test_one_dimensional_points():
    with pytest.raises(ValueError, match=r"x must have shape \(n, D\).*got shape \(5,\)"):
        mmd2(torch.zeros(5), torch.zeros(5, 1), K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_nan_in_generated_set(fn):
    x, y = _xy()
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x contains 1 NaN or Inf value\(s\); all entries must be finite"):
        fn(x, y, K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_inf_in_reference_set(fn):
    x, y = _xy()
    y[0, 0], y[3, 1] = float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"y contains 2 NaN or Inf value\(s\); all entries must be finite"):
        fn(x, y, K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_integer_dtype(fn):
    x, y = _xy()
    with pytest.raises(TypeError, match=r"x has dtype torch.int64; pass a floating-point tensor"):
        fn(x.long(), y, K)


def test_integer_numpy_array():
    _, y = _xy()
    with pytest.raises(TypeError, match=r"y has dtype torch.int32; pass a floating-point tensor"):
        mmd2(torch.zeros(3, 3), y.numpy().astype(np.int32), K)



def test_flipped_and_big_endian_numpy_arrays_are_read_as_their_values():
    # torch.from_numpy refuses negative strides (x[::-1], np.flip) and big-endian data; every
    # public function raised torch's bare ValueError for them, naming no argument
    from mmdg_lite.kernels import pairwise_sq_dists
    from mmdg_lite.metrics import density_coverage, frechet_distance

    x, y = (v.double().numpy() for v in _xy(6, 7))
    plain = np.ascontiguousarray(x[::-1])
    flipped, big = x[::-1], y.astype(">f8")
    assert flipped.strides[0] < 0 and not big.dtype.isnative
    for fn in FUNCS:
        assert torch.equal(torch.as_tensor(fn(flipped, big, K)), torch.as_tensor(fn(plain, y, K))), fn.__name__
    assert torch.equal(pairwise_sq_dists(flipped, big), pairwise_sq_dists(plain, y))
    assert frechet_distance(np.flip(x, 1), big) == frechet_distance(np.flip(x, 1).copy(), y)
    assert density_coverage(flipped, big, k=2) == density_coverage(plain, y, k=2)

def test_not_a_tensor():
    _, y = _xy()
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor or numpy array; got list"):
        mmd2([[0.0, 1.0, 2.0]], y, K)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_mixed_devices(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x is on device meta but y is on device cpu; move both to one device"):
        fn(x.to("meta"), y, K)


# --- kernel parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1, 0.0, -2.5])
def test_non_positive_bandwidth(bad):
    with pytest.raises(ValueError, match=rf"bandwidth must be a finite number > 0; got {bad!r}"):
        GaussianKernel(bandwidth=bad)


def test_nan_bandwidth():
    with pytest.raises(ValueError, match=r"bandwidth must be a finite number > 0; got nan"):
        GaussianKernel(bandwidth=float("nan"))


def test_non_numeric_bandwidth():
    with pytest.raises(TypeError, match=r"bandwidth must be a positive number; got str '1.0'"):
        GaussianKernel(bandwidth="1.0")


def test_non_positive_multi_gaussian_bandwidths():
    with pytest.raises(ValueError, match=r"bandwidths must be a finite number > 0; got -1"):
        MultiGaussianKernel(bandwidths=(1.0, -1))
    with pytest.raises(ValueError, match=r"scales must hold at least one value; got \(\)"):
        MultiGaussianKernel(scales=())


def test_bad_inverse_multiquadric_and_polynomial_parameters():
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0; got 0"):
        InverseMultiquadricKernel(beta=0)
    with pytest.raises(ValueError, match=r"degree must be an integer >= 1; got 0"):
        PolynomialKernel(degree=0)


def test_product_kernel_parts_must_be_kernels():
    with pytest.raises(TypeError, match=r"sample_kernel must be a Kernel; got 'gaussian'"):
        ProductKernel(GaussianKernel(), "gaussian")


def test_kernel_argument_must_be_a_kernel():
    x, y = _xy()
    with pytest.raises(TypeError, match=r"kernel must be a mmdg_lite Kernel or ProductKernel; got 'rbf'"):
        mmd2(x, y, "rbf")


# --- weights -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_weights_of_wrong_shape(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_weights must have shape \(4,\), one weight per point; got shape \(3,\)"):
        fn(x, y, K, x_weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"y_weights must have shape \(5,\), one weight per point; got shape \(5, 1\)"):
        fn(x, y, K, y_weights=torch.ones(5, 1))


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_negative_weights(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"y_weights must be non-negative; got minimum -0.5"):
        fn(x, y, K, y_weights=torch.tensor([1.0, -0.5, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_zero_sum_weights(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_weights must have a positive sum; got sum 0"):
        fn(x, y, K, x_weights=torch.zeros(4))


def test_nan_weights():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_weights contains 1 NaN or Inf value\(s\)"):
        mmd2(x, y, K, x_weights=torch.tensor([1.0, float("nan"), 1.0, 1.0]))


def test_weights_on_another_device():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_weights is on device meta but the points are on cpu"):
        mmd2(x, y, K, x_weights=torch.ones(4, device="meta"))


# --- prompts -----------------------------------------------------------------------------------

PK = ProductKernel(GaussianKernel(), GaussianKernel(1.0))


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_prompt_count_mismatch_generated(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_prompts has 3 rows but x has 4 points; one prompt per point"):
        fn(x, y, PK, x_prompts=torch.randn(3, 6), y_prompts=torch.randn(5, 6))


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_prompt_count_mismatch_references(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"y_prompts has 6 rows but y has 5 points; one prompt per point"):
        fn(x, y, PK, x_prompts=torch.randn(4, 6), y_prompts=torch.randn(6, 6))


def test_prompt_dimension_mismatch():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"dimension mismatch: x_prompts has 6 features.*y_prompts has 7"):
        mmd2(x, y, PK, x_prompts=torch.randn(4, 6), y_prompts=torch.randn(5, 7))


def test_product_kernel_without_prompts():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"a ProductKernel needs x_prompts \(n, P\) and y_prompts \(m, P\); got None"):
        mmd2_grad(x, y, PK)


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_prompts_given_to_non_product_kernel(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x_prompts / y_prompts are only used with a ProductKernel; got kernel GaussianKernel"):
        fn(x, y, K, x_prompts=torch.randn(4, 6), y_prompts=torch.randn(5, 6))


def test_product_kernel_rejected_by_witness_and_permutation_test():
    x, y = _xy()
    with pytest.raises(TypeError, match=r"witness takes a sample Kernel, not a ProductKernel"):
        witness(x, x, y, PK)
    with pytest.raises(TypeError, match=r"permutation_test takes a sample Kernel, not a ProductKernel"):
        permutation_test(x, y, PK)


# --- estimator and options ---------------------------------------------------------------------

@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_unknown_estimator(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"estimator must be one of 'biased', 'unbiased'; got 'u-stat'"):
        fn(x, y, K, estimator="u-stat")


def test_unknown_estimator_in_permutation_test():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"estimator must be one of 'biased', 'unbiased'; got 'V'"):
        permutation_test(x, y, K, estimator="V")


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
def test_unbiased_estimator_with_one_point(fn):
    x, y = _xy()
    with pytest.raises(ValueError, match=r"x holds 1 point\(s\) \(shape \(1, 3\)\); at least 2 required \(the unbiased"):
        fn(x[:1], y, K, estimator="unbiased")
    with pytest.raises(ValueError, match=r"y holds 1 point\(s\) \(shape \(1, 3\)\); at least 2 required \(the unbiased"):
        fn(x, y[:1], K, estimator="unbiased")


def test_one_point_is_fine_for_the_biased_estimator():
    x, y = _xy()
    assert torch.isfinite(mmd2_grad(x[:1], y[:1], K)).all()


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_chunk_size(bad):
    x, y = _xy()
    with pytest.raises(ValueError, match=rf"chunk_size must be an integer >= 1; got {bad}"):
        mmd2_grad(x, y, K, chunk_size=bad)


def test_non_integer_chunk_size():
    x, y = _xy()
    with pytest.raises(TypeError, match=r"chunk_size must be an integer >= 1; got float 2.5"):
        mmd2(x, y, K, chunk_size=2.5)


def test_non_positive_permutation_count():
    x, y = _xy()
    with pytest.raises(ValueError, match=r"n_permutations must be an integer >= 1; got 0"):
        permutation_test(x, y, K, n_permutations=0)


@pytest.mark.parametrize("seed", [1.5, -1, True])
def test_permutation_test_seed_must_be_a_valid_seed(seed):
    x, y = _xy()
    with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*63\); got {seed}"):
        permutation_test(x, y, K, n_permutations=5, seed=seed)


def test_large_finite_values_are_not_mistaken_for_inf():
    # the finiteness check sums first; an overflowing sum of finite entries must not be rejected
    # (with a bandwidth on the data's scale: bandwidth 1 at 3e38 is refused as too small for float32,
    # and this test used to pass on its Gram matrix of NaNs, checking only the shape)
    x, k = torch.full((4, 3), 3e38), GaussianKernel(bandwidth=1e38)
    assert torch.equal(k(x, x), torch.ones(4, 4))  # coincident points
    with pytest.raises(ValueError, match=r"x contains 1 NaN or Inf value\(s\)"):
        k(torch.cat([x, torch.tensor([[float("inf"), 0.0, 0.0]])]), x)


# --- meta tensors (a shape without values) -----------------------------------------------------

def _meta_calls():
    from mmdg_lite import MMDGuidance, metrics
    from mmdg_lite.kernels import median_bandwidth, pairwise_sq_dists
    from mmdg_lite.rff import RFFReferenceEmbedding

    return {
        "mmd2": lambda x, y: mmd2(x, y, K), "mmd2_grad": lambda x, y: mmd2_grad(x, y, K),
        "mmd2_grad_autograd": lambda x, y: mmd2_grad_autograd(x, y, K),
        "witness": lambda x, y: witness(x, x, y, K),
        "permutation_test": lambda x, y: permutation_test(x, y, K, n_permutations=2),
        "kernel": lambda x, y: PolynomialKernel()(x, y), "pairwise_sq_dists": pairwise_sq_dists,
        "median_bandwidth": lambda x, y: median_bandwidth(x),
        "median_bandwidth_pair": lambda x, y: median_bandwidth(x, y),
        "frechet_distance": lambda x, y: metrics.frechet_distance(x, y),
        "rke": lambda x, y: metrics.rke(x, 1.0), "vendi_score": lambda x, y: metrics.vendi_score(x),
        "mode_assignment": lambda x, y: metrics.mode_assignment(x, y),
        "RFFReferenceEmbedding": lambda x, y: RFFReferenceEmbedding(x, 1.0, 8),
        "MMDGuidance": lambda x, y: MMDGuidance(x),
    }


@pytest.mark.parametrize("name", list(_meta_calls()))
def test_meta_tensors_are_refused_by_name(name):
    """Tensors on the meta device have no values: torch failed deep inside a kernel ('Tensor.item()
    cannot be called on meta tensors', 'Cannot copy out of meta tensor') naming no argument."""
    x, y = _xy()
    with pytest.raises(ValueError, match=r"is on device meta \(shape \(\d, 3\), dtype torch.float32\): a meta "
                                         r"tensor has a shape but no values"):
        _meta_calls()[name](x.to("meta"), y.to("meta"))


def test_results_do_not_depend_on_the_memory_layout_of_the_points():
    """The same values in a transposed (Fortran-order) array gave other last bits (BLAS sums in a
    layout-dependent order), and 2e-6 apart after 10 guided toy steps; the oracle is the
    contiguous copy of the same values, compared bit for bit."""
    from mmdg_lite import MMDGuidance, MultiGaussianKernel

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 2, generator=g), torch.randn(30, 2, generator=g)
    xt, yt = x.T.contiguous().T, y.T.contiguous().T  # same values, column-major
    k = MultiGaussianKernel(bandwidths=(0.5, 2.0))
    assert not xt.is_contiguous() and torch.equal(xt, x)
    assert torch.equal(mmd2_grad(xt, yt, k), mmd2_grad(x, y, k))
    assert torch.equal(mmd2(xt, yt, k), mmd2(x, y, k))
    assert torch.equal(MMDGuidance(yt, kernel=k).gradient(x), MMDGuidance(y, kernel=k).gradient(x))


@pytest.mark.parametrize("fn", FUNCS, ids=fn_ids)
@pytest.mark.parametrize("bad", [np.array([["a", "b"]] * 4), np.array([[1.0, None]] * 4, dtype=object)],
                         ids=["str", "object"])
def test_numpy_array_of_non_numbers_names_the_argument(fn, bad):
    """torch.from_numpy's "can't convert np.ndarray of type numpy.str_" named no argument."""
    _, y = _xy(d=2)
    with pytest.raises(TypeError, match=rf"^x must be an array of numbers; got a numpy array of dtype {bad.dtype}"):
        fn(bad, y, K)


@pytest.mark.parametrize("make", [GaussianKernel, lambda v: InverseMultiquadricKernel(beta=v),
                                  lambda v: MultiGaussianKernel(scales=(v,))])
def test_an_int_too_large_for_a_float_is_refused_by_name(make):
    """GaussianKernel(10**400) raised float()'s bare OverflowError 'int too large to convert to float'."""
    with pytest.raises(ValueError, match=r"(bandwidth|beta|scales) must be a finite number > 0"):
        make(10**400)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite_entry_by_entry(dtype):
    """all_finite reads a sum; torch.isfinite(x).all() is the oracle, including finite values whose
    sum overflows (the fallback) and a NaN, +Inf or -Inf anywhere."""
    from mmdg_lite._validation import all_finite
    g = torch.Generator().manual_seed(0)
    big = torch.finfo(dtype).max
    cases = [torch.randn(16, 64, generator=g).to(dtype), torch.full((8,), big, dtype=dtype),
             torch.tensor([big, -big, big], dtype=dtype), torch.zeros(0, dtype=dtype)]
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in (0, 517, 1023):
            x = torch.randn(16, 64, generator=g).to(dtype)
            x.view(-1)[where] = bad
            cases.append(x)
    inf_pair = torch.tensor([float("inf"), float("-inf")], dtype=dtype)  # sums to NaN
    cases.append(inf_pair)
    for x in cases:
        assert all_finite(x) == bool(torch.isfinite(x).all()), x


def test_numpy_bools_are_read_as_bools():
    # check_bool refused np.True_ / np.False_ ('full must be True or False; got np.False_') while check_int
    # reads numpy integers; they now count as the bool they are, and the same calls give the same numbers
    from mmdg_lite._validation import check_bool
    from mmdg_lite.guidance import MMDGuidance
    from mmdg_lite.toys.tasks import evaluate, make_task

    assert check_bool(np.True_, "flag") is True and check_bool(np.False_, "flag") is False
    assert MMDGuidance(torch.randn(8, 2), track=np.array([1.0]).all()).track is True
    task = make_task("ring2d_4modes", n_references=20, n_heldout=20)
    assert evaluate(task.references, task, full=np.False_) == evaluate(task.references, task, full=False)
    for bad in (1, "yes", None, np.int64(1)):
        with pytest.raises(TypeError, match=r"flag must be True or False; got"):
            check_bool(bad, "flag")

"""No silent blow-up: every strength x normalisation x evaluation point on the shipped 2-D model
ends with samples within a few data scales of the references, or with an error that names the
knob to change ([harden] item 2). Also the numerics of half precision and extreme scales."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmdg_lite import GaussianKernel, MMDGuidance, median_bandwidth, mmd2, mmd2_grad, sample
from mmdg_lite.guidance import EVAL_POINTS, NORMALIZATIONS, GuidanceDivergenceError
from mmdg_lite.toys import make_task

STRENGTHS = (0.0, 0.1, 1.0, 3.0, 10.0, 100.0, 1e4)


@pytest.fixture(scope="module")
def task():
    return make_task("ring2d_4modes", seed=0, n_references=100, n_heldout=10)


@pytest.mark.parametrize("normalization,eval_point", list(itertools.product(NORMALIZATIONS, EVAL_POINTS)))
def test_grid_never_returns_exploded_samples(task, normalization, eval_point):
    refs = task.references
    centre = refs.mean(0)
    radius = float((refs - centre).norm(dim=1).max())  # about 2.3 on the ring
    outcomes = []
    for strength in STRENGTHS:
        try:
            guide = MMDGuidance(refs, strength=strength, normalization=normalization, eval_point=eval_point)
        except ValueError as err:  # refused up front: the message must name the knob
            assert "strength" in str(err) and normalization in str(err)
            outcomes.append("refused")
            continue
        try:
            x = sample(task.denoiser, 96, 2, num_steps=25, guidance=guide, seed=1).samples
        except GuidanceDivergenceError as err:
            assert "strength" in str(err) and "normalization" in str(err)
            outcomes.append("error")
            continue
        assert bool(torch.isfinite(x).all())
        far = float((x - centre).norm(dim=1).max())
        assert far <= 3 * radius, (strength, normalization, eval_point, far)
        outcomes.append("ok")
    assert outcomes[:3] == ["ok"] * 3 or normalization == "norm_matched"  # small strengths just work


def test_strength_zero_is_bit_exact_unguided(task):
    plain = sample(task.denoiser, 64, 2, num_steps=20, seed=3).samples
    guided = sample(task.denoiser, 64, 2, num_steps=20, seed=3,
                    guidance=MMDGuidance(task.references, strength=0.0)).samples
    assert torch.equal(plain, guided)


def test_unclipped_huge_strength_raises_naming_the_knobs(task):
    guide = MMDGuidance(task.references, strength=1e4, normalization="none")
    with pytest.raises(GuidanceDivergenceError, match=r"strength=10000.*normalization='none'.*clipped"):
        sample(task.denoiser, 64, 2, num_steps=20, guidance=guide, seed=0)


def test_strength_set_after_construction_is_validated(task):
    guide = MMDGuidance(task.references)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            guide.strength = bad
    nm = MMDGuidance(task.references, normalization="norm_matched")
    with pytest.raises(ValueError, match="norm_matched"):
        nm.strength = 3.0
    guide.strength = 2.0
    assert guide.step_size.strength == 2.0


@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_callable_schedule_returning_negative_or_nan_raises(task, value):
    guide = MMDGuidance(task.references, schedule=lambda i, n, ab: value)
    with pytest.raises(ValueError, match="schedule callable returned"):
        sample(task.denoiser, 8, 2, num_steps=5, guidance=guide, seed=0)


# -- numerics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8,), (4, 128, 128)])
def test_half_precision_matches_float32(dtype, shape):
    """Same MMD^2, gradient and median bandwidth as float32 on the same (rounded) values, to 1e-3,
    including SDXL-size latents whose float16 squared distances would overflow at 65,504."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, *shape, generator=g).to(dtype)
    y = (torch.randn(10, *shape, generator=g) + 0.3).to(dtype)
    x32, y32 = x.float(), y.float()
    bw = median_bandwidth(x, y)
    bw32 = median_bandwidth(x32, y32)
    assert math.isfinite(bw) and bw == pytest.approx(bw32, rel=1e-3)
    k = GaussianKernel(bw32)
    m, m32 = mmd2(x, y, k), mmd2(x32, y32, k)
    assert m.dtype == torch.float32 and float(m) == pytest.approx(float(m32), rel=1e-3)
    gr, gr32 = mmd2_grad(x, y, k), mmd2_grad(x32, y32, k)
    assert float((gr - gr32).norm() / gr32.norm()) < 1e-3


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_extreme_scales_are_scale_invariant(scale):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g)
    y = torch.randn(7, 3, generator=g) + 0.5
    bw = median_bandwidth(x, y)
    assert median_bandwidth(x * scale, y * scale) == pytest.approx(bw * scale, rel=1e-5)
    k, ks = GaussianKernel(bw), GaussianKernel(bw * scale)
    assert float(mmd2(x * scale, y * scale, ks)) == pytest.approx(float(mmd2(x, y, k)), rel=1e-4)
    torch.testing.assert_close(mmd2_grad(x * scale, y * scale, ks) * scale, mmd2_grad(x, y, k),
                               rtol=1e-4, atol=1e-6)


def test_cubic_kernel_overflow_raises():
    from mmdg_lite import PolynomialKernel
    x = torch.randn(4, 3) * 1e20
    with pytest.raises(FloatingPointError, match="overflow"):
        mmd2_grad(x, x + 1e19, PolynomialKernel(gamma=1.0))


def test_median_bandwidth_never_turns_nan_into_one():
    x = torch.randn(6, 2)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        median_bandwidth(x)
    with pytest.raises(ValueError, match="NaN"):
        median_bandwidth(torch.randn(3, 2), x)


def test_median_bandwidth_checks_its_inputs_by_name():
    with pytest.raises(ValueError, match=r"x holds 0 point\(s\)"):
        median_bandwidth(torch.randn(0, 2))
    with pytest.raises(ValueError, match=r"y holds 0 point\(s\)"):
        median_bandwidth(torch.randn(3, 2), torch.randn(0, 2))
    with pytest.raises(ValueError, match="dimension mismatch: x has 2 features"):
        median_bandwidth(torch.randn(3, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match="max_points must be an integer >= 2"):
        median_bandwidth(torch.randn(3, 2), max_points=1)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # image-shaped points work as before
    assert median_bandwidth(x) == pytest.approx(median_bandwidth(x.reshape(5, 4)), rel=1e-12)


def test_channels_last_references_are_refused():
    refs = torch.randn(5, 8, 8, 4)  # (N, H, W, C)
    guide = MMDGuidance(refs)
    from types import SimpleNamespace
    x = torch.randn(3, 4, 8, 8)  # (B, C, H, W): same number of features, other layout
    st = SimpleNamespace(x_t=x, x_prev=x, eps=x, t=10, step_index=0, num_steps=10, alpha_bar_t=0.5,
                         alpha_bar_prev=0.6, denoiser=None, cond=None, sample_index=torch.arange(3))
    with pytest.raises(ValueError, match=r"\(4, 8, 8\).*\(8, 8, 4\)"):
        guide(st)

"""The conditional prompt weighting (MMDGuidance's default) against independent oracles.

With a prompt kernel that is 1 within prompt groups and ~0 across (a tiny bandwidth on distinct
unit vectors), the conditional gradient of sample i must equal |G|/n times the *plain* MMD
gradient of i's group G against G's references (computed by autograd on the group alone), and
be zero for a group whose prompt has no references; a constant prompt kernel must give plain
MMD; the distributed path must agree with the single-process one.
"""
from __future__ import annotations

import pytest
import torch

from mmdg_lite.guidance import MMDGuidance
from mmdg_lite.guidance.generated import BatchSet
from mmdg_lite.kernels import GaussianKernel, ProductKernel
from mmdg_lite.mmd import _grad, _prepare, mmd2_grad_autograd

E = torch.eye(3, dtype=torch.float64)  # three prompts, pairwise distance sqrt(2)


def _groups(seed=0, sizes=(3, 5), ref_sizes=(7, 2), D=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), D, generator=g, dtype=torch.float64)
    y = torch.randn(sum(ref_sizes), D, generator=g, dtype=torch.float64) + 1.0
    px = torch.cat([E[k].expand(n, 3) for k, n in enumerate(sizes)])
    py = torch.cat([E[k].expand(n, 3) for k, n in enumerate(ref_sizes)])
    return x, y, px, py


def _conditional(x, y, px, py, kernel, estimator="biased", chunk_size=None):
    p = _prepare(x, y, kernel, estimator, None, None, px, py)
    return _grad(p, estimator, chunk_size, "conditional")


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_conditional_is_each_groups_plain_mmd_gradient(estimator, chunk_size):
    x, y, px, py = _groups()
    kz = GaussianKernel(1.3)
    got = _conditional(x, y, px, py, ProductKernel(GaussianKernel(0.05), kz), estimator, chunk_size)
    n = len(x)
    for k, (rows, refs) in enumerate([(slice(0, 3), slice(0, 7)), (slice(3, 8), slice(7, 9))]):
        xg, yg = x[rows], y[refs]
        want = len(xg) / n * mmd2_grad_autograd(xg, yg, kz, estimator=estimator)
        torch.testing.assert_close(got[rows], want, rtol=1e-9, atol=1e-12)


def test_joint_weights_are_not_the_groups_gradient():
    """The oracle above can fail: Eq. 11's joint weights scale pull and push by different shares."""
    x, y, px, py = _groups()
    kz = GaussianKernel(1.3)
    p = _prepare(x, y, ProductKernel(GaussianKernel(0.05), kz), "biased", None, None, px, py)
    joint = _grad(p, "biased", None, "joint")
    want = 3 / 8 * mmd2_grad_autograd(x[:3], y[:7], kz)
    assert float((joint[:3] - want).norm()) > 0.1 * float(want.norm())


def test_group_without_references_is_left_alone():
    x, y, px, _ = _groups(sizes=(4, 3), ref_sizes=(6,))
    px = torch.cat([E[0].expand(4, 3), E[2].expand(3, 3)])  # the second group's prompt has no refs
    py = E[0].expand(6, 3)
    kz = GaussianKernel(1.0)
    got = _conditional(x, y, px, py, ProductKernel(GaussianKernel(0.05), kz))
    assert float(got[4:].abs().max()) < 1e-30
    torch.testing.assert_close(got[:4], 4 / 7 * mmd2_grad_autograd(x[:4], y, kz), rtol=1e-9, atol=1e-12)
    # Eq. 11 keeps pushing that group apart (no references to balance its repulsion)
    p = _prepare(x, y, ProductKernel(GaussianKernel(0.05), kz), "biased", None, None, px, py)
    assert float(_grad(p, "biased", None, "joint")[4:].norm()) > 1e-3


def test_constant_prompt_kernel_gives_plain_mmd():
    x, y, px, py = _groups(seed=1)
    kz = GaussianKernel(0.9)
    got = _conditional(x, y, px, py, ProductKernel(GaussianKernel(1e6), kz))
    torch.testing.assert_close(got, mmd2_grad_autograd(x, y, kz), rtol=1e-8, atol=1e-10)


def test_guidance_default_is_conditional_and_paper_is_joint():
    x, y, px, py = _groups(seed=2)
    g = MMDGuidance(y, reference_prompts=py, sample_prompts=px, prompt_kernel=GaussianKernel(0.05),
                    kernel=GaussianKernel(1.3))
    assert g.prompt_weighting == "conditional"
    assert MMDGuidance.paper(y, reference_prompts=py).prompt_weighting == "joint"
    grad = g.gradient(x, px)
    torch.testing.assert_close(grad[:3], 3 / 8 * mmd2_grad_autograd(x[:3], y[:7], GaussianKernel(1.3)),
                               rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"prompt_weighting must be one of .*'joint'.*'conditional'.*got 'cond'"):
        MMDGuidance(y, reference_prompts=py, prompt_weighting="cond")


def test_memory_set_passes_the_weighting_through():
    x, y, px, py = _groups(seed=3)
    kz = ProductKernel(GaussianKernel(0.05), GaussianKernel(1.1))
    plain = BatchSet().gradient(x, y, kz, px, py, "biased", None, "conditional")
    torch.testing.assert_close(plain, _conditional(x, y, px, py, kz))


def test_unbiased_conditional_sample_alone_with_its_prompt_feels_no_other_prompts_push():
    """Unbiased: a prompt held by one sample of the batch has no pair to be pushed from, so its
    gradient is its group's pull alone (1/n x the autograd gradient of the biased MMD^2 of the
    one point, whose k(z, z) = 1 is constant). The near-zero same-prompt mass used to be divided
    out, scaling the other prompt's k_p ~ 1e-174 weights up to a plain MMD's full repulsion."""
    x, y, px, py = _groups(seed=4, sizes=(7, 1), ref_sizes=(6, 3), D=2)
    kz = GaussianKernel(1.0)
    got = _conditional(x, y, px, py, ProductKernel(GaussianKernel(0.05), kz), "unbiased")
    torch.testing.assert_close(got[7:], 1 / 8 * mmd2_grad_autograd(x[7:], y[6:], kz), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[:7], 7 / 8 * mmd2_grad_autograd(x[:7], y[:6], kz, estimator="unbiased"),
                               rtol=1e-9, atol=1e-12)

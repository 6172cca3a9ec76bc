"""Shared test setup: offline, deterministic, and small helpers (kernels by name, oracles).

Test modules import the helpers with ``from conftest import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from mmdg_lite.kernels import (CallableKernel, GaussianKernel,  # noqa: E402
                               InverseMultiquadricKernel, MultiGaussianKernel, PolynomialKernel,
                               ProductKernel)
from mmdg_lite.seeding import seed_everything  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): small-tensor work (training, pipelines, gloo processes) is many times
    faster on one thread than on two busy shared cores. The previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Every kernel the library ships, by name (used with pytest.mark.parametrize).
KERNEL_NAMES = ("gaussian_fixed", "gaussian_median", "multi_gaussian", "inverse_multiquadric",
                "polynomial", "callable", "product")


def _rational_quadratic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A user-written kernel with no closed-form gradient in the library (explicit broadcasting)."""
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return (1.0 + d2 / (2 * 1.5 * 0.8**2)) ** -1.5


def build_kernel(name: str):
    if name == "gaussian_fixed":
        return GaussianKernel(bandwidth=1.3)
    if name == "gaussian_median":
        return GaussianKernel(median_scale=1.5)
    if name == "multi_gaussian":
        return MultiGaussianKernel()
    if name == "inverse_multiquadric":
        return InverseMultiquadricKernel(c=1.0, beta=0.5)
    if name == "polynomial":
        return PolynomialKernel()
    if name == "callable":
        return CallableKernel(_rational_quadratic, name="rational_quadratic")
    if name == "product":
        # median-heuristic prompt kernel, fixed-bandwidth sample kernel
        return ProductKernel(GaussianKernel(), GaussianKernel(bandwidth=1.2))
    raise KeyError(name)


def central_fd(f, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central finite differences of a scalar function f at x (float64), shape of x."""
    x = x.detach().clone()
    g = torch.zeros_like(x)
    flat, gflat = x.view(-1), g.view(-1)
    for k in range(flat.numel()):
        old = float(flat[k])
        flat[k] = old + h
        fp = float(f(x))
        flat[k] = old - h
        fm = float(f(x))
        flat[k] = old
        gflat[k] = (fp - fm) / (2 * h)
    return g


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (b is the oracle)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same global RNG state (tests use their own generators anyway)
    and under torch's float32 default dtype, restored afterwards whatever the test set."""
    seed_everything(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)

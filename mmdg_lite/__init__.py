"""mmdg_lite: MMD Guidance for diffusion models, small and readable.

Kernels and MMD live in ``kernels`` and ``mmd``; later modules add the diffusion engine,
guidance, prompts and metrics.
"""
from .kernels import (CallableKernel, GaussianKernel, InverseMultiquadricKernel, Kernel,
                      MultiGaussianKernel, PolynomialKernel, ProductKernel, median_bandwidth,
                      pairwise_sq_dists)
from .mmd import (PermutationTestResult, mmd2, mmd2_grad, mmd2_grad_autograd,
                  permutation_test, witness)
from .seeding import make_generator, seed_everything

__version__ = "0.1.0"

"""The paper's synthetic experiments as reusable tasks (paper Sec. 6, Fig. 2-3).

A ``SyntheticTask`` bundles the "pretrained" model, the user's target distribution, the
reference set drawn from it and held-out target samples for FD/KD. ``evaluate`` scores a set of
generated samples against the task. Notebooks, tests and benchmarks all use these, so the
numbers in the README, the notebooks and benchmarks/results/ come from one definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._validation import check_choice, check_int
from .data import (GaussianMixture, circle_mixture, dirichlet_mixture, draw_references,
                   random_mixture, subset_mixture)
from .denoisers import GaussianMixtureDenoiser
from .metrics import (density_coverage, frechet_distance, kernel_distance, mode_proportions,
                      off_mode_fraction, total_variation)
from .sampling import make_scheduler

__all__ = ["SyntheticTask", "make_task", "evaluate", "TASKS"]

TASKS = ("ring2d_4modes", "ring2d_dirichlet", "gmm100d_4modes")


@dataclass
class SyntheticTask:
    name: str
    base: GaussianMixture  # P: what the pretrained model samples
    target: GaussianMixture  # Q: the user's distribution (same components, other weights)
    references: Tensor  # (N_r, D) the user's reference set, drawn from Q
    heldout: Tensor  # (n_heldout, D) fresh samples of Q for FD / KD / density / coverage
    denoiser: Any  # eps_hat = denoiser(x_t, t, cond)
    user_modes: list[int]  # components with positive target weight

    @property
    def dim(self) -> int:
        return self.base.dim


def make_task(name: str = "ring2d_4modes", seed: int = 0, n_references: int = 200,
              n_heldout: int = 2000, denoiser: Any = None) -> SyntheticTask:
    """Build a task; ``seed`` picks the user's modes, the references and the held-out set.

    ring2d_4modes: 8-mode ring, user = 4 random modes, uniform (paper's 4-of-8 user).
    ring2d_dirichlet: 8-mode ring, user = 2 random modes with Dirichlet(1, 10) weights (Fig. 3).
    gmm100d_4modes: 8 random means in 100-D, user = 4 random modes; the base model is the exact
    mixture denoiser, so the unguided sampler is at the sampling floor (Fig. 2).
    The 2-D tasks use the shipped MLP (``load_or_train_toy_2d``) unless ``denoiser`` is given.
    """
    check_choice(name, "name", TASKS)
    seed = check_int(seed, "seed", 0)
    n_references = check_int(n_references, "n_references", 1)
    n_heldout = check_int(n_heldout, "n_heldout", 2)
    rng = np.random.default_rng(1000 + seed)
    if name.startswith("ring2d"):
        base = circle_mixture()
        if denoiser is None:
            from .training import load_or_train_toy_2d
            denoiser, _ = load_or_train_toy_2d(progress=False)
    else:
        base = random_mixture(8, 100, seed=0)
        if denoiser is None:
            denoiser = GaussianMixtureDenoiser.from_mixture(base, make_scheduler("ddpm"))
    if name == "ring2d_dirichlet":
        target = dirichlet_mixture(base, n_active=2, alpha=(1.0, 10.0), seed=seed)
    else:
        target = subset_mixture(base, sorted(rng.choice(8, size=4, replace=False).tolist()))
    refs = draw_references(target, n_references, seed=2000 + seed)
    heldout = draw_references(target, n_heldout, seed=3000 + seed)
    modes = [int(i) for i in torch.nonzero(target.weights > 0).flatten()]
    return SyntheticTask(name, base, target, refs, heldout, denoiser, modes)


def evaluate(samples: Tensor, task: SyntheticTask, kid_subset: int = 500,
             full: bool = True) -> dict[str, float]:
    """Scores of ``samples`` (n, D) against the task's target.

    tv: total variation between nearest-mode proportions and the target weights; off_mode:
    fraction beyond the 3-sigma-equivalent radius of every mode; with ``full`` also FD, KD
    (x 10^3, unbiased KID), density and coverage against the held-out target samples.
    Raises if any sample is not finite (a diverged run must never be scored).
    """
    x = samples.detach().reshape(len(samples), -1).double().cpu()
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{int((~torch.isfinite(x)).any(1).sum())} of {len(x)} samples "
                                 "are NaN/Inf; the run diverged")
    p = mode_proportions(x, task.base.means)
    out = {"tv": total_variation(p, task.target.weights.double()),
           "off_mode": off_mode_fraction(x, task.base.means, task.base.std)}
    if full:
        ref = task.heldout.double()
        kid = kernel_distance(x, ref, subset_size=min(kid_subset, len(x), len(ref)), n_subsets=20)
        dc = density_coverage(ref, x, k=5)
        out.update(fd=frechet_distance(x, ref), kd=1e3 * kid.mean, density=dc.density,
                   coverage=dc.coverage)
    return out

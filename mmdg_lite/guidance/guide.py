"""MMD Guidance: the correction added to every reverse-diffusion step (paper Eq. 5, Alg. 1).

    z_{t-1} = sampler(z_t, t, eps_theta) - lambda_t * grad MMD^2(P_t, Q)

``MMDGuidance`` is a hook for ``mmdg_lite.sampling.sample`` (or any loop that builds a
``StepState``): given the step it returns the corrected x_{t-1}. It is composed of four parts,
each testable alone: the reference set (``references.ReferenceSet``), the step-size policy
(``step_size.StepSize``), the evaluation point (``eval_point.EvalPoint``) and the generated set
(``generated.BatchSet`` / ``MemorySet``). Presets: ``MMDGuidance.paper`` (literal Eq. 5) and
``MMDGuidance.reference_code`` (the public code's variant).
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from dataclasses import is_dataclass, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .._validation import (_describe, all_finite, check_bool, check_choice, check_int, check_pair, check_points,
                           is_real_number)
from ..kernels import (GaussianKernel, Kernel, MultiGaussianKernel, PolynomialKernel, ProductKernel,
                       checked_resolve, median_bandwidth, work_dtype)
from ..mmd import PROMPT_WEIGHTINGS
from ..rff import RFFReferenceEmbedding, mmd2_grad_rff
from ..sampling import check_input_scales, check_state_timestep, state_number
from ..seeding import check_seed
from .eval_point import EVAL_POINTS, EvalPoint
from .generated import GENERATED_SETS, BatchSet, MemorySet
from .references import ReferenceSet
from .step_size import NORMALIZATIONS, SCHEDULES, STRENGTH_SCALES, StepSize, schedule_weight

__all__ = ["MMDGuidance", "ChainedGuidance", "GuidanceDivergenceError", "ReferenceScaleWarning", "default_kernel",
           "SCHEDULES", "NORMALIZATIONS", "EVAL_POINTS", "GENERATED_SETS", "STRENGTH_SCALES",
           "BANDWIDTH_UPDATES", "schedule_weight"]

BANDWIDTH_UPDATES = ("run", "step")
# A guided sample farther than this many data scales from the references' centre is a blow-up,
# not a sample. The data scale at noise level abar (DDPM-normalised space) is
# sqrt(abar) R + sqrt(1 - abar) (sqrt(D) + 4): R the larger of the references' radius and the
# median distance read at the first guided step (references from one mode have a small radius
# while the model's samples spread wider), sqrt(D) + 4 a bound on the norm of unit Gaussian noise
# that a true sample exceeds with probability < 1e-4.
DIVERGENCE_FACTOR = 3.0


class GuidanceDivergenceError(FloatingPointError):
    """Guidance threw samples far outside the data (or to NaN/Inf); the message names the knob."""


class ReferenceScaleWarning(UserWarning):
    """The references look like another scale than the points the sampler draws."""


# References this many times the sampler's first guided points (RMS per coordinate, at least 1)
# are almost surely on another scale, e.g. 0-255 pixels. Latents without the VAE's scaling factor
# are only 1 / factor too large (SD: ~5.5x), within the reach of wide data, and are not caught.
OFF_SCALE_RATIO = 20.0
# References below this fraction of the sampler's first guided points (RMS ~1: noise; at most 1) are far
# below the unit scale diffusion models expect: latents with the scaling factor applied twice (SD:
# RMS ~0.18, 1/5.5 of the noise), or a model trained on small data, for which the defaults, read
# off the noise, overshoot (a ring of radius 0.2: 80 % of the mass pushed to the other modes).
# Every reference set in this project has RMS 0.7-1.4.
UNDER_SCALE_FRACTION = 0.2


def _warn_every_run(message: str) -> None:
    """``warnings.warn(message, ReferenceScaleWarning, stacklevel=3)`` without the per-location
    registry: Python's default filter shows a message once per code location, so an identical
    second run (a re-run cell, a loop over seeds) warned nothing. The filters still apply."""
    frame = sys._getframe(2)
    warnings.warn_explicit(message, ReferenceScaleWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=None)


def _warn_off_scale(noisy: Tensor, refs: Tensor) -> None:
    """Warn (once per run) when the references' RMS dwarfs the noisy points', or is dwarfed by
    them: guidance would pull the samples toward another scale, or overshoot data far smaller
    than its noise-read settings, and a run returns such samples without an error."""
    r, x = float(refs.detach().pow(2).mean().sqrt()), float(noisy.detach().pow(2).mean().sqrt())
    if r < UNDER_SCALE_FRACTION * min(x, 1.0):  # (noise has RMS ~1; a broken model's can be far larger)
        head = (f"references are all zero (the sampler's points have RMS {x:.3g})" if r == 0 else
                f"references have RMS {r:.3g} per coordinate, 1/{x / r:.3g} of the sampler's points (RMS {x:.3g})")
        _warn_every_run(f"{head}: diffusion models expect data of about unit scale. Latents need the "
                        "VAE's scaling_factor applied exactly once (applied twice they are 1/factor too small); "
                        "for a model trained on data this small, evaluate the kernel at the data's scale with "
                        "eval_point='x0_hat'")
    elif r > OFF_SCALE_RATIO * max(x, 1.0):
        _warn_every_run(f"references have RMS {r:.3g} per coordinate, {r / max(x, 1e-12):.0f}x the sampler's "
                        f"points (RMS {x:.3g}): are they on the model's scale? Images in 0-255 map with x / 127.5 - 1; "
                        "latents need the VAE's scaling_factor applied once (mmdg_lite.images.encode_references, "
                        "mmdg_lite.pipelines.encode_images)")


def default_kernel() -> MultiGaussianKernel:
    """The default sample kernel: Gaussians at 0.5 and 2 x the data scale, each contributing its
    kernel-weighted displacement equally (benchmarks/results/defaults.md: the narrow one separates
    neighbouring modes, the wide one moves mass between far-apart modes)."""
    return MultiGaussianKernel(scales=(0.5, 2.0), weighting="displacement")


def _displacement(kernel: Kernel | ProductKernel) -> float:
    """The strength scale's sigma^2 for (resolved) Gaussian kernels: sigma^2, sum_k sigma_k^2 with
    "displacement" weights, 1 / sum_k sigma_k^-2 with "equal" ones; 1 otherwise."""
    if isinstance(kernel, ProductKernel):
        kernel = kernel.sample_kernel
    if isinstance(kernel, GaussianKernel) and kernel.bandwidth is not None:
        return float(kernel.bandwidth) ** 2
    if isinstance(kernel, MultiGaussianKernel) and kernel.bandwidths is not None:
        if kernel.weighting == "displacement":
            return sum(b * b for b in kernel.bandwidths)
        return 1.0 / sum(b**-2 for b in kernel.bandwidths)
    return 1.0


def _check_state(state: Any, eval_point: str) -> None:
    """Refuse a hand-built step state whose fields the hook would misread: a step_index outside
    0..num_steps-1 fell outside the window and went unguided, silently; x_t or eps of another
    shape than x_prev was reshaped into it (eps (3, 2) for (6, 2) points broadcast as (6, 1)), on
    another device it failed in torch's 'Expected all tensors to be on the same device'; a
    (B,) t, an input_scale_prev <= 0 or an alpha_bar_prev outside [0, 1] failed in bare torch or
    Python errors, or scaled the step silently."""
    if not isinstance(state.x_prev, Tensor):  # a numpy array or list failed in a bare AttributeError
        raise TypeError(f"state.x_prev must be a torch.Tensor (the scheduler's prev_sample); got "
                        f"{type(state.x_prev).__name__}")
    num_steps = check_int(state.num_steps, "state.num_steps", 1)
    step = check_int(state.step_index, "state.step_index", 0)
    if step >= num_steps:
        raise ValueError(f"state.step_index must be from 0 to num_steps - 1 = {num_steps - 1} (the step's position in "
                         f"this run); got {step}")
    check_state_timestep(state.t)
    shape = tuple(state.x_prev.shape)
    for name in ("x_t", "eps") if eval_point == "x0_hat" else ("x_t",):
        value = getattr(state, name, None)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"state.{name} must be a tensor of x_prev's shape {shape}" + (
                " (the noise prediction eval_point='x0_hat' reads)" if name == "eps" else "") + f"; got {got}")
        if value.device != state.x_prev.device:
            raise ValueError(f"state.{name} is on {value.device} but x_prev on {state.x_prev.device}: give the step's "
                             "tensors on one device")
    c_prev = state_number(getattr(state, "input_scale_prev", 1.0))
    if not is_real_number(c_prev) or not (math.isfinite(c_prev) and c_prev > 0):
        raise ValueError(f"state.input_scale_prev must be a finite number > 0 (scale_model_input's factor at the "
                         f"next step; 1 for DDPM-normalised latents); got {c_prev!r:.60}")
    ab_prev = state_number(getattr(state, "alpha_bar_prev", 1.0))
    if not is_real_number(ab_prev) or not 0.0 <= ab_prev <= 1.0:
        raise ValueError(f"state.alpha_bar_prev must be a number in [0, 1] (alphas_cumprod of the next timestep, or "
                         f"the scheduler's final value at the last step); got {ab_prev!r:.60}")


def _holds_strings(value: Any) -> bool:
    """A str, a list/tuple holding one, or a numpy array of strings (prompts instead of features)."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "USO" and any(isinstance(v, str) for v in value.ravel()[:1].tolist())
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value))


def _refuse_non_features(value: Any, name: str) -> None:
    """Prompt strings or integer labels where (n, P) float prompt features belong: say how to get them."""
    if _holds_strings(value):
        raise TypeError(f"{name} must be prompt features, a (n, P) float tensor; got prompt strings "
                        f"{value!r:.60}: encode them (encoder.encode(prompts)), or build the guidance "
                        "with mmdg_lite.prompts.prompt_aware_guidance(references, prompts, encoder)")
    if isinstance(value, (Tensor, np.ndarray)) and str(value.dtype).split(".")[-1].startswith(("int", "uint")):
        rows = value.ndim == 2 and value.shape[1] > 1  # integer features: only the dtype is wrong
        raise TypeError(f"{name} must be prompt features, a (n, P) float tensor; got integers (dtype "
                        f"{value.dtype}, shape {tuple(value.shape)}): " + (f"{name}.float()" if rows else
                        "for class indices give one-hot rows, torch.eye(C)[labels] (labels.float() would be "
                        "one feature, which L2 normalisation reduces to its sign)"))


class MMDGuidance:
    """Steer a sampler toward a reference set by descending MMD^2 (paper Eq. 5-6, Eq. 11).

    Every argument has a default that works untuned (benchmarks/results/defaults.md: mode TV
    <= 0.10 and <= 3 % off-mode on the three synthetic tasks).

    Args:
        references: (N_r, *S) clean reference samples (or latents) in the sampler's space; the
            sampler's samples must have the same per-sample shape S.
        kernel: sample kernel. Default ``default_kernel()``: Gaussians at 0.5 and 2 x the data
            scale. Data-dependent bandwidths (median heuristic) are read once per run
            (``bandwidth_update="run"``) from the references pooled with the first guided step's
            DDPM-normalised noisy batch, so the step cannot grow as the batch spreads;
            ``"step"`` re-reads them from the evaluation points at every step (the previous
            behaviour). ``PolynomialKernel()`` is the reference code's cubic KID kernel.
        strength: c >= 0. With ``strength_scale="batch_bandwidth"`` (default) the step is
            lambda_t = c * s(t) * B * sigma^2 / a^2 (a: the evaluation point's scale; sigma^2:
            the Gaussian's, sum_k sigma_k^2 for the default kernel, see ``step_size``),
            so the step moves each sample by 2c times its kernel-weighted displacement toward
            the references, less the same toward the batch (the 2 of Eq. 6): c is scale-free,
            independent of B, the data scale and the scheduler (for Gaussian kernels; others
            take sigma^2 = 1). "none": lambda_t = c s(t), the
            paper's literal Eq. 5. With ``normalization="norm_matched"`` it is the reference
            code's alpha (< 1; default 0.1). Settable after construction (validated).
        schedule, start, stop, last_fraction: s(t) ("constant", "linear", "cosine",
            "alpha_bar", "last" or a callable (step, num_steps, abar) -> weight >= 0); guidance
            runs for step fractions i / num_steps in [start, stop). ``stop=0.9`` leaves the steps
            from 90 % of the run on (about the last 10 %; 2 of 25) to the denoiser, which puts guided samples back on the data manifold; so
            "last" guides the fractions in [1 - last_fraction, stop) (default: 0.7-0.9). A
            window that holds no step is refused (ValueError) rather than silently unguided.
        normalization: "clipped" (default): each sample's step is capped at ``clip_norm`` in the
            kernel's space (default ``clip_fraction`` = 0.2 x the data scale), which makes
            any strength safe; "none" (paper); "norm_matched": alpha ||x|| g / (||g|| + 1e-5)
            (reference code).
        eval_point: "x_t" (paper), "x_prev" (reference code), "x0_hat" (Tweedie, eps detached),
            "x0_hat_backprop" (through the denoiser); see ``eval_point``. Correct for DDPM-style
            and sigma-scaled (Euler/Karras) latents through the state's ``input_scale``.
        generated_set: "batch" (paper: the batch is guided jointly) or "memory" (reference
            code: one sample at a time against <= ``memory_size`` finished samples), or a
            ``BatchSet`` instance (e.g. ``mmdg_lite.distributed.DistributedBatchSet``).
        estimator: "biased" V-statistic (paper) or "unbiased".
        reference_prompts / sample_prompts / prompt_kernel: prompt-aware guidance (Sec. 5,
            Eq. 10-11): kernel k_p x k_z with k_p Gaussian (sigma 0.3) on L2-normalised prompt
            features by default. Without ``sample_prompts`` the sampler's ``cond`` is used.
        prompt_weighting: "conditional" (default): each sample's prompt weights are divided by
            their sum and scaled by the prompt kernel to its nearest reference prompt, so every
            sample is pulled toward (and pushed from) the references (and samples) whose
            prompts resemble its own with the full force of an unweighted MMD,
            whatever share of the batch and of the references its prompt has; "joint": Eq. 11's
            weights as they are (the product-kernel MMD of the joint distribution), whose pull
            shrinks with the share of references with the sample's prompt while its push
            shrinks with its share of the batch; where the two shares differ the batch is
            pushed apart (benchmarks/results/sd.md, notebook 04).
        chunk_size: references per chunk (bounded memory for large reference sets), and generated
            points per block of the repulsion when the batch is larger (O(chunk_size * B), not
            one (B, B) matrix: B = 8,192 took 1.3 GB at any chunk_size); with
            ``rff_features`` also the references per block of the summaries' one-off build
            (default 8,192 rows: a (8192, F) feature block, 2 GiB at F = 65,536).
        rff_features: replace the exact reference term by F random Fourier features of a
            fixed-bandwidth Gaussian kernel (a step then costs O(B F D) for any N_r; relative
            gradient error ~ 1.6/sqrt(F) at the median bandwidth for D >= 3, up to ~3.7/sqrt(F)
            at D = 1, benchmarks/results/rff.md;
            several times more for a bandwidth below it: ~10/sqrt(F) at half, see ``mmdg_lite.rff``).
        track: keep per-step diagnostics in ``self.history``: one dict per guided step (steps outside
            the window, and memory mode's first sample, add none) with step, t, weight (strength x
            s(t)), and batch means of grad_norm, step_norm (the step as applied) and x_norm (of x_prev);
            ``reset()`` (every ``sample`` run) clears it.

    Raises ``GuidanceDivergenceError`` (a ``FloatingPointError``) when a step would leave a
    sample more than 3 data scales from the references, or produce NaN/Inf, naming the knob.
    """

    def __init__(self, references: Tensor, *, kernel: Kernel | None = None,
                 strength: float | None = None, schedule: str | Callable[..., float] = "constant",
                 start: float = 0.0, stop: float = 0.9, last_fraction: float = 0.3,
                 strength_scale: str = "batch_bandwidth", normalization: str = "clipped",
                 clip_norm: float | None = None, clip_fraction: float = 0.2,
                 eval_point: str = "x_t", generated_set: str | BatchSet = "batch", memory_size: int = 99,
                 estimator: str = "biased", bandwidth_update: str = "run",
                 reference_prompts: Tensor | None = None, sample_prompts: Tensor | None = None,
                 prompt_kernel: Kernel | None = None, prompt_weighting: str = "conditional",
                 chunk_size: int | None = None,
                 rff_features: int | None = None, rff_seed: int = 0, track: bool = False) -> None:
        for name, value in (("reference_prompts", reference_prompts), ("sample_prompts", sample_prompts)):
            _refuse_non_features(value, name)
        self.reference_set = ReferenceSet(references, reference_prompts)
        self.kernel: Kernel = kernel if kernel is not None else default_kernel()
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a mmdg_lite Kernel (the prompt kernel is "
                            f"prompt_kernel=); got {kernel!r}")
        if type(self.kernel).gram is Kernel.gram:  # else NotImplementedError at the first guided step
            raise TypeError(f"kernel {type(self.kernel).__name__} defines no gram(x, y) -> (n, m) Gram matrix; a "
                            "Kernel subclass must implement gram (and may implement grad_weighted)")
        self.step_size = StepSize(strength, schedule, start=start, stop=stop,
                                  last_fraction=last_fraction, strength_scale=strength_scale,
                                  normalization=normalization, clip_norm=clip_norm,
                                  clip_fraction=clip_fraction)
        self.point = EvalPoint(eval_point)
        if isinstance(generated_set, BatchSet):  # an injected strategy (e.g. distributed)
            self.generated = generated_set
            generated_set = "memory" if generated_set.sequential else "batch"
        else:
            generated_set = check_choice(generated_set, "generated_set", GENERATED_SETS)
            memory_size = check_int(memory_size, "memory_size", 1)  # checked even where unused: a typo shows
            self.generated = MemorySet(memory_size) if generated_set == "memory" else BatchSet()
        self.estimator = check_choice(estimator, "estimator", ("biased", "unbiased"))
        self.bandwidth_update = check_choice(bandwidth_update, "bandwidth_update", BANDWIDTH_UPDATES)
        self.chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
        self.sample_prompts = None
        self.prompt_kernel = None
        self.prompt_weighting = check_choice(prompt_weighting, "prompt_weighting", PROMPT_WEIGHTINGS)
        rff_seed = check_seed(rff_seed, "rff_seed")
        if prompt_kernel is not None and not isinstance(prompt_kernel, Kernel):
            raise TypeError(f"prompt_kernel must be a mmdg_lite Kernel on prompt features, e.g. GaussianKernel(0.3); "
                            f"got {prompt_kernel!r}")
        if reference_prompts is not None:
            self.prompt_kernel = prompt_kernel if prompt_kernel is not None else GaussianKernel(0.3)
            self._kernel()._prep(self.reference_prompts, "reference_prompts")  # refused here, not at a step
            if sample_prompts is not None:
                self.sample_prompts = check_points(sample_prompts, "sample_prompts")
                check_pair(self.sample_prompts, self.reference_prompts, "sample_prompts",
                           "reference_prompts")
                self._kernel()._prep(self.sample_prompts, "sample_prompts")
        elif sample_prompts is not None or prompt_kernel is not None:
            raise ValueError("sample_prompts / prompt_kernel need reference_prompts (N_r, P); got None")
        self.rff: RFFReferenceEmbedding | None = None
        if rff_features is not None:
            bw = getattr(self.kernel, "bandwidth", None)
            if not isinstance(self.kernel, GaussianKernel) or bw is None:
                raise ValueError("rff_features needs a Gaussian kernel with a fixed bandwidth, "
                                 f"e.g. GaussianKernel(2.0); got kernel {self.kernel!r}")
            if (generated_set, self.estimator, reference_prompts) != ("batch", "biased", None):
                raise ValueError("rff_features works with generated_set='batch', estimator='biased' "
                                 f"and no prompts; got generated_set={generated_set!r}, "
                                 f"estimator={self.estimator!r}"
                                 + (", and reference_prompts" if reference_prompts is not None else ""))
            # chunk_size bounds the (chunk, F) feature blocks of the summaries' one-off build too
            rows = {} if self.chunk_size is None else {"chunk_size": self.chunk_size}
            self.rff = RFFReferenceEmbedding(self.reference_set.flat, bw, check_int(rff_features, "rff_features", 1),
                                             seed=rff_seed, **rows)
        self.track = check_bool(track, "track")
        self.reset()

    # -- the parts' settings, under their historical names -----------------------------------------
    references = property(lambda self: self.reference_set.flat.reshape(
        len(self.reference_set), *self.reference_set.sample_shape))
    reference_prompts = property(lambda self: self.reference_set.prompts)
    eval_point = property(lambda self: self.point.name)
    generated_set = property(lambda self: "memory" if self.generated.sequential else "batch")
    normalization = property(lambda self: self.step_size.normalization)
    sequential = property(lambda self: self.generated.sequential)
    memory = property(lambda self: getattr(self.generated, "memory", None))

    @property
    def strength(self) -> float:
        return self.step_size.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.step_size.strength = value

    # -- run state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new run: forget the resolved bandwidths, the memory and the diagnostics.
        ``sample`` calls it before every run; other drivers should too."""
        self.generated.reset()
        self._resolved: Kernel | ProductKernel | None = None
        self.data_scale: float | None = None
        self._last_prompts: Tensor | None = None
        self._window_checked_for: int | None = None  # the num_steps whose guided window was checked
        self._last_step: int | None = None  # memory mode: the last step seen, to notice a new chunk
        self._remembered = False  # memory mode: remember() called since the chunk began
        self.history: list[dict[str, float]] = []

    def remember(self, x0: Tensor, prompts: Tensor | None = None) -> None:
        """Memory mode: append finished samples (the sampler calls this after each chunk). A
        prompt-aware memory pairs them with ``prompts`` (n, P), by default those of the chunk just
        guided; samples without them (a memory seeded before any step) are refused."""
        self._check_finished(x0)
        rp = self.reference_set.prompts
        if rp is None and prompts is not None:
            raise ValueError("prompts were given but this guidance has no reference_prompts")
        if rp is not None:
            _refuse_non_features(prompts, "prompts")  # strings were 'must be a torch.Tensor or numpy array'
            prompts = self._last_prompts if prompts is None else check_points(prompts, "prompts")
            if prompts is None or prompts.shape != (len(x0), rp.shape[1]):
                got = "none" if prompts is None else f"shape {tuple(prompts.shape)}"
                raise ValueError(f"a prompt-aware memory pairs each finished sample with its prompt features: "
                                 f"remember(x0, prompts) needs prompts of shape ({len(x0)}, {rp.shape[1]}), one row "
                                 f"per row of x0; got {got} (without prompts=, those of the chunk just guided)")
            self._kernel()._prep(prompts, "prompts")  # a zero row failed at the next step, as 'prompt features'
        self.generated.remember(x0, prompts)
        self._remembered = True

    def _check_finished(self, x0: Any) -> None:
        """remember's x0: (n, *S) (or flat (n, D)) finite samples of the references' space. One of another
        size failed in a bare torch.cat at the next remember or step, a list in a bare AttributeError,
        and NaN in the memory made every later step NaN, blamed on the strength."""
        if not isinstance(x0, Tensor) or x0.ndim < 2 or len(x0) == 0:
            got = f"shape {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(f"remember(x0) takes the chunk's finished samples, an (n, *S) tensor with n >= 1; got {got}")
        if x0.ndim > 2 or x0[0].numel() != self.reference_set.dim:
            self.reference_set.check_samples(x0, "remember's x0")
        if not all_finite(x0):
            raise ValueError("remember(x0): the finished samples hold NaN/Inf; the memory would make every later "
                             "step NaN")

    # -- the correction ----------------------------------------------------------------------------
    def __call__(self, state: Any) -> Tensor:
        """The corrected x_{t-1} for the sampler's step ``state`` (a StepState)."""
        _check_state(state, self.eval_point)
        self.reference_set.check_samples(state.x_prev, "the sampler's samples")
        if self.sequential:
            self._check_remembered(state.step_index)
        if self._window_checked_for != state.num_steps:  # a window with no step would guide nothing
            self.step_size.check_window(state.num_steps)
            self._window_checked_for = state.num_steps
        weight = self.step_size.weight(state.step_index, state.num_steps, state.alpha_bar_t)
        if weight == 0:
            return state.x_prev
        first = self.data_scale is None  # the run's first guided step: x_t's scale is checked once
        check_input_scales(state, self.reference_set.mean_square, first)
        n = len(state.x_prev)
        dtype = work_dtype(state.x_prev, self.reference_set.flat)
        prompts = self._prompts_for(state, n)
        self._last_prompts = prompts
        loc = self.point.locate(state, dtype)
        refs = self.reference_set.on(loc.z)
        rp = self.reference_set.prompts_on(loc.z)
        kernel = self._kernel_for(state, loc.z, refs, prompts, rp, dtype)
        if self.rff is not None:
            g_z = self.generated.gradient_rff(loc.z, self.rff)
        else:
            g_z = self.generated.gradient(loc.z, refs, kernel, prompts, rp, self.estimator,
                                          self.chunk_size, self.prompt_weighting)
        if g_z is None:  # memory mode's first sample
            return state.x_prev
        grad_x = loc.pull_back(g_z)  # (B, D)
        base = state.x_prev.reshape(n, -1).to(dtype)  # (B, D)
        disp = self.generated.size(n) * _displacement(kernel)
        landing = 1.0 if self.eval_point == "x_prev" else (  # x_{t-1} units per unit of x_t
            float(getattr(state, "input_scale", 1.0)) / float(getattr(state, "input_scale_prev", 1.0)))
        step = self.step_size.step(grad_x, base, weight, disp, loc.scale, self.data_scale, landing)
        out = base - step  # (B, D)
        self._check(state, base, out, weight)
        result = out.to(state.x_prev.dtype)
        if self.track:  # the step as applied: a bfloat16 x_prev can round a small step away
            applied = step if result.dtype == out.dtype else base - result.to(dtype)
            self.history.append(dict(step=state.step_index, t=float(state.t), weight=weight,
                                     grad_norm=float(grad_x.norm(dim=1).mean()),
                                     step_norm=float(applied.norm(dim=1).mean()),
                                     x_norm=float(base.norm(dim=1).mean())))
        return result.reshape(state.x_prev.shape)

    def _check_remembered(self, step_index: int) -> None:
        """Memory mode: a chunk that starts over (a step index below the last one) after a chunk
        that was never ``remember``-ed would be guided against an empty or stale memory, silently."""
        if self._last_step is not None and step_index < self._last_step:
            if not self._remembered:
                raise ValueError(
                    f"generated_set='memory' guides each chunk against the finished samples it was given: call "
                    f"guidance.remember(x0_chunk) after each chunk's last step (a new chunk began at step {step_index} "
                    "without it), and guidance.reset() before each run; sample() does both")
            self._remembered = False
        self._last_step = step_index

    def gradient(self, z: Tensor, prompts: Tensor | None = None) -> Tensor:
        """grad of MMD^2 w.r.t. generated points z (B, D) against the references, with this
        guidance's kernel (resolved from z and the references when data-dependent); with
        ``rff_features`` the reference term is the random-feature one, as in the hook's steps.
        Image-shaped z (B, *S) must have the references' per-sample shape S, as in the hook
        (another layout of the same size, e.g. channels-last, was flattened silently), and the
        gradient comes back in z's shape."""
        shape = tuple(z.shape) if isinstance(z, (Tensor, np.ndarray)) else None
        if shape is not None and len(shape) > 2:
            self.reference_set.check_samples(z, "the points z")
        z = check_points(z, "z")
        refs = self.reference_set.on(z)
        check_pair(z, refs, "z", "references")
        # prompt features in the dtype the gradient is computed in (the references' work dtype), as in
        # the hook: float32 z against float64 references had float32 prompts, and the conditional
        # weighting failed in a bare 'addmv input tensors must have the same dtype'
        rp = self.reference_set.prompts_on(refs)
        if rp is not None:  # prompt-aware: one prompt feature row per point
            if prompts is None:
                raise ValueError(f"this guidance is prompt-aware (reference_prompts {tuple(rp.shape)}): pass "
                                 f"prompts of shape ({len(z)}, {rp.shape[1]}), one per row of z")
            _refuse_non_features(prompts, "prompts")  # strings were 'must be a torch.Tensor or numpy array'
            prompts = check_points(prompts, "prompts")
            if prompts.shape != (len(z), rp.shape[1]):
                raise ValueError(f"prompts must have shape ({len(z)}, {rp.shape[1]}), one per row of z with the "
                                 f"reference prompts' features; got {tuple(prompts.shape)}")
            prompts = prompts.to(rp)  # z's device, as the references
            self._kernel()._prep(prompts, "prompts")  # a zero row was refused as 'prompt features ...'
        elif prompts is not None:
            raise ValueError("prompts were given but this guidance has no reference_prompts")
        if self.rff is not None:  # never prompt-aware
            g = self.generated.gradient_rff(z.to(refs.dtype), self.rff)
        else:
            kernel = self._resolve(self._kernel(), self.generated.pool(z), refs, prompts, rp)
            g = self.generated.gradient(z.to(refs.dtype), refs, kernel, prompts, rp,
                                        self.estimator, self.chunk_size, self.prompt_weighting)
        g = torch.zeros_like(z) if g is None else g
        return g.reshape(shape) if shape is not None else g

    def _kernel(self) -> Kernel | ProductKernel:
        if self.reference_set.prompts is None:
            return self.kernel
        return ProductKernel(self.prompt_kernel, self.kernel)  # type: ignore[arg-type]

    def _resolve(self, kernel, pool: Tensor, refs: Tensor, prompts, rp):
        """Fix data-dependent bandwidths from the pooled points and the references."""
        if isinstance(kernel, ProductKernel):
            kp = kernel.prompt_kernel
            if prompts is not None and rp is not None:
                kp = kp.resolve(kernel._prep(prompts), kernel._prep(rp))
            return replace(kernel, prompt_kernel=kp, sample_kernel=checked_resolve(kernel.sample_kernel, pool, refs))
        return checked_resolve(kernel, pool, refs)

    def _kernel_for(self, state, z, refs, prompts, rp, dtype):
        """The resolved kernel for this step: once per run (default) or at every step."""
        if self._resolved is None or self.bandwidth_update == "step":
            noisy = None  # pooled once per run: a DistributedBatchSet's pool() is an all-gather
            if self.data_scale is None or self.bandwidth_update == "run":
                noisy = self.generated.pool(self.point.noisy_point(state, dtype))
            if self.data_scale is None:
                self.data_scale = median_bandwidth(noisy, refs)
                _warn_off_scale(noisy, refs)
            pool = noisy if self.bandwidth_update == "run" else self.generated.pool(z)
            self._resolved = self._resolve(self._kernel(), pool, refs, prompts, rp)
        return self._resolved

    def _check(self, state: Any, base: Tensor, out: Tensor, weight: float) -> None:
        """Refuse NaN/Inf and samples thrown far outside the data (a blow-up, not a sample). One
        distance per sample settles the usual step: a sample with NaN/Inf has none <= the limit."""
        rs = self.reference_set
        c_prev = float(getattr(state, "input_scale_prev", 1.0))
        ab = min(max(float(getattr(state, "alpha_bar_prev", 1.0)), 0.0), 1.0)
        centre = rs.centre_on(out) * math.sqrt(ab)
        spread = max(rs.radius, self.data_scale or 0.0)  # concentrated references: the batch's scale
        limit = DIVERGENCE_FACTOR * (math.sqrt(ab) * spread + math.sqrt(1 - ab) * (math.sqrt(rs.dim) + 4))
        dist = (c_prev * out - centre).norm(dim=1)  # (B,)
        if bool((dist <= limit).all()):
            return
        knobs = (f"strength={self.strength:g}, normalization={self.normalization!r}, "
                 f"eval_point={self.eval_point!r}")
        if not all_finite(out):
            raise GuidanceDivergenceError(
                f"MMD guidance produced NaN/Inf at step {state.step_index} (t={state.t}; {knobs}); "
                f"{self._remedy()}")
        far = dist > limit  # (B,)
        if bool(far.any()):
            was = (c_prev * base - centre).norm(dim=1) > limit  # the scheduler's own proposal
            blown = far & ~was
            if bool(blown.any()):
                raise GuidanceDivergenceError(
                    f"MMD guidance threw {int(blown.sum())} of {len(out)} samples more than "
                    f"{DIVERGENCE_FACTOR:g} data scales from the references at step "
                    f"{state.step_index} ({knobs}); {self._remedy()}")

    def _remedy(self) -> str:
        """What to change after a blow-up, given the knobs in use."""
        if self.normalization != "clipped":
            return "lower strength, or use normalization='clipped'"
        advice = ("lower strength or clip_fraction / clip_norm, and check that the references are on the "
                  "model's data scale (prepared like its training data, e.g. in [-1, 1] or VAE-encoded)")
        if self.eval_point in ("x_t", "x_prev"):  # data far from unit scale: the noisy points mislead
            advice += ("; for data far from unit scale (a model trained on it as it is), evaluate the kernel "
                       "at the data's own scale with eval_point='x0_hat'")
        return advice

    def _prompts_for(self, state: Any, n: int) -> Tensor | None:
        if self.reference_set.prompts is None:
            return None
        cond = getattr(state, "cond", None)
        if self.sample_prompts is not None:
            index = getattr(state, "sample_index", None)
            integer = isinstance(index, Tensor) and not (index.dtype.is_floating_point or index.dtype.is_complex
                                                         or index.dtype == torch.bool)
            if not integer or index.shape != (n,) or int(index.min()) < 0:  # negative: a prompt from the end
                got = (f"shape {tuple(index.shape)}, {index.dtype}" if isinstance(index, Tensor)
                       else type(index).__name__)
                if integer and index.shape == (n,):
                    got += f", smallest {int(index.min())}"
                raise ValueError(f"sample_prompts are picked by the state's sample_index, a ({n},) long tensor of the "
                                 f"samples' indices >= 0 in the run (torch.arange({n}) for one batch); got {got}")
            top = int(index.max()) + 1
            if top > len(self.sample_prompts):
                raise ValueError(
                    f"sample_prompts has {len(self.sample_prompts)} rows but the sampler is drawing "
                    f"at least {top} samples; give one prompt per sample (n rows, in the sampler's "
                    "order), or omit sample_prompts to use the sampler's cond")
            p = self.sample_prompts[index.to(self.sample_prompts.device)]
        elif cond is not None:
            p = cond.reshape(n, -1)
            if p.shape[1:] == self.reference_set.prompts.shape[1:]:  # a zero row was 'prompt features ...'
                what = "cond (the samples' prompt features, as the guidance has no sample_prompts)"
                if not all_finite(p):  # NaN made the gradient NaN, blamed on 'the points and bandwidths'
                    raise ValueError(f"{what} contains NaN or Inf; all entries must be finite")
                self._kernel()._prep(p, what)
        else:
            raise ValueError("prompt-aware guidance needs sample_prompts= or a sampler cond; got neither")
        if p.shape[1:] != self.reference_set.prompts.shape[1:]:
            raise ValueError(f"sample prompts have {p.shape[1]} features but reference_prompts have "
                             f"{self.reference_set.prompts.shape[1]}; encode both with one encoder")
        return p.to(state.x_prev.device, self.reference_set.prompts_on(state.x_prev).dtype)  # the samples' device

    # -- presets -----------------------------------------------------------------------------------
    @classmethod
    def paper(cls, references: Tensor, strength: float = 100.0, **kwargs: Any) -> "MMDGuidance":
        """The paper's literal Eq. 5: z_{t-1} = sampler(z_t) - lambda grad_{z_t} MMD^2 with a
        constant lambda = ``strength``, a Gaussian kernel with the median bandwidth of the
        current points, no normalisation, the whole run guided, Eq. 11's joint prompt weights.
        lambda must grow like B sigma^2 to matter (the default strength scale exists for that
        reason)."""
        opts: dict[str, Any] = dict(kernel=GaussianKernel(), strength=strength, strength_scale="none",
                                    normalization="none", stop=1.0, bandwidth_update="step",
                                    prompt_weighting="joint")
        opts.update(kwargs)
        return cls(references, **opts)

    @classmethod
    def reference_code(cls, references: Tensor, alpha: float = 0.002, **kwargs: Any) -> "MMDGuidance":
        """The public reference code's variant: cubic KID kernel on x_{t-1}, norm-matched step
        alpha * ||x|| * g / ||g||, one sample at a time against a memory of <= 99 finished ones,
        the whole run guided. The step is ``alpha`` (MMDGuidance's strength): strength= is refused."""
        if "strength" in kwargs:  # it replaced alpha, which was then silently ignored
            raise TypeError(f"reference_code takes the step as alpha= (MMDGuidance's strength); got "
                            f"strength={kwargs['strength']!r}" + ("" if alpha == 0.002 else f" and alpha={alpha!r}"))
        if alpha is None or not is_real_number(alpha):  # else named 'strength', an argument not given
            raise TypeError(f"alpha must be a number in [0, 1), the step as a fraction of ||x||; "
                            f"got {_describe(alpha)}")
        if not 0 <= float(alpha) < 1:
            raise ValueError(f"alpha must be a finite number in [0, 1), the step as a fraction of ||x|| (0.002-0.1 in "
                             f"practice); got {alpha!r}")
        opts: dict[str, Any] = dict(kernel=PolynomialKernel(), strength=alpha, eval_point="x_prev",
                                    normalization="norm_matched", generated_set="memory", stop=1.0)
        opts.update(kwargs)
        return cls(references, **opts)


class ChainedGuidance:
    """Apply several guidance hooks in turn at each step; each sees the previous one's x_prev.

    With hooks evaluated at x_t the corrections add up, so two ``MMDGuidance`` hooks with a
    narrow and a wide Gaussian kernel act as one multi-scale kernel in which each bandwidth has
    its own strength (and clipping). Batch mode only (no sequential memory).
    """

    sequential = False

    def __init__(self, *hooks: Any) -> None:
        if not hooks or not all(callable(h) for h in hooks):
            raise TypeError("ChainedGuidance needs one or more callable guidance hooks; got "
                            f"{[type(h).__name__ for h in hooks]}")
        if any(getattr(h, "sequential", False) for h in hooks):
            raise ValueError("ChainedGuidance runs the batch jointly; a hook with "
                             "generated_set='memory' (sequential) cannot be chained")
        self.hooks = hooks

    def reset(self) -> None:
        for h in self.hooks:
            if hasattr(h, "reset"):
                h.reset()

    def __call__(self, state: Any) -> Tensor:
        x_prev = state.x_prev
        for k, hook in enumerate(self.hooks):
            x_prev = hook(_with_x_prev(state, x_prev))
            if not isinstance(x_prev, Tensor) or x_prev.shape != state.x_prev.shape:
                got = tuple(x_prev.shape) if isinstance(x_prev, Tensor) else type(x_prev).__name__
                raise ValueError(f"ChainedGuidance hook {k} ({type(hook).__name__}) returned {got} at step "
                                 f"{state.step_index}; each hook must return the corrected x_prev of shape "
                                 f"{tuple(state.x_prev.shape)}")
        return x_prev


def _with_x_prev(state: Any, x_prev: Tensor) -> Any:
    """A copy of ``state`` with another x_prev: a StepState (dataclass) or any duck-typed state."""
    if is_dataclass(state):
        return replace(state, x_prev=x_prev)
    new = copy.copy(state)
    new.x_prev = x_prev
    return new

"""MMD Guidance: the correction added to every reverse-diffusion step (paper Eq. 5, Alg. 1).

    z_{t-1} = sampler(z_t, t, eps_theta) - lambda_t * grad MMD^2(P_t, Q)

``MMDGuidance`` is a hook for ``mmdg_lite.sampling.sample``: given the step state it returns
the corrected x_{t-1}. Every knob is a named argument; the defaults are the paper's choices,
and the alternatives are the public reference code's (see shared/reference/method.md Sec. 3)
or the reviewers' suggestions (Tweedie x0_hat, late-only guidance).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import Tensor

from .._validation import (check_choice, check_int, check_nonnegative, check_pair, check_points,
                          check_positive)
from ..kernels import (GaussianKernel, Kernel, MultiGaussianKernel, ProductKernel)
from ..mmd import mmd2_grad
from ..rff import RFFReferenceEmbedding, mmd2_grad_rff

__all__ = ["MMDGuidance", "ChainedGuidance", "SCHEDULES", "NORMALIZATIONS", "EVAL_POINTS", "GENERATED_SETS",
           "schedule_weight"]

SCHEDULES = ("constant", "linear", "cosine", "alpha_bar", "last")
NORMALIZATIONS = ("none", "norm_matched", "clipped")
EVAL_POINTS = ("x_t", "x_prev", "x0_hat", "x0_hat_backprop")
GENERATED_SETS = ("batch", "memory")
STRENGTH_SCALES = ("batch_bandwidth", "none")


def schedule_weight(schedule: str | Callable[..., float], step_index: int, num_steps: int,
                    alpha_bar_t: float, last_fraction: float = 0.3) -> float:
    """s(t) in lambda_t = strength * s(t); u = step_index / (num_steps - 1) runs 0 (noise) -> 1.

    constant: 1. linear: u (ramps up toward the clean end). cosine: (1 - cos(pi u)) / 2.
    alpha_bar: abar_t (small while the sample is mostly noise). last: 1 on the last
    ``last_fraction`` of the steps, else 0 (the reviewers' "only late steps need guidance").
    """
    if callable(schedule):
        return float(schedule(step_index, num_steps, alpha_bar_t))
    u = step_index / max(num_steps - 1, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return u
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * u))
    if schedule == "alpha_bar":
        return float(alpha_bar_t)
    if schedule == "last":
        return 1.0 if step_index >= num_steps * (1.0 - last_fraction) - 1e-9 else 0.0
    raise ValueError(f"schedule must be one of {SCHEDULES} or a callable; got {schedule!r}")


def _displacement_scale(kernel: Kernel | ProductKernel) -> float:
    """sigma^2 for Gaussian kernels (so strength multiplies a kernel-weighted displacement)."""
    if isinstance(kernel, ProductKernel):
        kernel = kernel.sample_kernel
    if isinstance(kernel, GaussianKernel):
        return float(kernel.bandwidth) ** 2  # type: ignore[arg-type]
    if isinstance(kernel, MultiGaussianKernel):
        return 1.0 / sum(b**-2 for b in kernel.bandwidths)  # type: ignore[union-attr]
    return 1.0


class MMDGuidance:
    """Steer a sampler toward a reference set by descending MMD^2 (paper Eq. 5-6, Eq. 11).

    Args:
        references: (N_r, *S) reference samples (or latents) in the sampler's space, clean.
        kernel: sample kernel; default Gaussian with median-heuristic bandwidth (paper's
            examples and theory). ``PolynomialKernel()`` is the reference code's cubic KID kernel.
            The median is often too wide for multi-mode targets (an unwanted mode between two
            wanted ones sits where the pulls cancel): ``GaussianKernel(median_scale=0.5)`` fixed
            it on the synthetic tasks (benchmarks/results/toy_guidance.md).
        strength: c >= 0. With ``strength_scale="batch_bandwidth"`` (default) the step is
            lambda_t = c * B * sigma^2 * s(t), which makes c a fraction of the kernel-weighted
            displacement toward the references, independent of B and of the data's scale.
            At 100 DDPM steps c ~ 1-2 works unclipped; c ~ 3 unclipped throws samples off the
            modes and c >= 10 diverges, while with ``normalization="clipped"`` c = 3-30 is
            stable. With "none", lambda_t = c s(t).
            With ``normalization="norm_matched"`` it is the reference code's alpha.
        schedule: s(t): "constant" (paper's default), "linear", "cosine", "alpha_bar", "last"
            (only the last ``last_fraction`` of steps), or a callable (step, num_steps, abar).
        normalization: "none" (paper); "norm_matched": alpha * ||x|| * g / (||g|| + 1e-5) per
            sample (reference code); "clipped": the paper's step with each sample's step norm
            capped at ``clip_norm`` (data units: 0.2 suits the 2-D ring whose modes have
            std 0.1; scale it with your data).
        eval_point: where the kernel sees the sample: "x_t" before the step (paper Eq. 5);
            "x_prev" after the step, the gradient subtracted from x_{t-1} (reference code);
            "x0_hat" the Tweedie estimate (x_t - sqrt(1-abar) eps) / sqrt(abar) with eps
            detached; "x0_hat_backprop" the same with the gradient back-propagated through the
            denoiser (reviewers' suggestion: compare clean with clean).
        generated_set: "batch": the batch is guided jointly (paper, Alg. 1); "memory": one
            sample at a time against a memory of at most ``memory_size`` finished samples, the
            first sample unguided (reference code; the sampler then runs sequentially).
        estimator: "biased" V-statistic (paper) or "unbiased".
        reference_prompts / sample_prompts: (N_r, P) and (n, P) prompt features for
            prompt-aware guidance (Sec. 5): the kernel becomes k_p x k_z (Eq. 10) with
            ``prompt_kernel`` (default Gaussian, sigma 0.3, on L2-normalised features).
            Without ``sample_prompts`` the sampler's ``cond`` is used. Eq. 11 spreads the
            1/(B N_r) weights over all prompts, so each of C equally represented prompts feels
            about 1/C of the pull plain guidance gives: multiply ``strength`` by about C.
            ``mmdg_lite.prompts.CoverageGate`` switches guidance off for prompts that have no
            references (Eq. 11 would still let such samples repel each other).
        chunk_size: references per chunk (bounded memory for large reference sets).
        rff_features: beyond the paper: replace the exact reference term by F random Fourier
            features of a fixed-bandwidth Gaussian kernel; the reference mean embedding is
            computed once, so a step costs O(B F D) for any N_r (error ~ 2 sqrt(D / F), see
            benchmarks/results/rff.md). Batch mode, biased estimator, no prompts.
        track: keep per-step diagnostics in ``self.history``.
    """

    def __init__(self, references: Tensor, *, kernel: Kernel | None = None,
                 strength: float = 1.0, schedule: str | Callable[..., float] = "constant",
                 last_fraction: float = 0.3, strength_scale: str = "batch_bandwidth",
                 normalization: str = "none", clip_norm: float = 1.0,
                 eval_point: str = "x_t", generated_set: str = "batch", memory_size: int = 99,
                 estimator: str = "biased", reference_prompts: Tensor | None = None,
                 sample_prompts: Tensor | None = None, prompt_kernel: Kernel | None = None,
                 chunk_size: int | None = None, rff_features: int | None = None,
                 rff_seed: int = 0, track: bool = False) -> None:
        self.references = check_points(references, "references", flatten=False)
        self.kernel: Kernel = kernel if kernel is not None else GaussianKernel()
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a mmdg_lite Kernel (the prompt kernel is "
                            f"prompt_kernel=); got {kernel!r}")
        self.strength = check_nonnegative(strength, "strength")
        if not callable(schedule):
            check_choice(schedule, "schedule", SCHEDULES)
        self.schedule = schedule
        self.last_fraction = check_positive(last_fraction, "last_fraction")
        if self.last_fraction > 1:
            raise ValueError(f"last_fraction must be in (0, 1]; got {last_fraction!r}")
        self.strength_scale = check_choice(strength_scale, "strength_scale", STRENGTH_SCALES)
        self.normalization = check_choice(normalization, "normalization", NORMALIZATIONS)
        self.clip_norm = check_positive(clip_norm, "clip_norm")
        self.eval_point = check_choice(eval_point, "eval_point", EVAL_POINTS)
        self.generated_set = check_choice(generated_set, "generated_set", GENERATED_SETS)
        self.memory_size = check_int(memory_size, "memory_size", 1)
        self.estimator = check_choice(estimator, "estimator", ("biased", "unbiased"))
        self.chunk_size = None if chunk_size is None else check_int(chunk_size, "chunk_size", 1)
        self.reference_prompts = self.sample_prompts = None
        if reference_prompts is not None:
            self.reference_prompts = check_points(reference_prompts, "reference_prompts")
            if len(self.reference_prompts) != len(self.references):
                raise ValueError(f"reference_prompts has {len(self.reference_prompts)} rows but "
                                 f"references has {len(self.references)}; one prompt per reference")
            self.prompt_kernel = prompt_kernel if prompt_kernel is not None else GaussianKernel(0.3)
            if sample_prompts is not None:
                self.sample_prompts = check_points(sample_prompts, "sample_prompts")
                check_pair(self.sample_prompts, self.reference_prompts, "sample_prompts",
                           "reference_prompts")
        elif sample_prompts is not None or prompt_kernel is not None:
            raise ValueError("sample_prompts / prompt_kernel need reference_prompts (N_r, P); got None")
        self.rff: RFFReferenceEmbedding | None = None
        if rff_features is not None:
            bw = getattr(self.kernel, "bandwidth", None)
            if not isinstance(self.kernel, GaussianKernel) or bw is None:
                raise ValueError("rff_features needs a Gaussian kernel with a fixed bandwidth, "
                                 f"e.g. GaussianKernel(2.0); got kernel {self.kernel!r}")
            if (self.generated_set, self.estimator, self.reference_prompts) != ("batch", "biased", None):
                raise ValueError("rff_features works with generated_set='batch', estimator='biased' "
                                 f"and no prompts; got generated_set={self.generated_set!r}, "
                                 f"estimator={self.estimator!r}")
            self.rff = RFFReferenceEmbedding(self.references, bw, rff_features, seed=rff_seed)
        self.track = track
        self.history: list[dict[str, float]] = []
        self.reset()

    # -- sequential (memory) mode, driven by the sampler ------------------------------------
    @property
    def sequential(self) -> bool:
        return self.generated_set == "memory"

    def reset(self) -> None:
        """Forget finished samples and diagnostics (called by the sampler before a run)."""
        self.memory: Tensor | None = None  # (M, D) finished samples
        self.memory_prompts: Tensor | None = None  # (M, P)
        self._last_prompts: Tensor | None = None
        self.history = []

    def remember(self, x0: Tensor) -> None:
        """Append finished samples to the memory, keeping the newest ``memory_size``."""
        flat = x0.detach().reshape(len(x0), -1)
        self.memory = flat if self.memory is None else torch.cat([self.memory, flat])
        self.memory = self.memory[-self.memory_size:]
        if self._last_prompts is not None:
            mp = self._last_prompts
            self.memory_prompts = mp if self.memory_prompts is None else torch.cat([self.memory_prompts, mp])
            self.memory_prompts = self.memory_prompts[-self.memory_size:]

    # -- the correction -----------------------------------------------------------------------
    def _prompts_for(self, state: Any, n: int) -> Tensor | None:
        if self.reference_prompts is None:
            return None
        if self.sample_prompts is not None:
            top = int(state.sample_index.max()) + 1
            if top > len(self.sample_prompts):
                raise ValueError(
                    f"sample_prompts has {len(self.sample_prompts)} rows but the sampler is drawing "
                    f"at least {top} samples; give one prompt per sample (n rows, in the sampler's "
                    "order), or omit sample_prompts to use the sampler's cond")
            p = self.sample_prompts[state.sample_index.to(self.sample_prompts.device)]
        elif state.cond is not None:
            p = state.cond.reshape(n, -1)
        else:
            raise ValueError("prompt-aware guidance needs sample_prompts= or a sampler cond; got neither")
        p = check_points(p, "sample_prompts")
        check_pair(p, self.reference_prompts, "sample_prompts", "reference_prompts")
        return p

    def _kernel(self) -> Kernel | ProductKernel:
        if self.reference_prompts is None:
            return self.kernel
        return ProductKernel(self.prompt_kernel, self.kernel)

    def gradient(self, z: Tensor, prompts: Tensor | None = None) -> tuple[Tensor, float]:
        """grad of MMD^2 w.r.t. the generated points z (B, D), and the strength scale B sigma^2.

        In memory mode each row is its own generated set {z_i} + memory (reference code).
        """
        refs = self.references.reshape(len(self.references), -1).to(z)
        rp = None if self.reference_prompts is None else self.reference_prompts.to(z)
        kernel = self._kernel()
        kw = dict(estimator=self.estimator, chunk_size=self.chunk_size)
        if self.generated_set == "batch" or self.memory is None:
            if self.generated_set == "memory":  # first sample: unguided, as in the reference code
                return torch.zeros_like(z), 1.0
            kernel = kernel.resolve(z, refs)
            if self.rff is not None:
                return mmd2_grad_rff(z, self.rff), len(z) * _displacement_scale(kernel)
            g = mmd2_grad(z, refs, kernel, x_prompts=prompts, y_prompts=rp, **kw)
            return g, len(z) * _displacement_scale(kernel)
        mem = self.memory.to(z)
        kernel = kernel.resolve(torch.cat([z, mem]), refs)  # once per step (median bandwidth)
        grads = []
        for i in range(len(z)):  # each sample with the memory is one generated set
            gen = torch.cat([z[i:i + 1], mem])  # (1 + M, D)
            gp = None if prompts is None else torch.cat([prompts[i:i + 1], self.memory_prompts.to(z)])
            grads.append(mmd2_grad(gen, refs, kernel, x_prompts=gp, y_prompts=rp, **kw)[0])
        return torch.stack(grads), (1 + len(mem)) * _displacement_scale(kernel)

    def __call__(self, state: Any) -> Tensor:
        """The corrected x_{t-1} for the sampler's step ``state`` (a StepState)."""
        s = schedule_weight(self.schedule, state.step_index, state.num_steps,
                            state.alpha_bar_t, self.last_fraction)
        if self.strength == 0 or s == 0:
            return state.x_prev
        x_prev = state.x_prev
        n = len(x_prev)
        if self.references[0].numel() != x_prev[0].numel():
            raise ValueError(f"references have {self.references[0].numel()} features per sample "
                             f"(shape {tuple(self.references.shape[1:])}) but the sampler's samples "
                             f"have {x_prev[0].numel()} (shape {tuple(x_prev.shape[1:])}); they "
                             "must live in the same space (encode references with the same VAE)")
        prompts = self._prompts_for(state, n)
        self._last_prompts = prompts
        g, scale = self._point_gradient(state, prompts)  # (B, D)
        lam = self.strength * s * (scale if self.strength_scale == "batch_bandwidth" else 1.0)
        base = x_prev.reshape(n, -1)
        if self.normalization == "norm_matched":
            step = self.strength * s * base.norm(dim=1, keepdim=True) * g / (g.norm(dim=1, keepdim=True) + 1e-5)
        else:
            step = lam * g
            if self.normalization == "clipped":
                norm = step.norm(dim=1, keepdim=True)
                step = step * (self.clip_norm / norm.clamp_min(self.clip_norm))
        out = (base - step).reshape(x_prev.shape)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                f"MMD guidance produced NaN/Inf at step {state.step_index} (t={state.t}, "
                f"eval_point={self.eval_point!r}, strength={self.strength}); lower strength, "
                "or use normalization='clipped' or 'norm_matched'")
        if self.track:
            self.history.append(dict(step=state.step_index, t=float(state.t), s=s, lam=lam,
                                     grad_norm=float(g.norm(dim=1).mean()),
                                     step_norm=float(step.norm(dim=1).mean()),
                                     x_norm=float(base.norm(dim=1).mean())))
        return out

    def _point_gradient(self, state: Any, prompts: Tensor | None) -> tuple[Tensor, float]:
        """grad MMD^2 with respect to x_t (or x_{t-1}), via the chosen evaluation point."""
        n = len(state.x_t)
        if self.eval_point == "x_t":
            return self.gradient(state.x_t.reshape(n, -1), prompts)
        if self.eval_point == "x_prev":
            return self.gradient(state.x_prev.reshape(n, -1), prompts)
        ab = float(state.alpha_bar_t)
        if self.eval_point == "x0_hat":  # d x0_hat / d x_t = 1 / sqrt(abar) with eps detached
            x0 = (state.x_t - math.sqrt(1 - ab) * state.eps) / math.sqrt(ab)
            g, scale = self.gradient(x0.reshape(n, -1), prompts)
            return g / math.sqrt(ab), scale
        with torch.enable_grad():  # full vector-Jacobian product through the denoiser
            xt = state.x_t.detach().requires_grad_(True)
            t = torch.full((n,), int(state.t), dtype=torch.long, device=xt.device)
            eps = state.denoiser(xt, t, state.cond)
            x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            g0, scale = self.gradient(x0.detach().reshape(n, -1), prompts)
            (g,) = torch.autograd.grad(x0, xt, grad_outputs=g0.reshape(x0.shape))
        return g.reshape(n, -1), scale

    @classmethod
    def reference_code(cls, references: Tensor, alpha: float = 0.002, **kwargs: Any) -> "MMDGuidance":
        """The public reference code's variant: cubic KID kernel on x_{t-1}, norm-matched step
        alpha * ||x|| * g / ||g||, one sample at a time against a memory of <= 99 finished ones."""
        from ..kernels import PolynomialKernel
        opts: dict[str, Any] = dict(kernel=PolynomialKernel(), strength=alpha, eval_point="x_prev",
                                    normalization="norm_matched", generated_set="memory")
        opts.update(kwargs)
        return cls(references, **opts)


class ChainedGuidance:
    """Apply several guidance hooks in turn at each step; each sees the previous one's x_prev.

    With hooks evaluated at x_t the corrections add up, so two ``MMDGuidance`` hooks with a
    narrow and a wide Gaussian kernel act as one multi-scale kernel in which each bandwidth has
    its own strength (and clipping): the narrow one separates neighbouring modes, the wide one
    moves mass between far-apart modes. Batch mode only (no sequential memory).
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

    def __call__(self, state: Any) -> Tensor:
        x_prev = state.x_prev
        for hook in self.hooks:
            x_prev = hook(replace(state, x_prev=x_prev))
        return x_prev

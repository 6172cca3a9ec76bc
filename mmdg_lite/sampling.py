"""One reverse-process loop for every denoiser, over diffusers schedulers, with a guidance hook.

Per timestep: eps = denoiser(x_t, t, cond); x_prev = scheduler.step(eps, t, x_t).prev_sample;
if a guidance hook is given, x_prev = guidance(StepState(...)) (paper Eq. 5 / Algorithm 1 and the
reference code's after-the-step variant both fit this shape); x_t = x_prev.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from ._validation import (all_finite, check_bool, check_choice, check_int, check_nonnegative, from_numpy,
                          is_real_number)
from .seeding import check_seed, make_generator

__all__ = ["StepState", "GuidanceHook", "SampleResult", "sample", "make_scheduler", "noise_level", "noise_levels",
           "sigma_scaled", "sample_generators", "check_input_scales", "check_eps_prediction", "SCHEDULERS",
           "BETA_SCHEDULES"]

SCHEDULERS = ("ddpm", "ddim", "dpm")
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")


@dataclass
class StepState:
    """What a guidance hook sees at one reverse step (``sample`` builds it; so can your own loop).

    Every field without a default must be given. ``MMDGuidance`` needs ``denoiser`` only for
    eval_point "x0_hat_backprop", ``cond`` only when prompt-aware without sample_prompts, and
    ``sample_index`` only with sample_prompts, and says so when one it needs is missing.
    ``input_scale`` and ``input_scale_prev`` are 1 for DDPM-normalised latents (DDPM, DDIM,
    DPM-Solver); a sigma-scaled scheduler (Euler, Euler-ancestral, Karras) must pass both,
    ``noise_level(sched, timesteps, i)`` and ``noise_level(sched, timesteps, i + 1)`` give them
    with the two alpha_bars. MMDGuidance refuses such a state with one of them left at 1, but with both
    left at 1 only when its first guided step is noise-dominated (alpha_bar_t <= 1/9, where x_t's
    RMS gives the latents away): a window starting later (start=0.5, schedule="last") is guided in
    the wrong units, silently.
    """

    x_t: Tensor            # (B, *S) current noisy sample
    x_prev: Tensor         # (B, *S) the scheduler's proposal for x_{t-1} (prev_sample)
    eps: Tensor            # (B, *S) noise prediction at x_t (detached)
    t: int                 # diffusers timestep value
    step_index: int        # 0 .. num_steps-1
    num_steps: int
    alpha_bar_t: float     # scheduler.alphas_cumprod[t]
    alpha_bar_prev: float  # alphas_cumprod of the next (smaller) timestep, or final value at the end
    denoiser: Callable | None = None  # the model (for guidance that backpropagates through it)
    cond: Tensor | None = None        # (B, C) conditioning or None
    sample_index: Tensor | None = None  # (B,) long: global indices of these samples within the requested n
    input_scale: float = 1.0       # c_in: the denoiser sees c_in * x_t (scale_model_input); 1 for
    input_scale_prev: float = 1.0  # DDPM/DDIM, 1/sqrt(sigma^2 + 1) for sigma-scaled latents (Euler)


class GuidanceHook(Protocol):
    """Returns the corrected x_prev (same shape). Optional: ``reset()`` (called before every
    run), ``sequential: bool`` and ``remember(x0)`` (the reference code's one-sample-at-a-time
    memory mode)."""

    def __call__(self, state: StepState) -> Tensor: ...


@dataclass
class SampleResult:
    samples: Tensor                  # (n, *shape) final x_0
    trajectory: list[Tensor] | None  # [x_T, x_{t_1}, ..., x_0], each (n, *shape), when asked
    timesteps: Tensor                # (num_steps,) long, the diffusers timesteps visited


def make_scheduler(name: str = "ddpm", train_timesteps: int = 1000, beta_schedule: str = "linear"):
    """A fresh diffusers scheduler, no clipping: "ddpm" (DDPMScheduler, fixed_small variance),
    "ddim" (DDIMScheduler, eta from ``sample``) or "dpm" (DPMSolverMultistepScheduler, the
    deterministic second-order DPM-Solver++ 2M; it reaches DDIM-50 quality in about 25 steps)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    check_choice(name, "scheduler", SCHEDULERS)
    check_choice(beta_schedule, "beta_schedule", BETA_SCHEDULES)
    train_timesteps = check_int(train_timesteps, "train_timesteps", 2)
    if name == "ddpm":
        return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule,
                             variance_type="fixed_small", clip_sample=False)
    if name == "dpm":  # final sigma 0: the last step lands on the clean sample
        return DPMSolverMultistepScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule,
                                           algorithm_type="dpmsolver++", solver_order=2,
                                           final_sigmas_type="zero")
    # set_alpha_to_one: the last step lands on the clean sample (alpha_bar = 1)
    return DDIMScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule,
                         clip_sample=False, set_alpha_to_one=True)


def _resolve_scheduler(scheduler: Any, train_timesteps: int, beta_schedule: str):
    if isinstance(scheduler, str):
        return make_scheduler(scheduler, train_timesteps, beta_schedule)
    if not (hasattr(scheduler, "step") and hasattr(scheduler, "set_timesteps")
            and hasattr(scheduler, "alphas_cumprod")):
        raise TypeError(f"scheduler must be one of {SCHEDULERS} or a diffusers scheduler instance "
                        f"(with step, set_timesteps, alphas_cumprod); got {type(scheduler).__name__}")
    # they build a named scheduler; an instance has its own, and a value that disagrees with it was ignored
    config = getattr(scheduler, "config", None)
    own = {"train_timesteps": getattr(config, "num_train_timesteps", None),
           "beta_schedule": getattr(config, "beta_schedule", None)}
    given = (("train_timesteps", train_timesteps, 1000), ("beta_schedule", beta_schedule, "linear"))
    for name, value, default in given:
        if value != default and value != own[name]:
            if name == "train_timesteps":
                check_int(value, name, 2)
            else:
                check_choice(value, name, BETA_SCHEDULES)
            raise ValueError(f"{name}={value!r} builds a named scheduler ({', '.join(SCHEDULERS)}); the "
                             f"{type(scheduler).__name__} instance passed as scheduler has its own "
                             f"({own[name]!r}) and would ignore it: configure the instance instead")
    return copy.deepcopy(scheduler)  # the caller's scheduler keeps its state


def sample_generators(seed: int, indices: range | list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, global sample index) through numpy's
    SeedSequence (well-mixed: no two (seed, index) pairs share a stream). A sample's x_T and its
    per-step noise come from its own generator, so it does not depend on how the n samples are
    split into chunks or across processes (``mmdg_lite.distributed.sample_distributed``)."""
    check_seed(seed)
    gens = []
    for i in indices:
        state = np.random.SeedSequence(int(seed), spawn_key=(int(i),)).generate_state(1, np.uint64)
        gens.append(torch.Generator().manual_seed(int(state[0])))
    return gens


def _check_shape(shape: Any) -> tuple[int, ...]:
    """One sample's shape as a tuple of positive ints (an int n means (n,))."""
    dims = [shape] if isinstance(shape, (int, np.integer)) else shape
    try:
        ok = len(dims) > 0 and all(not isinstance(d, bool) and isinstance(d, (int, np.integer)) and d >= 1
                                   for d in dims)
    except TypeError:  # not a sequence
        ok = False
    if isinstance(shape, bool) or not ok:
        raise ValueError(f"shape must be a positive int or a tuple of positive ints (one sample's shape), "
                         f"e.g. 2 or (1, 16, 16); got {shape!r}")
    return tuple(int(d) for d in dims)


def _check_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device or its name, e.g. 'cpu' or 'cuda:0'; "
                         f"got {device!r}") from e
    if dev.type == "cuda":  # a backend this machine has, and a device index it has
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} is not available: this torch sees no CUDA device"
                             f"{'' if torch.version.cuda else ' (it was built without CUDA)'}; use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} does not exist; this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif dev.type == "meta":  # torch failed in the generator: "META device type not an accelerator"
        raise ValueError(f"device {device!r} holds shapes without values and cannot sample; use 'cpu' or 'cuda'")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine; use 'cpu'")
    return dev


def _check_dtype(dtype: Any, denoiser: Any) -> None:
    """A floating torch dtype, and the one the denoiser's parameters are in (if it has any)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, e.g. torch.float32; got {dtype!r}")
    params = getattr(denoiser, "parameters", None)
    if callable(params):
        try:
            kinds = {p.dtype for p in params() if p.dtype.is_floating_point}
        except TypeError:
            return
        if len(kinds) == 1 and dtype not in kinds:
            raise ValueError(f"dtype={dtype} but the denoiser's parameters are {kinds.pop()}: pass "
                             "that dtype, or cast the model (model.to(dtype))")


def _model_device(denoiser: Any) -> torch.device:
    for getter in ("parameters", "buffers"):
        try:
            return next(iter(getattr(denoiser, getter)())).device
        except (AttributeError, StopIteration, TypeError):
            continue
    return torch.device("cpu")


# scheduler class -> why guidance cannot run through it (any eval point)
UNSUPPORTED_SCHEDULERS = {
    "UniPCMultistepScheduler": "its corrector rebuilds each sample from the one it stored before the "
                               "guidance step, undoing the correction",
    "KDPM2DiscreteScheduler": "its second stage rebuilds each sample from the one it stored at the first, "
                              "dropping the correction (measured: a hook's shift leaves the samples as they were)",
    "KDPM2AncestralDiscreteScheduler": "its second stage rebuilds each sample from the one it stored at the first, "
                                       "dropping the correction (measured: a hook's shift leaves the samples as "
                                       "they were)",
    "DPMSolverSinglestepScheduler": "its second-order steps start from the sample it stored at the first step of "
                                    "each pair, before the guidance step, dropping the sample's correction",
}
# (scheduler class, eval point) -> why that pair cannot run
UNSUPPORTED_PAIRS = {
    ("LMSDiscreteScheduler", "x_t"): "its fourth-order history turns the correction computed at the "
                                     "previous x_t into divergence (measured); use eval_point 'x_prev' "
                                     "or 'x0_hat'",
}
WORKING_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
                      "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler")


def guidance_hooks(guidance: Any) -> list[Any]:
    """The hooks that guide: the hook itself, or a ``ChainedGuidance``'s inner hooks (nested)."""
    inner = getattr(guidance, "hooks", None)
    return [h for g in inner for h in guidance_hooks(g)] if inner is not None else [guidance]


def check_prompt_inputs(guidance: Any, n: int, first_index: int, cond: Tensor | None) -> None:
    """A prompt-aware hook (``reference_prompts``) must find a prompt for every sample: a row of its
    ``sample_prompts`` per global index, else ``cond`` with the reference prompts' width. Checked
    before any step (the hook itself only finds out at its first guided step, maybe chunks later)."""
    for h in guidance_hooks(guidance):
        rp = getattr(h, "reference_prompts", None)
        if rp is None:
            continue
        sp = getattr(h, "sample_prompts", None)
        if sp is not None:
            if len(sp) < first_index + n:
                raise ValueError(f"sample_prompts has {len(sp)} rows but the sampler draws n={n} samples"
                                 + (f" from index first_index={first_index}" if first_index else "")
                                 + "; give one prompt per sample (in the sampler's order), or omit "
                                 "sample_prompts to use cond")
        elif cond is None:
            raise ValueError("prompt-aware guidance (reference_prompts) needs each sample's prompt features: "
                             "build it with sample_prompts=, or pass cond= (read as the prompt features)")
        elif cond[0].numel() != rp.shape[1]:
            raise ValueError(f"cond has {cond[0].numel()} features per sample (shape {tuple(cond.shape)}) but "
                             f"reference_prompts has {rp.shape[1]}; the guidance reads cond as the samples' prompt "
                             "features when it has no sample_prompts: encode both with one encoder, or give "
                             "sample_prompts=")


def eval_points(guidance: Any) -> set[str]:
    """Where the hooks evaluate their kernels (``guidance_hooks``); "x_t" for one that names none."""
    return {getattr(h, "eval_point", "x_t") for h in guidance_hooks(guidance)}


def check_scheduler(sched: Any, guidance: Any) -> None:
    """Refuse a scheduler (or scheduler and eval point) that guidance cannot run through, and
    timesteps that repeat (``step`` twice per timestep: the index of a step is then ambiguous)."""
    name = type(sched).__name__
    why = UNSUPPORTED_SCHEDULERS.get(name) or next(
        (UNSUPPORTED_PAIRS[(name, p)] for p in sorted(eval_points(guidance)) if (name, p) in UNSUPPORTED_PAIRS), None)
    if why is None and _repeats(sched):
        if name in WORKING_SCHEDULERS:
            _refuse_repeats(sched)
        why = "it repeats timesteps (step runs more than once per timestep)"
    if why is None and getattr(sched, "alphas_cumprod", None) is None and getattr(sched, "sigmas", None) is None:
        # (IPNDM: the hooks failed at their first step with a bare AttributeError on alphas_cumprod)
        why = "it has neither alphas_cumprod nor sigmas, so a step's noise level cannot be read"
    if why is not None:
        raise ValueError(f"MMD guidance cannot run through {name}: {why}; schedulers checked to work with "
                         f"every eval point: {', '.join(WORKING_SCHEDULERS)}")


def _check_clip_range(sched: Any, guidance: Any) -> None:
    """A scheduler that clips its x_0 prediction (diffusers' default ``clip_sample=True``) to a range
    the references leave cannot land a sample on them: refused (it ran, every sample pinned inside)."""
    config = getattr(sched, "config", None)
    if not getattr(config, "clip_sample", False):
        return
    bound = float(getattr(config, "clip_sample_range", 1.0))
    for h in guidance_hooks(guidance):
        refs = getattr(getattr(h, "reference_set", None), "flat", None)
        top = float(refs.detach().abs().max()) if isinstance(refs, Tensor) and refs.numel() else 0.0
        if top > bound:
            raise ValueError(f"the {type(sched).__name__} passed as scheduler clips its x_0 prediction to "
                             f"[-{bound:g}, {bound:g}] (config.clip_sample=True, diffusers' default) but the "
                             f"guidance's references reach |x| = {top:.3g}, which no sample could reach: build it "
                             "with clip_sample=False (as make_scheduler and the named schedulers do)")


def _repeats(sched: Any) -> bool:
    ts = getattr(sched, "timesteps", None)
    return ts is not None and len(torch.unique(torch.as_tensor(ts))) < len(ts)


def _refuse_repeats(sched: Any) -> None:
    """A one-step-per-timestep scheduler whose spacing ran out of distinct timesteps (DPM-Solver
    at 1,000 of 1,000 steps repeats t = 500: a step of size 0, then NaN), or whose timesteps were
    given (a pipeline's ``timesteps=`` / ``sigmas=``) with a repeat."""
    ts = torch.as_tensor(sched.timesteps)
    raise ValueError(f"{type(sched).__name__}'s timesteps repeat at num_steps={len(ts)} (its spacing runs out of "
                     "distinct timesteps, or the timesteps= / sigmas= given to the pipeline repeat one; e.g. "
                     f"t={int(ts[torch.unique(ts, return_counts=True)[1].argmax()])} twice, "
                     "a step of size 0): use fewer steps, or distinct timesteps= / sigmas=")


def _check_denoiser_schedule(denoiser: Any, sched: Any) -> None:
    """A denoiser that carries its own noise schedule (the closed-form ``ExactDenoiser`` and
    ``GaussianMixtureDenoiser``) computes eps at its alphas_cumprod[t]: a scheduler with other
    ones (another beta_schedule or train_timesteps) got eps for the wrong noise level, silently."""
    own = getattr(denoiser, "alphas_cumprod", None)
    if not isinstance(own, Tensor):
        return
    kind = own.dtype if own.dtype.is_floating_point else torch.float64  # a half-precision copy rounds alike
    theirs = torch.as_tensor(sched.alphas_cumprod).detach().cpu().to(kind).double()
    own = own.detach().double().cpu()
    if own.shape != theirs.shape or not torch.allclose(own, theirs, rtol=1e-3, atol=torch.finfo(kind).tiny):
        raise ValueError(
            f"the {type(denoiser).__name__} computes eps with its own noise schedule ({len(own)} train timesteps, "
            f"alpha_bar at the last {float(own[-1]):.3g}), but the {type(sched).__name__} samples with another "
            f"({len(theirs)}, last {float(theirs[-1]):.3g}): pass the scheduler it was built with (same "
            "train_timesteps and beta_schedule), or build the denoiser from this scheduler")


def _refuse_noise_only(sched: Any, num_steps: int, n_train: int) -> None:
    """A run whose only timestep is t = 0 (DDPM / DDIM's 'leading' spacing at num_steps=1) takes
    one step at the lowest noise level: it returned x_T, pure noise, nearly unchanged."""
    ts = torch.as_tensor(sched.timesteps)
    if n_train > 1 and len(ts) > 0 and float(ts.max()) == 0:
        spacing = getattr(getattr(sched, "config", None), "timestep_spacing", None)
        raise ValueError(f"num_steps={num_steps} gives {type(sched).__name__} (timestep_spacing={spacing!r}) only the "
                         f"timestep t=0, one step at the lowest noise level, so the run would return its initial "
                         f"noise nearly unchanged: use num_steps >= 2, or a scheduler whose steps start at "
                         f"t={n_train - 1} (scheduler='dpm', or timestep_spacing='trailing')")


def check_eps_prediction(sched: Any, why: str) -> None:
    """Refuse a scheduler configured for another model output than eps (``prediction_type`` v or
    x_0): ``why`` says what expects eps (sampling hands it eps; training fits eps)."""
    name = type(sched).__name__
    kind = getattr(getattr(sched, "config", None), "prediction_type", "epsilon")
    if kind != "epsilon":
        raise ValueError(f"scheduler {name} has prediction_type={kind!r}, but {why}; pass one with "
                         f"prediction_type='epsilon', e.g. {name}.from_config(scheduler.config, "
                         "prediction_type='epsilon')")


def _check_eta(eta: float, sched: Any) -> None:
    """eta is DDIM's: DDPM, DPM-Solver, Euler... ignored it silently."""
    if eta > 0 and "eta" not in inspect.signature(sched.step).parameters:
        raise ValueError(f"eta={eta:g} is DDIM's noise level, but {type(sched).__name__}.step takes no eta; "
                         "use scheduler='ddim', or eta=0")


def sample(denoiser: Callable, n: int, shape: tuple[int, ...] | int, *, scheduler: Any = "ddpm",
           num_steps: int = 100, guidance: GuidanceHook | None = None, cond: Tensor | None = None,
           seed: int = 0, generator: torch.Generator | None = None, batch_size: int | None = None,
           return_trajectory: bool = False, progress: bool = False,
           device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
           train_timesteps: int = 1000, beta_schedule: str = "linear", eta: float = 0.0,
           per_sample_seed: bool = False, first_index: int = 0) -> SampleResult:
    """Draw n samples of ``shape`` by the reverse process of ``scheduler`` with optional guidance.

    ``scheduler``: "ddpm", "ddim", "dpm" (built from ``train_timesteps``/``beta_schedule``) or a
    diffusers scheduler instance (deep-copied; it keeps its own train timesteps and betas, and its
    prediction_type must be "epsilon"). A denoiser that carries ``alphas_cumprod`` (the closed-form
    ones) must share the scheduler's. The initial noise for all n samples is drawn first from the
    seeded generator (``generator`` overrides ``seed``), then chunks of ``batch_size`` run in turn.
    A stochastic scheduler (DDPM, DDIM with eta > 0) draws each step's noise from that one
    generator chunk by chunk, so its samples depend on ``batch_size``; deterministic ones (DDIM
    with eta 0, DPM-Solver) do not. For samples independent of the chunking use ``per_sample_seed``.
    A hook with ``sequential=True`` gets ``reset()`` once, runs in chunks of ``batch_size``
    (default 1) and gets ``remember(x0_chunk)`` after each chunk. The hook is called outside
    ``no_grad``, so it may backpropagate through ``state.denoiser``.

    ``per_sample_seed=True``: sample i (global index ``first_index + i``) draws its x_T and every
    step's noise from its own CPU generator seeded by (seed, global index) (``sample_generators``),
    so the samples do not depend on the chunking, the device or the number of processes (up to
    the float rounding of batched arithmetic: ~1e-12 in float64; in float32 the ~1e-7 rounding
    differences can grow over the steps, to ~1e-3 for a few of 1,000 samples after 50 guided steps).
    ``first_index`` also offsets ``StepState.sample_index`` (a shard of a larger global batch).
    This holds without guidance: a batch-joint hook (``generated_set="batch"``) guides each chunk
    of ``batch_size`` as its own generated set (Eq. 6 over that chunk), so guided samples do depend
    on ``batch_size`` (only run-level settings, the bandwidths and data scale read at the first
    guided step, carry over between chunks). To guide all n jointly while the model sees fewer
    rows at a time, wrap it in ``mmdg_lite.distributed.MicroBatched(denoiser, rows)``.

    ``dtype``: x_T is drawn in float32 and cast, so a float64 (or half) run starts from the same
    noise as a float32 one and a deterministic scheduler (DDIM with eta 0, DPM-Solver) gives the
    same samples up to rounding. A stochastic one draws each step's noise inside diffusers in
    the samples' dtype, so its float64 samples are another draw.

    With ``guidance`` the scheduler must be one the correction survives (``WORKING_SCHEDULERS``:
    DDPM, DDIM, Euler, Euler-ancestral, DPM-Solver++); UniPC, KDPM2 (and ancestral), singlestep
    DPM-Solver, the repeating second-order
    ones (Heun, PNDM) and LMS with eval point "x_t" are refused (``check_scheduler``). ``eta`` is
    DDIM's and refused elsewhere.
    """
    n = check_int(n, "n", 1)
    shape = _check_shape(shape)
    num_steps = check_int(num_steps, "num_steps", 1)
    eta = check_nonnegative(eta, "eta")
    first_index = check_int(first_index, "first_index", 0)
    for flag, name in ((per_sample_seed, "per_sample_seed"), (return_trajectory, "return_trajectory"),
                       (progress, "progress")):
        check_bool(flag, name)
    check_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (or None to use seed=); got {generator!r}")
    if per_sample_seed and generator is not None:
        raise ValueError("per_sample_seed=True draws from generators seeded by (seed, sample index); "
                         "pass seed=, not generator=")
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x_t, t, cond); got {type(denoiser).__name__}")
    if guidance is not None and not callable(guidance):
        raise TypeError("guidance must be callable as guidance(state) -> x_prev; "
                        f"got {type(guidance).__name__}")
    sequential = bool(getattr(guidance, "sequential", False)) if guidance is not None else False
    if batch_size is None:
        batch_size = 1 if sequential else n
    batch_size = check_int(batch_size, "batch_size", 1)
    if sequential and batch_size >= n and float(getattr(guidance, "strength", 1.0) or 0.0) > 0:
        raise ValueError(f"a sequential (memory-mode) guidance guides each chunk against the samples finished "
                         f"before it, and the first chunk against none; batch_size={batch_size} with n={n} is "
                         "one chunk, so nothing would be guided: use batch_size < n (1, the default, is the "
                         "reference code's one sample at a time)")
    # the hooks (a ChainedGuidance's members too) whose generated set is the sampler's batch; one that
    # spans more (DistributedBatchSet: the global batch) checks its own size
    unbiased = any(getattr(h, "estimator", None) == "unbiased"
                   and getattr(getattr(h, "generated", None), "per_batch", True) for h in guidance_hooks(guidance))
    if (unbiased and not sequential
            and (min(batch_size, n) == 1 or n % batch_size == 1)):  # checked before any step runs
        if n == 1:  # n % batch_size is 0 here: the advice below would not apply
            why, fix = "n=1 is one batch of 1", "draw n >= 2"
        elif batch_size == 1:
            why, fix = "batch_size=1 makes every batch 1 sample", "use batch_size >= 2"
        else:
            why, fix = f"n={n} with batch_size={batch_size} leaves a last batch of 1", \
                "choose n and batch_size with n % batch_size != 1"
        raise ValueError(f"estimator='unbiased' leaves out the i = i' pairs, so every guided batch needs at least 2 "
                         f"samples; {why}: {fix}, or use estimator='biased'")
    device = _check_device(device) if device is not None else _model_device(denoiser)
    _check_dtype(dtype, denoiser)
    if cond is not None:
        if isinstance(cond, np.ndarray):  # read as a tensor, as the references are
            cond = from_numpy(cond)
        if not isinstance(cond, Tensor) or cond.ndim < 1 or cond.shape[0] != n:
            got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"cond must be a tensor with one row per sample, shape ({n}, C); got {got} "
                             "(for one condition for all samples use cond.expand(n, -1))")
        # contiguous: the model's matmul sums in an order that depends on the layout, so the same values
        # transposed or expanded gave other last bits (a copy only for such layouts)
        cond = cond.to(device).contiguous()
    if guidance is not None:
        check_prompt_inputs(guidance, n, first_index, cond)

    sched = _resolve_scheduler(scheduler, train_timesteps, beta_schedule)
    check_eps_prediction(sched, "sample() hands it the denoiser's noise prediction eps (as MLPDenoiser and "
                                "train_denoiser give)")  # its step would read eps as v or x_0
    n_train = int(getattr(getattr(sched, "config", None), "num_train_timesteps", num_steps))
    if num_steps > n_train:
        raise ValueError(f"num_steps must be <= the scheduler's num_train_timesteps={n_train}; "
                         f"got {num_steps}")
    sched.set_timesteps(num_steps)
    _refuse_noise_only(sched, num_steps, n_train)
    if guidance is not None:  # schedulers that undo or mis-scale the correction, repeated timesteps
        check_scheduler(sched, guidance)
        _check_clip_range(sched, guidance)
    elif _repeats(sched) and type(sched).__name__ in WORKING_SCHEDULERS:
        _refuse_repeats(sched)
    _check_denoiser_schedule(denoiser, sched)
    timesteps = sched.timesteps.clone()
    step_params = inspect.signature(sched.step).parameters
    _check_eta(eta, sched)
    if per_sample_seed:  # one stream per sample: x_T, then the steps' noise (a list for diffusers)
        gen: Any = sample_generators(seed, range(first_index, first_index + n))
        x_T = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gen]).to(device, dtype)
    else:
        gen = generator if generator is not None else make_generator(seed, device)
        # drawn in float32 and cast, as the per-sample path above: torch draws other numbers in float64
        x_T = torch.randn((n, *shape), generator=gen, device=gen.device, dtype=torch.float32).to(device, dtype)
    x_T = x_T * getattr(sched, "init_noise_sigma", 1.0)

    if guidance is not None and hasattr(guidance, "reset"):
        guidance.reset()  # a new run: run-level state (bandwidths, memory) starts afresh
    chunks = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(chunks) * len(timesteps), desc="sampling")
    finals, trajs = [], []
    try:
        for lo, hi in chunks:
            idx = torch.arange(lo, hi, device=device) + first_index  # (b,) global indices
            cond_chunk = cond[lo:hi] if cond is not None else None  # (b, C)
            gen_chunk = gen[lo:hi] if per_sample_seed else gen
            # a fresh copy per chunk: multistep solvers (DPM-Solver) keep a step index and past
            # model outputs, which must not carry over from the previous chunk
            x0, traj = _run_chunk(denoiser, copy.deepcopy(sched), timesteps, x_T[lo:hi], cond_chunk, idx,
                                  gen_chunk, eta, step_params, guidance, return_trajectory, bar)
            if sequential and hasattr(guidance, "remember"):
                guidance.remember(x0)
            finals.append(x0)
            trajs.append(traj)
    finally:
        if bar is not None:
            bar.close()
    samples = torch.cat(finals)
    trajectory = None
    if return_trajectory:  # per step, the chunks joined back into (n, *S)
        trajectory = [torch.cat([tr[k] for tr in trajs]) for k in range(len(trajs[0]))]
    return SampleResult(samples=samples, trajectory=trajectory, timesteps=timesteps)


def sigma_scaled(sched: Any) -> bool:
    """Whether ``sched`` keeps sigma-scaled latents x_t = x_0 + sigma eps (Euler, Karras, EDM: one
    sigma per step plus the final one, and initial noise of std > 1) rather than DDPM-normalised
    ones. DPM-Solver has ``sigmas`` too, but DDPM-normalised latents (init_noise_sigma = 1)."""
    sigmas, timesteps = getattr(sched, "sigmas", None), getattr(sched, "timesteps", None)
    return sigmas is not None and timesteps is not None and len(sigmas) == len(timesteps) + 1 \
        and float(getattr(sched, "init_noise_sigma", 1.0)) > 1.0


# config flags by which a DDPM-normalised multistep scheduler (DPM-Solver, DEIS, ...) spaces its sigmas
_SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


def _own_sigma_spacing(sched: Any, timesteps: Tensor) -> bool:
    """Whether ``sched`` keeps DDPM-normalised latents with sigmas of its own spacing (DPM-Solver
    with Karras, exponential, beta or Lu lambda sigmas): its timesteps are rounded from those
    sigmas, so alphas_cumprod[t] is not the noise level its step uses (x0_hat was off by ~1e-2)."""
    sigmas, config = getattr(sched, "sigmas", None), getattr(sched, "config", None)
    return sigmas is not None and len(sigmas) == len(timesteps) + 1 \
        and any(bool(getattr(config, flag, False)) for flag in _SIGMA_SPACINGS)


def noise_level(sched: Any, timesteps: Tensor, i: int) -> tuple[float, float]:
    """(alpha_bar, c_in) at step i of ``timesteps`` (i = len means the end of the run).

    Sigma-scaled schedulers (``sigma_scaled``: Euler, Karras; x_t = x_0 + sigma eps): alpha_bar =
    1/(1 + sigma^2) and c_in = 1/sqrt(1 + sigma^2), the factor scale_model_input applies. The
    others (DDPM, DDIM, DPM-Solver): alpha_bar = alphas_cumprod[t] (the scheduler's final value,
    or 1, at the end) and c_in = 1; but 1/(1 + sigma^2), as its own step reads it, for one whose
    config spaces its sigmas itself (``use_karras_sigmas`` and the like: timesteps rounded from them).
    i outside 0..len(timesteps) is refused: -1 read the last step's level (or the end's) and len + 1
    the end's, silently, or failed in a bare IndexError.
    """
    i = check_int(i, "i (the step's index into timesteps)", 0)
    if i > len(timesteps):
        raise ValueError(f"i must be from 0 to len(timesteps) = {len(timesteps)} (the run's end); got {i}")
    return _noise_levels(sched, timesteps, [i])[0]


def noise_levels(sched: Any, timesteps: Tensor) -> list[tuple[float, float]]:
    """``noise_level(sched, timesteps, i)`` for every i = 0..len(timesteps), read in one pass: a
    guided run needs two per step, and each lookup's scheduler inspection cost ~25 us."""
    return _noise_levels(sched, timesteps, list(range(len(timesteps) + 1)))


def _noise_levels(sched: Any, timesteps: Tensor, steps: list[int]) -> list[tuple[float, float]]:
    if sigma_scaled(sched):
        return [(1.0 / (1.0 + s * s), 1.0 / math.sqrt(1.0 + s * s)) for s in sched.sigmas[steps].tolist()]
    if _own_sigma_spacing(sched, timesteps):  # DDPM-normalised: alpha_t = 1/sqrt(1 + sigma^2), as its own step
        return [(1.0 / (1.0 + s * s), 1.0) for s in sched.sigmas[steps].tolist()]
    n = len(timesteps)
    ts = timesteps[[i for i in steps if i < n]].tolist()
    inside = iter(sched.alphas_cumprod[[int(t) for t in ts]].tolist())
    final = getattr(sched, "final_alpha_cumprod", None)
    end = 1.0 if final is None else float(final)  # the scheduler's final value, or 1, at the end
    return [(next(inside) if i < n else end, 1.0) for i in steps]


def state_number(value: Any) -> Any:
    """A StepState number given as a one-element tensor (a scheduler's entry) as a float; anything
    else as it is (the hooks' checks then refuse what is not a number)."""
    return float(value) if isinstance(value, Tensor) and value.numel() == 1 else value


def check_state_timestep(t: Any) -> None:
    """A hand-built state's ``t``: a number or a one-element tensor (a (B,) tensor failed in bare
    torch errors inside the hooks)."""
    if not (is_real_number(t) or (isinstance(t, Tensor) and t.numel() == 1)):
        got = f"tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"state.t must be the step's diffusers timestep, a number or a one-element tensor (int(t) "
                        f"for the loop's t); got {got}")


def check_input_scales(state: Any, data_ms: float = 1.0, first: bool = True) -> None:
    """Refuse a sigma-scaled step (Euler: x_t = x_0 + sigma eps) whose state lacks its
    ``input_scale`` factors: the hook then measures every distance and step in the wrong units.
    For such latents c_in = sqrt(alpha_bar) (``sampling.noise_level``), so such an input_scale with
    input_scale_prev left at 1 before the end is inconsistent (and the reverse); and at the first guided step an
    x_t whose RMS is 1/sqrt(alpha_bar_t) times the DDPM-normalised one looks sigma-scaled (data_ms:
    the clean data's mean square per coordinate, e.g. the references'; 1 for unit-scale data)."""
    c_in = float(getattr(state, "input_scale", 1.0))
    c_prev = float(getattr(state, "input_scale_prev", 1.0))
    ab, ab_prev = float(state.alpha_bar_t), float(getattr(state, "alpha_bar_prev", 1.0))
    how = ("pass both input_scale and input_scale_prev (scheduler.scale_model_input's factor at this step and "
           "the next, 1/sqrt(sigma^2 + 1); mmdg_lite.sampling.noise_level(scheduler, timesteps, i) and (..., i + 1) "
           "give them)")
    sigma_scaled = c_in != 1.0 and abs(c_in - math.sqrt(max(ab, 0.0))) <= 0.01 * c_in
    if sigma_scaled and c_prev == 1.0 and ab_prev < 1.0 - 1e-6:
        raise ValueError(f"state.input_scale={c_in:.4g} (sigma-scaled latents) but input_scale_prev is 1 at step "
                         f"{state.step_index}, where alpha_bar_prev={ab_prev:.4g} implies {math.sqrt(ab_prev):.4g}: "
                         + how)
    prev_scaled = c_prev != 1.0 and abs(c_prev - math.sqrt(max(ab_prev, 0.0))) <= 0.01 * c_prev
    if prev_scaled and c_in == 1.0 and ab < 1.0 - 1e-6:  # the same mix-up the other way round
        raise ValueError(f"state.input_scale_prev={c_prev:.4g} (sigma-scaled latents) but input_scale is 1 at step "
                         f"{state.step_index}, where alpha_bar_t={ab:.4g} implies {math.sqrt(max(ab, 0.0)):.4g}: " + how)
    if first and c_in == 1.0 and 0.0 < ab <= 1.0 / 9.0:
        x = float(state.x_t.detach().double().pow(2).mean().sqrt())
        expected = math.sqrt(ab * data_ms + 1.0 - ab)  # RMS of DDPM-normalised x_t at this noise level
        if x > 3.0 * expected and abs(math.log(x * math.sqrt(ab) / expected)) < math.log(2.0):
            raise ValueError(
                f"x_t has RMS {x:.3g} at step {state.step_index}, but at alpha_bar_t={ab:.3g} DDPM-normalised points "
                f"have RMS about {expected:.3g}: these look like sigma-scaled latents (Euler, Karras: x_t = x_0 + "
                f"sigma eps, RMS {expected / math.sqrt(ab):.3g} here) with state.input_scale left at 1; " + how)


def _run_chunk(denoiser, sched, timesteps, x, cond, idx, gen, eta, step_params, guidance,
               keep_traj, bar) -> tuple[Tensor, list[Tensor]]:
    """The loop proper for one chunk of samples x (b, *S)."""
    traj = [x.clone()] if keep_traj else []
    kwargs: dict[str, Any] = {}
    if "generator" in step_params:
        kwargs["generator"] = gen
    if "eta" in step_params:
        kwargs["eta"] = eta
    num_steps = len(timesteps)
    levels = noise_levels(sched, timesteps) if guidance is not None else []  # (alpha_bar, c_in) per step
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)  # (b,)
            model_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            eps = denoiser(model_in, t_batch, cond).detach()  # (b, *S)
            if eps.shape != x.shape:
                raise ValueError(f"the denoiser returned shape {tuple(eps.shape)} at step {i} (t={int(t)}); "
                                 f"expected {tuple(x.shape)}, the shape of x_t")
            x_prev = sched.step(eps, t, x, **kwargs).prev_sample  # (b, *S)
        proposal = x_prev
        if guidance is not None and not all_finite(x_prev):  # the model's NaN, not the hook's
            _raise_non_finite(i, int(t), eps, proposal, x_prev, idx)
        if guidance is not None:
            (ab, c_in), (ab_prev, c_prev) = levels[i], levels[i + 1]
            state = StepState(x_t=x, x_prev=x_prev, eps=eps, t=int(t), step_index=i, num_steps=num_steps,
                              alpha_bar_t=ab, alpha_bar_prev=ab_prev, denoiser=denoiser, cond=cond,
                              sample_index=idx, input_scale=c_in, input_scale_prev=c_prev)
            x_prev = guidance(state)
            if not isinstance(x_prev, Tensor) or x_prev.shape != x.shape:
                got = tuple(x_prev.shape) if isinstance(x_prev, Tensor) else type(x_prev).__name__
                raise ValueError(f"the guidance hook returned {got} at step {i} (t={int(t)}); "
                                 f"it must return the corrected x_prev of shape {tuple(x.shape)}")
            x_prev = x_prev.detach()
        if not all_finite(x_prev):
            _raise_non_finite(i, int(t), eps, proposal, x_prev, idx)
        x = x_prev
        if keep_traj:
            traj.append(x.clone())
        if bar is not None:
            bar.update(1)
    return x, traj


def _raise_non_finite(i: int, t: int, eps: Tensor, proposal: Tensor, x_prev: Tensor, idx: Tensor) -> None:
    if not bool(torch.isfinite(eps).all()):
        where = "the denoiser's noise prediction"
    elif not bool(torch.isfinite(proposal).all()):
        where = "the scheduler step"
    else:
        where = "the guidance hook (lower its strength or normalise its step)"
    bad = (~torch.isfinite(x_prev)).reshape(x_prev.shape[0], -1).any(1)  # (b,)
    raise FloatingPointError(
        f"sampling produced NaN/Inf at step {i} (t={t}) in {where}; "
        f"{int(bad.sum())} sample(s) affected, e.g. sample index {int(idx[bad][0])}"
    )

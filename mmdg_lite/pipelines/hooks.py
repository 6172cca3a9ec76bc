"""MMD guidance inside diffusers pipelines, without forking them: two hooks, one guidance object.

* ``MMDGuidanceCallback``: a ``PipelineCallback`` for ``callback_on_step_end``. The pipeline
  calls it after ``scheduler.step`` (under ``no_grad``) with latents = x_{t-1}; it returns the
  corrected latents. "x_prev" evaluation needs nothing else; "x_t" evaluation uses the latents
  the callback returned at the previous step, and at step 0 the pipeline's initial latents,
  recorded by ``watch(pipe)`` (a wrapper of ``pipe.prepare_latents``) or given as
  ``initial_latents``.
* ``GuidedSchedulerStep``: replaces ``scheduler.step`` by a wrapper with the same signature
  (pipelines inspect it for ``eta``/``generator``) that sees x_t and the CFG-combined noise
  prediction before the update, so "x0_hat" (Tweedie) evaluation needs no second UNet call;
  "x_t" and "x_prev" work there too.

Both build a ``StepState`` in the DDPM-normalised convention of ``mmdg_lite.guidance``: for
sigma-scaled schedulers (Euler-type, SDXL's default) the input scale is 1/sqrt(sigma^2 + 1)
and alpha_bar = 1/(1 + sigma^2) (EDM schedulers too, whose own scale_model_input uses their
sigma_data instead of 1; their preconditioned model output gives x0_hat through
``precondition_outputs``). Guidance computes half-precision latents in float32 and
returns them in the pipeline's dtype. Schedulers checked to move the samples toward the
references with every eval point: DDIM, DDPM, Euler, Euler-ancestral, DPM-Solver++ multistep;
LMS with x_prev and x0_hat. Refused (``ValueError`` naming the scheduler): those that repeat a
timestep (PNDM, Heun, KDPM2: ``step`` runs twice per timestep), UniPC (its corrector rebuilds
each sample from the one it stored before the guidance step, undoing the correction), KDPM2
ancestral and singlestep DPM-Solver (their later stage starts from a sample stored before it) and LMS
with x_t (its fourth-order history turns the lagged correction into divergence).

Inpainting pipelines (``prepare_mask_latents``: 4-channel UNets blended with the image, 9-channel
inpainting UNets): the correction is applied inside the mask only (the mask binarised at 0.5,
as the pipeline's mask processor does), so guidance never changes the region the mask keeps.
Both hooks read the mask from the pipeline: the callback through ``watch(pipe)`` (refused
without it), the step wrapper when it is given the pipeline, not its bare scheduler.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import Tensor

from diffusers.callbacks import PipelineCallback

from ..sampling import (UNSUPPORTED_PAIRS, UNSUPPORTED_SCHEDULERS, WORKING_SCHEDULERS,  # noqa: F401
                        StepState, check_scheduler, eval_points, guidance_hooks, noise_level)
from .encoding import sample_prompt_features

__all__ = ["MMDGuidanceCallback", "GuidedSchedulerStep", "check_scheduler", "eval_points", "scheduler_noise_level",
           "timestep_index", "to_epsilon"]


def scheduler_noise_level(sched: Any, index: int) -> tuple[float, float]:
    """(alpha_bar, c_in) at position ``index`` of ``sched.timesteps`` (len = the end of the run)."""
    if sched.timesteps is None:
        raise RuntimeError(f"{type(sched).__name__}.set_timesteps has not been called")
    n = len(sched.timesteps)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= n:
        raise ValueError(f"index must be an integer from 0 to {n} (len(timesteps): the end of the run); got {index!r}")
    return noise_level(sched, sched.timesteps, index)


def timestep_index(sched: Any, t: Any) -> int:
    """Position of timestep ``t`` in ``sched.timesteps`` (its first occurrence)."""
    ts = sched.timesteps
    hits = (ts == torch.as_tensor(t, dtype=ts.dtype, device=ts.device)).nonzero()
    if len(hits) == 0:
        raise ValueError(f"timestep {t!r} is not in {type(sched).__name__}.timesteps "
                         f"({ts.tolist()[:6]}...); was the scheduler's set_timesteps changed mid-run?")
    return int(hits[0])


def to_epsilon(sched: Any, model_output: Tensor, x_t: Tensor, alpha_bar: float, c_in: float) -> Tensor:
    """The noise prediction eps (B, *S) from a model output of any ``prediction_type``, in the
    DDPM-normalised space (c_in x_t = sqrt(abar) x0 + sqrt(1 - abar) eps)."""
    kind = getattr(sched.config, "prediction_type", "epsilon")
    if model_output.shape[1] == 2 * x_t.shape[1]:  # learned variance: the first half is the mean
        model_output = model_output[:, : x_t.shape[1]]
    precondition = getattr(sched, "precondition_outputs", None)
    if callable(precondition) and 0.0 < alpha_bar < 1.0:
        # EDM schedulers (EDMEuler, EDMDPMSolver: CosXL, Playground v2.5): the model output is
        # preconditioned with sigma_data (denoised = c_skip x + c_out out), neither eps nor v;
        # with x_t = x0 + sigma eps, eps = (x_t - denoised) / sigma
        sigma = math.sqrt((1.0 - alpha_bar) / alpha_bar)
        denoised = precondition(x_t.float(), model_output.float(), sigma)
        return (x_t.float() - denoised) / sigma
    if kind == "epsilon":
        return model_output
    a, s = math.sqrt(alpha_bar), math.sqrt(max(1.0 - alpha_bar, 0.0))
    xn = c_in * x_t.float()
    if kind == "v_prediction":
        return a * model_output.float() + s * xn
    if kind == "sample":
        return (xn - a * model_output.float()) / max(s, 1e-12)
    raise ValueError(f"unsupported prediction_type {kind!r} of {type(sched).__name__}; "
                     "expected 'epsilon', 'v_prediction' or 'sample'")


def _check_batch(guidance: Any, n: int) -> None:
    """The pipeline's batch is the generated set: fixed sample prompts must match it row for row
    (every hook's: a ChainedGuidance member with more rows guided with its first n, silently)."""
    for hook in guidance_hooks(guidance):
        prompts = getattr(hook, "sample_prompts", None)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"the guidance's sample_prompts has {len(prompts)} rows but the pipeline's batch has {n} "
                             "latents: give one prompt feature per image (prompts x num_images_per_prompt, in the "
                             "pipeline's order), e.g. pipeline_guidance(..., prompts=, num_images_per_prompt=) with "
                             "the prompts of this call")


def _check_prompts_match(pipe: Any, guidance: Any, prompt: Any, prompt_2: Any = None) -> None:
    """A prompt-aware guidance (sample_prompts from ``pipeline_guidance``) was built for this
    call's prompts in this order: the row count alone let guidance built for other prompts pull
    the samples toward the wrong references. Nothing to compare for prompt_embeds= (prompt None)
    or features of another size (the user's own)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        return  # prompt_embeds=, or input the pipeline's own check_inputs refuses
    for hook in guidance_hooks(guidance):
        sp = getattr(hook, "sample_prompts", None)
        if not isinstance(sp, Tensor) or sp.ndim != 2 or len(sp) % len(prompts):
            continue  # a row-count mismatch is named by _check_batch
        # SDXL's prompt_2 is what its second encoder reads (the pooled text_embeds the UNet gets)
        want = sample_prompt_features(pipe, list(prompts), len(sp) // len(prompts), prompt_2)
        got = torch.nn.functional.normalize(sp.detach().float().cpu(), dim=-1)
        if got.shape == want.shape and not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise ValueError(f"the guidance is prompt-aware, built for other sample prompts (or the same in another "
                             f"order) than this call's {len(prompts)} prompt(s) x {len(sp) // len(prompts)} image(s)"
                             f"{'' if prompt_2 is None else ' and prompt_2'}: build it with pipeline_guidance(pipe, "
                             "..., prompts=<this call's prompts>, num_images_per_prompt=<its n>"
                             f"{')' if prompt_2 is None else ', prompts_2=<its prompt_2>)'}")


def _bound_args(original: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a pipeline's ``check_inputs`` call by name (empty if they cannot be bound)."""
    try:
        return inspect.signature(original).bind_partial(*args, **kwargs).arguments
    except TypeError:
        return {}


def _check_size(pipe: Any, guidance: Any, height: Any, width: Any) -> None:
    """The references' latents have the size this call samples (else MMDGuidance refuses them
    only after the first UNet step)."""
    f = int(getattr(pipe, "vae_scale_factor", 8))
    if not (isinstance(height, int) and isinstance(width, int)):
        return
    for hook in guidance_hooks(guidance):
        shape = getattr(getattr(hook, "reference_set", None), "sample_shape", None)
        if shape is not None and len(shape) == 3 and tuple(shape[1:]) != (height // f, width // f):
            raise ValueError(f"the guidance's references are {shape[1]}x{shape[2]} latents ({shape[1] * f}x"
                             f"{shape[2] * f} px images) but this call samples {height // f}x{width // f} latents "
                             f"(height={height}, width={width}): encode references at the size you generate")


def _check_run_window(pipe: Any, sched: Any, guidance: Any, first: int) -> None:
    """A run that covers part of the schedule (SDXL's ``denoising_end``, img2img's ``strength`` or
    ``denoising_start``: ``pipe.num_timesteps`` of ``len(sched.timesteps)`` steps, from position
    ``first``; with ``pipe`` None, a run of unknown length: at most the rest of the schedule) must
    hold a step of the guided window, whose fractions are of the whole schedule: ``check_window``
    saw the whole schedule, so e.g. schedule='last' with denoising_end=0.5 guided nothing, silently."""
    n = len(sched.timesteps)
    k = n - first if pipe is None else getattr(pipe, "_num_timesteps", None)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k < n:
        return
    for hook in guidance_hooks(guidance):
        ss = getattr(hook, "step_size", None)
        if ss is not None and not ss.guides_any(range(first, first + k), n):
            lo = ss.window()[0]  # type: ignore[index]  # a window exists: guides_any was False
            raise ValueError(
                f"this call runs steps {first} to {first + k - 1} of the scheduler's {n} (denoising_end / "
                f"denoising_start / strength), step fractions {first / n:g} to {(first + k - 1) / n:g}, but the "
                f"guidance's window is [{lo:g}, {ss.stop:g}) (start={ss.start:g}, stop={ss.stop:g}"
                + (f", last_fraction={ss.last_fraction:g}" if ss.schedule == "last" else "")
                + "; fractions of the whole schedule): no step would be guided; move the window into the run")


def _no_denoiser(*_: Any, **__: Any) -> Tensor:
    raise ValueError("eval_point='x0_hat_backprop' needs the UNet with the prompt embeddings and "
                     "CFG; the diffusers hooks do not support it: use eval_point='x0_hat'")


def _state(sched: Any, index: int, x_t: Tensor, x_prev: Tensor, eps: Tensor | None, t: Any) -> StepState:
    (ab, c_in), (ab_prev, c_prev) = scheduler_noise_level(sched, index), scheduler_noise_level(sched, index + 1)
    n = len(x_prev)
    return StepState(x_t=x_t, x_prev=x_prev, eps=eps if eps is not None else torch.zeros_like(x_t),
                     t=int(t), step_index=index, num_steps=len(sched.timesteps), alpha_bar_t=ab,
                     alpha_bar_prev=ab_prev, denoiser=_no_denoiser, cond=None,
                     sample_index=torch.arange(n, device=x_prev.device), input_scale=c_in,
                     input_scale_prev=c_prev)


def _check_guidance(guidance: Any) -> None:
    if not callable(guidance):
        raise TypeError(f"guidance must be a callable hook such as MMDGuidance; got {type(guidance).__name__}")
    if getattr(guidance, "sequential", False):
        raise ValueError("generated_set='memory' guides one sample at a time; a pipeline draws a batch: "
                         "use generated_set='batch'")


def _inside_mask(x_prev: Tensor, guided: Tensor, mask: Tensor | None) -> Tensor:
    """``guided`` where an inpainting pipeline's latent mask (B or 2B rows: doubled for CFG) is
    set, ``x_prev`` where it keeps the image; ``guided`` itself without a mask."""
    if mask is None:
        return guided
    n = len(x_prev)
    if len(mask) == 2 * n:  # torch.cat([mask] * 2) under classifier-free guidance
        mask = mask[:n]
    if len(mask) not in (1, n) or mask.shape[2:] != x_prev.shape[2:]:
        raise ValueError(f"the inpainting mask has shape {tuple(mask.shape)} but the latents {tuple(x_prev.shape)}: "
                         "expected (B or 2B, 1, h, w) from the pipeline's prepare_mask_latents")
    return torch.where(mask.to(guided.device) >= 0.5, guided, x_prev)


def _record_mask(pipe: Any, owner: Any) -> Any:
    """Patch ``pipe.prepare_mask_latents`` (inpainting pipelines) to store its latent mask in
    ``owner._mask``; None for a pipeline without one."""
    original = getattr(pipe, "prepare_mask_latents", None)
    if not callable(original):
        return None

    @functools.wraps(original)
    def prepare_mask_latents(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if prepare_mask_latents._mmdg_active:  # type: ignore[attr-defined]
            owner._mask = out[0]  # (mask, masked_image_latents)
        return out

    return _patch(pipe, "prepare_mask_latents", prepare_mask_latents)


class MMDGuidanceCallback(PipelineCallback):
    """MMD guidance as a diffusers ``callback_on_step_end`` (paper Eq. 5 on the latents).

    ``pipe(prompt, callback_on_step_end=MMDGuidanceCallback(guidance).watch(pipe))``. Works with
    any StableDiffusionPipeline / StableDiffusionXLPipeline and their img2img and inpainting
    variants (inpainting and prompt-aware guidance: ``watch(pipe)`` is required, for the mask and
    the call's prompts), with or without CFG (the latents are B rows either way).
    ``guidance.reset()`` is called at step 0 of every run. In
    ``MultiPipelineCallbacks`` list it last if another callback changes the latents: its x_t is
    the latents it returned at the previous step.
    """

    tensor_inputs = ["latents"]

    def __init__(self, guidance: Any, *, initial_latents: Tensor | None = None) -> None:
        super().__init__()
        _check_guidance(guidance)
        other = eval_points(guidance) - {"x_t", "x_prev"}
        if other:
            raise ValueError(f"the callback sees only the latents after scheduler.step, so it "
                             f"supports eval_point 'x_t' and 'x_prev'; got {sorted(other)[0]!r}: use "
                             "GuidedSchedulerStep(pipe, guidance) for 'x0_hat'")
        if initial_latents is not None and not isinstance(initial_latents, Tensor):
            raise TypeError(f"initial_latents must be the latents tensor given to the pipeline (B, c, h, w) or "
                            f"None; got {type(initial_latents).__name__}")
        self.guidance = guidance
        # the latents= given to the pipeline (it multiplies them by init_noise_sigma), or None
        self.initial_latents = initial_latents
        self._prepared: Tensor | None = None  # what prepare_latents returned (watch)
        self._prompt: tuple[Any, Any] | None = None  # (the prompt and prompt_2 check_inputs saw) (watch)
        self._prev: Tensor | None = None
        self._mask: Tensor | None = None  # an inpainting pipeline's latent mask (watch)
        self._run_mask: Tensor | None = None  # the mask of the run under way
        self._watched: tuple[Any, Any, Any, Any] | None = None

    def watch(self, pipe: Any) -> "MMDGuidanceCallback":
        """Record the pipeline's initial latents (the x_t of step 0) by wrapping
        ``pipe.prepare_latents``, and its prompts (``pipe.check_inputs``: a prompt-aware guidance
        must have been built for them, checked at step 0); ``unwatch()`` (or leaving
        ``with callback.watch(pipe):``) restores both."""
        original = getattr(pipe, "prepare_latents", None)
        if not callable(original):
            raise TypeError(f"watch(pipe) needs a diffusers pipeline (it wraps pipe.prepare_latents); got "
                            f"{type(pipe).__name__}")
        self.unwatch()

        @functools.wraps(original)
        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if prepare_latents._mmdg_active:  # type: ignore[attr-defined]
                self._prepared = out[0] if isinstance(out, tuple) else out
            return out

        check = pipe.check_inputs if callable(getattr(pipe, "check_inputs", None)) else None

        def check_inputs(*args: Any, **kwargs: Any) -> Any:
            if check_inputs._mmdg_active:  # type: ignore[attr-defined]  # checked at step 0 if this callback runs
                bound = _bound_args(check, args, kwargs)
                self._prompt = (bound.get("prompt"), bound.get("prompt_2"))
            return check(*args, **kwargs)

        self._watched = (pipe, _patch(pipe, "prepare_latents", prepare_latents),
                         None if check is None else _patch(pipe, "check_inputs", functools.wraps(check)(check_inputs)),
                         _record_mask(pipe, self))
        return self

    def unwatch(self) -> None:
        """Remove this callback's wrappers: the pipeline's ``prepare_latents`` and ``check_inputs``
        are again exactly what they were before ``watch`` (wrappers installed later stay)."""
        if self._watched is None:
            return
        pipe, wrapper, check, mask = self._watched
        self._watched, self._prepared, self._prompt, self._mask = None, None, None, None  # nothing outlives the watch
        _unpatch(pipe, "prepare_latents", wrapper)
        if check is not None:
            _unpatch(pipe, "check_inputs", check)
        if mask is not None:
            _unpatch(pipe, "prepare_mask_latents", mask)

    def __enter__(self) -> "MMDGuidanceCallback":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unwatch()

    def callback_fn(self, pipeline: Any, step_index: int, timestep: Any,
                    callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if "latents" not in callback_kwargs:
            raise ValueError(f"MMDGuidanceCallback needs 'latents' in callback_kwargs; got {sorted(callback_kwargs)}: "
                             "add 'latents' to callback_on_step_end_tensor_inputs")
        latents = callback_kwargs["latents"]  # (B, c, h, w) = x_{t-1}
        if latents is self._prev and latents is not None:  # handed back what it returned: a second call this step
            raise ValueError("this MMDGuidanceCallback was called twice in one step (listed twice in "
                             "MultiPipelineCallbacks?): it would apply the guidance twice; list it once")
        sched = pipeline.scheduler
        _check_batch(self.guidance, len(latents))  # (at step 0 before the prompt check: a count mismatch first)
        if step_index == 0:
            f = int(getattr(pipeline, "vae_scale_factor", 8))  # the call's height / width, named as the wrapper does
            _check_size(pipeline, self.guidance, latents.shape[-2] * f, latents.shape[-1] * f)
            check_scheduler(sched, self.guidance)
            self.guidance.reset()
            # the initial latents recorded by watch() belong to this call only if it watches this pipeline
            watched = self._watched is not None and self._watched[0] is pipeline
            self._prev = self._prepared if watched else None
            if self._prev is None and self.initial_latents is not None:
                self._prev = self.initial_latents.to(latents) * float(getattr(sched, "init_noise_sigma", 1.0))
            self._prepared = None
            self._run_mask = self._mask if watched else None  # this call's, from the pipeline it watches
            if callable(getattr(pipeline, "prepare_mask_latents", None)) and not watched:
                raise ValueError(f"{type(pipeline).__name__} inpaints: the callback keeps the guidance inside its "
                                 "mask, which it reads through watch(pipe); pass callback_on_step_end="
                                 "MMDGuidanceCallback(guidance).watch(pipe)")
            if not watched and any(getattr(h, "sample_prompts", None) is not None
                                   for h in guidance_hooks(self.guidance)):
                # unwatched, guidance built for other prompts of the same count pulled each sample
                # toward another prompt's references, silently
                raise ValueError("the guidance is prompt-aware: the callback checks that it was built for this "
                                 "call's prompts, which it reads through watch(pipe); pass callback_on_step_end="
                                 "MMDGuidanceCallback(guidance).watch(pipe)")
            _check_run_window(pipeline, sched, self.guidance, timestep_index(sched, timestep))
            prompt, self._prompt = self._prompt, None
            if watched and prompt is not None:
                _check_prompts_match(pipeline, self.guidance, *prompt)
        x_t = self._prev
        if x_t is None or tuple(x_t.shape) != tuple(latents.shape):
            if "x_t" in eval_points(self.guidance):
                raise RuntimeError(
                    "eval_point='x_t' needs x_t at step 0: call callback.watch(pipe) before the "
                    "pipeline (it records the initial latents) or pass initial_latents= (the "
                    f"latents= you give the pipeline); got {None if x_t is None else tuple(x_t.shape)} "
                    f"for latents of shape {tuple(latents.shape)}")
            x_t = latents
        index = timestep_index(sched, timestep)
        with torch.enable_grad():
            out = self.guidance(_state(sched, index, x_t, latents, None, timestep))
        out = _inside_mask(latents, out, self._run_mask)
        self._prev = out
        # the other callbacks' tensors pass through (MultiPipelineCallbacks hands this dict on)
        return {**callback_kwargs, "latents": out}


class GuidedSchedulerStep:
    """Wrap ``scheduler.step`` so that every update is followed by the guidance correction.

    ``with GuidedSchedulerStep(pipe, guidance): pipe(prompt)`` (or ``.restore()``). The wrapper
    keeps ``step``'s signature; it sees x_t (``sample``) and the CFG-combined model output, so
    eval_point "x0_hat" costs no extra UNet call. A new run (a call of the wrapped pipeline,
    ``set_timesteps`` called again, or the timestep index not increasing) calls ``guidance.reset()``. Given a pipeline it also
    checks each call at ``check_inputs``, before the UNet: ``pipe.scheduler`` not swapped (that
    call would run unguided), a prompt-aware guidance built for the call's prompts, references
    of the call's height and width; and in an inpainting pipeline it keeps the correction inside
    the call's mask. A run through the scheduler from elsewhere (a pipeline sharing it, a loop of
    one's own) that starts past the guided window is refused at its first step. One guidance
    wraps a scheduler at most once.
    """

    def __init__(self, pipe_or_scheduler: Any, guidance: Any) -> None:
        _check_guidance(guidance)
        if "x0_hat_backprop" in eval_points(guidance):
            _no_denoiser()
        sched = getattr(pipe_or_scheduler, "scheduler", pipe_or_scheduler)
        if not callable(getattr(sched, "step", None)):
            raise TypeError(f"expected a diffusers pipeline or scheduler; got {type(pipe_or_scheduler).__name__}")
        check_scheduler(sched, guidance)
        _refuse_twice(sched, guidance)
        self.scheduler, self.guidance = sched, guidance
        self._last: int | None = None
        self._timesteps: Any = None  # the sched.timesteps of the run under way (set_timesteps makes a new one)
        self._called = False  # check_inputs of the wrapped pipeline ran, and no step since
        original = sched.step
        signature = inspect.signature(original)

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not step._mmdg_active:  # type: ignore[attr-defined]  # restored while under another wrapper
                return result
            return self._guide(signature.bind(*args, **kwargs).arguments, result)

        step.__signature__ = signature  # type: ignore[attr-defined]
        step._mmdg_guidance = guidance  # type: ignore[attr-defined]
        self._wrapper: Any = _patch(sched, "step", step)
        # a pipeline whose scheduler is swapped (from_config) would run unguided: its __call__
        # starts with check_inputs, where the swap is caught before any work
        self._pipe = pipe_or_scheduler if sched is not pipe_or_scheduler else None
        self._check: Any = None
        if self._pipe is not None and callable(getattr(self._pipe, "check_inputs", None)):
            self._check = _patch(self._pipe, "check_inputs", self._check_inputs(self._pipe.check_inputs))
        self._mask: Tensor | None = None  # this call's inpainting mask (prepare_mask_latents)
        self._mask_patch = _record_mask(self._pipe, self) if self._pipe is not None else None

    def _check_inputs(self, original: Any) -> Any:
        @functools.wraps(original)
        def check_inputs(*args: Any, **kwargs: Any) -> Any:
            now = self._pipe.scheduler
            if check_inputs._mmdg_active and now is not self.scheduler:  # type: ignore[attr-defined]
                raise ValueError(
                    f"pipe.scheduler was replaced ({type(self.scheduler).__name__} -> {type(now).__name__}) "
                    "after GuidedSchedulerStep wrapped the old one's step, so this call would run unguided: "
                    "restore() the wrapper and build it again after swapping schedulers")
            out = original(*args, **kwargs)  # the pipeline's own checks speak first
            self._mask = None  # a new call: its prepare_mask_latents (if any) records its own
            if check_inputs._mmdg_active:  # type: ignore[attr-defined]
                bound = _bound_args(original, args, kwargs)
                _check_prompts_match(self._pipe, self.guidance, bound.get("prompt"), bound.get("prompt_2"))
                _check_size(self._pipe, self.guidance, bound.get("height"), bound.get("width"))
                self._called = True
            return out

        return check_inputs

    def restore(self) -> None:
        """Remove this wrapper: ``scheduler.step`` is again exactly what it was before (a
        wrapper installed later stays, and keeps working on top of what is left)."""
        if self._wrapper is not None:
            _unpatch(self.scheduler, "step", self._wrapper)
            self._wrapper = None
        if self._check is not None:
            _unpatch(self._pipe, "check_inputs", self._check)
            self._check = None
        if self._mask_patch is not None:
            _unpatch(self._pipe, "prepare_mask_latents", self._mask_patch)
            self._mask_patch = None
        self._last, self._mask, self._timesteps = None, None, None

    def __enter__(self) -> "GuidedSchedulerStep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def _guide(self, args: dict[str, Any], result: Any) -> Any:
        sched = self.scheduler
        x_t, t, out = args["sample"], args["timestep"], args["model_output"]
        tuple_out = isinstance(result, tuple)
        x_prev = result[0] if tuple_out else result.prev_sample
        index = timestep_index(sched, t)
        # a new run: a pipeline call (its check_inputs ran; an img2img call starting past the last
        # run's final index is one too), set_timesteps called again (a pipeline sharing the bare
        # scheduler: its img2img call from step 6 after a run that ended at step 3 kept that run's
        # bandwidth), or the timestep index not increasing in a loop of one's own
        if self._last is None or index <= self._last or self._called or sched.timesteps is not self._timesteps:
            check_scheduler(sched, self.guidance)  # a new run: timesteps are set now
            self.guidance.reset()
            if self._called:  # a pipeline call (check_inputs ran): its num_timesteps is this run's
                _check_run_window(self._pipe, sched, self.guidance, index)
            else:  # a loop of the user's own, or a pipeline sharing this scheduler (Img2ImgPipeline(
                # **pipe.components)): no inpainting mask of an earlier call applies, and a run that
                # starts past the window (img2img's strength) would guide nothing
                self._mask = None
                _check_run_window(None, sched, self.guidance, index)
        self._called = False
        _check_batch(self.guidance, len(x_t))
        self._last, self._timesteps = index, sched.timesteps
        ab, c_in = scheduler_noise_level(sched, index)
        eps = to_epsilon(sched, out, x_t, ab, c_in)
        with torch.enable_grad():
            guided = self.guidance(_state(sched, index, x_t, x_prev, eps, t))
        if guided is not x_prev:
            guided = _inside_mask(x_prev, guided, self._mask)
        if guided is x_prev:
            return result
        if tuple_out:
            return (guided, *result[1:])
        result.prev_sample = guided
        return result


def _refuse_twice(sched: Any, guidance: Any) -> None:
    """A second wrapper of the same guidance on one scheduler (a notebook cell run again without
    ``restore()``) would apply it twice per step and reset it between the two."""
    step = sched.__dict__.get("step")
    while step is not None:
        if getattr(step, "_mmdg_active", False) and getattr(step, "_mmdg_guidance", None) is guidance:
            raise ValueError(f"this guidance already wraps {type(sched).__name__}.step (a GuidedSchedulerStep not "
                             "restored): call .restore() on that one first, or use `with GuidedSchedulerStep(...):`")
        step = getattr(step, "_mmdg_before", None)


def _patch(obj: Any, name: str, wrapper: Any) -> Any:
    """``obj.name = wrapper``, remembering the instance attribute it replaces (None: the class's)."""
    wrapper._mmdg_active, wrapper._mmdg_before = True, obj.__dict__.get(name)
    setattr(obj, name, wrapper)
    return wrapper


def _unpatch(obj: Any, name: str, wrapper: Any) -> None:
    """Undo ``_patch``. The wrapper stops acting at once; if it is on top, the attribute goes
    back to what it replaced, skipping wrappers already undone beneath it (or is deleted, so the
    class's method shows through). Under a later wrapper it stays as a pass-through until that
    one is undone: hooks may be removed in any order."""
    wrapper._mmdg_active = False
    if obj.__dict__.get(name) is not wrapper:
        return
    before = wrapper._mmdg_before
    while before is not None and getattr(before, "_mmdg_active", True) is False:
        before = before._mmdg_before
    if before is None:
        delattr(obj, name)
    else:
        setattr(obj, name, before)

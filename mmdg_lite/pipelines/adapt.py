"""Domain adaptation of a diffusers SD/SDXL pipeline toward reference images: load, generate
(unguided or MMD-guided through the callback or the step wrapper), measure. Used by
``mmdg adapt`` and notebook 07.
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._resources import data_path
from .._validation import check_bool, check_int, check_nonnegative
from ..seeding import check_seed
from ..sampling import check_scheduler, guidance_hooks
from .encoding import _check_prompts, encode_images, pipeline_image_size
from .hooks import GuidedSchedulerStep, MMDGuidanceCallback, _check_batch, _check_prompts_match, eval_points

__all__ = ["EMBEDDED_PIPELINE", "load_pipeline", "generate", "latent_mmd2", "looks_like_path", "check_text_to_image"]

# The embedded text-to-image pipeline (scripts/train_sd_pipeline.py builds it).
EMBEDDED_PIPELINE = data_path("sd", "shapes_pipeline")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def looks_like_path(model: str) -> bool:
    """A local folder (existing, or spelled like a path) rather than a hub id "owner/name"."""
    return os.path.exists(os.path.expanduser(model)) or model.startswith((".", "/", "~")) \
        or not _HUB_ID.match(model)


_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def _pipeline_dtype(dtype: Any) -> torch.dtype:
    """A floating torch dtype from a dtype or its name ("float16", "bf16", ...)."""
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(f"dtype must be a floating torch.dtype or one of {sorted(set(_DTYPES))}; got {dtype!r}")


def load_pipeline(model: str | Path, *, device: str | None = None,
                  dtype: torch.dtype | str | None = None) -> Any:
    """A ``DiffusionPipeline`` (SD or SDXL) from a local folder or a hub id; float16 on CUDA.
    A local folder is checked (``_io.from_pretrained``): weights that do not match a component's
    config are refused. ``dtype``: a torch dtype or its name ("float16", "bfloat16", "float32")."""
    from diffusers import DiffusionPipeline

    from ..sampling import _check_device

    device = str(_check_device(device)) if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    dtype = _pipeline_dtype(dtype) if dtype is not None else (
        torch.float16 if device.startswith("cuda") else torch.float32)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    local = Path(str(model)).expanduser()
    index = local / "model_index.json"
    # as mmdg adapt checks --model: a missing folder reached the hub as a repo id ('Repo id must use
    # alphanumeric chars'), a folder without model_index.json diffusers' bare OSError
    if looks_like_path(str(model)) and not local.is_dir():
        raise FileNotFoundError(f"model: {str(model)!r} is not a folder (expected a diffusers pipeline folder "
                                "with model_index.json, or a hub id such as owner/name)")
    if local.is_dir() and not index.is_file():
        raise FileNotFoundError(f"model: {str(model)!r} has no model_index.json; it is not a diffusers pipeline "
                                "folder (save one with pipe.save_pretrained)")
    if local.is_dir():  # with its model_index.json (checked above)
        from .._io import read_json

        kwargs["local_files_only"] = True
        # read_json: a damaged model_index.json is named (json.loads raised a bare JSONDecodeError)
        if "safety_checker" in read_json(index):
            kwargs["safety_checker"] = None  # the embedded and tiny pipelines have none
    with warnings.catch_warnings():  # newer diffusers call it dtype; torch_dtype works in every version
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        if local.is_dir():
            from .._io import from_pretrained

            # checked, each model component strictly: diffusers' own load initialises a tensor a
            # component's weights file lacks (at random) and samples with it without an error
            pipe = from_pretrained(DiffusionPipeline, local, **kwargs)
        else:
            pipe = DiffusionPipeline.from_pretrained(str(model), **kwargs)
    return pipe.to(device)


def check_text_to_image(pipe: Any) -> None:
    """Refuse a pipeline whose call needs an input image (img2img, inpainting, ControlNet: an
    ``image`` argument): ``generate`` and ``mmdg adapt`` sample from prompts only, and such a
    pipeline failed only after the references were encoded, with diffusers' 'Input is in
    incorrect format'. Use the hooks with that pipeline's own call instead."""
    call = getattr(pipe, "__call__", None)
    if callable(call) and "image" in inspect.signature(call).parameters:
        raise ValueError(f"{type(pipe).__name__} needs an input image (its call takes image=); generate and "
                         "mmdg adapt sample from text only (StableDiffusionPipeline, StableDiffusionXLPipeline): "
                         "load the text-to-image pipeline, or call this one yourself with callback_on_step_end="
                         "MMDGuidanceCallback(guidance).watch(pipe) or inside GuidedSchedulerStep(pipe, guidance)")


def generate(pipe: Any, prompts: Sequence[str] | str, num_images_per_prompt: int, *, guidance: Any = None,
             steps: int = 30, guidance_scale: float = 5.0, seed: int = 0, progress: bool = True,
             size: int | None = None) -> tuple[Tensor, float]:
    """Images (N, 3, H, W) in [-1, 1], N = len(prompts) * num_images_per_prompt, and the wall time.
    ``prompts``: a list of prompts, or one prompt as a str. ``guidance`` (an MMDGuidance) runs
    through the callback for eval points x_t / x_prev and the step wrapper for x0_hat.
    ``guidance_scale``: classifier-free guidance, >= 1 (1 = off)."""
    check_text_to_image(pipe)
    prompts = [prompts] if isinstance(prompts, str) else _check_prompts(prompts, "prompts")
    check_int(num_images_per_prompt, "num_images_per_prompt", 1)
    check_int(steps, "steps", 1)
    if check_nonnegative(guidance_scale, "guidance_scale") < 1:  # not a weaker or unconditional mix
        raise ValueError(f"guidance_scale must be >= 1 (1 turns classifier-free guidance off; diffusers' "
                         f"pipelines run every value below 1 as 1); got {guidance_scale!r}")
    seed = check_seed(seed)
    check_bool(progress, "progress")  # "no" (truthy) showed the bar
    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=guidance_scale,
                                  num_images_per_prompt=num_images_per_prompt, generator=generator,
                                  output_type="pt")
    step = int(getattr(pipe, "vae_scale_factor", 8))
    if size is not None:
        check_int(size, "size", 1)
        multiple = math.lcm(8, step)  # diffusers' pipelines want 8 | size, and the VAE its own factor
        if size % multiple:  # diffusers named height and width; size=0 silently meant its default
            raise ValueError(f"size must be a multiple of {multiple} (diffusers' 8 and the pipeline's VAE scale "
                             f"factor {step}); got {size}")
        kwargs.update(height=size, width=size)
    _check_first_timestep(pipe.scheduler, steps)
    wrapper = callback = None
    if guidance is not None:
        _check_guidance_fits(pipe, guidance, prompts, num_images_per_prompt,
                             (size if size is not None else pipeline_image_size(pipe)) // step, step, steps)
        if eval_points(guidance) <= {"x_t", "x_prev"}:  # (a ChainedGuidance: all of its hooks')
            callback = MMDGuidanceCallback(guidance).watch(pipe)
            kwargs["callback_on_step_end"] = callback
        else:
            wrapper = GuidedSchedulerStep(pipe, guidance)
    # after every check: a refused call left the user's progress-bar settings overwritten
    bar_config = getattr(pipe, "_progress_bar_config", None)  # the user's settings, restored below
    pipe.set_progress_bar_config(**{**(bar_config or {}), "disable": not progress})
    start = time.perf_counter()
    try:
        images = pipe(prompts, **kwargs).images
    finally:
        if bar_config is None:
            pipe.__dict__.pop("_progress_bar_config", None)
        else:
            pipe._progress_bar_config = bar_config
        if callback is not None:
            callback.unwatch()
        if wrapper is not None:
            wrapper.restore()
    seconds = time.perf_counter() - start
    return (images.float().cpu() * 2 - 1).clamp(-1, 1), seconds  # (N, 3, H, W)


def _check_first_timestep(scheduler: Any, steps: int) -> None:
    """A one-step run at the scheduler's lowest timestep (SD's 'leading' spacing with steps_offset 1
    gives steps=1 only t=1) takes one step at the lowest noise level: its images are x_T, pure noise."""
    if getattr(scheduler, "alphas_cumprod", None) is None:  # not a DDPM-indexed one (EDM's t is log sigma)
        return
    trial = copy.deepcopy(scheduler)
    try:
        trial.set_timesteps(steps)
    except (ValueError, IndexError):  # steps the scheduler cannot set up: the pipeline names them
        return
    top = float(torch.as_tensor(trial.timesteps).max())  # (many repeated steps at t=1 are a too-many-steps error)
    if len(trial.timesteps) == 1 and top <= float(getattr(scheduler.config, "steps_offset", 0) or 0):
        raise ValueError(f"steps={steps} gives {type(scheduler).__name__} only the timestep t={top:g}, one step at "
                         "the lowest noise level, so every image would be its initial noise nearly unchanged; "
                         "use steps >= 2")


def _check_guidance_fits(pipe: Any, guidance: Any, prompts: list[str], per_prompt: int, side: int,
                         step: int, steps: int) -> None:
    """Before sampling: the references' latents have the side the pipeline samples at, and a
    prompt-aware guidance was built for these prompts in this order (a count check alone let
    guidance for other prompts pull circle samples toward square references), and the scheduler
    is one guidance runs through at ``steps``: the hooks' own checks, run here before any UNet work."""
    for hook in guidance_hooks(guidance):
        refs = getattr(hook, "reference_set", None)
        shape = getattr(refs, "sample_shape", None)
        if shape is not None and len(shape) == 3 and tuple(shape[1:]) != (side, side):
            raise ValueError(f"the guidance's references are {shape[1]}x{shape[2]} latents ({shape[1] * step} px "
                             f"images) but the pipeline samples {side}x{side} latents ({side * step} px): encode "
                             f"references at the size you generate (load_references, or size=)")
    _check_batch(guidance, len(prompts) * per_prompt)
    _check_prompts_match(pipe, guidance, prompts)
    trial = copy.deepcopy(pipe.scheduler)  # the hooks check the scheduler only at the first step, after a UNet call
    trial.set_timesteps(steps)
    check_scheduler(trial, guidance)


def latent_mmd2(pipe: Any, images: Tensor, reference_latents: Tensor) -> float:
    """MMD^2 (biased, Gaussian kernel) between the images re-encoded with the pipeline's VAE and
    the reference latents: 0 when the two sets match.

    The bandwidth is the references' own median distance, so every image set measured against
    the same references (``mmdg adapt``'s guided and unguided images) is measured with one kernel;
    a bandwidth read off each image set pooled with the references gave each set its own kernel.
    Only references without two distinct points fall back to the pooled median."""
    from ..kernels import GaussianKernel, median_bandwidth
    from ..mmd import mmd2

    if not isinstance(reference_latents, Tensor) or reference_latents.ndim != 4 or len(reference_latents) == 0:
        got = tuple(reference_latents.shape) if isinstance(reference_latents, Tensor) else type(reference_latents).__name__
        raise ValueError(f"reference_latents must be latents (N, c, h, w) with N >= 1 from encode_images; got {got}")
    z = encode_images(pipe, images)  # (N, c, h, w)
    if z.shape[1:] != reference_latents.shape[1:]:
        raise ValueError(f"reference_latents have per-sample shape {tuple(reference_latents.shape[1:])} but the "
                         f"images encode to {tuple(z.shape[1:])}: pass latents from encode_images(pipe, references)")
    z, r = z.reshape(len(z), -1), reference_latents.float().reshape(len(reference_latents), -1)  # (N, D), (N_r, D)
    distinct = len(r) > 1 and bool((r != r[:1]).any())  # a median distance among the references exists
    # every point, so no order dependence
    bandwidth = (median_bandwidth(r, max_points=len(r)) if distinct
                 else median_bandwidth(z, r, max_points=max(len(z), len(r), 2)))
    return float(mmd2(z, r, GaussianKernel(bandwidth=bandwidth)))

"""What MMD guidance needs from a diffusers pipeline: reference latents and prompt features.

References are encoded with the pipeline's OWN VAE, z = scaling_factor * E(x) applied exactly
once (``mmdg_lite.images.encode_references``; with the VAE's latents_mean / latents_std or
shift_factor where it defines them, as its pipelines do), so they live where the UNet's latents live.
Prompt features are the text encoder's pooled output, L2-normalised (the product kernel of
paper Eq. 10-11 compares them). SDXL has two encoders: the features are
[normalise(text_embeds of encoder 2), normalise(pooled output of encoder 1)] / sqrt(2), one unit
vector in which each encoder weighs equally.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._validation import check_int

__all__ = ["prompt_features", "encode_images", "load_references", "pipeline_image_size",
           "sample_prompt_features", "pipeline_guidance"]


def _check_prompts(prompts: Any, name: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts \
            or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a non-empty list of strings; got {prompts!r:.120}")
    return list(prompts)


def _pooled(tokenizer: Any, encoder: Any, prompts: list[str]) -> Tensor:
    """(N, P) pooled features of one CLIP text encoder (``text_embeds`` when it has a projection)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    device = next(encoder.parameters()).device
    with torch.no_grad():
        out = encoder(ids.to(device))
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = out.pooler_output
    return torch.nn.functional.normalize(pooled.float(), dim=-1)  # (N, P)


def prompt_features(pipe: Any, prompts: Sequence[str], prompts_2: Sequence[str] | str | None = None) -> Tensor:
    """(N, P) float32 L2-normalised pooled text features from the pipeline's text encoder(s);
    one prompt as a str gives (1, P). ``prompts_2``: SDXL's ``prompt_2`` (what its second encoder
    reads; default ``prompts``), one per prompt."""
    prompts = [prompts] if isinstance(prompts, str) else _check_prompts(prompts, "prompts")
    enc2 = getattr(pipe, "text_encoder_2", None)
    enc1 = getattr(pipe, "text_encoder", None)
    if isinstance(prompts_2, (str, list, tuple)) and not prompts_2:
        prompts_2 = None  # as the pipeline's `prompt_2 or prompt`: "" means the prompt
    if prompts_2 is not None:
        prompts_2 = [prompts_2] if isinstance(prompts_2, str) else _check_prompts(prompts_2, "prompts_2")
        if enc2 is None:
            raise ValueError(f"prompts_2 is SDXL's prompt_2 (its second text encoder's prompt), but "
                             f"{type(pipe).__name__} has no text_encoder_2: leave it out")
        if len(prompts_2) != len(prompts):
            raise ValueError(f"prompts_2 has {len(prompts_2)} prompt(s) but prompts has {len(prompts)}: "
                             "give one prompt_2 per prompt, as the pipeline does")
    if enc2 is not None:  # SDXL: encoder 2's projected text_embeds (what the UNet gets) + encoder 1
        parts = [_pooled(pipe.tokenizer_2, enc2, prompts if prompts_2 is None else prompts_2)]
        if enc1 is not None:
            parts.append(_pooled(pipe.tokenizer, enc1, prompts))
        return (torch.cat(parts, dim=1) / math.sqrt(len(parts))).cpu()  # (N, P2 + P1), unit norm
    if enc1 is None:
        raise ValueError(f"{type(pipe).__name__} has no text_encoder; prompt features need one")
    return _pooled(pipe.tokenizer, enc1, prompts).cpu()


def sample_prompt_features(pipe: Any, prompts: Sequence[str] | str, num_images_per_prompt: int = 1,
                           prompts_2: Sequence[str] | str | None = None) -> Tensor:
    """(len(prompts) * n, P): the features in the order a pipeline batches its samples (each
    prompt's ``num_images_per_prompt`` images next to each other); ``prompts_2``: SDXL's prompt_2."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    n = check_int(num_images_per_prompt, "num_images_per_prompt", 1)  # a numpy int too, as generate takes
    return prompt_features(pipe, prompts, prompts_2).repeat_interleave(n, dim=0)


def pipeline_image_size(pipe: Any) -> int:
    """The pipeline's default image side in pixels (UNet sample size x VAE scale factor); a
    sample size given as (h, w) must be square."""
    side = pipe.unet.config.sample_size
    if isinstance(side, (list, tuple)):
        if len(side) != 2 or side[0] != side[1]:
            raise ValueError(f"the pipeline's UNet samples {tuple(side)} latents; mmdg_lite's helpers use square "
                             "images: pass size= explicitly where a function takes it")
        side = side[0]
    return int(side) * int(pipe.vae_scale_factor)


def encode_images(pipe: Any, images: Tensor, *, batch_size: int = 16) -> Tensor:
    """images (N, 3, H, W) in [-1, 1] -> (N, c, h, w) float32 latents = scaling_factor * E(x),
    with the pipeline's own VAE (the factor applied once). A float16 VAE whose config asks for
    ``force_upcast`` (SDXL's) encodes in float32, as the pipelines decode; NaN/Inf latents raise,
    and so do images beyond +-3 (another scale, e.g. 0-255 pixels)."""
    from ..images import encode_references
    from ..images.detectors import _check_scale

    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, 3, H, W) in [-1, 1] with N >= 1; got {got}. Convert "
                         "numpy arrays, grey or RGBA images and [0, 1] or 0-255 data with mmdg_lite.images."
                         "references_from_tensors(images, size, 3, value_range=...); read image files with "
                         "load_references(pipe, folder)")
    _check_scale(images.float(), "images")  # before the cast to the VAE's dtype (255 in uint8, 1e5 in float16)
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    try:
        if upcast:
            vae.to(torch.float32)
        z = encode_references(vae, images.to(vae.dtype), batch_size=batch_size).float()
    finally:
        if upcast:
            vae.to(dtype)
    bad = int((~torch.isfinite(z.reshape(len(z), -1)).all(dim=1)).sum())
    if bad:
        raise FloatingPointError(
            f"the pipeline's VAE ({dtype}) produced NaN/Inf latents for {bad} of {len(z)} reference "
            "images; load the VAE in float32 (or a float16-safe VAE) for encoding")
    return z  # (N, c, h, w)


def load_references(pipe: Any, folder: str | Path, *, limit: int | None = None, fit: str = "squash",
                    recursive: bool = False) -> Tensor:
    """Every image in ``folder`` at the pipeline's resolution, (N, 3, S, S) in [-1, 1]
    (``fit``, ``recursive``, ``limit``: as in ``mmdg_lite.images.load_reference_folder``)."""
    from ..images import load_reference_folder

    return load_reference_folder(folder, pipeline_image_size(pipe), 3, limit=limit, fit=fit, recursive=recursive)


def pipeline_guidance(pipe: Any, references: Tensor, *, reference_prompts: Sequence[str] | None = None,
                      prompts: Sequence[str] | str | None = None, num_images_per_prompt: int = 1,
                      prompts_2: Sequence[str] | str | None = None, **kwargs: Any) -> Any:
    """An ``MMDGuidance`` for ``pipe``: ``references`` are images (N, 3, H, W) in [-1, 1] (encoded
    with the pipeline's VAE) or latents (N, c, h, w). With ``reference_prompts`` (one per
    reference) and the sampling ``prompts`` (and SDXL's ``prompt_2`` as ``prompts_2``, if the
    call gives one) it is prompt-aware (product kernel, paper Eq. 10-11).
    Other keyword arguments go to ``MMDGuidance``."""
    from ..guidance import MMDGuidance
    from ..images.detectors import _check_scale

    if not isinstance(references, Tensor) or references.ndim != 4:
        got = tuple(references.shape) if isinstance(references, Tensor) else type(references).__name__
        raise ValueError(f"references must be images (N, 3, H, W) or latents (N, c, h, w); got {got}")
    # the latents the scheduler steps: the VAE's channels (an inpainting UNet takes more, its masks)
    vae_config = getattr(getattr(pipe, "vae", None), "config", None)
    latent_channels = int(getattr(vae_config, "latent_channels", pipe.unet.config.in_channels))
    if references.shape[1] == 3 and latent_channels != 3:
        _check_scale(references.float(), "references")
        latents = encode_images(pipe, references)
    elif references.shape[1] != latent_channels:
        raise ValueError(f"references has {references.shape[1]} channel(s) (shape {tuple(references.shape)}) but "
                         f"the pipeline's latents have {latent_channels} (its VAE's latent_channels): pass images "
                         f"(N, 3, H, W) in [-1, 1] or latents (N, {latent_channels}, h, w) from encode_images")
    else:
        latents = references.float()
    if reference_prompts is None:
        if prompts is not None or prompts_2 is not None:
            raise ValueError(f"{'prompts=' if prompts is not None else 'prompts_2='} (the sampling prompts) "
                             "needs reference_prompts= too")
        if num_images_per_prompt != 1:  # it only orders the sample prompts; it was silently ignored
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} is for prompt-aware guidance (with "
                             "reference_prompts= and prompts=); guidance without prompts takes the pipeline's "
                             "batch whatever its size: leave it out")
        return MMDGuidance(latents, **kwargs)
    reference_prompts = _check_prompts(reference_prompts, "reference_prompts")
    if len(reference_prompts) != len(latents):
        raise ValueError(f"reference_prompts has {len(reference_prompts)} lines but there are "
                         f"{len(latents)} references; give one prompt per reference")
    if prompts is None:
        raise ValueError("prompt-aware guidance needs prompts= (the prompts the pipeline samples)")
    return MMDGuidance(latents, reference_prompts=prompt_features(pipe, reference_prompts),
                       sample_prompts=sample_prompt_features(pipe, prompts, num_images_per_prompt, prompts_2),
                       **kwargs)

"""Denoiser adapter for a diffusers ``UNet2DModel``: eps = unet(x_t, t).sample.

With it a diffusers UNet plugs into ``mmdg_lite.sample`` and ``mmdg_lite.training.train_denoiser``
like any other denoiser (callable as model(x_t, t, cond)).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_int

__all__ = ["UNetDenoiser"]


class UNetDenoiser(nn.Module):
    """Wraps an unconditional ``UNet2DModel`` (its parameters are this module's)."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        if not hasattr(unet, "config") or not callable(unet):
            raise TypeError(f"unet must be a diffusers UNet2DModel; got {type(unet).__name__}")
        _check_unconditional(unet)
        self.unet = unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one sample, read from the UNet's config; pass it as ``sample``'s shape."""
        from .models import sample_shape

        return sample_shape(self.unet)

    def _shape_hint(self) -> str:
        """The shape to sample with, for error messages: the config's, or (C, H, W) without a sample_size."""
        if self.unet.config.sample_size is None:
            return f"shape=({int(self.unet.config.in_channels)}, H, W) at the size the UNet was trained on"
        return f"shape=denoiser.sample_shape = {self.sample_shape}"

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None,
                drop_cond: Tensor | None = None) -> Tensor:
        """x_t (B, C, H, W), t (B,) or int -> eps (B, C, H, W)."""
        if cond is not None:
            raise ValueError("this UNet2DModel is unconditional; got a cond tensor "
                             f"of shape {tuple(cond.shape)} (pass cond=None)")
        channels = int(self.unet.config.in_channels)
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise ValueError(f"x_t must be (B, {channels}, H, W) for this UNet (config.in_channels = {channels}); "
                             f"got shape {tuple(x_t.shape)}: sample with {self._shape_hint()}")
        down = 2 ** (len(getattr(self.unet.config, "down_block_types", ())) - 1)  # all blocks but the last halve
        if down > 1 and (x_t.shape[2] % down or x_t.shape[3] % down):
            raise ValueError(f"x_t has H x W = {x_t.shape[2]} x {x_t.shape[3]} (shape {tuple(x_t.shape)}), but this "
                             f"UNet downsamples by {down}: both must be multiples of {down}, e.g. "
                             f"{self._shape_hint()}")
        if not isinstance(t, Tensor):  # int(t) truncated 5.7 to 5, where a tensor 5.7 reaches the UNet as it is
            t = torch.full((x_t.shape[0],), check_int(t, "t", 0), dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t).sample


def _check_unconditional(unet: Any) -> None:
    """A model called as unet(x_t, t): its forward takes a ``timestep`` and needs nothing else.
    Stable Diffusion's UNet2DConditionModel (which needs encoder_hidden_states), a class-conditional
    UNet2DModel or a VAE were accepted and failed inside diffusers at the first step. A forward of
    (*args, **kwargs) (torch.compile's wrapper) cannot be read: left to the first call."""
    why = None
    if getattr(unet.config, "num_class_embeds", None) or getattr(unet.config, "class_embed_type", None):
        why = "it is class-conditional"
    else:
        try:
            params = inspect.signature(getattr(unet, "forward", unet)).parameters
        except (TypeError, ValueError):
            params = {}
        kinds = {p.kind for p in params.values()}
        needed = [n for i, (n, p) in enumerate(params.items()) if i >= 2 and p.default is p.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            why = f"its forward needs {needed}"
        elif params and "timestep" not in params and not kinds & {inspect.Parameter.VAR_POSITIONAL,
                                                                    inspect.Parameter.VAR_KEYWORD}:
            why = "its forward takes no timestep"
    if why:
        raise TypeError(f"unet must be an unconditional diffusers UNet2DModel, called as unet(x_t, t); got a "
                        f"{type(unet).__name__} ({why}). For Stable Diffusion pipelines use mmdg_lite.pipelines "
                        "(pipeline_guidance, mmdg adapt)")

"""Denoiser adapter for a diffusers ``UNet2DModel``: eps = unet(x_t, t).sample.

With it a diffusers UNet plugs into ``mmdg_lite.sample`` and ``mmdg_lite.training.train_denoiser``
like any other denoiser (callable as model(x_t, t, cond)).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["UNetDenoiser"]


class UNetDenoiser(nn.Module):
    """Wraps an unconditional ``UNet2DModel`` (its parameters are this module's)."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        if not hasattr(unet, "config") or not callable(unet):
            raise TypeError(f"unet must be a diffusers UNet2DModel; got {type(unet).__name__}")
        self.unet = unet

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None,
                drop_cond: Tensor | None = None) -> Tensor:
        """x_t (B, C, H, W), t (B,) or int -> eps (B, C, H, W)."""
        if cond is not None:
            raise ValueError("this UNet2DModel is unconditional; got a cond tensor "
                             f"of shape {tuple(cond.shape)} (pass cond=None)")
        if not isinstance(t, Tensor):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        return self.unet(x_t, t).sample

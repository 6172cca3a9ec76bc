"""Solutions for notebooks/06_latent_diffusion.ipynb (exercises 06.1 and 06.2)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["encode_once", "hole_fraction"]


def encode_once(vae: "AutoencoderKL", images: Tensor) -> Tensor:
    """Latents of images (N, 3, 32, 32) in [-1, 1] for the latent UNet: the VAE posterior's mean
    (``vae.encode(x).latent_dist.mean``) multiplied by ``vae.config.scaling_factor`` exactly
    once, under ``torch.no_grad()``; shape (N, 8, 8, 8)."""
    with torch.no_grad():
        return vae.encode(images).latent_dist.mean * vae.config.scaling_factor


def hole_fraction(images: Tensor) -> Tensor:
    """The outline measure of the shapes detector, per image (N, 3, H, W) in [-1, 1]: the ink
    mask is "brightest channel > 0.5" (on [0, 1]), its largest connected blob is filled with
    ``scipy.ndimage.binary_fill_holes``; return 1 - blob area / filled area, shape (N,)
    (0 for a filled shape, about 0.2-0.7 for an outlined one; 0 for an empty image)."""
    from scipy import ndimage

    bright = ((images + 1) / 2).clamp(0, 1).max(1).values.numpy()  # (N, H, W)
    out = torch.zeros(len(images))
    for i, b in enumerate(bright):
        labels, count = ndimage.label(b > 0.5)
        if count == 0:
            continue
        blob = labels == 1 + int(torch.bincount(torch.from_numpy(labels.ravel()))[1:].argmax())
        out[i] = 1 - blob.sum() / ndimage.binary_fill_holes(blob).sum()
    return out

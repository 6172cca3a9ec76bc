"""Image grids for notebooks and model cards: tensors in [-1, 1] -> one uint8 array / axes / PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["grid_array", "show_images", "save_grid"]


def grid_array(images: Tensor, nrow: int = 8, pad: int = 1, pad_value: int = 64) -> np.ndarray:
    """images (N, C, H, W) in [-1, 1] -> (rows*(H+pad)+pad, nrow*(W+pad)+pad[, 3]) uint8."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, 1 or 3, H, W) in [-1, 1]; got {got}")
    from .._validation import check_finite, check_int
    from .detectors import _check_scale

    if len(images) == 0:
        raise ValueError("images must hold at least one image; got an empty batch")
    if not images.dtype.is_floating_point:  # a bool mask drew False as mid-grey (0 on the [-1, 1] scale)
        raise TypeError(f"images must be floating-point in [-1, 1]; got dtype {images.dtype}: map 0/1 masks with "
                        "x.float() * 2 - 1 and 0-255 pixels with x / 127.5 - 1")
    check_finite(images.detach(), "images")  # NaN would be drawn black
    _check_scale(images.detach(), "images", "clipped to [-1, 1]")  # 0-255 pixels would be drawn white
    nrow, pad = check_int(nrow, "nrow", 1), check_int(pad, "pad", 0)
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be a grey level, an integer from 0 to 255; got {pad_value!r}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    n, c, h, w = x.shape
    nrow = min(nrow, n)
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top: top + h, left: left + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def show_images(images: Tensor, ax: Any = None, nrow: int = 8, title: str | None = None) -> Any:
    """Draw a grid of images on matplotlib axes (grey colormap for one channel)."""
    from .._io import import_optional

    plt = import_optional("matplotlib.pyplot", "show_images")
    ax = ax if ax is not None else plt.gca()
    arr = grid_array(images, nrow)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 3) -> None:
    """Write the grid as a PNG (nearest-neighbour upscaled ``scale`` times), via Pillow; ``path``
    names the format by its extension (".png"; any other one Pillow writes works too)."""
    from PIL import Image

    from .._validation import check_int

    scale = check_int(scale, "scale", 1)
    Image.init()
    suffix = Path(path).suffix.lower()  # Pillow said only "unknown file extension: " after the work
    if Image.registered_extensions().get(suffix) not in Image.SAVE:
        raise ValueError(f"path must end in an image extension Pillow writes, e.g. '.png'; got {str(path)!r}")
    img = Image.fromarray(grid_array(images, nrow))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path, optimize=True)

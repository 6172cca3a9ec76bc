"""Reference sets: a folder of images or tensors -> model space; VAE encoding with its scaling.

``load_reference_folder`` reads PNG/JPEG/... of any size and mode with Pillow, converts to the
model's channels, turns photos upright by their EXIF orientation, brings any aspect ratio to a
square (``fit``: "squash", "crop" or "pad"), resizes to ``size`` and returns (N, C, H, W) in
[-1, 1]. Files that are not readable images make it raise one error that lists them all; an
empty folder raises too.
``encode_references`` maps images to the latent space the latent UNet was trained in:
z = scaling_factor * E(x) with the VAE's own ``config.scaling_factor`` applied exactly ONCE (the
public reference code multiplies by it a second time, which shrinks the references toward 0
relative to the generated latents). ``decode_latents`` is its inverse.
"""
from __future__ import annotations

import math
import os
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from .._validation import _describe, check_bool, check_choice, check_finite, check_int, from_numpy, is_real_number
from .detectors import _check_scale

__all__ = ["load_reference_folder", "references_from_tensors", "encode_references", "decode_latents",
           "IMAGE_SUFFIXES", "FITS"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# references_from_tensors: values may leave value_range by this fraction of its span (resampling
# overshoot, generated samples a little past [-1, 1]) and are clamped; further out is another scale.
_RANGE_TOLERANCE = 0.1
# How a non-square image becomes square: "squash" resizes it whole (the aspect ratio changes, as in
# the public reference code), "crop" keeps the centred square of the shorter side (what diffusers'
# training scripts do), "pad" keeps the whole image and fills the two bands with black (-1).
FITS = ("squash", "crop", "pad")


def references_from_tensors(images: Any, size: int, channels: int, *,
                            value_range: tuple[float, float] | None = None, fit: str = "squash") -> Tensor:
    """Tensors/arrays (N, C, H, W) or (N, H, W) in ``value_range`` -> (N, channels, size, size) in [-1, 1].

    One channel is repeated to three; three become one by ITU-R 601 luma; four (RGBA) are
    composited on black by their alpha first, as ``load_reference_folder`` does; other sizes are
    resized bilinearly (antialiased), a non-square H x W first made square by ``fit`` ("squash":
    as it is, "crop": the centred square, "pad": black bands; see ``FITS``). Values may leave ``value_range`` by 10 % of its span
    (clamped); further out they raise, suggesting the range the data looks like. Data in [0, 1]
    lies inside the default (-1, 1) and cannot be told from bright [-1, 1] images, so it is
    taken as given (black comes back as mid-grey 0): pass ``value_range=(0, 1)`` for it.
    A 3-D (H, W, 1, 3 or 4) array, one photo as ``np.asarray(Image.open(f))`` gives, is refused
    with the permute to use (it would be H grey images 1, 3 or 4 px wide).
    ``value_range=None`` (default) means (-1, 1) for floating data; integer and bool data (uint8
    pixels, 0/1 masks) must name their range, e.g. (0, 255) or (0, 1). (N, H, W) is N grey
    images; one colour image (C, H, W) is ``images[None]``.
    """
    if isinstance(images, np.ndarray):
        try:  # a flipped view (BGR -> RGB as a[:, ::-1]) or big-endian data: copied
            images = from_numpy(images)
        except TypeError:
            raise TypeError(f"images must hold real numbers (floating, integer or bool); got a numpy array of "
                            f"dtype {images.dtype}") from None
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor or numpy array (N, C, H, W); got {type(images).__name__}")
    if images.is_complex():
        raise TypeError(f"images must hold real values; got dtype {images.dtype}")
    if images.ndim == 3:
        # np.asarray(a PIL image); (H, W, 1): one grey image as Keras / TensorFlow keep it
        if images.shape[-1] in (1, 3, 4) and images.shape[-2] > images.shape[-1]:
            kind = ("grey", "Keras and TensorFlow keep") if images.shape[-1] == 1 else \
                ("colour", "np.asarray(Image.open(...)) gives")
            raise ValueError(f"images of shape {tuple(images.shape)} look like one {kind[0]} image (H, W, C) "
                             f"(as {kind[1]}), which would be read as {images.shape[0]} "
                             f"grey images {images.shape[1]} x {images.shape[2]} px: pass images.permute(2, 0, 1)"
                             "[None] (torch) or a.transpose(2, 0, 1)[None] (numpy); grey images that narrow: "
                             "shape (N, 1, H, W)")
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4) or 0 in images.shape:
        hint = ""
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            hint = " (channels last? use images.permute(0, 3, 1, 2))"
        elif images.ndim == 2:  # np.asarray(Image.open(f)) of one grey image
            hint = " (one grey image H x W, as np.asarray(Image.open(...)) gives? pass images[None, None])"
        raise ValueError(f"images must have shape (N, C, H, W) with N, H, W >= 1 and C in 1, 3, 4; "
                         f"got {tuple(images.shape)}{hint}")
    _check_size_channels(size, channels)
    fit = check_choice(fit, "fit", FITS)
    if value_range is None:
        if not images.dtype.is_floating_point:
            raise ValueError(f"images have dtype {images.dtype}: name their range, e.g. value_range=(0, 255) "
                             "for 8-bit pixels or (0, 1) for 0/1 masks (the default (-1, 1) is for floating data)")
        value_range = (-1.0, 1.0)
    lo, hi = _check_value_range(value_range)
    x = images.float()
    check_finite(x, "images")
    seen_lo, seen_hi = (float(v) for v in x.detach().aminmax())  # (a tensor needing grad: torch warned)
    slack = _RANGE_TOLERANCE * (hi - lo)
    if seen_lo < lo - slack or seen_hi > hi + slack:
        raise ValueError(f"images hold values in [{seen_lo:.4g}, {seen_hi:.4g}], outside value_range={value_range!r} "
                         f"(beyond a tolerance of {slack:.4g}); {_suggest_range(images, seen_lo, seen_hi)}")
    x = (x - lo) / (hi - lo)  # (N, C, H, W) in [0, 1]
    if x.shape[1] == 4:  # RGBA: composited on black (0), as load_reference_folder does
        x = x[:, :3] * x[:, 3:].clamp(0, 1)
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = _square(x, fit)  # (N, C, S, S)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def _square(x: Tensor, fit: str) -> Tensor:
    """(N, C, H, W) in [0, 1] -> (N, C, S, S): unchanged for "squash" or a square image; "crop":
    the centred min(H, W) square; "pad": max(H, W) with black (0) bands on both sides."""
    h, w = x.shape[-2:]
    if fit == "squash" or h == w:
        return x
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return x[..., top:top + s, left:left + s]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return torch.nn.functional.pad(x, (left, s - w - left, top, s - h - top), value=0.0)


def _check_value_range(value_range: Any) -> tuple[Any, Any]:
    """(low, high): two finite real numbers (not bools) with high > low."""
    if not (isinstance(value_range, (tuple, list)) and len(value_range) == 2
            and all(is_real_number(v) for v in value_range)):
        raise TypeError(f"value_range must be a pair (low, high) of numbers, e.g. (0, 255) for uint8 pixels "
                        f"or (-1, 1); got {_describe(value_range)}")
    lo, hi = value_range
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range must be (low, high) of finite numbers with high > low; got {value_range!r}")
    return lo, hi


def _suggest_range(images: Tensor, seen_lo: float, seen_hi: float) -> str:
    if images.dtype == torch.uint8 or (seen_lo >= 0 and 1.5 < seen_hi <= 255):
        return "for 0-255 pixels pass value_range=(0, 255)"
    if seen_lo >= 0 and seen_hi <= 1:
        return "for images in [0, 1] pass value_range=(0, 1)"
    if seen_lo >= -1 and seen_hi <= 1:
        return "for images in [-1, 1] pass value_range=(-1, 1)"
    return "pass the range the data is in as value_range=(low, high)"


def _check_size_channels(size: Any, channels: Any) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be a positive int (the model's image side in px); got {_describe(size)}")
    if size < 1:
        raise ValueError(f"size must be a positive int (the model's image side in px); got {size!r}")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)):
        raise TypeError(f"channels must be 1 (grey) or 3 (RGB); got {_describe(channels)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}")


def _listed_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The files ``load_reference_folder`` reads, in its order: sorted by name as text ("10.png"
    before "2.png", by code point of the NFC form), hidden files and files in hidden folders left out."""
    files: Iterable[Path] = _walk(folder) if recursive else folder.iterdir()
    return sorted((p for p in files
                   if (p.is_file() or _dangling(p))  # a broken link is listed as unreadable, not dropped
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: _name_key(p, folder))


def load_reference_folder(path: str | Path, size: int, channels: int, *, recursive: bool = False,
                          limit: int | None = None, fit: str = "squash") -> Tensor:
    """Every image file in ``path`` as (N, channels, size, size) in [-1, 1], sorted by name as
    text ("10.png" before "2.png"): by code point (case-sensitive, "B.png" before "a.png") of the
    Unicode NFC form, so the same files come in the same order on every OS and filesystem.

    Any mode (L, LA, P, RGB, RGBA, I;16, CMYK, ...) is converted (alpha, or a PNG's transparent
    colour key in any mode, composited on black; colour to grey by ITU-R 601 luma, Pillow's
    ``convert("L")`` as in ``references_from_tensors``; grey repeated to three channels; 16-bit
    grey scaled by 65535; float images with NaN or inf pixels are unreadable); a photo whose
    EXIF orientation tag says it was taken turned is turned upright; any size is resized
    with Lanczos filtering, a non-square image first made square by ``fit``: "squash" (default:
    the whole image, its aspect ratio changed), "crop" (the centred square; a 4:3 photo loses a
    quarter of its width) or "pad" (the whole image between black bands). Non-image or corrupt
    files raise one ValueError that lists them all (images over Pillow's decompression-bomb
    limit, about 179 megapixels, and links whose target is missing among them); an empty folder
    raises a ValueError; hidden files and, with ``recursive`` (which follows linked folders too),
    files in hidden folders (".git", ".ipynb_checkpoints") are skipped; an animated image (GIF,
    APNG) gives its first frame.
    ``limit``: read only the first ``limit`` files (an int >= 1; None reads all).
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path must be a folder of images; {str(folder)!r} is not a directory")
    _check_size_channels(size, channels)
    fit = check_choice(fit, "fit", FITS)
    recursive = check_bool(recursive, "recursive")
    if limit is not None:
        check_int(limit, "limit", 1)
    files = _listed_files(folder, recursive)
    if not files:
        subfolders = [] if recursive else _subfolders(folder)
        raise ValueError(f"the reference folder {str(folder)!r} is empty: put image files "
                         f"({', '.join(IMAGE_SUFFIXES)}) in it"
                         + (f"; its subfolder(s) {subfolders} are read only with recursive=True" if subfolders else ""))
    if limit is not None:
        files = files[:limit]
    arrays, bad = [], []
    for f in files:
        if _dangling(f):
            bad.append(f"{f.relative_to(folder)} (a link to {os.readlink(f)!r}, which does not exist)")
            continue
        try:
            with Image.open(f) as im:
                if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale, still >= size on both sides
                    im.draft(None, (size, size))  # (12-megapixel photos at 64 px: about 3x faster to load)
                im.load()
                arrays.append(_convert(im, size, channels, fit))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
            bad.append(f"{f.relative_to(folder)} ({type(err).__name__}: {str(err)[:120]})")
    if bad:
        raise ValueError(f"{len(bad)} of {len(files)} file(s) in {str(folder)!r} are not readable images; "
                         "remove or fix them:\n  " + "\n  ".join(bad))
    x = torch.from_numpy(np.stack(arrays))  # (N, H, W, C) in [0, 1]
    return (x.permute(0, 3, 1, 2) * 2 - 1).contiguous()


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry under ``folder``, through linked folders too (Path.rglob skips them, so a
    linked folder of references was left out without a word); a link to a folder it sits in (a
    loop) is not entered. Hidden folders are not walked."""
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        parts = here.relative_to(folder).parts
        real = os.path.realpath(here)
        if any(os.path.realpath(folder.joinpath(*parts[:i])) == real for i in range(len(parts))):
            dirs[:] = []  # a loop: this folder is one of its own ancestors
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (here / name for name in dirs + names)


def _subfolders(folder: Path, most: int = 5) -> list[str]:
    """The names of up to ``most`` subfolders of ``folder`` that are not hidden, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))[:most]


def _dangling(path: Path) -> bool:
    """A symbolic link whose target is missing (or a link loop)."""
    return path.is_symlink() and not path.exists()


def _name_key(file: Path, folder: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The order of reference files, the same on every OS and filesystem: code points of the path's
    parts under ``folder`` in Unicode NFC (macOS stores "é" decomposed, Linux as typed), then as
    stored. Sorting Path objects is case-insensitive on Windows and follows the stored form."""
    parts = file.relative_to(folder).parts
    return tuple(unicodedata.normalize("NFC", part) for part in parts), parts


def _convert(im: Any, size: int, channels: int, fit: str = "squash") -> np.ndarray:
    from PIL import Image, ImageOps

    try:  # upright as the camera meant it (a copy; without the tag, unchanged)
        im = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # an unreadable EXIF block: pixels as stored
        pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scale to 8 bits
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():  # a float TIFF's NaN / inf turned the whole image black
            raise ValueError(f"{int((~np.isfinite(a)).sum())} pixel(s) are NaN or infinite (mode {im.mode})")
        key = im.info.get("transparency")  # a PNG tRNS grey level: those pixels are transparent
        im = Image.fromarray((np.clip(a / _grey_white(im.mode, a), 0, 1) * 255).astype(np.uint8), mode="L")
        if is_real_number(key):
            im.putalpha(Image.fromarray(np.where(a == key, 0, 255).astype(np.uint8), mode="L"))  # -> "LA"
    # an alpha band, or a tRNS colour key in any mode (P, and also 1, L, RGB: a grey or RGB PNG's
    # "transparent white" kept its white under a plain convert)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    im = im.convert("L" if channels == 1 else "RGB")
    if fit == "crop":  # (a square image: the same resize as "squash")
        im = ImageOps.fit(im, (size, size), method=Image.LANCZOS)
    elif fit == "pad" and im.width != im.height:  # the long side to size, black bands (as the tensor path)
        w, h = im.size
        nw, nh = max(1, round(w * size / max(w, h))), max(1, round(h * size / max(w, h)))  # a thin image keeps 1 px
        canvas = Image.new(im.mode, (size, size), 0)
        canvas.paste(im.resize((nw, nh), Image.LANCZOS), ((size - nw) // 2, (size - nh) // 2))
        im = canvas
    elif im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[..., None] if channels == 1 else a  # (H, W, C)


def _grey_white(mode: str, a: np.ndarray) -> float:
    """The value of white for a 16/32-bit grey image: 65535 for 16-bit data (Pillow opens 16-bit
    PNGs as "I;16" or "I"), 1 for float data in [0, 1]; otherwise (32-bit data of unknown range)
    the image's own maximum."""
    lo, top = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and top <= 65535):
        return 65535.0
    if mode == "F" and lo >= 0 and top <= 1.0:
        return 1.0
    return max(top, 1.0)


def _check_vae_input(vae: Any, x: Any, name: str, channels: int, what: str, batch_size: Any,
                     pixels: bool = False) -> Tensor:
    """x a finite floating tensor (N, channels, H, W), N >= 1, cast to the VAE's parameter dtype.
    ``pixels``: images in [-1, 1]; values beyond +-3 (another scale, e.g. 0-255) raise."""
    check_int(batch_size, "batch_size", 1)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N, C, H, W); got {_describe(x)}"
                        + (f"; convert with torch.from_numpy({name})" if isinstance(x, np.ndarray) else ""))
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N >= 1; got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channel(s) (shape {tuple(x.shape)}) but the VAE takes "
                         f"{channels} ({what})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} has dtype {x.dtype}; pass a floating-point tensor"
                        + (" in [-1, 1], e.g. references_from_tensors(images, size, 3, value_range=(0, 255)) "
                           "for uint8 pixels" if name == "images" else ""))
    check_finite(x, name)
    if pixels:
        _check_scale(x.detach(), name)  # float() of a tensor needing grad: torch's UserWarning
    return x.to(next(vae.parameters()).dtype)


def _latent_map(vae: Any, like: Tensor) -> tuple[Tensor | float, Tensor | float]:
    """(mean, scale) of the map z = (E(x) - mean) * scale into the space a pipeline's UNet works
    in, as diffusers' pipelines decode (z / scale + mean): ``scaling_factor`` alone (SD 1.x / 2.x,
    and the shipped VAEs); with ``latents_mean`` and ``latents_std`` (SDXL-family VAEs such as
    Playground v2.5's) (E - mean) * factor / std per channel; with ``shift_factor`` (SD3, Flux)
    (E - shift) * factor."""
    config = vae.config
    factor = float(getattr(config, "scaling_factor", None) or 1.0)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        as_channels = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)  # noqa: E731
        return as_channels(mean), factor / as_channels(std)
    shift = getattr(config, "shift_factor", None)
    return (float(shift) if shift is not None else 0.0), factor


def encode_references(vae: Any, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None,
                      batch_size: int = 256) -> Tensor:
    """images (N, 3, H, W) in [-1, 1] -> latents (N, c, h, w) = scaling_factor * E(x), applied ONCE
    (and, for VAEs that define them, the per-channel ``latents_mean`` / ``latents_std`` or the
    ``shift_factor`` their pipelines use: (E(x) - mean) * factor / std; see ``_latent_map``).

    The posterior mean by default (deterministic); ``sample=True`` draws from the posterior with
    ``generator`` (a CPU generator; None: torch's global RNG, reproducible only if you seed it).
    ``images`` must have the VAE's ``config.in_channels`` and H, W divisible by its downsampling
    factor; floating dtypes are cast to the VAE's. Values beyond +-3 (0-255 pixels, ...) raise;
    generated samples' small overshoot of [-1, 1] is encoded as it is.
    """
    sample = check_bool(sample, "sample")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None; "
                        f"got {_describe(generator)}")
    if generator is not None and not sample:  # it was ignored: the posterior means came back as if it drew
        raise ValueError("generator draws from the posterior only with sample=True; without it the encoding is the "
                         "posterior mean (deterministic): pass sample=True, or drop the generator")
    images = _check_vae_input(vae, images, "images", int(vae.config.in_channels),
                              "vae.config.in_channels; grey images: load them with channels=3 "
                              "or repeat with images.expand(-1, 3, -1, -1)", batch_size, pixels=True)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if images.shape[2] % down or images.shape[3] % down:
        raise ValueError(f"images have H x W = {images.shape[2]} x {images.shape[3]}, but the VAE downsamples by "
                         f"{down}: both must be multiples of {down} (resize, e.g. with references_from_tensors)")
    device = next(vae.parameters()).device
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            dist = vae.encode(chunk.to(device)).latent_dist
            z = dist.mean if not sample else dist.mean + dist.std * torch.randn(  # in the VAE's dtype, as the mean
                dist.mean.shape, generator=generator, dtype=torch.float32).to(device, dist.mean.dtype)
            mean, scale = _latent_map(vae, z)
            out.append((z - mean) * scale)  # the one and only application of the scaling factor
    return torch.cat(out)


def decode_latents(vae: Any, latents: Tensor, *, batch_size: int = 256) -> Tensor:
    """The inverse of ``encode_references``: D(z / scaling_factor) (with the mean and std or shift
    it applied, if any), (N, 3, H, W) clamped to [-1, 1].

    ``latents`` (N, c, h, w) must have the VAE's ``config.latent_channels``; floating dtypes are
    cast to the VAE's."""
    latents = _check_vae_input(vae, latents, "latents", int(vae.config.latent_channels),
                               "vae.config.latent_channels", batch_size)
    device = next(vae.parameters()).device
    mean, scale = _latent_map(vae, latents.to(device))
    with torch.no_grad():
        return torch.cat([vae.decode(z.to(device) / scale + mean).sample.clamp(-1, 1)
                          for z in latents.split(batch_size)])

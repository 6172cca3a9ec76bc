"""Procedurally drawn RGB shapes with exact attributes and a caption per image.

Attributes: shape (circle, square, triangle), colour (red, green, blue, yellow), size (small,
large) and fill (filled, outlined). Each attribute's values are drawn with given proportions as
EXACT counts (rounded), shuffled by a seeded permutation independently per attribute, so a
minority (e.g. 25 % outlined) is known. Shapes are drawn on black at 4x resolution and
box-filtered down (anti-aliased), then mapped to [-1, 1]. The caption names only shape and
colour ("a red circle"): size and fill, the minority styles, are what a user's references carry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .._validation import _describe, check_choice, check_int, check_nonnegative, is_real_number

__all__ = ["ShapeSet", "make_shapes", "draw_shape", "SHAPE_ATTRIBUTES", "PALETTE",
           "DEFAULT_PROPORTIONS", "RADIUS", "OUTLINE_WIDTH", "caption", "CAPTIONS", "caption_labels"]

SHAPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "large"),
    "fill": ("filled", "outlined"),
}
PALETTE: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1]
    "red": (0.95, 0.15, 0.15), "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.35, 1.0), "yellow": (0.95, 0.9, 0.1),
}
RADIUS = {"small": 6.0, "large": 11.0}  # half-extent in pixels of a 32 px image
OUTLINE_WIDTH = 2.0                      # pixels
# The pretraining mix: outlined and large are the minorities a user's references ask for.
DEFAULT_PROPORTIONS: dict[str, tuple[float, ...]] = {
    "shape": (1 / 3, 1 / 3, 1 / 3), "colour": (0.25, 0.25, 0.25, 0.25),
    "size": (0.75, 0.25), "fill": (0.75, 0.25),
}
_SUPERSAMPLE = 4
# make_shapes: centres move by at most this many px (of a 32 px image), so that a large shape
# (half-extent RADIUS["large"] = 11 px) stays inside the image: 16 - 5 - 11 = 0.
_MAX_JITTER = 5.0


def _value_index(attribute: str, value: str) -> int:
    """The class index of ``value`` in SHAPE_ATTRIBUTES[attribute]; both are checked by name."""
    values = SHAPE_ATTRIBUTES[check_choice(attribute, "attribute", tuple(SHAPE_ATTRIBUTES))]
    return values.index(check_choice(value, f"{attribute} value", values))


def caption(shape: str, colour: str) -> str:
    """The text prompt of an image: names shape and colour only, e.g. ``caption("circle", "red")``
    is "a red circle"."""
    check_choice(shape, "shape", SHAPE_ATTRIBUTES["shape"])
    check_choice(colour, "colour", SHAPE_ATTRIBUTES["colour"])
    return f"a {colour} {shape}"


# Every caption, shape-major: "a red circle", "a green circle", ..., "a yellow triangle".
CAPTIONS: tuple[str, ...] = tuple(caption(s, c) for s in SHAPE_ATTRIBUTES["shape"] for c in SHAPE_ATTRIBUTES["colour"])


def caption_labels(captions: list[str] | tuple[str, ...]) -> dict[str, Tensor]:
    """The inverse of ``caption``: {"shape", "colour"} -> (N,) long class indices into
    SHAPE_ATTRIBUTES of what each caption names. Only captions ``caption`` writes are read."""
    if isinstance(captions, str):
        raise TypeError(f"captions must be a list of captions; got one str {captions!r} (wrap it in a list)")
    try:  # read once: a generator was used up by the check below and gave empty labels
        captions = list(captions)
    except TypeError:
        raise TypeError(f"captions must be a list of captions; got {_describe(captions)}") from None
    bad = [c for c in captions if c not in CAPTIONS]
    if bad:
        raise ValueError(f"captions must be ones caption() writes, 'a <colour> <shape>' with colour in "
                         f"{SHAPE_ATTRIBUTES['colour']} and shape in {SHAPE_ATTRIBUTES['shape']}; got "
                         f"{bad[:3]!r}{' and more' if len(bad) > 3 else ''}")
    words = [c.split() for c in captions]  # ["a", colour, shape]
    return {"shape": torch.tensor([SHAPE_ATTRIBUTES["shape"].index(w[-1]) for w in words], dtype=torch.long),
            "colour": torch.tensor([SHAPE_ATTRIBUTES["colour"].index(w[1]) for w in words], dtype=torch.long)}


@dataclass
class ShapeSet:
    """Images, per-attribute class indices (into SHAPE_ATTRIBUTES) and captions."""

    images: Tensor                      # (N, 3, S, S) float32 in [-1, 1]
    attributes: dict[str, Tensor]       # name -> (N,) long
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def names(self, attribute: str) -> list[str]:
        """The attribute's value names per image, e.g. ["circle", "square", ...]."""
        values = SHAPE_ATTRIBUTES[check_choice(attribute, "attribute", tuple(SHAPE_ATTRIBUTES))]
        return [values[i] for i in self.attributes[attribute].tolist()]

    def mask(self, attribute: str, value: str) -> Tensor:
        """(N,) bool: images whose ``attribute`` equals ``value``."""
        index = _value_index(attribute, value)  # checks both names first
        return self.attributes[attribute] == index

    def subset(self, index: Tensor | list[int]) -> "ShapeSet":
        """The images at ``index``: a bool mask (N,), or integer indices (a tensor or a list)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool and tuple(index.shape) != (len(self),):  # nonzero() took a short mask's hits
            raise ValueError(f"a bool mask must have shape ({len(self)},), one flag per image; got "
                             f"shape {tuple(index.shape)}")
        if index.dtype != torch.bool and index.numel() and (index.ndim != 1 or index.is_floating_point()
                                                            or index.is_complex()):  # .long() truncated 0.5 to 0
            raise ValueError(f"index must be a bool mask ({len(self)},) or 1-D integer indices; got shape "
                             f"{tuple(index.shape)}, dtype {index.dtype}")
        idx = index.nonzero().squeeze(1) if index.dtype == torch.bool else index.long()
        return ShapeSet(self.images[idx], {k: v[idx] for k, v in self.attributes.items()},
                        [self.captions[i] for i in idx.tolist()] if self.captions else [])  # none: none


def _halfplanes(shape: str, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (K, 2) and offsets (K,) with inside = {p : n_k . p <= b_k} for polygons."""
    if shape == "square":
        s = 0.85 * r
        n = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float64)
        return n, np.full(4, s)
    # upright isosceles triangle: apex (0, -r), base y = 0.8 r from x = -r to r (y points down)
    verts = np.array([[0.0, -r], [r, 0.8 * r], [-r, 0.8 * r]])
    normals, offsets = [], []
    for a, b in zip(verts, np.roll(verts, -1, axis=0)):
        e = b - a
        nrm = np.array([e[1], -e[0]]) / np.hypot(*e)  # outward for this clockwise-on-screen order
        if nrm @ (verts.mean(0) - a) > 0:
            nrm = -nrm
        normals.append(nrm)
        offsets.append(nrm @ a)
    return np.array(normals), np.array(offsets)


def draw_shape(shape: str, colour: str, size: str, fill: str, *, image_size: int = 32,
               center: tuple[float, float] | None = None) -> np.ndarray:
    """One anti-aliased image (3, S, S) in [0, 1] on black; ``center`` (x, y) in pixels."""
    for name, value in (("shape", shape), ("colour", colour), ("size", size), ("fill", fill)):
        if value not in SHAPE_ATTRIBUTES[name]:
            raise ValueError(f"{name} must be one of {SHAPE_ATTRIBUTES[name]}; got {value!r}")
    image_size = check_int(image_size, "image_size", 1)  # 0 gave an empty array, 10.5 a raw TypeError
    if center is not None and not (isinstance(center, (tuple, list)) and len(center) == 2
                                   and all(is_real_number(v) and math.isfinite(v) for v in center)):
        raise ValueError(f"center must be None or a pair (x, y) of finite numbers in pixels; got {center!r}")
    scale = image_size / 32.0
    r, w = RADIUS[size] * scale, OUTLINE_WIDTH * scale
    cx, cy = center if center is not None else (image_size / 2, image_size / 2)
    hi = image_size * _SUPERSAMPLE
    coords = (np.arange(hi) + 0.5) / _SUPERSAMPLE  # pixel-centre coordinates at 4x
    px, py = np.meshgrid(coords - cx, coords - cy)  # (hi, hi) each; x right, y down
    if shape == "circle":
        d = np.hypot(px, py)
        inside, inner = d <= r, d <= r - w
    else:
        normals, offsets = _halfplanes(shape, r)
        proj = px[..., None] * normals[:, 0] + py[..., None] * normals[:, 1]  # (hi, hi, K)
        inside = (proj <= offsets).all(-1)
        inner = (proj <= offsets - w).all(-1)
    mask = inside & ~inner if fill == "outlined" else inside
    cover = mask.reshape(image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE).mean((1, 3))  # (S, S)
    return np.asarray(PALETTE[colour])[:, None, None] * cover[None]  # (3, S, S)


def _exact_assignment(n: int, probs: Sequence[float], rng: np.random.Generator, name: str) -> np.ndarray:
    try:  # a str would be read as one number ("0.5") or fail to convert ("outlined")
        p = None if isinstance(probs, (str, bytes)) else np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        p = None
    if p is None or p.ndim != 1 or len(p) != len(SHAPE_ATTRIBUTES[name]) or not np.isfinite(p).all() \
            or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"proportions[{name!r}] must be {len(SHAPE_ATTRIBUTES[name])} finite non-negative "
                         f"numbers (one per value of {SHAPE_ATTRIBUTES[name]}), not all zero, or a "
                         f"{{value: share}} mapping; got {probs!r}")
    if abs(p.sum() - 1.0) > 1e-3:  # {"outlined": 0.7} would otherwise silently mean 100 % outlined
        a, b = SHAPE_ATTRIBUTES[name][:2]
        raise ValueError(f"proportions[{name!r}] must sum to 1 (values not named get 0); got shares summing to "
                         f"{p.sum():.6g}: name every share, e.g. {{{a!r}: 0.7, {b!r}: 0.3}}")
    p = p / p.sum()
    counts = np.floor(p * n).astype(int)
    rest = n - counts.sum()  # largest remainders get the leftover images
    counts[np.argsort(-(p * n - counts), kind="stable")[:rest]] += 1
    values = np.repeat(np.arange(len(p)), counts)
    return values[rng.permutation(n)]


def make_shapes(n: int, proportions: Mapping[str, Sequence[float] | Mapping[str, float]] | None = None,
                *, seed: int = 0, image_size: int = 32, jitter: float = 2.0) -> ShapeSet:
    """``n`` shapes with per-attribute ``proportions`` (missing attributes use DEFAULT_PROPORTIONS).

    A proportion is a sequence over SHAPE_ATTRIBUTES[name] or a {value: share} mapping (values
    not named get 0); the shares must sum to 1, e.g. ``{"fill": {"outlined": 1.0}}`` for outlined
    shapes only. Centres are jittered uniformly by up to ``jitter`` px of a 32 px image (scaled
    with ``image_size``), 0 to 5 so that every shape stays inside the image. Deterministic in ``seed``.
    """
    n = check_int(n, "n", 1)
    if check_nonnegative(jitter, "jitter") > _MAX_JITTER:
        raise ValueError(f"jitter must be a number from 0 to {_MAX_JITTER:g} (px of a 32 px image; further "
                         f"shapes leave the image); got {jitter!r}")
    check_int(seed, "seed", 0)
    image_size = check_int(image_size, "image_size", 16)
    try:  # dict() of a list of shares or of a str said only "dictionary update sequence element #0 ..."
        proportions = dict(proportions or {})
    except (TypeError, ValueError):
        raise TypeError(f"proportions must be None or a mapping {{attribute: shares}}, e.g. "
                        f"{{'fill': {{'outlined': 1.0}}}} or {{'size': [0.5, 0.5]}}; got {_describe(proportions)}"
                        ) from None
    unknown = set(proportions) - set(SHAPE_ATTRIBUTES)
    if unknown:
        raise ValueError(f"proportions has unknown attribute(s) {sorted(unknown)}; "
                         f"valid: {list(SHAPE_ATTRIBUTES)}")
    rng = np.random.default_rng(seed)
    attrs: dict[str, Tensor] = {}
    for name, values in SHAPE_ATTRIBUTES.items():
        probs = proportions.get(name, DEFAULT_PROPORTIONS[name])
        if isinstance(probs, Mapping):
            bad = set(probs) - set(values)
            if bad:
                raise ValueError(f"proportions[{name!r}] names unknown value(s) {sorted(bad)}; valid: {values}")
            probs = [probs.get(v, 0.0) for v in values]  # numbers: checked with the sequences
        attrs[name] = torch.from_numpy(_exact_assignment(n, probs, rng, name))
    centres = image_size / 2 + rng.uniform(-jitter, jitter, size=(n, 2)) * image_size / 32
    imgs = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    captions = []
    for i in range(n):
        a = {k: SHAPE_ATTRIBUTES[k][int(v[i])] for k, v in attrs.items()}
        imgs[i] = draw_shape(a["shape"], a["colour"], a["size"], a["fill"], image_size=image_size,
                             center=(float(centres[i, 0]), float(centres[i, 1])))
        captions.append(caption(a["shape"], a["colour"]))
    return ShapeSet(images=torch.from_numpy(imgs) * 2 - 1, attributes=attrs, captions=captions)

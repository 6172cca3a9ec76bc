"""A category -> style pairing on the embedded shapes pipeline (like the paper's Table 2).

The user's references pair each category with a minority style the captions never name, e.g.
circles -> outlined and squares -> large. Sampling with prompts that omit the style, plain MMD
pools all references (a circle is pulled toward large squares too); the prompt-aware product
kernel (paper Eq. 10-11) weighs each reference by how close its prompt is to the sample's, and
``MMDGuidance``'s conditional prompt weighting gives each prompt the full pull of its own
references whatever their share (here a caption such as "a red circle" holds 1/8 of them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .adapt import generate
from .encoding import encode_images, prompt_features, sample_prompt_features

__all__ = ["PAIRING", "PairingTask", "pairing_task", "run_pairing", "METHODS"]

PAIRING: dict[str, tuple[str, str]] = {"circle": ("fill", "outlined"), "square": ("size", "large")}
METHODS = ("unguided", "mmd", "prompt-aware")


@dataclass
class PairingTask:
    pairing: dict[str, tuple[str, str]]
    prompts: list[str]                 # sampling prompts (name the category and a colour only)
    reference_images: Tensor           # (N_r, 3, S, S) in [-1, 1]
    reference_latents: Tensor          # (N_r, 4, h, w)
    reference_captions: list[str]
    reference_category: list[str] = field(default_factory=list)


def pairing_task(pipe: Any, pairing: Mapping[str, tuple[str, str]] = PAIRING, n_refs: int = 50,
                 colours: Sequence[str] = ("red", "blue"), seed: int = 0) -> PairingTask:
    """``n_refs`` references per category, all in the paired style (other attributes at the
    pretraining mix), and sampling prompts "a <colour> <category>" for each colour."""
    from .._validation import check_int
    from ..images import make_shapes
    from ..images.shapes import SHAPE_ATTRIBUTES

    from ..seeding import check_seed

    check_int(n_refs, "n_refs", 1)
    if not isinstance(pairing, Mapping) or not pairing or not all(
            isinstance(v, (tuple, list)) and len(v) == 2 and v[0] != "shape" for v in pairing.values()):
        # {} failed in a bare torch.cat, "outlined" for ("fill", "outlined") in a bare unpacking error,
        # and ("shape", "square") drew squares as the circle references
        raise ValueError(f"pairing must be a non-empty mapping category -> (attribute, value) with an attribute "
                         f"other than 'shape', e.g. {PAIRING}; got {pairing!r:.120}")
    seed = check_seed(seed)  # -1 (or True) became other categories' seeds, seed + 101 k, silently
    if isinstance(colours, str) or not isinstance(colours, Sequence) or not colours \
            or any(c not in SHAPE_ATTRIBUTES["colour"] for c in colours):
        raise ValueError(f"colours must be a non-empty list of colours from {SHAPE_ATTRIBUTES['colour']}; "
                         f"got {colours!r}")  # a str was split into letters: "a r circle"
    images, captions, cats = [], [], []
    for k, (category, (attribute, value)) in enumerate(pairing.items()):
        s = make_shapes(n_refs, {"shape": {category: 1.0}, attribute: {value: 1.0}}, seed=seed + 101 * (k + 1))
        images.append(s.images)
        captions += s.captions
        cats += [category] * n_refs
    ref_images = torch.cat(images)
    prompts = [f"a {c} {category}" for category in pairing for c in colours]
    return PairingTask(dict(pairing), prompts, ref_images, encode_images(pipe, ref_images), captions, cats)


def _guidance(pipe: Any, task: PairingTask, method: str, per_prompt: int, options: Mapping[str, Any]) -> Any:
    from ..guidance import MMDGuidance

    if method == "mmd":
        return MMDGuidance(task.reference_latents, **options)
    return MMDGuidance(task.reference_latents, reference_prompts=prompt_features(pipe, task.reference_captions),
                       sample_prompts=sample_prompt_features(pipe, task.prompts, per_prompt), **options)


def run_pairing(pipe: Any, task: PairingTask, method: str, *, per_prompt: int = 4, seed: int = 0,
                steps: int = 30, guidance_scale: float = 3.0, **guidance_options: Any) -> dict[str, Any]:
    """Sample ``per_prompt`` images per prompt with ``method`` (unguided / mmd / prompt-aware)
    through the callback; per-category paired-style rates, validity and wall time.
    ``guidance_options`` go to ``MMDGuidance`` (none: its untuned defaults; prompt-aware then
    uses the conditional prompt weighting)."""
    from ..images import detect_shapes

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "unguided" and guidance_options:
        raise ValueError(f"guidance options {sorted(guidance_options)} are for the guided methods; "
                         "method='unguided' uses none")
    guidance = None if method == "unguided" else _guidance(pipe, task, method, per_prompt, guidance_options)
    images, seconds = generate(pipe, task.prompts, per_prompt, guidance=guidance, steps=steps,
                               guidance_scale=guidance_scale, seed=seed, progress=False)
    det = detect_shapes(images)
    out: dict[str, Any] = {"method": method, "seed": seed, "seconds": seconds, "images": images,
                           "valid": float(det.valid.float().mean())}
    categories = [p.split()[-1] for p in task.prompts for _ in range(per_prompt)]
    for category, (attribute, value) in task.pairing.items():
        rows = torch.tensor([c == category for c in categories])
        hit = det.attributes[attribute][rows] == _index(attribute, value)
        shape_ok = det.attributes["shape"][rows] == _index("shape", category)
        out[f"{category}->{value}"] = float(hit.float().mean())
        out[f"{category} follows prompt"] = float(shape_ok.float().mean())
    return out


def _index(attribute: str, value: str) -> int:
    from ..images.shapes import SHAPE_ATTRIBUTES

    return SHAPE_ATTRIBUTES[attribute].index(value)

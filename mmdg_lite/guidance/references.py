"""The reference set of MMD guidance: validated, flattened and placed on a device once.

References are clean samples (or latents) in the sampler's space, shape (N_r, *S); samples must
have the same per-sample shape S (channels-last references against channels-first samples are
refused, not silently flattened). Copies per (device, dtype) are cached, so a guidance step never
copies the references from the host again.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._validation import check_has_values, check_points
from ..kernels import work_dtype

__all__ = ["ReferenceSet"]

_SUMMARY_ROWS = 8192  # references per block of the summary statistics


class ReferenceSet:
    """(N_r, *S) references, their optional (N_r, P) prompt features, and summary statistics."""

    def __init__(self, references: Tensor, prompts: Tensor | None = None) -> None:
        refs = check_points(references, "references", flatten=False)
        check_has_values(refs, "references")
        if isinstance(references, np.ndarray):  # a view of it: numpy's in-place edits bump no torch version
            refs = refs.clone()  # counter, so the stale summaries below went undetected; a copy keeps them true
        if refs.ndim == 1:
            raise ValueError(f"references must have shape (N_r, *S), one row per reference; got shape "
                             f"{tuple(refs.shape)} (for scalar samples use references[:, None])")
        self.sample_shape = tuple(refs.shape[1:])
        self.flat = refs.detach().reshape(len(refs), -1)  # (N_r, D); guidance never differentiates them
        self.prompts = None
        if prompts is not None:
            self.prompts = check_points(prompts, "reference_prompts")  # (N_r, P)
            if isinstance(prompts, np.ndarray):  # as the references
                self.prompts = self.prompts.clone()
            if len(self.prompts) != len(self.flat):
                raise ValueError(f"reference_prompts has {len(self.prompts)} rows but references has "
                                 f"{len(self.flat)}; one prompt per reference")
        work = self.flat.to(work_dtype(self.flat))
        self.centre = work.mean(0)  # (D,)
        # the references' radius: the farthest reference from their mean (a data scale); this and
        # the mean square go through blocks of rows, so a large set is not copied whole (a float64
        # copy and its square took 4x the references' memory)
        blocks = work.split(_SUMMARY_ROWS)
        self.radius = max(float((b - self.centre).norm(dim=1).max()) for b in blocks)
        self.mean_square = sum(float(b.double().square().sum()) for b in blocks) / work.numel()  # per coordinate
        self._cache: dict[tuple, Tensor] = {}
        # flat (and prompts) are views of the caller's tensors when no copy was needed: an in-place
        # edit afterwards would leave the summaries above, the cached copies and an RFF embedding
        # built from them stale, so it is detected (torch's in-place version counter) and refused
        self._versions = _versions(self.flat, self.prompts)

    def __setstate__(self, state: dict) -> None:
        """A deep copy or an unpickled set holds new tensors, whose version counters start afresh."""
        self.__dict__.update(state)
        self._versions = _versions(self.flat, self.prompts)

    def check_unchanged(self) -> None:
        """Refuse references (or reference prompts) edited in place since this set was built."""
        if _versions(self.flat, self.prompts) != self._versions:
            raise RuntimeError("the references (or reference_prompts) were modified in place after the guidance "
                               "was built, so its cached statistics and copies no longer match them; build a "
                               "new MMDGuidance from the edited tensor, or pass references.clone() to keep "
                               "editing your own copy")

    def __len__(self) -> int:
        return len(self.flat)

    @property
    def dim(self) -> int:
        return self.flat.shape[1]

    def check_samples(self, x: Tensor, name: str = "samples") -> None:
        """Samples (B, *S) must share the references' per-sample shape S."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"{name} have per-sample shape {tuple(x.shape[1:])} (batch shape {tuple(x.shape)}) but "
                f"references have {self.sample_shape} (shape ({len(self)}, "
                f"{', '.join(map(str, self.sample_shape))})); both must live in the same space and "
                "layout: encode references with the sampler's VAE and use the same channel order")

    def on(self, like: Tensor) -> Tensor:
        """(N_r, D) references on ``like``'s device in the work dtype (cached)."""
        self.check_unchanged()
        return self._get("refs", self.flat, like)

    def centre_on(self, like: Tensor) -> Tensor:
        """(D,) the references' mean on ``like``'s device (cached)."""
        return self._get("centre", self.centre, like)

    def prompts_on(self, like: Tensor) -> Tensor | None:
        """(N_r, P) prompt features on ``like``'s device in ``like``'s work dtype (float64
        features, numpy's default, must not turn a float32 run's weights float64)."""
        return None if self.prompts is None else self._get("prompts", self.prompts, like, work_dtype(like))

    def _get(self, what: str, t: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        dtype = dtype or work_dtype(like, t)
        key = (what, like.device, dtype)
        if key not in self._cache:
            self._cache[key] = t.to(like.device, dtype)
        return self._cache[key]


def _versions(*ts: Tensor | None) -> tuple[int | None, ...]:
    """torch's in-place version counters of ``ts`` (None for an absent tensor or an inference
    tensor, which keeps no counter)."""
    out = []
    for t in ts:
        try:
            out.append(None if t is None else t._version)
        except RuntimeError:  # inference-mode tensors track no version
            out.append(None)
    return tuple(out)

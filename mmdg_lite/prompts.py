"""Prompt-aware MMD guidance (paper Sec. 5, Eq. 10-11): prompt features and guidance helpers.

References are (prompt, sample) pairs. A prompt becomes a feature vector through a
``PromptEncoder`` (a fixed table for the toy; a text encoder for Stable Diffusion), and the kernel
on the joint space is k_p(p, p') k_z(z, z') with k_p a Gaussian on L2-normalised prompt features.
k_p acts as an attention weight: a sample is pulled only by references whose prompt resembles its
own, so "cat -> anime, dog -> Van Gogh" does not turn into "every category -> a mix of styles".

The 2-D toy world used to teach it lives in ``mmdg_lite.toys.prompt_world``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ._validation import as_float_tensor, check_finite, check_int, check_positive
from .guidance import MMDGuidance
from .kernels import GaussianKernel, ProductKernel, work_dtype

__all__ = ["PromptEncoder", "TableEncoder", "CallableEncoder", "prompt_aware_guidance",
           "prompt_weights", "reference_coverage", "CoverageGate", "sample_with_prompts"]



def _check_prompt_list(prompts: Any, name: str) -> list[str]:
    """A non-empty list/tuple of strings (a bare string is a common slip: reject it)."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of prompt strings, e.g. ['cat', 'dog']; "
                        f"got {type(prompts).__name__} {prompts!r:.80}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{name} must hold at least one prompt; got an empty list")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must hold strings only; got {type(bad[0]).__name__} {bad[0]!r:.60}")
    return prompts


# ---------------------------------------------------------------- prompt encoders

@runtime_checkable
class PromptEncoder(Protocol):
    """Maps prompts to features: ``encode(list[str]) -> (n, dim)`` float tensor."""

    dim: int

    def encode(self, prompts: Sequence[str]) -> Tensor: ...


class TableEncoder:
    """A fixed embedding per known prompt (the toy's prompt features); unknown prompts raise."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        if not isinstance(table, Mapping) or not table:
            raise ValueError(f"table must be a non-empty mapping prompt -> feature vector; got {table!r:.80}")
        rows = {}
        for key, vec in table.items():
            if not isinstance(key, str):
                raise TypeError(f"table keys must be prompt strings; got {key!r}")
            try:
                v = torch.as_tensor(vec)
            except (TypeError, ValueError, RuntimeError):  # "new(): invalid data type 'str'" names nothing
                raise TypeError(f"table[{key!r}] must be a 1-D vector of numbers; got {vec!r:.80}") from None
            if v.dtype.is_complex or v.dtype == torch.bool:
                raise TypeError(f"table[{key!r}] must be a 1-D vector of real numbers; got dtype {v.dtype}")
            v = as_float_tensor(v if v.dtype.is_floating_point else v.float(), f"table[{key!r}]")
            if v.ndim != 1 or v.numel() == 0:
                raise ValueError(f"table[{key!r}] must be a 1-D feature vector; got shape {tuple(v.shape)}")
            check_finite(v, f"table[{key!r}]")
            rows[key] = v.float()
        dims = {k: len(v) for k, v in rows.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"every table entry must have the same length; got {dims}")
        self.prompts: tuple[str, ...] = tuple(rows)
        self.matrix = torch.stack([rows[k] for k in self.prompts])  # (K, P)
        self.dim = self.matrix.shape[1]
        self._index = {k: i for i, k in enumerate(self.prompts)}

    def encode(self, prompts: Sequence[str]) -> Tensor:
        prompts = _check_prompt_list(prompts, "prompts")
        unknown = sorted({p for p in prompts if p not in self._index})
        if unknown:
            raise ValueError(f"unknown prompt(s) {unknown} for this TableEncoder; known prompts: "
                             f"{list(self.prompts)}")
        return self.matrix[[self._index[p] for p in prompts]].clone()  # (n, P)

    def __repr__(self) -> str:
        return f"TableEncoder(prompts={list(self.prompts)}, dim={self.dim})"


class CallableEncoder:
    """Wraps ``fn(list[str]) -> (n, P)`` (e.g. pooled text-encoder features) with shape checks."""

    def __init__(self, fn: Callable[[list[str]], Tensor], dim: int, name: str = "custom") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(list[str]) -> (n, P) tensor; got {fn!r:.80}")
        self.fn, self.dim, self.name = fn, check_int(dim, "dim", 1), name

    def encode(self, prompts: Sequence[str]) -> Tensor:
        prompts = _check_prompt_list(prompts, "prompts")
        with torch.no_grad():
            out = as_float_tensor(self.fn(prompts), f"{self.name} encoder output")
        if out.shape != (len(prompts), self.dim):
            raise ValueError(f"the {self.name} encoder returned shape {tuple(out.shape)} for "
                             f"{len(prompts)} prompt(s); expected ({len(prompts)}, {self.dim})")
        check_finite(out, f"{self.name} encoder output")
        return out.detach()

    def __repr__(self) -> str:
        return f"CallableEncoder({self.name}, dim={self.dim})"


def _encode(encoder: PromptEncoder, prompts: Any, name: str) -> Tensor:
    if not isinstance(encoder, PromptEncoder):
        raise TypeError(f"encoder must have .dim and .encode(list[str]) (a PromptEncoder such as "
                        f"TableEncoder); got {type(encoder).__name__}")
    prompts = _check_prompt_list(prompts, name)
    # a user's encoder is held to the protocol: one row per prompt (fewer rows sampled fewer samples
    # silently, and were blamed on the references' count), finite numbers
    what = f"{type(encoder).__name__}.encode output"
    out = as_float_tensor(encoder.encode(prompts), what)
    dim = encoder.dim if isinstance(encoder.dim, int) and not isinstance(encoder.dim, bool) else None
    if out.ndim != 2 or len(out) != len(prompts) or (dim is not None and out.shape[1] != dim):
        raise ValueError(f"{what} has shape {tuple(out.shape)} for {len(prompts)} {name}; a PromptEncoder returns "
                         f"one row of features per prompt, shape ({len(prompts)}, {dim if dim is not None else 'P'})")
    check_finite(out, what)
    return out


def prompt_weights(sample_prompts: Sequence[str], reference_prompts: Sequence[str],
                   encoder: PromptEncoder, prompt_bandwidth: float = 0.3) -> Tensor:
    """k_p(p_i, p_j^r) (n, N_r): the attention weight each reference gets for each sample (Eq. 11)."""
    sp = _encode(encoder, sample_prompts, "sample_prompts")
    rp = _encode(encoder, reference_prompts, "reference_prompts")
    kp = GaussianKernel(check_positive(prompt_bandwidth, "prompt_bandwidth"))
    return ProductKernel(kp, GaussianKernel(1.0)).prompt_gram(sp, rp)  # L2-normalised there


def prompt_aware_guidance(references: Tensor, reference_prompts: Sequence[str],
                          encoder: PromptEncoder, sample_prompts: Sequence[str] | None = None,
                          prompt_bandwidth: float = 0.3, **guidance_kwargs: Any) -> MMDGuidance:
    """MMDGuidance with the product kernel k_p x k_z (paper Eq. 10-11) from prompt strings.

    references (N_r, *S) pair row by row with ``reference_prompts``; ``sample_prompts`` gives one
    prompt per generated sample, in the sampler's order (None: the sampler's ``cond`` is used as
    the prompt features). k_p is Gaussian with ``prompt_bandwidth`` on L2-normalised features:
    small = each sample follows only references of its own prompt; large (>> 2, the largest
    distance between unit vectors; 1.41 between orthogonal ones) = every k_p ~ 1, plain pooled guidance. Prompts far from every
    reference prompt get weights exp(-d^2 / 2 sigma^2) -> 0: no pull, never NaN. Other keyword
    arguments go to ``MMDGuidance`` (kernel, strength, schedule, ...).

    With ``MMDGuidance``'s default ``prompt_weighting="conditional"`` each sample's prompt
    weights are normalised, so the plain strength applies per prompt and prompts without
    references are left alone. With ``prompt_weighting="joint"`` (Eq. 11 as written: weights
    1/(B N_r) over all pairs) a prompt holding 1/C of the batch and 1/C of the references feels
    about 1/C of the pull plain guidance would give it alone: raise ``strength`` by about the
    number of distinct prompts, and wrap it in ``CoverageGate`` when some prompts lack references.
    """
    if "prompt_kernel" in guidance_kwargs:
        raise TypeError("give prompt_bandwidth=, not prompt_kernel= (the kernel is built here)")
    rp = _encode(encoder, reference_prompts, "reference_prompts")
    n_ref = len(references) if hasattr(references, "__len__") and getattr(references, "ndim", 1) > 0 else None
    if n_ref is not None and n_ref != len(rp):
        raise ValueError(f"reference_prompts has {len(rp)} prompts but references has {n_ref} "
                         "samples; give one prompt per reference, in the same order")
    sp = None if sample_prompts is None else _encode(encoder, sample_prompts, "sample_prompts")
    kernel = GaussianKernel(check_positive(prompt_bandwidth, "prompt_bandwidth"))
    return MMDGuidance(references, reference_prompts=rp, sample_prompts=sp, prompt_kernel=kernel,
                       **guidance_kwargs)


def reference_coverage(guidance: MMDGuidance, sample_prompts: Tensor) -> Tensor:
    """rho_i in [0, 1] (n,): the prompt kernel from sample i's prompt to its nearest reference
    prompt, max_j k_p(p_i, p_j^r), as the conditional weighting's rho (``mmd._prompt_factors``).
    1 for prompts that have references, whatever their share of the references (a mean over
    the references gave a prompt with 10 of 40 references 0.4), -> 0 smoothly for prompts far
    from all of them."""
    if not isinstance(guidance, MMDGuidance) or guidance.reference_prompts is None:
        raise ValueError("guidance must be a prompt-aware MMDGuidance (with reference_prompts); got "
                         f"{type(guidance).__name__}")
    rp = guidance.reference_prompts  # (N_r, P)
    if not isinstance(sample_prompts, Tensor) or sample_prompts.ndim != 2 or sample_prompts.shape[1] != rp.shape[1]:
        got = tuple(sample_prompts.shape) if isinstance(sample_prompts, Tensor) else type(sample_prompts).__name__
        raise ValueError(f"sample_prompts must be a tensor (n, {rp.shape[1]}) of prompt features (encoder.encode); "
                         f"got {got}")
    check_finite(sample_prompts, "sample_prompts")
    sp = sample_prompts.to(rp)  # (n, P)
    pk = guidance._kernel()  # the guidance's own ProductKernel (it L2-normalises the prompts)
    pk = replace(pk, prompt_kernel=pk.prompt_kernel.resolve(pk._prep(sp), pk._prep(rp)))
    return pk.prompt_gram(sp, rp).amax(1).clamp(0.0, 1.0)  # (n,)


class CoverageGate:
    """Guidance hook wrapper: scales sample i's correction by ``reference_coverage`` rho_i.

    For ``prompt_weighting="joint"`` (Eq. 11 as written); the default conditional weighting
    already scales each sample by the kernel to its nearest reference prompt.
    Why: in Eq. 11 the repulsion among generated samples is weighted by k_p between *their*
    prompts, not by any reference. Samples whose prompt has no references feel no attraction
    but still repel each other at full strength, so a group of them is scattered off the data.
    The gate keeps Eq. 11 for covered prompts (rho = 1) and switches guidance off smoothly for
    uncovered ones. It reduces to the wrapped guidance when k_p is constant.
    """

    def __init__(self, guidance: MMDGuidance) -> None:
        if not isinstance(guidance, MMDGuidance) or guidance.reference_prompts is None:
            raise TypeError("guidance must be a prompt-aware MMDGuidance (with reference_prompts); "
                            f"got {guidance!r:.80}")
        self.guidance = guidance

    def __getattr__(self, name: str) -> Any:  # sequential, reset, remember, history, ...
        if "guidance" not in self.__dict__:  # copy / pickle probe a bare instance: no KeyError
            raise AttributeError(name)
        return getattr(self.__dict__["guidance"], name)

    def __setattr__(self, name: str, value: Any) -> None:  # gate.strength = 3 must reach the guidance
        if name == "guidance":
            object.__setattr__(self, name, value)
        else:
            setattr(self.guidance, name, value)

    def __call__(self, state: Any) -> Tensor:
        logged = len(self.guidance.history)
        out = self.guidance(state)
        n = len(state.x_prev)
        p = self.guidance._prompts_for(state, n)  # the prompts the guidance itself used
        rho = reference_coverage(self.guidance, p).to(out).reshape(n, *([1] * (out.ndim - 1)))
        result = state.x_prev - rho * (state.x_prev - out)
        if len(self.guidance.history) > logged:  # track=True: step_norm is the step as the gate applies it
            dt = work_dtype(state.x_prev)
            applied = state.x_prev.reshape(n, -1).to(dt) - result.reshape(n, -1).to(dt)
            self.guidance.history[-1]["step_norm"] = float(applied.norm(dim=1).mean())
        return result


def _check_sample_prompts(sp: Tensor | None, cond: Tensor, prompts: Sequence[str]) -> None:
    """A hook's sample_prompts must be the features of the prompts sampled with (same encoder: same rows)."""
    if sp is not None and len(sp) != len(cond):
        raise ValueError(f"the guidance holds {len(sp)} sample_prompts but prompts has {len(cond)}; "
                         "build the guidance with the same prompt list you sample with")
    if sp is not None and sp.shape == cond.shape:  # same encoder: the same prompts give the same rows
        differ = ~torch.isclose(sp.to(cond), cond, rtol=1e-5, atol=1e-6).all(1)  # (n,)
        if bool(differ.any()):
            i = int(differ.nonzero()[0])
            raise ValueError(f"the guidance's sample_prompts differ from prompts (first at row {i}: prompts[{i}] = "
                             f"{prompts[i]!r}); build the guidance with the same prompt list you sample with")


def sample_with_prompts(denoiser: Any, prompts: Sequence[str], encoder: PromptEncoder, *,
                        guidance: Any = None, shape: tuple[int, ...] | int = (2,),
                        **sample_kwargs: Any) -> Tensor:
    """``sampling.sample`` with cond = encoder.encode(prompts), one sample per prompt; checks that
    a prompt-aware guidance was built for the same prompts. Returns the samples (n, *shape)."""
    from .sampling import guidance_hooks, sample

    cond = _encode(encoder, prompts, "prompts")
    for hook in guidance_hooks(guidance) if guidance is not None else []:  # a ChainedGuidance's members too
        _check_sample_prompts(getattr(hook, "sample_prompts", None), cond, prompts)
    if "cond" in sample_kwargs:
        raise TypeError("sample_with_prompts encodes cond from prompts; do not pass cond= as well")
    return sample(denoiser, len(cond), shape, cond=cond, guidance=guidance, **sample_kwargs).samples

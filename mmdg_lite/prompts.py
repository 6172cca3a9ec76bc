"""Prompt-aware MMD guidance (paper Sec. 5, Eq. 10-11): prompt features, the toy prompt world.

References are (prompt, sample) pairs. A prompt becomes a feature vector through a
``PromptEncoder`` (a fixed table for the toy; a text encoder for Stable Diffusion), and the kernel
on the joint space is k_p(p, p') k_z(z, z') with k_p a Gaussian on L2-normalised prompt features.
k_p acts as an attention weight: a sample is pulled only by references whose prompt resembles its
own, so "cat -> anime, dog -> Van Gogh" does not turn into "every category -> a mix of styles".

The toy world (``toy_world``) is 2-D: x says *what* is drawn (category), y says *how* (style).
Every category can produce every style, mostly "photo"; the user's paired style is a minority.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ._validation import as_float_tensor, check_finite, check_int, check_positive
from .guidance import MMDGuidance
from .kernels import GaussianKernel

__all__ = ["PromptEncoder", "TableEncoder", "CallableEncoder", "prompt_aware_guidance",
           "prompt_weights", "reference_coverage", "CoverageGate", "sample_with_prompts",
           "PromptWorld", "toy_world", "CATEGORIES", "STYLES", "PAIRED_STYLES",
           "COND_2D_DIR", "COND_2D_RECIPE", "train_cond_2d", "load_or_train_cond_2d"]

CATEGORIES = ("cat", "dog", "car")
STYLES = ("photo", "anime", "van_gogh", "pixar")
# The notebook's user: each category paired with one style (the paper's Table 2 pairs).
PAIRED_STYLES = {"cat": "anime", "dog": "van_gogh", "car": "pixar"}


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
            v = torch.as_tensor(vec)
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
    return encoder.encode(_check_prompt_list(prompts, name))


def prompt_weights(sample_prompts: Sequence[str], reference_prompts: Sequence[str],
                   encoder: PromptEncoder, prompt_bandwidth: float = 0.3) -> Tensor:
    """k_p(p_i, p_j^r) (n, N_r): the attention weight each reference gets for each sample (Eq. 11)."""
    sp = torch.nn.functional.normalize(_encode(encoder, sample_prompts, "sample_prompts"), dim=-1)
    rp = torch.nn.functional.normalize(_encode(encoder, reference_prompts, "reference_prompts"), dim=-1)
    return GaussianKernel(check_positive(prompt_bandwidth, "prompt_bandwidth")).gram(sp, rp)


def prompt_aware_guidance(references: Tensor, reference_prompts: Sequence[str],
                          encoder: PromptEncoder, sample_prompts: Sequence[str] | None = None,
                          prompt_bandwidth: float = 0.3, **guidance_kwargs: Any) -> MMDGuidance:
    """MMDGuidance with the product kernel k_p x k_z (paper Eq. 10-11) from prompt strings.

    references (N_r, *S) pair row by row with ``reference_prompts``; ``sample_prompts`` gives one
    prompt per generated sample, in the sampler's order (None: the sampler's ``cond`` is used as
    the prompt features). k_p is Gaussian with ``prompt_bandwidth`` on L2-normalised features:
    small = each sample follows only references of its own prompt; large (>> 1.4, the largest
    distance between unit vectors) = every k_p ~ 1, plain pooled guidance. Prompts far from every
    reference prompt get weights exp(-d^2 / 2 sigma^2) -> 0: no pull, never NaN. Other keyword
    arguments go to ``MMDGuidance`` (kernel, strength, schedule, ...).

    Note: Eq. 11's weights are 1/(B N_r) over all pairs, so a prompt holding 1/C of the batch and
    1/C of the references feels about 1/C of the pull that plain guidance with the same strength
    would give it alone: raise ``strength`` by about the number of distinct prompts.
    """
    if "prompt_kernel" in guidance_kwargs:
        raise TypeError("give prompt_bandwidth=, not prompt_kernel= (the kernel is built here)")
    rp = _encode(encoder, reference_prompts, "reference_prompts")
    n_ref = len(references) if hasattr(references, "__len__") else None
    if n_ref is not None and n_ref != len(rp):
        raise ValueError(f"reference_prompts has {len(rp)} prompts but references has {n_ref} "
                         "samples; give one prompt per reference, in the same order")
    sp = None if sample_prompts is None else _encode(encoder, sample_prompts, "sample_prompts")
    kernel = GaussianKernel(check_positive(prompt_bandwidth, "prompt_bandwidth"))
    return MMDGuidance(references, reference_prompts=rp, sample_prompts=sp, prompt_kernel=kernel,
                       **guidance_kwargs)


def reference_coverage(guidance: MMDGuidance, sample_prompts: Tensor) -> Tensor:
    """rho_i in [0, 1] (n,): how much reference mass sample i's prompt sees, relative to what a
    reference prompt sees: min(1, mean_j k_p(p_i, p_j^r) / mean_{j,j'} k_p(p_j^r, p_j'^r)).
    1 for prompts that have references, -> 0 smoothly for prompts far from all of them."""
    if guidance.reference_prompts is None:
        raise ValueError("guidance has no reference_prompts; coverage needs prompt-aware guidance")
    norm = torch.nn.functional.normalize
    rp = norm(guidance.reference_prompts, dim=-1)  # (N_r, P)
    sp = norm(sample_prompts.reshape(len(sample_prompts), -1).to(rp), dim=-1)  # (n, P)
    kp = guidance.prompt_kernel.resolve(sp, rp)
    mass = kp.gram(sp, rp).mean(1)  # (n,)
    ref_mass = kp.gram(rp, rp).mean()  # ()
    return (mass / ref_mass).clamp(max=1.0)


class CoverageGate:
    """Guidance hook wrapper: scales sample i's correction by ``reference_coverage`` rho_i.

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
        return getattr(self.__dict__["guidance"], name)

    def __call__(self, state: Any) -> Tensor:
        out = self.guidance(state)
        g = self.guidance
        n = len(state.x_prev)
        if g.sample_prompts is not None:
            p = g.sample_prompts[state.sample_index.to(g.sample_prompts.device)]
        else:
            p = state.cond.reshape(n, -1)
        rho = reference_coverage(g, p).to(out).reshape(n, *([1] * (out.ndim - 1)))
        return state.x_prev - rho * (state.x_prev - out)


def sample_with_prompts(denoiser: Any, prompts: Sequence[str], encoder: PromptEncoder, *,
                        guidance: Any = None, shape: tuple[int, ...] | int = (2,),
                        **sample_kwargs: Any) -> Tensor:
    """``sampling.sample`` with cond = encoder.encode(prompts), one sample per prompt; checks that
    a prompt-aware guidance was built for the same prompts. Returns the samples (n, *shape)."""
    from .sampling import sample

    cond = _encode(encoder, prompts, "prompts")
    inner = getattr(guidance, "guidance", guidance)
    sp = getattr(inner, "sample_prompts", None)
    if sp is not None and len(sp) != len(cond):
        raise ValueError(f"the guidance holds {len(sp)} sample_prompts but prompts has {len(cond)}; "
                         "build the guidance with the same prompt list you sample with")
    return sample(denoiser, len(cond), shape, cond=cond, guidance=guidance, **sample_kwargs).samples


# ---------------------------------------------------------------- the toy prompt world

@dataclass(frozen=True)
class PromptWorld:
    """A conditional 2-D world: category c, style s -> N(means[c, s], std^2 I) at base_rates[c, s].

    means (C, S, 2); base_rates (C, S), rows sum to 1; embeddings (C, P) unit prompt features.
    """

    categories: tuple[str, ...]
    styles: tuple[str, ...]
    means: Tensor
    base_rates: Tensor
    std: float
    embeddings: Tensor

    def encoder(self) -> TableEncoder:
        """The prompt encoder of this world: category name -> its embedding."""
        return TableEncoder(dict(zip(self.categories, self.embeddings)))

    def category_index(self, prompts: Sequence[str]) -> Tensor:
        """(n,) long index of each category prompt; unknown prompts raise."""
        prompts = _check_prompt_list(prompts, "prompts")
        bad = sorted({p for p in prompts if p not in self.categories})
        if bad:
            raise ValueError(f"unknown prompt(s) {bad}; categories: {list(self.categories)}")
        return torch.tensor([self.categories.index(p) for p in prompts], dtype=torch.long)

    def style_index(self, styles: Sequence[str]) -> Tensor:
        bad = sorted({s for s in styles if s not in self.styles})
        if bad:
            raise ValueError(f"unknown style(s) {bad}; styles: {list(self.styles)}")
        return torch.tensor([self.styles.index(s) for s in styles], dtype=torch.long)

    def sample(self, prompts: Sequence[str], generator: torch.Generator | int = 0,
               styles: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """One point per prompt: (x (n, 2), style index (n,)); styles drawn at the base rates
        unless ``styles`` fixes them (one per prompt)."""
        cat = self.category_index(prompts)
        gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        if styles is None:
            sty = torch.multinomial(self.base_rates[cat].double(), 1, generator=gen)[:, 0]
        else:
            if len(styles) != len(cat):
                raise ValueError(f"styles has {len(styles)} entries but prompts has {len(cat)}")
            sty = self.style_index(styles)
        x = self.means[cat, sty] + self.std * torch.randn(len(cat), 2, generator=gen)  # (n, 2)
        return x, sty

    def references(self, pairing: Mapping[str, str], n_per_category: int = 50,
                   seed: int = 0) -> tuple[Tensor, list[str]]:
        """A user's reference set: ``n_per_category`` samples of each paired (category, style).

        Returns (x (N_r, 2), prompts) with prompts the bare category names (styles omitted, as in
        the paper's prompts)."""
        n = check_int(n_per_category, "n_per_category", 1)
        prompts = [c for c in pairing for _ in range(n)]
        styles = [pairing[c] for c in pairing for _ in range(n)]
        return self.sample(prompts, seed, styles=styles)[0], prompts

    def assign(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest (category, style) mode of each point x (n, 2): two (n,) long tensors."""
        flat = self.means.reshape(-1, 2).to(x)  # (C*S, 2)
        k = torch.cdist(x.reshape(-1, 2), flat).argmin(1)  # (n,)
        return k // len(self.styles), k % len(self.styles)

    def off_mode(self, x: Tensor, n_std: float = 3.0) -> Tensor:
        """(n,) bool: farther than std * sqrt(chi2_2.isf(p)) from every mode, p the two-sided
        n_std-sigma tail (0.344 for std 0.1: a true sample is flagged 0.27 % of the time)."""
        from scipy import stats

        radius = self.std * float(stats.chi2.isf(2 * stats.norm.sf(n_std), df=2)) ** 0.5
        return torch.cdist(x.reshape(-1, 2), self.means.reshape(-1, 2).to(x)).min(1).values > radius

    def style_table(self, x: Tensor, prompts: Sequence[str]) -> tuple[Tensor, list[str]]:
        """Per prompt category (rows), the fraction of its samples nearest to each of its own
        styles and to any mode of another category (columns; rows sum to 1).
        Returns ((C, S + 1) float64, column names); a category without samples is a NaN row."""
        cat = self.category_index(prompts)
        if len(cat) != len(x):
            raise ValueError(f"prompts has {len(cat)} entries but x has {len(x)} samples; "
                             "one prompt per sample")
        got_cat, got_sty = self.assign(x)
        C, S = len(self.categories), len(self.styles)
        table = torch.full((C, S + 1), float("nan"), dtype=torch.float64)
        for c in range(C):
            m = cat == c
            if bool(m.any()):
                own = got_cat[m] == c
                for s in range(S):
                    table[c, s] = (own & (got_sty[m] == s)).double().mean()
                table[c, S] = (~own).double().mean()
        return table, [*self.styles, "other category"]

    def pairing_scores(self, x: Tensor, prompts: Sequence[str],
                       pairing: Mapping[str, str]) -> dict[str, dict[str, float]]:
        """Per category c in ``pairing`` (samples assigned to their nearest mode):
        'paired' = fraction of c's samples in c's own paired style;
        'contamination' = fraction landing in another category's region, or in c's region but in
        a style the user paired with another category (c taking other categories' styles);
        'off_mode' = fraction between modes (see ``off_mode``)."""
        table, _ = self.style_table(x, prompts)
        cat = self.category_index(prompts)
        out = {}
        for name, style in pairing.items():
            c = self.categories.index(name)
            others = {self.styles.index(s) for k, s in pairing.items() if k != name and s != style}
            cont = table[c, len(self.styles)] + sum(table[c, s] for s in others)
            out[name] = {"paired": float(table[c, self.styles.index(style)]),
                         "contamination": float(cont),
                         "off_mode": float(self.off_mode(x)[cat == c].double().mean())}
        return out


def toy_world() -> PromptWorld:
    """3 categories (x = -1.5, 0, 1.5) x 4 styles (y: photo 0, anime 0.8, van_gogh -0.8,
    pixar 1.6), std 0.1; every category 0.7 photo and 0.1 of each art style. Prompt features:
    8-D unit vectors, cat and dog similar (cosine 0.5, both animals), car orthogonal to both."""
    xs, ys = torch.tensor([-1.5, 0.0, 1.5]), torch.tensor([0.0, 0.8, -0.8, 1.6])
    means = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1)  # (3, 4, 2)
    rates = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 3)
    basis = torch.eye(8)
    emb = torch.stack([basis[0] + basis[1], basis[0] + basis[2], basis[3]])
    emb = torch.nn.functional.normalize(emb, dim=-1)  # (3, 8)
    return PromptWorld(CATEGORIES, STYLES, means, rates, 0.1, emb)


# ---------------------------------------------------------------- the shipped conditional model

COND_2D_DIR = Path(__file__).resolve().parent.parent / "data" / "toy" / "cond_2d"
COND_2D_RECIPE: dict[str, Any] = {"seed": 0, "n_data": 60_000, "steps": 5000, "batch_size": 256,
                                  "lr": 3e-3, "hidden": 128, "layers": 3, "cond_dropout": 0.1}


def train_cond_2d(progress: bool = False, **overrides: Any):
    """Train the conditional toy model on ``toy_world()`` (categories uniform, styles at base
    rates, prompt embedding as condition, condition dropout for CFG).
    Returns (model, losses, world, seconds)."""
    from .denoisers import MLPDenoiser
    from .sampling import make_scheduler
    from .seeding import seed_everything
    from .training import train_denoiser

    recipe = {**COND_2D_RECIPE, **overrides}
    world = toy_world()
    gen = seed_everything(recipe["seed"])  # also fixes the model's initial weights
    idx = torch.randint(0, len(world.categories), (recipe["n_data"],), generator=gen)
    prompts = [world.categories[i] for i in idx.tolist()]
    data, _ = world.sample(prompts, gen)  # (N, 2)
    cond = world.encoder().encode(prompts)  # (N, 8)
    model = MLPDenoiser(2, hidden=recipe["hidden"], layers=recipe["layers"], cond_dim=cond.shape[1])
    start = time.perf_counter()
    losses = train_denoiser(model, data, make_scheduler("ddpm"), steps=recipe["steps"],
                            batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"],
                            cond=cond, cond_dropout=recipe["cond_dropout"], progress=progress)
    return model, losses, world, time.perf_counter() - start


def load_or_train_cond_2d(retrain: bool = False, folder: str | Path | None = None,
                          progress: bool = False):
    """(model, world): loads ``data/toy/cond_2d`` (or ``folder``) unless ``retrain`` or missing."""
    from .denoisers import load_denoiser

    folder = Path(folder) if folder is not None else COND_2D_DIR
    if not retrain and (folder / "model.safetensors").is_file():
        return load_denoiser(folder), toy_world()
    model, _, world, _ = train_cond_2d(progress=progress)
    return model, world

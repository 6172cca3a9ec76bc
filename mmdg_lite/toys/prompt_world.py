"""The 2-D prompt world of notebook 04 and its shipped conditional model (paper Sec. 5 in 2-D).

x says *what* is drawn (category: the prompt), y says *how* (style). Every category can produce
every style, mostly "photo"; the user's paired style (the paper's cats -> anime, dogs -> Van Gogh,
cars -> Pixar) is a minority that guidance must raise without mixing categories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .._validation import _describe, check_choice, check_finite, check_int, check_points, check_positive
from ..prompts import TableEncoder, _check_prompt_list
from ..seeding import check_seed

__all__ = ["PromptWorld", "toy_world", "CATEGORIES", "STYLES", "PAIRED_STYLES"]

CATEGORIES = ("cat", "dog", "car")
STYLES = ("photo", "anime", "van_gogh", "pixar")
# The notebook's user: each category paired with one style (the paper's Table 2 pairs).
PAIRED_STYLES = {"cat": "anime", "dog": "van_gogh", "car": "pixar"}


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

    def __post_init__(self) -> None:
        """Refuse a world whose parts disagree (a short means indexed past its end at sample time;
        rates not summing to 1 were renormalised, a negative std sampled)."""
        for name, names, like in (("categories", self.categories, CATEGORIES), ("styles", self.styles, STYLES)):
            # a repeated name: the encoder kept the last row's embedding, category_index the first row's mode
            if (not isinstance(names, (tuple, list)) or not names or not all(isinstance(v, str) for v in names)
                    or len(set(names)) != len(names)):
                raise ValueError(f"{name} must be a tuple of distinct name strings, e.g. {like}; got {names!r:.80}")
        C, S = len(self.categories), len(self.styles)
        for name, want, value in (("means", (C, S, 2), self.means), ("base_rates", (C, S), self.base_rates)):
            if not isinstance(value, Tensor) or tuple(value.shape) != want or not value.dtype.is_floating_point:
                raise ValueError(f"{name} must be a float tensor of shape {want} ({C} categories x {S} styles); "
                                 f"got {_describe(value)}")
            check_finite(value, name)
        rows = self.base_rates.double().sum(1)
        if bool((self.base_rates < 0).any()) or not torch.allclose(rows, torch.ones_like(rows), atol=1e-5):
            raise ValueError(f"base_rates must be >= 0 with every row summing to 1; got row sums {rows.tolist()}")
        check_positive(self.std, "std")
        if not isinstance(self.embeddings, Tensor) or self.embeddings.ndim != 2 or len(self.embeddings) != C:
            raise ValueError(f"embeddings must have shape ({C}, P), one per category; got {_describe(self.embeddings)}")

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
        if isinstance(styles, str):  # a bare str iterates its letters: "unknown style(s) ['a', 'e', ...]"
            raise TypeError(f"styles must be a list of style names, one per prompt; got one str {styles!r}")
        bad = sorted({s for s in styles if s not in self.styles})
        if bad:
            raise ValueError(f"unknown style(s) {bad}; styles: {list(self.styles)}")
        return torch.tensor([self.styles.index(s) for s in styles], dtype=torch.long)

    def sample(self, prompts: Sequence[str], generator: torch.Generator | int = 0,
               styles: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """One point per prompt: (x (n, 2), style index (n,)); styles drawn at the base rates
        unless ``styles`` fixes them (one per prompt)."""
        cat = self.category_index(prompts)
        if isinstance(generator, torch.Generator):
            gen = generator
        else:  # a seed: an int in [0, 2**63), numpy ints included; bools and floats refused by name
            try:
                gen = torch.Generator().manual_seed(check_seed(generator))
            except ValueError:
                raise ValueError(f"generator must be a torch.Generator or a seed, an integer in [0, 2**63); "
                                 f"got {generator!r}") from None
        if styles is None:
            sty = torch.multinomial(self.base_rates[cat].double(), 1, generator=gen)[:, 0]
        else:
            if isinstance(styles, str):  # would count its letters as styles
                raise TypeError(f"styles must be a list of style names, one per prompt; got one str {styles!r}")
            if len(styles) != len(cat):
                raise ValueError(f"styles has {len(styles)} entries but prompts has {len(cat)}")
            sty = self.style_index(styles)
        x = self.means[cat, sty] + self.std * torch.randn(len(cat), 2, generator=gen, dtype=torch.float32)  # (n, 2)
        return x, sty

    def references(self, pairing: Mapping[str, str], n_per_category: int = 50,
                   seed: int = 0) -> tuple[Tensor, list[str]]:
        """A user's reference set: ``n_per_category`` samples of each paired (category, style).

        Returns (x (N_r, 2), prompts) with prompts the bare category names (styles omitted, as in
        the paper's prompts)."""
        n = check_int(n_per_category, "n_per_category", 1)
        if not isinstance(pairing, Mapping):
            raise TypeError(f"pairing must be a mapping category -> style, e.g. {{'cat': 'anime'}}; got "
                            f"{type(pairing).__name__}")
        if not pairing:  # else "prompts must hold at least one prompt", an argument not given
            raise ValueError(f"pairing must name at least one category -> style, e.g. {{'cat': 'anime'}}; got {{}}")
        seed = check_seed(seed)
        prompts = [c for c in pairing for _ in range(n)]
        styles = [pairing[c] for c in pairing for _ in range(n)]
        return self.sample(prompts, seed, styles=styles)[0], prompts

    def _points(self, x: Tensor) -> Tensor:
        x = check_points(x, "x", flatten=False)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (n, 2), points of this 2-D world; got shape {tuple(x.shape)}")
        return x

    def assign(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest (category, style) mode of each point x (n, 2): two (n,) long tensors."""
        x = self._points(x)
        flat = self.means.reshape(-1, 2).to(x)  # (C*S, 2)
        k = torch.cdist(x, flat).argmin(1)  # (n,)
        return k // len(self.styles), k % len(self.styles)

    def off_mode(self, x: Tensor, n_std: float = 3.0) -> Tensor:
        """(n,) bool: farther than std * sqrt(chi2_2.isf(p)) from every mode, p the two-sided
        n_std-sigma tail (0.344 for std 0.1: a true sample is flagged 0.27 % of the time)."""
        from ..metrics import off_mode_radius

        x = self._points(x)
        radius = off_mode_radius(self.std, 2, n_std)
        return torch.cdist(x, self.means.reshape(-1, 2).to(x)).min(1).values > radius

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
        if not isinstance(pairing, Mapping):
            raise TypeError(f"pairing must be a mapping category -> style, e.g. {PAIRED_STYLES}; "
                            f"got {_describe(pairing)}")
        for name, style in pairing.items():
            check_choice(name, "each pairing key", self.categories)
            check_choice(style, f"pairing[{name!r}]", self.styles)
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

"""Denoisers: anything callable as eps_hat = model(x_t, t, cond).

x_t is (B, *S) float, t a (B,) long tensor of diffusers timesteps, cond an optional (B, C)
tensor (None = unconditional). Here: a small MLP (trainable, safetensors save/load), the exact
optimal denoiser of a finite data set, the exact denoiser of an isotropic Gaussian mixture, and
a classifier-free-guidance wrapper.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ._io import ArtifactError, load_weights, read_config
from ._validation import (_describe, as_float_tensor, check_finite, check_int, check_points, check_positive,
                          is_real_number)
from .seeding import own_rng

__all__ = ["ResidualMLP", "Denoiser", "MLPDenoiser", "ExactDenoiser", "GaussianMixtureDenoiser", "CFGDenoiser",
           "save_denoiser", "load_denoiser", "timestep_embedding"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@runtime_checkable
class Denoiser(Protocol):
    """eps_hat (B, *S) = model(x_t (B, *S), t (B,) long, cond (B, C) or None)."""

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor: ...


def _batch_timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """Broadcast an int / 0-d / (B,) timestep to a (B,) long tensor."""
    t = torch.as_tensor(t, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"t must hold integer diffusers timesteps; got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},) (one timestep per sample); got {tuple(t.shape)}")
    return t.long()


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of timesteps t (B,), as in DDPM / Transformers."""
    half = dim // 2
    # float32 whatever torch's default dtype: a float64 default changed every embedding's rounding
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*half)
    return nn.functional.pad(emb, (0, dim - 2 * half))  # (B, dim)


class ResidualMLP(nn.Module):
    """The residual MLP trunk shared by ``MLPDenoiser`` and the classifier baseline: a sinusoidal
    time embedding (plus an optional projected condition, with a learned null embedding for
    classifier-free guidance) is added to every residual block; (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, layers: int = 4,
                 time_embed_dim: int = 64, cond_dim: int = 0) -> None:
        super().__init__()
        self.dim, self.cond_dim, self.time_embed_dim = in_dim, cond_dim, time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        if cond_dim > 0:
            self.cond_proj = nn.Linear(cond_dim, hidden)
            self.null_cond = nn.Parameter(torch.zeros(hidden))
        self.in_proj = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.emb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out_proj = nn.Linear(hidden, out_dim)

    def flat_input(self, x_t: Tensor, what: str) -> Tensor:
        """(B, D) in the parameters' dtype (float64 points through a float32 model, say)."""
        x = x_t.reshape(x_t.shape[0], -1)  # (B, D)
        if x.shape[1] != self.dim:
            raise ValueError(f"x_t has {x.shape[1]} features per sample (shape {tuple(x_t.shape)}); "
                             f"this {what} expects dim={self.dim}")
        return x.to(self.in_proj.weight.dtype)

    def time_embedding(self, t: Tensor | int, b: int, like: Tensor) -> Tensor:
        t = _batch_timesteps(t, b, like.device)
        return self.time_mlp(timestep_embedding(t, self.time_embed_dim).to(like.dtype))  # (B, H)

    def trunk(self, x: Tensor, emb: Tensor) -> Tensor:
        """(B, D) inputs and (B, H) embedding -> (B, out_dim)."""
        h = self.in_proj(x)  # (B, H)
        for lin, proj in zip(self.blocks, self.emb_proj):
            h = h + lin(nn.functional.silu(h + proj(emb)))  # (B, H)
        return self.out_proj(nn.functional.silu(h))


class MLPDenoiser(ResidualMLP):
    """Residual MLP eps-predictor for flat data of ``dim`` features (inputs (B, *S) are flattened).

    With ``cond_dim > 0`` a condition (B, cond_dim) is projected and added to the time embedding;
    ``cond=None`` (or rows marked in ``drop_cond``) use a learned null embedding, so a model trained
    with condition dropout supports classifier-free guidance.
    """

    def __init__(self, dim: int, hidden: int = 256, layers: int = 4, time_embed_dim: int = 64,
                 cond_dim: int = 0) -> None:
        config = {"dim": check_int(dim, "dim", 1), "hidden": check_int(hidden, "hidden", 1),
                  "layers": check_int(layers, "layers", 1),
                  "time_embed_dim": check_int(time_embed_dim, "time_embed_dim", 2),
                  "cond_dim": check_int(cond_dim, "cond_dim", 0)}
        super().__init__(dim, dim, hidden, layers, time_embed_dim, cond_dim)
        self.config = config

    def _cond_embedding(self, cond: Tensor | None, drop_cond: Tensor | None, b: int, like: Tensor) -> Tensor:
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("cond was given but this MLPDenoiser has cond_dim=0 (unconditional)")
            return torch.zeros_like(like)
        null = self.null_cond.expand(b, -1)  # (B, H)
        if cond is None:
            return null
        if cond.shape != (b, self.cond_dim):
            raise ValueError(f"cond must have shape ({b}, {self.cond_dim}); got {tuple(cond.shape)}")
        emb = self.cond_proj(cond.to(like.dtype))  # (B, H)
        if drop_cond is not None:
            if not isinstance(drop_cond, Tensor) or drop_cond.numel() != b:
                raise ValueError(f"drop_cond must be a tensor of {b} flags, one per sample; got "
                                 f"{tuple(drop_cond.shape) if isinstance(drop_cond, Tensor) else type(drop_cond).__name__}")
            emb = torch.where(drop_cond.reshape(b, 1).bool(), null, emb)
        return emb

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None, *,
                drop_cond: Tensor | None = None) -> Tensor:
        b = x_t.shape[0]
        x = self.flat_input(x_t, "model")  # (B, D)
        emb = self.time_embedding(t, b, x)  # (B, H)
        emb = emb + self._cond_embedding(cond, drop_cond, b, emb)  # (B, H)
        return self.trunk(x, emb).reshape(x_t.shape).to(x_t.dtype)  # (B, *S), in the input's dtype


def save_denoiser(model: MLPDenoiser, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    if not isinstance(model, MLPDenoiser):
        raise TypeError(f"model must be an MLPDenoiser; got {type(model).__name__}")
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path (str or Path) to write config.json and model.safetensors into; got "
                        f"{_describe(folder)}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():  # mkdir said only "[Errno 17] File exists"
        raise ValueError(f"folder={str(folder)!r} is a file; save_denoiser writes {CONFIG_NAME} and {WEIGHTS_NAME} "
                         "into a folder (new or existing)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps({"class": "MLPDenoiser", **model.config}, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    (folder / WEIGHTS_NAME).chmod(0o644)  # safetensors writes 0600; the file is meant to be shared
    return folder


def load_denoiser(folder: str | Path, device: str | torch.device = "cpu") -> MLPDenoiser:
    """Load a model written by ``save_denoiser``; returned in eval mode.

    A missing folder or file, invalid JSON, unknown or missing config keys, a truncated or
    garbage ``model.safetensors``, or weights that do not fit the config raise an error that
    names the file and the defect (``FileNotFoundError`` or ``mmdg_lite._io.ArtifactError``).
    """
    from .sampling import _check_device

    device = _check_device(device)  # torch's error (or a CUDA assertion) came after reading the files
    if not isinstance(folder, (str, os.PathLike)):  # pathlib said "expected str, bytes or os.PathLike object"
        raise TypeError(f"folder must be a path (str or Path) to a save_denoiser folder; got {_describe(folder)}")
    folder = Path(folder)
    hint = f"folder={str(folder)!r} must hold {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_denoiser)"
    params = inspect.signature(MLPDenoiser.__init__).parameters
    args = [k for k in params if k != "self"]
    config = read_config(folder / CONFIG_NAME, allowed_keys={"class", *args}, hint=hint,
                         required_keys=[k for k in args if params[k].default is inspect.Parameter.empty])
    cls = config.pop("class", "MLPDenoiser")
    if cls != "MLPDenoiser":
        raise ArtifactError(f"{folder / CONFIG_NAME} names class {cls!r}; only 'MLPDenoiser' can be loaded")
    try:
        with own_rng():  # the init's draws are overwritten; the caller's global RNG must not move
            model = MLPDenoiser(**config)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{folder / CONFIG_NAME}: invalid MLPDenoiser settings: {err}") from err
    load_weights(model, folder / WEIGHTS_NAME, config=folder / CONFIG_NAME, hint=hint)
    return model.to(device).eval()


def _alphas_cumprod(value: Any) -> Tensor:
    """Accept a scheduler (anything with ``.alphas_cumprod``) or a (T,) tensor; float64 copy."""
    ac = getattr(value, "alphas_cumprod", value)
    ac = as_float_tensor(ac, "alphas_cumprod").detach().double()
    if ac.ndim != 1 or ac.numel() < 1 or bool((ac <= 0).any()) or bool((ac >= 1).any()):
        raise ValueError("alphas_cumprod must be a (T,) tensor with values in (0, 1) "
                         f"(e.g. a diffusers scheduler's .alphas_cumprod); got shape {tuple(ac.shape)}")
    return ac


class _ClosedFormDenoiser(nn.Module):
    """Shared parts: float64 math, timestep lookup, (B, *S) <-> (B, D) reshaping."""

    alphas_cumprod: Tensor

    def _support(self) -> tuple[str, Tensor]:
        """The (K, D) points that fix the sample dimension D, and their argument name."""
        raise NotImplementedError

    def _prepare(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; pass cond=None")
        b = x_t.shape[0]
        x = x_t.reshape(b, -1).to(torch.float64)  # (B, D)
        name, points = self._support()
        if x.shape[1] != points.shape[1]:
            raise ValueError(f"x_t has {x.shape[1]} features per sample (shape {tuple(x_t.shape)}); this "
                             f"{type(self).__name__} expects dim={points.shape[1]} (the dimension of its {name})")
        t = _batch_timesteps(t, b, x.device)
        steps = len(self.alphas_cumprod)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= steps):  # -1 indexed the last step
            raise ValueError(f"t must be timesteps from 0 to {steps - 1} (this denoiser's schedule); got values "
                             f"from {int(t.min())} to {int(t.max())}")
        return x, self.alphas_cumprod[t].double()  # (B, D), (B,); float64 after a module-wide .float() too

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor | None = None) -> Tensor:
        x, abar = self._prepare(x_t, t, cond)
        eps = self._eps(x, abar)  # (B, D) float64
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def _eps(self, x: Tensor, abar: Tensor) -> Tensor:
        raise NotImplementedError


class ExactDenoiser(_ClosedFormDenoiser):
    """The optimal denoiser of a finite (optionally weighted) data set y_1..y_N.

    E[y | x_t] is the posterior-weighted mean with logits -||x_t - sqrt(abar) y_k||^2 / (2 (1-abar));
    eps = (x_t - sqrt(abar) E[y | x_t]) / sqrt(1 - abar). Sampling with it reproduces the data points.
    """

    def __init__(self, data: Tensor, alphas_cumprod: Any, weights: Tensor | None = None,
                 chunk_elems: int = 2**22) -> None:
        super().__init__()
        y = check_points(data, "data").double()  # (N, D)
        self.register_buffer("data", y)
        self.register_buffer("alphas_cumprod", _alphas_cumprod(alphas_cumprod))
        w = (torch.ones(y.shape[0], dtype=torch.float64) if weights is None
             else as_float_tensor(weights, "weights").double())
        check_finite(w, "weights")
        if w.shape != (y.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be ({y.shape[0]},) non-negative with a positive sum; "
                             f"got shape {tuple(w.shape)}")
        self.register_buffer("log_weights", torch.log(w / w.sum()))  # (N,)
        self.chunk_rows = max(1, check_int(chunk_elems, "chunk_elems", 1) // y.shape[0])

    def _support(self) -> tuple[str, Tensor]:
        return "data", self.data

    def posterior(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """p(y = y_k | x_t) as a (B, N) float64 matrix."""
        x, abar = self._prepare(x_t, t, None)
        return torch.softmax(self._logits(x, abar), dim=1)

    def _logits(self, x: Tensor, abar: Tensor) -> Tensor:
        a = abar.sqrt()[:, None]  # (B, 1)
        y = self.data.double()  # itself, unless .float() / .to(dtype) cast the buffers (x @ y.T needs one dtype)
        # -||x - a y||^2 / (2(1-abar)) up to a per-row constant: (a x.y - a^2 ||y||^2 / 2) / (1-abar)
        xy = x @ y.T  # (B, N)
        yy = (y**2).sum(1)[None]  # (1, N)
        return (a * xy - a**2 * yy / 2) / (1 - abar)[:, None] + self.log_weights[None].double()  # (B, N)

    def _eps(self, x: Tensor, abar: Tensor) -> Tensor:
        out = []
        for i in range(0, x.shape[0], self.chunk_rows):
            xc, ac = x[i:i + self.chunk_rows], abar[i:i + self.chunk_rows]  # (b, D), (b,)
            post = torch.softmax(self._logits(xc, ac), dim=1)  # (b, N)
            mean_y = post @ self.data.double()  # (b, D)
            out.append((xc - ac.sqrt()[:, None] * mean_y) / (1 - ac).sqrt()[:, None])
        return torch.cat(out)  # (B, D)


class GaussianMixtureDenoiser(_ClosedFormDenoiser):
    """Exact denoiser of sum_k w_k N(mu_k, s^2 I): x_t | k ~ N(sqrt(abar) mu_k, (abar s^2 + 1 - abar) I).

    eps = sqrt(1-abar) * sum_k r_k(x_t) (x_t - sqrt(abar) mu_k) / v_t, r_k the component posterior,
    v_t = abar s^2 + 1 - abar (equivalently Tweedie with the per-component conditional means).
    """

    def __init__(self, means: Tensor, weights: Tensor, std: float, alphas_cumprod: Any) -> None:
        super().__init__()
        mu = check_points(means, "means").double()  # (K, D)
        w = as_float_tensor(weights, "weights").double()
        check_finite(w, "weights")
        if w.shape != (mu.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be ({mu.shape[0]},) non-negative with a positive sum; "
                             f"got shape {tuple(w.shape)}")
        self.register_buffer("means", mu)
        self.register_buffer("log_weights", torch.log(w / w.sum()))  # (K,), -inf for empty components
        self.register_buffer("alphas_cumprod", _alphas_cumprod(alphas_cumprod))
        self.std = check_positive(std, "std")

    @classmethod
    def from_mixture(cls, mixture: Any, alphas_cumprod: Any) -> "GaussianMixtureDenoiser":
        """Build from a ``data.GaussianMixture``."""
        return cls(mixture.means, mixture.weights, mixture.std, alphas_cumprod)

    def _support(self) -> tuple[str, Tensor]:
        return "means", self.means

    def _parts(self, x: Tensor, abar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = abar.sqrt()[:, None, None]  # (B, 1, 1)
        v = (abar * self.std**2 + 1 - abar)[:, None]  # (B, 1)
        diff = x[:, None, :] - a * self.means[None]  # (B, K, D)
        logits = -(diff**2).sum(-1) / (2 * v) + self.log_weights[None]  # (B, K)
        return torch.softmax(logits, dim=1), diff, v

    def posterior(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """Component responsibilities p(k | x_t) as a (B, K) float64 matrix."""
        x, abar = self._prepare(x_t, t, None)
        return self._parts(x, abar)[0]

    def _eps(self, x: Tensor, abar: Tensor) -> Tensor:
        r, diff, v = self._parts(x, abar)  # (B, K), (B, K, D), (B, 1)
        score_neg = (r[:, :, None] * diff).sum(1) / v  # (B, D) = -grad log p_t(x)
        return (1 - abar).sqrt()[:, None] * score_neg  # (B, D)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance: eps_u + scale * (eps_c - eps_u), eps_u from ``model(x, t, None)``.

    Scale 0 is the unconditional model and scale 1 the conditional one, exactly and in one call."""

    def __init__(self, model: nn.Module, guidance_scale: float = 3.0) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a conditional denoiser callable as model(x_t, t, cond); "
                            f"got {_describe(model)}")
        if not is_real_number(guidance_scale):
            raise TypeError(f"guidance_scale must be a finite number; got {_describe(guidance_scale)}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number; got {guidance_scale!r}")
        self.model = model
        self.guidance_scale = float(guidance_scale)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None and self.guidance_scale == 1.0:  # the conditional model itself, in one call
            return self.model(x_t, t, cond)
        eps_u = self.model(x_t, t, None)  # (B, *S)
        if cond is None or self.guidance_scale == 0.0:  # the unconditional model
            return eps_u
        eps_c = self.model(x_t, t, cond)  # (B, *S)
        return eps_u + self.guidance_scale * (eps_c - eps_u)

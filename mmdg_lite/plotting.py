"""Small matplotlib/seaborn helpers shared by the notebooks.

Every function draws on a given ``Axes`` (or makes one) and returns what it drew, so notebooks
can compose figures freely. Inputs may be torch tensors or numpy arrays; 2-D points are (n, 2).
"""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.quiver import Quiver

__all__ = ["to_numpy", "grid_2d", "plot_samples", "plot_field", "plot_witness",
           "plot_gram", "fit_loglog_slope", "plot_loglog"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

GENERATED_COLOR = "tab:blue"
REFERENCE_COLOR = "tab:orange"


def to_numpy(a: ArrayLike) -> np.ndarray:
    """A numpy copy of a tensor (detached, on CPU) or of anything array-like."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _ax(ax: Axes | None) -> Axes:
    return plt.gca() if ax is None else ax


def _check_2d(points: np.ndarray, name: str) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2); got {points.shape}")
    return points


def grid_2d(xlim: tuple[float, float], ylim: tuple[float, float] | None = None,
            n: int = 25) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """An n x n grid: meshgrid arrays XX, YY (n, n) and the points as a float32 tensor (n*n, 2)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 grid points per axis; got {n}")
    ylim = xlim if ylim is None else ylim
    xx, yy = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float32)
    return xx, yy, pts


def plot_samples(generated: ArrayLike | None = None, reference: ArrayLike | None = None, *,
                 ax: Axes | None = None, labels: tuple[str, str] = ("generated", "reference"),
                 s: float = 12.0, alpha: float = 0.7, legend: bool = True) -> Axes:
    """Scatter generated points (blue dots) and reference points (orange crosses), equal axes."""
    ax = _ax(ax)
    if generated is not None:
        g = _check_2d(to_numpy(generated), "generated")
        ax.scatter(g[:, 0], g[:, 1], s=s, alpha=alpha, c=GENERATED_COLOR, label=labels[0])
    if reference is not None:
        r = _check_2d(to_numpy(reference), "reference")
        ax.scatter(r[:, 0], r[:, 1], s=1.5 * s, alpha=alpha, c=REFERENCE_COLOR, marker="x",
                   label=labels[1])
    ax.set_aspect("equal")
    if legend and (generated is not None or reference is not None):
        ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    return ax


def plot_field(points: ArrayLike, vectors: ArrayLike, *, ax: Axes | None = None,
               normalize: bool = False, color: str = "k", scale: float | None = None,
               width: float = 0.004, **kwargs) -> Quiver:
    """Quiver plot of a vector field: arrows ``vectors`` (n, 2) drawn at ``points`` (n, 2).

    With ``normalize`` every arrow has unit length (direction only), and the arrow colour
    shows the magnitude on a log scale instead of ``color``. Returns the Quiver (for a key).
    """
    ax = _ax(ax)
    p = _check_2d(to_numpy(points), "points")
    v = _check_2d(to_numpy(vectors), "vectors")
    if p.shape != v.shape:
        raise ValueError(f"points {p.shape} and vectors {v.shape} must have the same shape")
    if normalize:
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        u = v / np.maximum(norm, 1e-12)
        q = ax.quiver(p[:, 0], p[:, 1], u[:, 0], u[:, 1], np.log10(norm[:, 0] + 1e-12),
                      cmap=kwargs.pop("cmap", "viridis"), scale=scale, width=width, **kwargs)
    else:
        q = ax.quiver(p[:, 0], p[:, 1], v[:, 0], v[:, 1], color=color, scale=scale,
                      width=width, **kwargs)
    ax.set_aspect("equal")
    return q


def plot_witness(fn: Callable[[torch.Tensor], torch.Tensor], xlim: tuple[float, float],
                 ylim: tuple[float, float] | None = None, *, n: int = 120,
                 ax: Axes | None = None, cmap: str = "RdBu_r", colorbar: bool = True,
                 levels: int = 21) -> np.ndarray:
    """Filled contour of a scalar function on a 2-D grid, colours centred at zero.

    ``fn`` maps (T, 2) points to (T,) values, e.g. ``lambda t: witness(t, x, y, k)``.
    Red = positive (too many generated samples), blue = negative (missing mass).
    Returns the (n, n) values.
    """
    ax = _ax(ax)
    xx, yy, pts = grid_2d(xlim, ylim, n)
    with torch.no_grad():
        z = to_numpy(fn(pts)).reshape(xx.shape)
    vmax = float(np.abs(z).max()) or 1.0
    cs = ax.contourf(xx, yy, z, levels=np.linspace(-vmax, vmax, levels), cmap=cmap,
                     norm=TwoSlopeNorm(0.0, -vmax, vmax))
    ax.contour(xx, yy, z, levels=[0.0], colors="k", linewidths=0.8, linestyles="--")
    if colorbar:
        ax.figure.colorbar(cs, ax=ax, shrink=0.8, format="%.2f")
    ax.set_aspect("equal")
    return z


def plot_gram(K: ArrayLike, *, ax: Axes | None = None, title: str | None = None,
              cmap: str = "viridis", colorbar: bool = True, vmin: float | None = None,
              vmax: float | None = None) -> Axes:
    """A Gram matrix (n, m) as an image (row i, column j = k(x_i, y_j)).

    Fix ``vmin``/``vmax`` (e.g. 0 and 1 for a Gaussian kernel) to compare several matrices.
    """
    ax = _ax(ax)
    im = ax.imshow(to_numpy(K), cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def fit_loglog_slope(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Least-squares line through (log x, log y): returns (slope, intercept), natural logs."""
    lx, ly = np.log(to_numpy(x).astype(float)), np.log(to_numpy(y).astype(float))
    if lx.shape != ly.shape or lx.size < 2:
        raise ValueError(f"x and y need the same shape with >= 2 values; got {lx.shape}, {ly.shape}")
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def plot_loglog(x: ArrayLike, y: ArrayLike, *, yerr: ArrayLike | None = None,
                ref_slope: float | None = -0.5, ax: Axes | None = None,
                label: str = "measured", ref_label: str | None = None,
                fit: bool = True) -> float | None:
    """Log-log plot of y against x with an optional reference slope and a fitted slope.

    The reference line ``y ∝ x^ref_slope`` passes through the first point, so the eye can
    compare slopes directly. ``yerr`` draws an error band (e.g. the std over seeds).
    Returns the fitted slope (or None with ``fit=False``).
    """
    ax = _ax(ax)
    xa, ya = to_numpy(x).astype(float), to_numpy(y).astype(float)
    ax.loglog(xa, ya, "o-", label=label)
    if yerr is not None:
        e = to_numpy(yerr).astype(float)
        ax.fill_between(xa, np.maximum(ya - e, ya * 1e-3), ya + e, alpha=0.25)
    slope = None
    if fit:
        slope, b = fit_loglog_slope(xa, ya)
        ax.loglog(xa, np.exp(b) * xa**slope, ":", color="gray", label=f"fit: slope {slope:.2f}")
    if ref_slope is not None:
        ax.loglog(xa, ya[0] * (xa / xa[0]) ** ref_slope, "--", color="k",
                  label=ref_label or f"reference slope {ref_slope:g}")
    ax.legend(fontsize="small")
    return slope


def plot_prompt_samples(points: ArrayLike, labels: Sequence[str], *, references: ArrayLike | None = None,
                        reference_labels: Sequence[str] | None = None, ax: Axes | None = None,
                        order: Sequence[str] | None = None, s: float = 9.0, alpha: float = 0.6,
                        legend: bool = True) -> Axes:
    """2-D samples coloured by their prompt (dots) and references by theirs (black-edged crosses).

    ``order`` fixes the prompt -> colour assignment (default: first appearance), so several
    panels share one colour key.
    """
    ax = _ax(ax)
    p = _check_2d(to_numpy(points), "points")
    labels = list(labels)
    if len(labels) != len(p):
        raise ValueError(f"labels has {len(labels)} entries but points has {len(p)}; one per point")
    names = list(order) if order is not None else list(dict.fromkeys(labels))
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    lab = np.asarray(labels)
    for n in names:
        m = lab == n
        if m.any():
            ax.scatter(p[m, 0], p[m, 1], s=s, alpha=alpha, c=colors[n], label=f"prompt '{n}'")
    if references is not None:
        r = _check_2d(to_numpy(references), "references")
        rl = np.asarray(list(reference_labels) if reference_labels is not None else ["ref"] * len(r))
        for n in dict.fromkeys(rl.tolist()):
            m = rl == n
            ax.scatter(r[m, 0], r[m, 1], s=2.5 * s, marker="X", c=colors.get(n, "k"),
                       edgecolors="k", linewidths=0.6, label=f"reference '{n}'")
    ax.set_aspect("equal")
    if legend:
        ax.legend(loc="best", fontsize="x-small", framealpha=0.8, ncol=2)
    return ax


def plot_proportion_table(table: ArrayLike, row_labels: Sequence[str], col_labels: Sequence[str], *,
                          ax: Axes | None = None, title: str | None = None,
                          highlight: Sequence[tuple[int, int]] = (), fmt: str = ".2f",
                          cmap: str = "Blues", vmax: float = 1.0) -> Axes:
    """A (rows, cols) table of proportions as an annotated heatmap (seaborn); cells listed in
    ``highlight`` as (row, col) get a red frame (e.g. each category's target style)."""
    import seaborn as sns
    from matplotlib.patches import Rectangle

    ax = _ax(ax)
    t = np.asarray(to_numpy(table), dtype=float)
    if t.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"table has shape {t.shape} but got {len(row_labels)} row and "
                         f"{len(col_labels)} column labels")
    sns.heatmap(t, annot=True, fmt=fmt, cmap=cmap, vmin=0.0, vmax=vmax, cbar=False, ax=ax,
                xticklabels=list(col_labels), yticklabels=list(row_labels), linewidths=0.5,
                annot_kws={"fontsize": "small"})
    for r, c in highlight:
        ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="tab:red", lw=2.2))
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
    if title:
        ax.set_title(title)
    return ax

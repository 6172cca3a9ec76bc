"""Small matplotlib/seaborn helpers shared by the notebooks, the widgets and the book.

Every function draws on a given ``Axes`` (or makes one) and returns what it drew, so notebooks
can compose figures freely. Inputs may be torch tensors or numpy arrays; 2-D points are (n, 2).

Book conventions (one place for all notebooks): ``PALETTE`` gives one colour per role
(generated / reference / unguided / guided / target); references are drawn *under* the
generated samples; at most ``MAX_COLS`` panels per row (``panel_grid``) so figures fit the
book's content column; legends go outside the data (``legend_outside``); colour that encodes
a value gets a colorbar. The last section reads benchmark tables for figures
(``read_markdown_table``, ``load_results_json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ._io import import_optional

import_optional("matplotlib.pyplot", "mmdg_lite.plotting")  # names the extra when it is missing
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

__all__ = ["PALETTE", "MAX_COLS", "BOOK_WIDTH", "role_color", "panel_grid", "legend_outside",
           "to_numpy", "grid_2d", "plot_samples", "plot_ring_panel", "plot_field", "plot_witness",
           "plot_gram", "fit_loglog_slope", "plot_loglog", "plot_prompt_samples",
           "plot_proportion_table", "plain_log_ticks", "read_markdown_table",
           "find_results_dir", "load_results_json"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

# One palette for the whole course (Okabe-Ito, colour-blind safe). Generated samples of a
# figure with a single run use "generated"; comparisons use "unguided" vs "guided".
PALETTE: dict[str, str] = {
    "generated": "#0072B2",   # blue
    "reference": "#E69F00",   # orange
    "unguided": "#7F7F7F",    # grey
    "guided": "#009E73",      # green
    "target": "#000000",      # black
}
GENERATED_COLOR = PALETTE["generated"]
REFERENCE_COLOR = PALETTE["reference"]
MAX_COLS = 3        # panels per row that stay legible in the book's content column
BOOK_WIDTH = 11.0   # inches: the widest figure panel_grid makes (about 1,000 px at dpi 90)


def role_color(role: str) -> str:
    """The palette colour of a role ("generated", "reference", "unguided", "guided", "target").

    A run label that starts with "unguided" or "guided" (e.g. "guided, c = 3") maps to that role.
    """
    key = str(role).lower()
    if key in PALETTE:
        return PALETTE[key]
    for name in ("unguided", "guided", "reference", "target", "generated"):
        if key.startswith(name):
            return PALETTE[name]
    raise ValueError(f"role must be one of {sorted(PALETTE)} (or a label starting with one); "
                     f"got {role!r}")


def panel_grid(n: int, ncols: int = MAX_COLS, *, panel_width: float | None = None,
               panel_height: float = 3.4, sharex: bool = False, sharey: bool = False,
               **kwargs):
    """A figure with ``n`` panels, at most ``ncols`` (<= 3) per row, unused cells removed.

    Returns (fig, axes) with ``axes`` a flat list of the n Axes. The width is at most
    ``BOOK_WIDTH`` inches unless ``panel_width`` asks for more.
    """
    from ._validation import check_int

    n, ncols = check_int(n, "n", 1), check_int(ncols, "ncols", 1)  # matplotlib: 'Number of rows ...'
    if not 1 <= ncols <= MAX_COLS:
        raise ValueError(f"ncols must be between 1 and {MAX_COLS} (panels per row in the book); got {ncols}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    width = panel_width if panel_width is not None else min(BOOK_WIDTH / ncols, 4.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, panel_height * nrows),
                             squeeze=False, sharex=sharex, sharey=sharey, **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def legend_outside(where: Axes | Figure, *, loc: str = "right", ncol: int | None = None,
                   fontsize: str = "small", **kwargs):
    """A legend outside the data: right of an Axes, or below a Figure (one legend for all panels).

    For a Figure the handles of all its Axes are collected once per label (so a shared colour key
    is shown once). ``loc`` places an Axes' legend: "right" or "below" (a Figure's is always
    below). Returns the Legend, or None when nothing is labelled.
    """
    if loc not in ("right", "below"):  # anything else was drawn on the right, silently
        raise ValueError(f"loc must be 'right' or 'below'; got {loc!r}")
    if isinstance(where, Figure):
        handles, labels = [], []
        for ax in where.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels and not lab.startswith("_"):
                    handles.append(h)
                    labels.append(lab)
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        if not handles:
            return None
        return where.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                            ncol=ncol or min(len(labels), 4), fontsize=fontsize, frameon=False,
                            **kwargs)
    handles, labels = where.get_legend_handles_labels()
    if not handles:
        return None
    if loc == "below":  # below the x-axis label
        return where.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=ncol or 2,
                            fontsize=fontsize, frameon=False, **kwargs)
    return where.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=ncol or 1,
                        fontsize=fontsize, frameon=False, borderaxespad=0.0, **kwargs)


def to_numpy(a: ArrayLike) -> np.ndarray:
    """A numpy copy of a tensor (detached, on CPU; bfloat16 as float32, which numpy lacks) or of
    anything array-like."""
    if isinstance(a, torch.Tensor):  # .numpy() of a CPU tensor and asarray of an array share memory
        a = a.detach().cpu()
        return (a.float() if a.dtype == torch.bfloat16 else a).numpy().copy()
    return np.array(a)


def _ax(ax: Axes | None) -> Axes:
    return plt.gca() if ax is None else ax


def _check_2d(points: np.ndarray, name: str) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2); got {points.shape}")
    if points.dtype.kind in "fc" and not np.isfinite(points).all():  # scatter / quiver leave them out, silently
        raise ValueError(f"{name} must be finite; got {int((~np.isfinite(points).all(1)).sum())} of "
                         f"{len(points)} rows with NaN or inf")
    return points


def grid_2d(xlim: tuple[float, float], ylim: tuple[float, float] | None = None,
            n: int = 25) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """An n x n grid: meshgrid arrays XX, YY (n, n) and the points as a float32 tensor (n*n, 2)."""
    from ._validation import check_int

    n = check_int(n, "n", 2)  # grid points per axis; a float n was numpy's "cannot be interpreted as an integer"
    ylim = xlim if ylim is None else ylim
    xx, yy = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float32)
    return xx, yy, pts


def plot_samples(generated: ArrayLike | None = None, reference: ArrayLike | None = None, *,
                 ax: Axes | None = None, labels: tuple[str, str] | None = None,
                 role: str = "generated", s: float = 12.0, alpha: float = 0.7,
                 legend: bool = True) -> Axes:
    """Scatter generated points (dots in the ``role``'s colour) over reference points (orange
    crosses, drawn underneath), equal axes; the legend goes outside the data."""
    if labels is not None and (isinstance(labels, str) or len(labels) != 2):  # "gr" was 'g' and 'r'
        raise ValueError(f"labels must be a pair (generated label, reference label); got {labels!r}")
    ax = _ax(ax)
    labels = labels if labels is not None else (role, "reference")
    if reference is not None:
        r = _check_2d(to_numpy(reference), "reference")
        ax.scatter(r[:, 0], r[:, 1], s=1.5 * s, alpha=alpha, c=PALETTE["reference"], marker="x",
                   label=labels[1], zorder=1)
    if generated is not None:
        g = _check_2d(to_numpy(generated), "generated")
        ax.scatter(g[:, 0], g[:, 1], s=s, alpha=alpha, c=role_color(role), label=labels[0],
                   zorder=2)
    ax.set_aspect("equal")
    if legend and (generated is not None or reference is not None):
        legend_outside(ax)
    return ax


def plot_ring_panel(ax: Axes, samples: ArrayLike | None, references: ArrayLike | None,
                    title: str = "", *, role: str = "guided", lim: float = 3.2,
                    s: float = 3.0) -> Axes:
    """One panel of the 2-D ring: faint references underneath, samples on top, fixed limits
    (samples beyond them are counted in a corner note, not silently cut off).

    ``samples=None`` (a run whose guidance diverged) writes "diverged" in the panel instead.
    """
    if samples is None:
        ax.text(0.5, 0.5, "diverged", ha="center", va="center", transform=ax.transAxes,
                fontsize=14)
    else:
        plot_samples(None, references, ax=ax, s=s, alpha=0.35, legend=False)
        plot_samples(samples, ax=ax, s=s, role=role, legend=False)
        _note_outside(ax, samples, (-lim, lim), (-lim, lim))
    ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    return ax


def _note_outside(ax: Axes, points: ArrayLike, xlim: tuple[float, float], ylim: tuple[float, float],
                  what: str = "samples") -> int:
    """Write "k of n samples outside the view" in the lower-left corner of ``ax`` when some of the
    (n, 2) ``points`` lie beyond the limits the panel is drawn with; returns k."""
    p = _check_2d(to_numpy(points), "points")
    inside = (min(xlim) <= p[:, 0]) & (p[:, 0] <= max(xlim)) & (min(ylim) <= p[:, 1]) & (p[:, 1] <= max(ylim))
    out = int((~inside).sum())
    if out:
        ax.text(0.02, 0.02, f"{out} of {len(p)} {what} outside the view", transform=ax.transAxes,
                fontsize="x-small", color="#b00", ha="left", va="bottom")
    return out


def plot_field(points: ArrayLike, vectors: ArrayLike, *, ax: Axes | None = None,
               normalize: bool = False, color: str = "k", scale: float | None = None,
               width: float = 0.004, colorbar: bool = False, **kwargs) -> Quiver:
    """Quiver plot of a vector field: arrows ``vectors`` (n, 2) drawn at ``points`` (n, 2).

    With ``normalize`` every arrow has unit length (direction only), and the arrow colour
    shows the magnitude on a log scale instead of ``color`` (``colorbar=True`` adds its key); a
    zero vector has no direction and is not drawn. Returns the Quiver.
    """
    ax = _ax(ax)
    p = _check_2d(to_numpy(points), "points")
    v = _check_2d(to_numpy(vectors), "vectors")
    if p.shape != v.shape:
        raise ValueError(f"points {p.shape} and vectors {v.shape} must have the same shape")
    if normalize:
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        zero = norm[:, 0] == 0  # a floor of 1e-12 drew |v| = 1e-22 (or 0) as 1e-12, arrows of length ~0
        u = v / np.where(zero[:, None], 1.0, norm)
        c = np.ma.masked_array(np.log10(np.where(zero, 1.0, norm[:, 0])), mask=zero)
        q = ax.quiver(p[:, 0], p[:, 1], u[:, 0], u[:, 1], c,
                      cmap=kwargs.pop("cmap", "viridis"), scale=scale, width=width, **kwargs)
        if colorbar:
            ax.figure.colorbar(q, ax=ax, shrink=0.8, label="log10 |vector|")
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
    from ._validation import check_int

    levels = check_int(levels, "levels", 2)  # contourf needs two levels
    ax = _ax(ax)
    xx, yy, pts = grid_2d(xlim, ylim, n)
    with torch.no_grad():
        values = to_numpy(fn(pts))
    if values.size != len(pts):
        raise ValueError(f"fn must map the (T, 2) grid points to (T,) values, T = {len(pts)}; got shape "
                         f"{values.shape}")
    z = values.reshape(xx.shape)
    if not np.isfinite(z).all():  # matplotlib would fail on the colour scale with an unrelated message
        raise ValueError(f"fn returned {int((~np.isfinite(z)).sum())} non-finite value(s) (NaN or inf) of "
                         f"{z.size} on the grid; a heatmap needs finite values")
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
    k = to_numpy(K)
    if k.ndim != 2:  # a 3-D array would be drawn as an RGB image, silently
        raise ValueError(f"K must be a Gram matrix of shape (n, m); got shape {k.shape}")
    ax = _ax(ax)
    im = ax.imshow(k, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _check_log_values(v: np.ndarray, name: str, what: str) -> None:
    """Refuse values a log scale cannot show (matplotlib drops them from the plot silently)."""
    if not (np.isfinite(v).all() and (v > 0).all()):
        bad = v[~(np.isfinite(v) & (v > 0))]
        raise ValueError(f"{name} must be finite and > 0 for a log-log {what}; got {bad.size} other value(s), "
                         f"e.g. {float(bad[0])!r}")


def fit_loglog_slope(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Least-squares line through (log x, log y): returns (slope, intercept), natural logs.
    x and y must be finite and > 0 (an unbiased MMD^2 estimate can be negative: plot its spread)."""
    xa, ya = to_numpy(x).astype(float), to_numpy(y).astype(float)
    if xa.shape != ya.shape or xa.ndim != 1 or xa.size < 2:
        raise ValueError(f"x and y need the same 1-D shape with >= 2 values; got {xa.shape}, {ya.shape}")
    for name, v in (("x", xa), ("y", ya)):
        _check_log_values(v, name, "fit")
    if np.unique(xa).size < 2:  # least squares has no slope to find (LinAlgError from LAPACK)
        raise ValueError(f"x needs at least 2 distinct values for a log-log fit; got only {float(xa[0])!r}")
    lx, ly = np.log(xa), np.log(ya)
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
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same shape; got {xa.shape} and {ya.shape}")
    if xa.ndim != 1 or xa.size < 1:  # a 2-D array was drawn as one line per column
        raise ValueError(f"x and y must be 1-D with at least one value; got shape {xa.shape}")
    for name, v in (("x", xa), ("y", ya)):  # with fit=False they were left out of the plot, silently
        _check_log_values(v, name, "plot")
    e = None if yerr is None else to_numpy(yerr).astype(float)
    if e is not None and e.shape != ya.shape:
        raise ValueError(f"yerr must have y's shape {ya.shape}, one error per point; got {e.shape}")
    if e is not None and not (np.isfinite(e) & (e >= 0)).all():  # NaN (the std of one seed): no band, silently
        bad = e[~(np.isfinite(e) & (e >= 0))]
        raise ValueError(f"yerr must be finite and >= 0, one error per point (e.g. the std over seeds); got "
                         f"{bad.size} other value(s), e.g. {float(bad[0])!r}")
    ax.loglog(xa, ya, "o-", label=label)
    if e is not None:
        ax.fill_between(xa, np.maximum(ya - e, ya * 1e-3), ya + e, alpha=0.25)
    slope = None
    if fit:
        slope, b = fit_loglog_slope(xa, ya)
        ax.loglog(xa, np.exp(b) * xa**slope, ":", color="gray", label=f"fit: slope {slope:.2f}")
    if ref_slope is not None:
        ax.loglog(xa, ya[0] * (xa / xa[0]) ** ref_slope, "--", color="k",
                  label=ref_label or f"reference slope {ref_slope:g}")
    legend_outside(ax)
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
    for name, value in (("labels", labels), ("reference_labels", reference_labels), ("order", order)):
        if isinstance(value, str):  # list("cat") is ['c', 'a', 't']: one prompt per letter, silently
            raise TypeError(f"{name} must be a sequence of prompts, one per point; got the string {value!r}")
    labels = list(labels)
    if len(labels) != len(p):
        raise ValueError(f"labels has {len(labels)} entries but points has {len(p)}; one per point")
    names = list(order) if order is not None else list(dict.fromkeys(labels))
    missing = sorted(set(labels) - set(names), key=str)
    if missing:  # their points would silently not be drawn
        raise ValueError(f"order must list every label of the points; it misses {missing}")
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    lab = np.asarray(labels)
    for n in names:
        m = lab == n
        if m.any():
            ax.scatter(p[m, 0], p[m, 1], s=s, alpha=alpha, c=colors[n], label=f"prompt '{n}'")
    if references is not None:
        r = _check_2d(to_numpy(references), "references")
        rl = np.asarray(list(reference_labels) if reference_labels is not None else ["ref"] * len(r))
        if len(rl) != len(r):
            raise ValueError(f"reference_labels has {len(rl)} entries but references has {len(r)}; one per reference")
        for n in dict.fromkeys(rl.tolist()):
            m = rl == n
            ax.scatter(r[m, 0], r[m, 1], s=2.5 * s, marker="X", c=colors.get(n, "k"),
                       edgecolors="k", linewidths=0.6, label=f"reference '{n}'")
    ax.set_aspect("equal")
    if legend:
        legend_outside(ax, fontsize="x-small")
    return ax


def plot_proportion_table(table: ArrayLike, row_labels: Sequence[str], col_labels: Sequence[str], *,
                          ax: Axes | None = None, title: str | None = None,
                          highlight: Sequence[tuple[int, int]] = (), fmt: str = ".2f",
                          cmap: str = "Blues", vmax: float = 1.0) -> Axes:
    """A (rows, cols) table of proportions as an annotated heatmap (seaborn); cells listed in
    ``highlight`` as (row, col) get a red frame (e.g. each category's target style)."""
    from matplotlib.patches import Rectangle

    sns = import_optional("seaborn", "plot_proportion_table")

    ax = _ax(ax)
    t = np.asarray(to_numpy(table), dtype=float)
    if t.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"table has shape {t.shape} but got {len(row_labels)} row and "
                         f"{len(col_labels)} column labels")
    rows, cols = t.shape
    for cell in highlight:  # a frame outside the table would be drawn beside it, silently
        if len(cell) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in cell) \
                or not (0 <= cell[0] < rows and 0 <= cell[1] < cols):
            raise ValueError(f"highlight must list (row, col) cells of the {rows} x {cols} table; got {tuple(cell)}")
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


def plain_log_ticks(ax: Axes) -> Axes:
    """Label log-scaled axes with plain numbers (0.1, 1, 10) and no minor-tick labels."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    for axis, scale, lim in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                             (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log":
            if not isinstance(axis.get_major_locator(), FixedLocator):  # keep explicit ticks
                decades = math.log10(max(lim) / max(min(lim), 1e-300))
                axis.set_major_locator(LogLocator(subs=(1, 2, 5) if decades < 2.5 else (1,)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    return ax


# -- benchmark tables, read for figures ---------------------------------------------------------

def read_markdown_table(text: str, heading: str):
    """The first markdown table under the section ``## heading`` of ``text``, as a DataFrame of
    strings (bold markers removed). Raises KeyError naming the headings that exist."""
    pd = import_optional("pandas", "read_markdown_table")
    all_lines = text.splitlines()  # any line ending, a heading on the last line too
    heads = [i for i, ln in enumerate(all_lines) if ln.startswith("## ")]
    found = [all_lines[i][3:].strip() for i in heads]  # "## A  " is section "A": trailing blanks are invisible
    if str(heading).strip() not in found:
        raise KeyError(f"heading {heading!r} not found; the sections are {found}")
    start = heads[found.index(str(heading).strip())] + 1
    end = next((i for i in heads if i >= start), len(all_lines))  # up to the next section
    lines = []  # the first table only: a second one in the section was read as more rows
    for ln in all_lines[start:end]:
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break
    if len(lines) < 2:
        raise ValueError(f"section {heading!r} has no markdown table")
    cells = [[c.strip().replace("**", "") for c in ln.strip().strip("|").split("|")] for ln in lines]
    for ln, row in zip(lines[2:], cells[2:]):  # pandas padded a short row with None, silently
        if len(row) != len(cells[0]):
            raise ValueError(f"section {heading!r}: a row has {len(row)} cells where the header has "
                             f"{len(cells[0])} ({cells[0]}): {ln.strip()!r}")
    return pd.DataFrame(cells[2:], columns=cells[0])


def find_results_dir(start: str | Path | None = None) -> Path | None:
    """benchmarks/results of the repository that holds ``start``, searching upward; None when
    there is none. Without ``start``: from the working directory, else the checkout this package
    is imported from (a student notebook written outside the repository still finds the tables)."""
    here = Path(start) if start is not None else Path.cwd()
    roots = [here, *here.parents]
    if start is None:
        roots.append(Path(__file__).resolve().parent.parent)  # the checkout holding mmdg_lite/
    for root in roots:
        if (root / "benchmarks" / "results").is_dir():
            return root / "benchmarks" / "results"
    return None


def load_results_json(stem: str, results: str | Path | None = None):
    """(rows as a DataFrame, the whole JSON dict) of benchmarks/results/<stem>.json, or
    (None, {}) with a printed note naming the command that creates it when it is missing.
    Rows are None for a JSON without a "rows" list of records (images.json, sd.json, ...: read
    the dict)."""
    import json

    pd = import_optional("pandas", "load_results_json")
    folder = Path(results) if results is not None else find_results_dir()
    path = None if folder is None else folder / f"{stem}.json"
    if path is None or not path.is_file():
        how = ("`python benchmarks/synthetic_tables.py` (or benchmarks/run_all.sh)" if stem.startswith("table")
               else "the benchmarks/ script that writes it (benchmarks/run_all.sh runs them all)")  # images: images.py
        print(f"[missing] benchmarks/results/{stem}.json not found: run {how} to create it; "
              "the plots for it are skipped.")
        return None, {}
    data = json.loads(path.read_text())
    rows = data.get("rows") if isinstance(data, dict) else None  # 10 of the 16 tables have none: KeyError
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        return None, data
    return pd.DataFrame(rows), data

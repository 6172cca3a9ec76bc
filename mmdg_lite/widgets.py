"""Interactive explorers for the notebooks (ipywidgets), each backed by plain functions.

Every explorer is three layers, so it can be tested and shown without a running kernel:

- ``*_data(**settings) -> dict``: the computation (tensors and numbers), no plotting;
- ``*_figure(**settings) -> Figure``: the figure for those settings (a matplotlib ``Figure``
  made without pyplot, so nothing is shown twice or left open);
- ``*_explorer()``: displays the controls and the figure at the default settings. The figure is
  an ordinary PNG output (what the book and a notebook viewer show, where no kernel runs) whose
  display is updated in place whenever a control changes (in Jupyter, with a kernel).

Explorers: (i) ``gradient_field_*``: reference set, kernel and bandwidth -> the guidance field
-grad MMD^2 (Eq. 6) as a quiver plot and the witness function as a heatmap (notebook 01);
(ii) ``guidance_*``: strength, schedule, normalisation, evaluation point, batch vs memory on the
2-D ring model, re-sampled in about a second with fewer samples and steps (notebook 03);
(iii) ``prompt_bandwidth_*``: the prompt bandwidth of the product kernel (Eq. 10-11) on the toy
prompt world (notebook 04).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure

from ._validation import check_choice, check_int, check_positive
from .guidance import EVAL_POINTS, GENERATED_SETS, NORMALIZATIONS, SCHEDULES, MMDGuidance
from .kernels import GaussianKernel, InverseMultiquadricKernel, Kernel, PolynomialKernel
from .metrics import mode_proportions, off_mode_fraction, total_variation
from .mmd import witness
from .plotting import (PALETTE, grid_2d, legend_outside, plot_field, plot_proportion_table,
                       plot_prompt_samples, plot_ring_panel, plot_samples, to_numpy)

__all__ = ["REFERENCE_SETS", "FIELD_KERNELS", "make_field_kernel", "gradient_field_data",
           "gradient_field_figure", "gradient_field_explorer", "guidance_data", "guidance_figure",
           "guidance_explorer", "prompt_bandwidth_data", "prompt_bandwidth_figure",
           "prompt_bandwidth_explorer"]

# (i) -------------------------------------------------------------------------------------------
REFERENCE_SETS: dict[str, tuple[int, ...]] = {
    "every other mode (0, 2, 4, 6)": (0, 2, 4, 6),
    "two neighbouring modes (0, 1)": (0, 1),
    "one mode (0)": (0,),
    "all 8 modes": tuple(range(8)),
}
FIELD_KERNELS = ("gaussian", "imq", "cubic")
LIM = 3.2  # the ring (radius 2) plus a margin


def make_field_kernel(kernel: str, bandwidth: float) -> Kernel:
    """The explorer's kernel: "gaussian" (bandwidth sigma), "imq" (c = bandwidth, beta = 1/2) or
    "cubic" (KID polynomial; has no bandwidth, ``bandwidth`` is ignored)."""
    check_choice(kernel, "kernel", FIELD_KERNELS)
    bandwidth = check_positive(bandwidth, "bandwidth")
    if kernel == "gaussian":
        return GaussianKernel(bandwidth)
    if kernel == "imq":
        return InverseMultiquadricKernel(c=bandwidth, beta=0.5)
    return PolynomialKernel()


def gradient_field_data(reference_set: str = "every other mode (0, 2, 4, 6)",
                        kernel: str = "gaussian", bandwidth: float = 1.0, n_generated: int = 80,
                        n_references: int = 100, grid_n: int = 17, witness_n: int = 60,
                        seed: int = 0) -> dict[str, Any]:
    """Generated samples on all 8 modes of the ring (std 0.15), references on ``reference_set``,
    and on a grid of probe points t: ``field`` = -grad_t of Eq. 6 for a generated sample placed
    at t (the guidance step direction), ``witness`` f(t) = mean_i k(t, z_i) - mean_j k(t, z^r_j).

    Returns generated (B, 2), references (N_r, 2), grid (G, 2), field (G, 2), witness_grid
    (xx, yy, values), each (witness_n, witness_n), and the kernel.
    """
    from .toys import circle_mixture, subset_mixture

    if reference_set not in REFERENCE_SETS:
        raise ValueError(f"reference_set must be one of {list(REFERENCE_SETS)}; got {reference_set!r}")
    n_generated = check_int(n_generated, "n_generated", 2)
    n_references = check_int(n_references, "n_references", 1)
    ring = circle_mixture(std=0.15)
    gen = ring.sample(n_generated, seed)[0]  # (B, 2)
    refs = subset_mixture(ring, REFERENCE_SETS[reference_set]).sample(n_references, seed + 1)[0]
    k = make_field_kernel(kernel, bandwidth)
    _, _, grid = grid_2d((-LIM, LIM), n=check_int(grid_n, "grid_n", 2))  # (G, 2)
    B, N, G = len(gen), len(refs), len(grid)
    # Eq. 6 at a probe point t: 2/B^2 sum_j grad k(t, z_j) - 2/(B N_r) sum_j grad k(t, z^r_j)
    grad = (2 / B**2 * k.grad_weighted(grid, gen, torch.ones(G, B))
            - 2 / (B * N) * k.grad_weighted(grid, refs, torch.ones(G, N)))
    xx, yy, wpts = grid_2d((-LIM, LIM), n=check_int(witness_n, "witness_n", 2))
    with torch.no_grad():
        values = witness(wpts, gen, refs, k).reshape(xx.shape)
    return {"generated": gen, "references": refs, "grid": grid, "field": -grad,
            "witness_grid": (xx, yy, to_numpy(values)), "kernel": k}


def gradient_field_figure(**settings: Any) -> Figure:
    """Two panels for ``gradient_field_data(**settings)``: the field's direction (arrow colour:
    log10 magnitude, with a colorbar) and the witness heatmap (colorbar), samples on top."""
    d = gradient_field_data(**settings)
    fig = Figure(figsize=(10.5, 4.4), layout="constrained")
    ax_f, ax_w = fig.subplots(1, 2)
    plot_field(d["grid"], d["field"], ax=ax_f, normalize=True, scale=24, width=0.006,
               colorbar=True)
    xx, yy, z = d["witness_grid"]
    vmax = float(np.abs(z).max()) or 1.0
    cs = ax_w.contourf(xx, yy, z, levels=np.linspace(-vmax, vmax, 21), cmap="RdBu_r")
    ax_w.contour(xx, yy, z, levels=[0.0], colors="k", linewidths=0.8, linestyles="--")
    fig.colorbar(cs, ax=ax_w, shrink=0.8, format="%.2f", label="witness f(t)")
    for ax in (ax_f, ax_w):
        plot_samples(d["generated"], d["references"], ax=ax, s=7, legend=False)
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM))
    ax_f.set_title("guidance direction −∇ MMD² (Eq. 6)")
    ax_w.set_title("witness: red = too many generated")
    legend_outside(fig)
    return fig


# (ii) ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _ring_task(task_seed: int):
    from .toys import make_task

    return make_task("ring2d_4modes", seed=task_seed)


@functools.lru_cache(maxsize=8)
def _unguided(task_seed: int, n: int, num_steps: int, seed: int) -> torch.Tensor:
    from .sampling import sample

    task = _ring_task(task_seed)
    return sample(task.denoiser, n, task.dim, num_steps=num_steps, seed=seed).samples


def guidance_data(strength: float = 3.0, schedule: str = "constant",
                  normalization: str = "clipped", eval_point: str = "x_t",
                  generated_set: str = "batch", bandwidth_scale: float = 0.5, n: int = 300,
                  memory_n: int = 12, num_steps: int = 30, seed: int = 0,
                  task_seed: int = 0) -> dict[str, Any]:
    """Guided samples of the shipped 2-D ring model for the 4-of-8-mode user (200 references),
    Gaussian kernel at ``bandwidth_scale`` x the median heuristic, clip_norm 0.2.

    Few samples and steps (``n`` in batch mode, ``memory_n`` in the sequential memory mode,
    ``num_steps`` DDPM steps) keep one call near a second. Returns the samples (or None when the
    run diverged), the unguided samples of the same seed, the mode proportions of target /
    references / unguided / guided, TV and off-mode fraction of both, and the seconds taken.
    With normalization="norm_matched" the strength is the reference code's alpha (try 0.003).
    """
    from .sampling import sample

    check_choice(schedule, "schedule", SCHEDULES)
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_choice(eval_point, "eval_point", EVAL_POINTS)
    check_choice(generated_set, "generated_set", GENERATED_SETS)
    task = _ring_task(task_seed)
    count = check_int(memory_n if generated_set == "memory" else n, "n", 2)
    guide = MMDGuidance(task.references, kernel=GaussianKernel(median_scale=bandwidth_scale),
                        strength=strength, schedule=schedule, normalization=normalization,
                        clip_norm=0.2, eval_point=eval_point, generated_set=generated_set)
    start = time.perf_counter()
    try:
        x = sample(task.denoiser, count, task.dim, num_steps=num_steps, guidance=guide,
                   seed=seed).samples
    except FloatingPointError:
        x = None
    seconds = time.perf_counter() - start
    plain = _unguided(task_seed, count, num_steps, seed)
    means, w = task.base.means, task.target.weights

    def scores(z):
        if z is None:
            return {"proportions": None, "tv": float("nan"), "off_mode": float("nan")}
        p = mode_proportions(z, means)
        return {"proportions": p, "tv": total_variation(p, w),
                "off_mode": off_mode_fraction(z, means, task.base.std)}

    return {"samples": x, "unguided": plain, "references": task.references, "target": w,
            "reference_proportions": mode_proportions(task.references, means),
            "guided_scores": scores(x), "unguided_scores": scores(plain), "seconds": seconds,
            "diverged": x is None, "n": count}


def guidance_figure(**settings: Any) -> Figure:
    """Guided samples over the references, and the mode proportions of target / references /
    unguided / guided (palette colours), for ``guidance_data(**settings)``."""
    d = guidance_data(**settings)
    fig = Figure(figsize=(10.5, 4.2), layout="constrained")
    ax_s, ax_p = fig.subplots(1, 2, width_ratios=[1, 1.3])
    g, u = d["guided_scores"], d["unguided_scores"]
    title = "diverged" if d["diverged"] else f"guided: TV {g['tv']:.2f}, off-mode {100 * g['off_mode']:.0f} %"
    plot_ring_panel(ax_s, d["samples"], d["references"], f"{title}\n({d['n']} samples, {d['seconds']:.1f} s)")
    bars = {"target": d["target"], "reference": d["reference_proportions"],
            "unguided": u["proportions"], "guided": g["proportions"]}
    width, modes = 0.2, np.arange(len(d["target"]))
    for i, (name, p) in enumerate(bars.items()):
        if p is not None:
            label = f"{name} (TV {u['tv']:.2f})" if name == "unguided" else name
            ax_p.bar(modes + (i - 1.5) * width, to_numpy(p), width, color=PALETTE[name], label=label)
    ax_p.set(xlabel="mode", ylabel="proportion", xticks=modes, title="mode proportions")
    legend_outside(ax_p)
    return fig


# (iii) -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _prompt_setup():
    from .prompts import prompt_weights  # noqa: F401  (import check)
    from .toys import PAIRED_STYLES, load_or_train_cond_2d

    model, world = load_or_train_cond_2d()
    refs, ref_prompts = world.references(PAIRED_STYLES, n_per_category=50, seed=0)
    return model, world, world.encoder(), refs, ref_prompts


def prompt_bandwidth_data(prompt_bandwidth: float = 0.3, strength: float = 3.0,
                          n_per_prompt: int = 60, num_steps: int = 50, seed: int = 0,
                          sample_bandwidth: float = 0.75) -> dict[str, Any]:
    """Prompt-aware guidance (product kernel, Eq. 10-11) on the toy prompt world at one prompt
    bandwidth sigma_p: 50 references per category in its paired style, ``n_per_prompt`` samples
    per category prompt. Returns the samples and their prompts, the (3, 3) mean k_p weight of
    each sample prompt on each category's references, the style table and the pairing scores."""
    from .prompts import prompt_aware_guidance, prompt_weights, sample_with_prompts
    from .toys import PAIRED_STYLES

    model, world, encoder, refs, ref_prompts = _prompt_setup()
    bw = check_positive(prompt_bandwidth, "prompt_bandwidth")
    prompts = [c for c in world.categories for _ in range(check_int(n_per_prompt, "n_per_prompt", 1))]
    guide = prompt_aware_guidance(refs, ref_prompts, encoder, prompts, prompt_bandwidth=bw,
                                  kernel=GaussianKernel(sample_bandwidth), strength=strength,
                                  normalization="none", stop=1.0)  # as notebook 04
    start = time.perf_counter()
    x = sample_with_prompts(model, prompts, encoder, guidance=guide, seed=seed, num_steps=num_steps)
    seconds = time.perf_counter() - start
    C = len(world.categories)
    w = prompt_weights(list(world.categories), ref_prompts, encoder, prompt_bandwidth=bw)  # (C, N_r)
    ref_cat = world.category_index(ref_prompts)
    per_prompt = torch.stack([w[:, ref_cat == c].mean(1) for c in range(C)], dim=1)  # (C, C)
    table, cols = world.style_table(x, prompts)
    return {"samples": x, "prompts": prompts, "references": refs, "reference_prompts": ref_prompts,
            "weights": per_prompt, "table": table, "columns": cols,
            "scores": world.pairing_scores(x, prompts, PAIRED_STYLES), "world": world,
            "seconds": seconds}


def prompt_bandwidth_figure(**settings: Any) -> Figure:
    """Three panels for ``prompt_bandwidth_data(**settings)``: samples by prompt over the
    references, the k_p weights as attention (sample prompt x reference prompt) and the style
    proportions per prompt (paired style framed)."""
    from .toys import PAIRED_STYLES

    d = prompt_bandwidth_data(**settings)
    world = d["world"]
    fig = Figure(figsize=(11, 3.9), layout="constrained")
    ax_s, ax_w, ax_t = fig.subplots(1, 3, width_ratios=[1.2, 1, 1.3])
    plot_prompt_samples(d["samples"], d["prompts"], references=d["references"],
                        reference_labels=d["reference_prompts"], ax=ax_s, order=world.categories,
                        legend=False)
    paired = np.mean([v["paired"] for v in d["scores"].values()])
    ax_s.set(xlim=(-2.3, 2.3), ylim=(-1.35, 2.15),
             title=f"σ_p = {settings.get('prompt_bandwidth', 0.3):g}: paired {paired:.2f}")
    plot_proportion_table(d["weights"], [f"'{c}'" for c in world.categories],
                          [f"refs '{c}'" for c in world.categories], ax=ax_w, cmap="Greens",
                          title="mean k_p weight")
    cells = [(i, world.styles.index(PAIRED_STYLES[c])) for i, c in enumerate(world.categories)]
    plot_proportion_table(d["table"], list(world.categories), d["columns"], ax=ax_t,
                          highlight=cells, title="styles per prompt")
    return fig


# explorers -------------------------------------------------------------------------------------
def _explorer(title: str, figure_fn: Callable[..., Figure], controls: dict[str, Any]):
    """Show the controls, then the figure at their current values as a plain PNG output that is
    re-drawn in place (same display id) when a control changes. Returns the controls' VBox."""
    import ipywidgets as w
    from IPython.display import display

    status = w.HTML(value="")
    box = w.VBox([w.HTML(f"<b>{title}</b>"), w.HBox(list(controls.values()),
                                                   layout=w.Layout(flex_flow="row wrap")), status])
    display(box)
    handle = display(figure_fn(**{k: c.value for k, c in controls.items()}), display_id=True)

    def redraw(_change: Any = None) -> None:
        status.value = "<i>computing…</i>"
        try:
            handle.update(figure_fn(**{k: c.value for k, c in controls.items()}))
            status.value = ""
        except Exception as err:  # keep the explorer alive and say what went wrong
            status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"

    for c in controls.values():
        c.observe(redraw, names="value")
    return box


def gradient_field_explorer():
    """Explorer (i): reference set, kernel, bandwidth -> guidance field and witness (notebook 01)."""
    import ipywidgets as w

    return _explorer("Gradient field of Eq. 6", gradient_field_figure, {
        "reference_set": w.Dropdown(options=list(REFERENCE_SETS), description="references"),
        "kernel": w.Dropdown(options=list(FIELD_KERNELS), description="kernel"),
        "bandwidth": w.FloatLogSlider(value=1.0, base=10, min=-1, max=0.7, step=0.05,
                                      description="σ (or IMQ c)", continuous_update=False),
    })


def guidance_explorer():
    """Explorer (ii): the knobs of MMDGuidance on the 2-D ring model (notebook 03)."""
    import ipywidgets as w

    return _explorer("MMD guidance on the 2-D ring (300 samples, or 12 in memory mode; 30 DDPM steps)", guidance_figure, {
        "strength": w.FloatLogSlider(value=3.0, base=10, min=-2.5, max=1.5, step=0.1,
                                     description="strength c", continuous_update=False),
        "schedule": w.Dropdown(options=list(SCHEDULES), description="schedule"),
        "normalization": w.Dropdown(options=list(NORMALIZATIONS), value="clipped",
                                    description="step"),
        "eval_point": w.Dropdown(options=list(EVAL_POINTS), description="eval point"),
        "generated_set": w.Dropdown(options=list(GENERATED_SETS), description="generated"),
    })


def prompt_bandwidth_explorer():
    """Explorer (iii): the prompt bandwidth sigma_p of the product kernel (notebook 04)."""
    import ipywidgets as w

    return _explorer("Prompt bandwidth σ_p (product kernel, c = 3)", prompt_bandwidth_figure, {
        "prompt_bandwidth": w.FloatLogSlider(value=0.3, base=10, min=-1, max=1, step=0.05,
                                             description="σ_p", continuous_update=False),
        "strength": w.FloatLogSlider(value=3.0, base=10, min=-1, max=1, step=0.1,
                                     description="strength c", continuous_update=False),
    })

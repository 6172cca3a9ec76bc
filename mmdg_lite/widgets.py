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
prompt world (notebook 04); (iv) ``grid_*``: guidance strength x reference count on image grids
precomputed by ``scripts/precompute_explorer_grids.py`` into data/explorer/ (notebooks 05-07:
pixel digits, latent shapes, the embedded Stable Diffusion pipeline), so moving a slider only
looks an image grid up; ``load_explorer_grids`` checks the files and says how to rebuild them.
"""
from __future__ import annotations

import functools
import io
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from ._io import import_optional

import_optional("matplotlib", "mmdg_lite.widgets")  # names the extra when it is missing
from matplotlib.figure import Figure  # noqa: E402

from ._validation import check_choice, check_int, check_nonnegative, check_positive
from .guidance import EVAL_POINTS, GENERATED_SETS, NORMALIZATIONS, SCHEDULES, MMDGuidance
from .kernels import GaussianKernel, InverseMultiquadricKernel, Kernel, PolynomialKernel
from .metrics import mode_proportions, off_mode_fraction, total_variation
from .mmd import witness
from .plotting import (PALETTE, _note_outside, grid_2d, legend_outside, plot_field, plot_proportion_table,
                       plot_prompt_samples, plot_ring_panel, plot_samples, to_numpy)

__all__ = ["REFERENCE_SETS", "FIELD_KERNELS", "make_field_kernel", "gradient_field_data",
           "gradient_field_figure", "gradient_field_explorer", "guidance_data", "guidance_figure",
           "guidance_explorer", "prompt_bandwidth_data", "prompt_bandwidth_figure",
           "prompt_bandwidth_explorer", "GRID_DOMAINS", "GRID_SCRIPT",
           "explorer_grid_sweep", "save_explorer_grids", "load_explorer_grids", "grid_data",
           "grid_figure", "grid_explorer", "grid_model_hashes", "figure_png"]

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
    from .seeding import check_seed
    from .toys import circle_mixture, subset_mixture

    if not isinstance(reference_set, str) or reference_set not in REFERENCE_SETS:  # a list: "unhashable type"
        raise ValueError(f"reference_set must be one of {list(REFERENCE_SETS)}; got {reference_set!r}")
    seed = check_seed(seed)  # sample()'s message named "generator"; None or a Generator failed at seed + 1
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


@functools.lru_cache(maxsize=64)
def _guided(strength: float, schedule: str, normalization: str, eval_point: str, generated_set: str,
            bandwidth_scale: float, count: int, num_steps: int, seed: int,
            task_seed: int) -> tuple[torch.Tensor | None, float]:
    """One guided run of the ring model (None when it diverged) and its seconds; cached, so
    returning to a setting the explorer has shown costs nothing."""
    from .sampling import sample

    task = _ring_task(task_seed)
    guide = MMDGuidance(task.references, kernel=GaussianKernel(median_scale=bandwidth_scale),
                        strength=strength, schedule=schedule, normalization=normalization,
                        clip_norm=0.2, eval_point=eval_point, generated_set=generated_set)
    start = time.perf_counter()
    try:
        x = sample(task.denoiser, count, task.dim, num_steps=num_steps, guidance=guide,
                   seed=seed).samples
    except FloatingPointError:
        x = None
    return x, time.perf_counter() - start


def guidance_data(strength: float = 3.0, schedule: str = "constant",
                  normalization: str = "clipped", eval_point: str = "x_t",
                  generated_set: str = "batch", bandwidth_scale: float = 0.5, n: int = 300,
                  memory_n: int = 8, num_steps: int = 30, seed: int = 0,
                  task_seed: int = 0) -> dict[str, Any]:
    """Guided samples of the shipped 2-D ring model for the 4-of-8-mode user (200 references),
    Gaussian kernel at ``bandwidth_scale`` x the median heuristic, clip_norm 0.2.

    Few samples and steps (``n`` in batch mode, ``memory_n`` in the sequential memory mode,
    ``num_steps`` DDPM steps) keep one change of the explorer, figure included, within about a
    second on two shared CPU cores: memory mode runs its samples one after another (30 steps
    each), so it gets 8 (2 per target mode; 12 took 1.4 s at load 3), not fewer steps, which
    would leave more samples off the modes whatever the guidance. Returns the samples (or None when the
    run diverged), the unguided samples of the same seed, the mode proportions of target /
    references / unguided / guided, TV and off-mode fraction of both, and the seconds taken.
    With normalization="norm_matched" the strength is the reference code's alpha (try 0.003).
    Guided runs are cached by their settings: a setting shown before comes back at once.
    """
    check_choice(schedule, "schedule", SCHEDULES)
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_choice(eval_point, "eval_point", EVAL_POINTS)
    check_choice(generated_set, "generated_set", GENERATED_SETS)
    from .seeding import check_seed

    count = check_int(memory_n, "memory_n", 2) if generated_set == "memory" else check_int(n, "n", 2)
    seed = check_seed(seed)  # the run caches' key: a list was "unhashable type: 'list'"
    task = _ring_task(check_int(task_seed, "task_seed", 0))
    strength = check_nonnegative(strength, "strength")
    x, seconds = _guided(strength, schedule, normalization, eval_point, generated_set,
                         check_positive(bandwidth_scale, "bandwidth_scale"), count, check_int(num_steps, "num_steps", 1), seed, task_seed)
    x = None if x is None else x.clone()  # the cached tensor stays untouched
    plain = _unguided(task_seed, count, num_steps, seed).clone()
    means, w = task.base.means, task.target.weights

    def scores(z):
        if z is None:
            return {"proportions": None, "tv": float("nan"), "off_mode": float("nan")}
        p = mode_proportions(z, means)
        return {"proportions": p, "tv": total_variation(p, w),
                "off_mode": off_mode_fraction(z, means, task.base.std)}

    return {"samples": x, "unguided": plain, "references": task.references.clone(), "target": w.clone(),
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
                                  kernel=GaussianKernel(check_positive(sample_bandwidth, "sample_bandwidth")),
                                  strength=strength,
                                  normalization="none", stop=1.0,
                                  prompt_weighting="joint")  # Eq. 11, as notebook 04 Sec. 2-4
    start = time.perf_counter()
    x = sample_with_prompts(model, prompts, encoder, guidance=guide, seed=seed, num_steps=num_steps)
    seconds = time.perf_counter() - start
    C = len(world.categories)
    w = prompt_weights(list(world.categories), ref_prompts, encoder, prompt_bandwidth=bw)  # (C, N_r)
    ref_cat = world.category_index(ref_prompts)
    per_prompt = torch.stack([w[:, ref_cat == c].mean(1) for c in range(C)], dim=1)  # (C, C)
    table, cols = world.style_table(x, prompts)
    return {"samples": x, "prompts": prompts, "references": refs.clone(), "reference_prompts": list(ref_prompts),
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
    _note_outside(ax_s, d["samples"], (-2.3, 2.3), (-1.35, 2.15))  # strength 10: up to half of them
    plot_proportion_table(d["weights"], [f"'{c}'" for c in world.categories],
                          [f"refs '{c}'" for c in world.categories], ax=ax_w, cmap="Greens",
                          title="mean k_p weight")
    cells = [(i, world.styles.index(PAIRED_STYLES[c])) for i, c in enumerate(world.categories)]
    plot_proportion_table(d["table"], list(world.categories), d["columns"], ax=ax_t,
                          highlight=cells, title="styles per prompt")
    return fig


# (iv) ------------------------------------------------------------------------------------------
GRID_DOMAINS = ("digits", "shapes", "sd")
#: The command that rebuilds data/explorer/<domain>.npz / .json (named by every loading error).
GRID_SCRIPT = "scripts/precompute_explorer_grids.py"
GRID_FACTORS = (0.0, 0.3, 1.0, 3.0)       # strengths as multiples of the calibrated strength
GRID_REFERENCE_COUNTS = (10, 50, 200)
_GRID_KEYS = ("domain", "title", "style", "strengths", "factors", "reference_counts", "n_shown",
              "n_measured", "seed", "sampler", "guidance", "style_rate", "valid_rate", "diverged",
              "models")
# where each domain's models live (relative to data/): their sha256 is recorded with the grids
_GRID_MODELS = {"digits": ("images/digits_unet", "images/feature_net"),
                "shapes": ("images/shapes_unet", "images/shapes_vae"),
                "sd": ("sd/shapes_pipeline",)}
_SD_PROMPT, _SD_STYLE = "a red circle", ("fill", "outlined")


def _rebuild_hint(domain: str) -> str:
    return f"rebuild it with `.venv/bin/python {GRID_SCRIPT} --domain {domain}`"


def grid_model_hashes(domain: str) -> dict[str, str]:
    """sha256 of every file of ``domain``'s shipped models (weights and configs; sample images
    and training logs excluded), keyed by the path under data/."""
    import hashlib

    from ._resources import DATA_DIR

    check_choice(domain, "domain", GRID_DOMAINS)
    out = {}
    for folder in _GRID_MODELS[domain]:
        root = DATA_DIR / folder
        if not root.is_dir():
            raise FileNotFoundError(f"model folder {root} missing (domain {domain!r})")
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.suffix != ".png" and f.name != "training.json" and not f.name.startswith("."):
                out[f.relative_to(DATA_DIR).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _grid_settings(domain: str) -> dict[str, Any]:
    """The guidance and sampler settings a domain's grids use, read from the library's defaults
    (PRESETS and how the task draws its references for digits/shapes; for the SD pipeline
    run_pairing's sampler defaults and the MMDGuidance defaults it guides with)."""
    import inspect

    if domain in ("digits", "shapes"):
        from .images.adaptation import PRESETS, digits_task, run_method

        preset = "mmd x0_hat" if domain == "digits" else "mmd x_t"
        g = PRESETS[domain][preset]["guidance"]
        eta = float(PRESETS[domain][preset].get("eta", 0.0))  # DDIM's noise, for every cell of the grid
        steps = inspect.signature(run_method).parameters
        task = "shapes_task()" if domain == "shapes" else \
            f"digits_task(stratified={inspect.signature(digits_task).parameters['stratified'].default})"
        return {"preset": f"PRESETS[{domain!r}][{preset!r}]", "task": task, "kernel": repr(g["kernel"]),
                "strength": float(g["strength"]), "normalization": g["normalization"],
                "eval_point": g["eval_point"],
                "sampler": {"scheduler": steps["scheduler"].default, "num_steps": steps["num_steps"].default,
                            **({"eta": eta} if eta else {})}}  # DDIM's eta where the preset sets one
    from .pipelines.pairing import run_pairing

    p = inspect.signature(run_pairing).parameters
    g = MMDGuidance(torch.zeros(2, 1))  # run_pairing(method="mmd") passes MMDGuidance no tuning
    return {"preset": "run_pairing(method='mmd'): MMDGuidance defaults", "kernel": repr(g.kernel),
            "strength": float(g.strength), "normalization": g.normalization, "eval_point": g.eval_point,
            "prompt": _SD_PROMPT,
            "sampler": {"scheduler": "pipeline (DDIM)", "num_steps": p["steps"].default,
                        "guidance_scale": p["guidance_scale"].default}}


def explorer_grid_sweep(domain: str, *, factors: tuple[float, ...] = GRID_FACTORS,
                        reference_counts: tuple[int, ...] = GRID_REFERENCE_COUNTS, n_shown: int = 8,
                        n_measured: int = 32, num_steps: int | None = None, seed: int = 0,
                        log: Callable[[str], None] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sample ``domain``'s grid of (strength x reference count) with the library's own runs and
    measure each cell: ``n_measured`` images per cell from the same ``seed`` (so a cell differs
    from its neighbours only by the guidance), the first ``n_shown`` kept as uint8.

    digits: the pixel UNet (``digits_task``, ``PRESETS["digits"]["mmd x0_hat"]``), style thick;
    shapes: the latent UNet + VAE (``shapes_task``, ``PRESETS["shapes"]["mmd x_t"]``), style
    outlined; sd: the embedded pipeline (``pairing_task``/``run_pairing``, plain MMD with
    MMDGuidance's defaults) with the fixed prompt "a red circle" and outlined circles as
    references. Strengths are ``factors`` x the domain's default strength (0 = unguided, sampled
    once). A run that diverges is recorded as
    such (images zero, rates None). Returns (arrays, metadata) for ``save_explorer_grids``.
    """
    check_choice(domain, "domain", GRID_DOMAINS)
    from ._validation import is_real_number

    # numpy arrays and integers read as the tuples they hold ("truth value of an array is ambiguous")
    factors = tuple(factors.tolist()) if isinstance(factors, np.ndarray) else factors
    reference_counts = tuple(reference_counts.tolist()) if isinstance(reference_counts, np.ndarray) else reference_counts
    if isinstance(reference_counts, (tuple, list)) and any(isinstance(r, np.integer) for r in reference_counts):
        reference_counts = tuple(int(r) if isinstance(r, np.integer) else r for r in reference_counts)
    if not factors or any(not is_real_number(f) or not math.isfinite(f) or f < 0 for f in factors) \
            or list(factors) != sorted(set(factors)) or factors[0] != 0:  # inf/NaN failed after the unguided runs
        raise ValueError(f"factors must be increasing finite numbers >= 0 starting at 0; got {factors!r}")
    if not reference_counts or any(isinstance(r, bool) or not isinstance(r, int) or r < 2 for r in reference_counts) \
            or list(reference_counts) != sorted(set(reference_counts)):
        raise ValueError(f"reference_counts must be increasing integers >= 2; got {reference_counts!r}")
    n_shown = check_int(n_shown, "n_shown", 1)
    n_measured = check_int(n_measured, "n_measured", n_shown)
    settings = _grid_settings(domain)
    steps = settings["sampler"]["num_steps"] if num_steps is None else check_int(num_steps, "num_steps", 1)
    settings["sampler"]["num_steps"] = steps
    base = settings["strength"]
    log = log or (lambda msg: None)
    start = time.perf_counter()

    if domain == "sd":
        from .pipelines.adapt import EMBEDDED_PIPELINE, load_pipeline
        from .pipelines.pairing import pairing_task, run_pairing

        pipe = load_pipeline(EMBEDDED_PIPELINE, device="cpu", dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        key = f"circle->{_SD_STYLE[1]}"

        def make_task(n_refs):
            return pairing_task(pipe, {"circle": _SD_STYLE}, n_refs=n_refs, colours=("red",), seed=seed)

        def run(task, strength):
            if strength == 0:
                r = run_pairing(pipe, task, "unguided", per_prompt=n_measured, seed=seed, steps=steps)
            else:
                r = run_pairing(pipe, task, "mmd", per_prompt=n_measured, seed=seed, steps=steps, strength=strength)
            return r["images"], r[key], r["valid"]

        def ref_images(task):
            return task.reference_images
        title, style = "Stable Diffusion (embedded pipeline), prompt 'a red circle'", "outlined"
    else:
        from .guidance import MMDGuidance
        from .images.adaptation import PRESETS, digits_task, run_method, shapes_task

        preset = PRESETS[domain]["mmd x0_hat" if domain == "digits" else "mmd x_t"]["guidance"]
        eta = settings["sampler"].get("eta", 0.0)
        make_task = functools.partial(digits_task if domain == "digits" else shapes_task, seed=seed)

        def run(task, strength):
            if strength == 0:
                r = run_method(task, "unguided", n=n_measured, seed=seed, num_steps=steps, eta=eta)
            else:
                g = MMDGuidance(task.references, **{**preset, "strength": strength})
                r = run_method(task, "mmd", n=n_measured, seed=seed, num_steps=steps, guidance=g, eta=eta)
            return r.images, r.style_rate, r.valid_rate

        def ref_images(task):
            return task.reference_images
        title = "pixel digits UNet" if domain == "digits" else "latent shapes UNet + VAE"
        style = "thick" if domain == "digits" else "outlined"

    S, R = len(factors), len(reference_counts)
    images = refs = None
    style_rate = [[None] * R for _ in range(S)]
    valid_rate = [[None] * R for _ in range(S)]
    diverged = [[False] * R for _ in range(S)]
    unguided = None
    for j, n_refs in enumerate(reference_counts):
        task = make_task(n_refs=n_refs)
        r8 = _to_uint8(ref_images(task)[:n_shown])
        if refs is None:
            refs = np.zeros((R, n_shown, *r8.shape[1:]), np.uint8)
        refs[j, :len(r8)] = r8
        for i, f in enumerate(factors):
            strength = round(float(f) * base, 12)
            if f == 0 and unguided is not None:  # the unguided run does not see the references
                out = unguided
            else:
                t0 = time.perf_counter()
                try:
                    x, rate, valid = run(task, strength)
                    out = (_to_uint8(x[:n_shown]), float(rate), float(valid))
                except FloatingPointError as err:  # GuidanceDivergenceError
                    out = (None, None, None)
                    log(f"  diverged: {err}")
                log(f"{domain}: strength {strength:g}, {n_refs} references: style "
                    f"{out[1] if out[1] is None else round(out[1], 3)}, {time.perf_counter() - t0:.1f} s")
                if f == 0:
                    unguided = out
            if out[0] is not None:
                if images is None:
                    images = np.zeros((S, R, *out[0].shape), np.uint8)
                images[i, j] = out[0]
            style_rate[i][j], valid_rate[i][j], diverged[i][j] = out[1], out[2], out[0] is None
    if images is None:
        raise FloatingPointError(f"every run of domain {domain!r} diverged")
    settings_out = {k: v for k, v in settings.items() if k != "sampler"}
    meta = {"domain": domain, "title": title, "style": style,
            "strengths": [round(float(f) * base, 12) for f in factors], "factors": [float(f) for f in factors],
            "reference_counts": list(reference_counts), "n_shown": n_shown, "n_measured": n_measured,
            "seed": seed, "sampler": settings["sampler"], "guidance": settings_out,
            "style_rate": style_rate, "valid_rate": valid_rate, "diverged": diverged,
            "models": grid_model_hashes(domain), "seconds": round(time.perf_counter() - start, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    return {"images": images, "references": refs}, meta


def save_explorer_grids(arrays: dict[str, np.ndarray], meta: dict[str, Any], folder: Any = None) -> tuple[Any, Any]:
    """Write ``<folder>/<domain>.npz`` (uint8 arrays, compressed) and ``<domain>.json``
    (everything else); ``folder`` defaults to data/explorer. The grids are checked (and the JSON
    made) first: a refused save leaves the files there untouched. Returns the two paths."""
    import json
    from pathlib import Path

    from ._resources import data_path

    folder = Path(folder) if folder is not None else data_path("explorer")
    check_choice(meta.get("domain"), "meta['domain']", GRID_DOMAINS)
    npz, js = folder / f"{meta['domain']}.npz", folder / f"{meta['domain']}.json"
    # checked before writing: a bad grid written first replaced the good one, then raised
    _validate_grids({k: np.asarray(v) for k, v in arrays.items()}, meta, str(js), meta["domain"])
    text = json.dumps(meta, indent=1) + "\n"  # a value JSON cannot hold raises here, not after the npz
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, images=arrays["images"], references=arrays["references"])
    js.write_text(text)
    return npz, js


def _validate_grids(arrays: dict[str, np.ndarray], meta: dict[str, Any], where: str, domain: str) -> None:
    def bad(msg: str) -> ValueError:
        return ValueError(f"{where}: {msg}; {_rebuild_hint(domain)}")

    missing = [k for k in _GRID_KEYS if k not in meta]
    if missing:
        raise bad(f"settings lack {missing}")
    if meta["domain"] != domain:
        raise bad(f"holds domain {meta['domain']!r}, expected {domain!r}")
    from ._validation import is_real_number

    for name, kind in (("strengths", float), ("factors", float), ("reference_counts", int)):
        v = meta[name]  # a hand-edited "0.45" or null failed in sorted() with a bare TypeError
        if not isinstance(v, list) or not all(is_real_number(x) and isinstance(x, (kind, int)) for x in v):
            raise bad(f"{name} must be a list of {'integers' if kind is int else 'numbers'}; got {v!r}")
    if not is_real_number(meta["n_shown"]) or not isinstance(meta["n_shown"], int):
        raise bad(f"n_shown must be an integer; got {meta['n_shown']!r}")
    st, rc = meta["strengths"], meta["reference_counts"]
    if not st or st[0] != 0 or st != sorted(st) or len(set(st)) != len(st):
        raise bad(f"strengths must increase from 0; got {st}")
    if not rc or rc != sorted(rc) or len(set(rc)) != len(rc):
        raise bad(f"reference_counts must increase; got {rc}")
    fa, base = meta["factors"], meta["guidance"].get("strength") if isinstance(meta["guidance"], dict) else None
    if len(fa) != len(st) or base is None or any(not math.isclose(s, f * base, rel_tol=1e-9, abs_tol=1e-12)
                                                 for s, f in zip(st, fa)):  # grid_data's default: factor 1
        raise bad(f"factors must give the strengths {st} as multiples of guidance['strength'] {base}; got {fa}")
    S, R, K = len(st), len(rc), meta["n_shown"]
    for name in ("images", "references"):
        if name not in arrays:
            raise bad(f"array {name!r} missing")
        if arrays[name].dtype != np.uint8:
            raise bad(f"{name} must be uint8; got {arrays[name].dtype}")
    img, ref = arrays["images"], arrays["references"]
    if img.ndim != 6 or img.shape[:3] != (S, R, K) or img.shape[3] not in (1, 3):
        raise bad(f"images must be (strengths {S}, reference counts {R}, n_shown {K}, C in 1/3, H, W); "
                  f"got {img.shape}")
    if ref.shape != (R, *img.shape[2:]):
        raise bad(f"references must be {(R, *img.shape[2:])}; got {ref.shape}")
    for name in ("style_rate", "valid_rate", "diverged"):
        table = meta[name]
        if not isinstance(table, list) or len(table) != S or any(not isinstance(row, list) or len(row) != R
                                                                 for row in table):
            raise bad(f"{name} must be {S} rows of {R}; got {table}")
    for i in range(S):
        for j in range(R):
            div = meta["diverged"][i][j]
            for name in ("style_rate", "valid_rate"):
                v = meta[name][i][j]
                if div != (v is None) or (v is not None and not (is_real_number(v) and 0.0 <= v <= 1.0)):
                    raise bad(f"{name}[{i}][{j}] = {v!r} (diverged {div}): a rate in [0, 1] unless diverged")


@functools.lru_cache(maxsize=8)
def _read_grids(npz: str, js: str, domain: str, stamp: tuple) -> dict[str, Any]:
    import json
    from pathlib import Path

    try:
        meta = json.loads(Path(js).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{js} is not valid JSON ({err}); {_rebuild_hint(domain)}") from None
    try:
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - a damaged archive, whatever numpy raises
        raise ValueError(f"{npz} cannot be read ({type(err).__name__}: {err}); {_rebuild_hint(domain)}") from None
    _validate_grids(arrays, meta, js, domain)
    for a in arrays.values():  # shared by every caller of the cache
        a.setflags(write=False)
    return {**meta, **arrays}


def load_explorer_grids(domain: str = "digits", folder: Any = None) -> dict[str, Any]:
    """The precomputed grids of ``domain`` ("digits", "shapes", "sd") from data/explorer (or
    ``folder``): the settings and measured rates of the JSON plus ``images`` (S, R, K, C, H, W)
    and ``references`` (R, K, C, H, W) uint8 (read-only: shared with later loads; the settings
    are a fresh copy). Missing or inconsistent files raise an error naming the file and the
    command that rebuilds it."""
    import copy
    from pathlib import Path

    from ._resources import data_path

    check_choice(domain, "domain", GRID_DOMAINS)
    folder = Path(folder) if folder is not None else data_path("explorer")
    npz, js = folder / f"{domain}.npz", folder / f"{domain}.json"
    for f in (npz, js):
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing: the {domain!r} explorer grids are precomputed; "
                                    f"{_rebuild_hint(domain)}")
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in (npz, js))
    cached = _read_grids(str(npz), str(js), domain, stamp)  # the lists and dict are the cache's own
    return {k: v if isinstance(v, np.ndarray) else copy.deepcopy(v) for k, v in cached.items()}


def _grid_index(values: list, value: Any, name: str, domain: str) -> int:
    if (isinstance(value, np.ndarray) and value.size == 1) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        value = value.item()  # np.array(0.0), torch.tensor(0.)
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    for i, v in enumerate(values):
        if number and math.isclose(v, float(value), rel_tol=1e-6, abs_tol=1e-12):
            return i
    raise ValueError(f"{name} must be one of the precomputed values {[float(v) if name == 'strength' else v for v in values]} "
                     f"for domain {domain!r}; got {value!r}")


def grid_data(domain: str = "digits", strength: float | None = None,
              reference_count: int | None = None) -> dict[str, Any]:
    """One cell of ``domain``'s precomputed grid: its images and the first references (uint8,
    at most ``n_shown`` and the cell's count), the measured style / valid rates of its
    ``n_measured`` samples, the unguided rate, and the whole style-rate table (strengths x
    reference counts). Defaults: the calibrated strength (factor 1) and the middle reference
    count."""
    g = load_explorer_grids(domain)
    st, rc = g["strengths"], g["reference_counts"]
    if strength is None:
        strength = st[g["factors"].index(1.0)] if 1.0 in g["factors"] else st[-1]
    if reference_count is None:
        reference_count = rc[len(rc) // 2]
    i, j = _grid_index(st, strength, "strength", domain), _grid_index(rc, reference_count, "reference_count", domain)
    table = np.array([[np.nan if v is None else v for v in row] for row in g["style_rate"]], dtype=float)
    shown = g["references"][j][:rc[j]]  # fewer references than n_shown: the rest is zero padding
    return {"images": g["images"][i, j], "references": shown, "strength": st[i],
            "reference_count": rc[j], "style_rate": g["style_rate"][i][j], "valid_rate": g["valid_rate"][i][j],
            "diverged": g["diverged"][i][j], "unguided_rate": g["style_rate"][0][j],
            "table": table, "strengths": list(st), "reference_counts": list(rc), "index": (i, j),
            "style": g["style"], "title": g["title"], "n_measured": g["n_measured"]}


def _u8_grid(images: np.ndarray, nrow: int) -> np.ndarray:
    from .images.display import grid_array

    return grid_array(torch.tensor(images, dtype=torch.float32) / 127.5 - 1, nrow=nrow)  # a copy: the cached arrays are read-only


def grid_figure(domain: str = "digits", strength: float | None = None,
                reference_count: int | None = None) -> Figure:
    """The cell's generated images over its references (first 8), and the measured style rate
    against strength for every reference count, the cell ringed, unguided dashed."""
    d = grid_data(domain, strength, reference_count)
    fig = Figure(figsize=(10.5, 4.3), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[1.35, 1], height_ratios=[2, 1])
    ax_g, ax_r, ax_c = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[:, 1])
    gray = {"cmap": "gray"} if d["images"].shape[1] == 1 else {}
    if d["diverged"]:
        ax_g.text(0.5, 0.5, "diverged", ha="center", va="center", transform=ax_g.transAxes, color="#b00")
        ax_g.text(0.5, 0.3, "MMDGuidance stopped the run: samples were thrown\nfar outside the data "
                  "(GuidanceDivergenceError)", ha="center", va="center", transform=ax_g.transAxes,
                  fontsize=9, color="#b00")
        ax_g.set_axis_off()
        head = f"strength {d['strength']:g}, {d['reference_count']} refs: diverged"
    else:
        ax_g.imshow(_u8_grid(d["images"], nrow=max(1, len(d["images"]) // 2)), vmin=0, vmax=255,
                    interpolation="nearest", **gray)
        head = (f"strength {d['strength']:g}, {d['reference_count']} refs: {d['style']} "
                f"{d['style_rate']:.2f}, valid {d['valid_rate']:.2f}")
    ax_g.set_title(f"generated — {head}", fontsize=10, color=PALETTE["guided" if d["strength"] else "unguided"])
    ax_r.imshow(_u8_grid(d["references"], nrow=len(d["references"])), vmin=0, vmax=255,
                interpolation="nearest", **gray)
    ax_r.set_title(f"references (first {len(d['references'])} of {d['reference_count']})", fontsize=10,
                   color=PALETTE["reference"])
    for ax in (ax_g, ax_r):
        ax.set_axis_off()
    x = np.arange(len(d["strengths"]))
    for j, n_refs in enumerate(d["reference_counts"]):
        ax_c.plot(x, d["table"][:, j], marker="o", color=PALETTE["guided"], alpha=0.35 + 0.65 * (j + 1) / len(d["reference_counts"]),
                  ls=("--", "-", ":")[j % 3], label=f"{n_refs} refs")
    div = np.argwhere(np.isnan(d["table"]))  # (k, 2) cells whose run diverged
    if len(div):
        ax_c.plot(x[div[:, 0]], np.zeros(len(div)), "x", color="#b00", ms=8, mew=2, label="diverged")
    ax_c.axhline(d["unguided_rate"] if d["unguided_rate"] is not None else np.nan, color=PALETTE["unguided"],
                 ls="--", lw=1, label="unguided")
    i, j = d["index"]
    ax_c.plot([x[i]], [d["table"][i, j]], "o", ms=13, mfc="none", mec=PALETTE["target"], mew=1.5, label="shown")
    ax_c.set(xticks=x, xticklabels=[f"{s:g}" for s in d["strengths"]], ylim=(-0.02, 1.02),
             xlabel="guidance strength", ylabel=f"{d['style']} rate (of {d['n_measured']})",
             title="measured style rate")
    legend_outside(ax_c)
    fig.suptitle(d["title"], fontsize=11)
    return fig


# explorers -------------------------------------------------------------------------------------
def figure_png(fig: Figure):
    """The figure as an IPython PNG image, drawn once at its own dpi (IPython's display of a
    Figure draws it twice, to find its tight bounding box; the constrained layout already fits)."""
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return Image(data=buf.getvalue(), format="png")


def _explorer(title: str, figure_fn: Callable[..., Figure], controls: dict[str, Any]):
    """Show the controls, then the figure at their current values as a plain PNG output that is
    re-drawn in place (same display id) when a control changes. Returns the controls' VBox."""
    w = import_optional("ipywidgets", "the explorers")
    from IPython.display import display

    status = w.HTML(value="")
    box = w.VBox([w.HTML(f"<b>{title}</b>"), w.HBox(list(controls.values()),
                                                   layout=w.Layout(flex_flow="row wrap")), status])
    display(box)
    # outside IPython (a plain Python process) display() returns no handle: redraws show anew
    handle = display(figure_png(figure_fn(**{k: c.value for k, c in controls.items()})), display_id=True)

    def redraw(_change: Any = None) -> None:
        status.value = "<i>computing…</i>"
        try:
            image = figure_png(figure_fn(**{k: c.value for k, c in controls.items()}))
            handle.update(image) if handle is not None else display(image)
            status.value = ""
        except Exception as err:  # keep the explorer alive and say what went wrong
            status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"

    for c in controls.values():
        c.observe(redraw, names="value")
    return box


def gradient_field_explorer():
    """Explorer (i): reference set, kernel, bandwidth -> guidance field and witness (notebook 01)."""
    w = import_optional("ipywidgets", "the explorers")

    return _explorer("Gradient field of Eq. 6", gradient_field_figure, {
        "reference_set": w.Dropdown(options=list(REFERENCE_SETS), description="references"),
        "kernel": w.Dropdown(options=list(FIELD_KERNELS), description="kernel"),
        "bandwidth": w.FloatLogSlider(value=1.0, base=10, min=-1, max=0.7, step=0.05,
                                      description="σ (or IMQ c)", continuous_update=False),
    })


def guidance_explorer():
    """Explorer (ii): the knobs of MMDGuidance on the 2-D ring model (notebook 03)."""
    w = import_optional("ipywidgets", "the explorers")

    controls = {
        "strength": w.FloatLogSlider(value=3.0, base=10, min=-3, max=1.5, step=0.1,  # down to norm_matched's 0.003
                                     description="strength c", continuous_update=False),
        "schedule": w.Dropdown(options=list(SCHEDULES), description="schedule"),
        "normalization": w.Dropdown(options=list(NORMALIZATIONS), value="clipped",
                                    description="step"),
        "eval_point": w.Dropdown(options=list(EVAL_POINTS), description="eval point"),
        "generated_set": w.Dropdown(options=list(GENERATED_SETS), description="generated"),
    }
    controls["normalization"].observe(_norm_matched_strength(controls["strength"]), names="value")
    return _explorer("MMD guidance on the 2-D ring (300 samples, or 8 in memory mode, 2 per target mode; "
                     "30 DDPM steps)", guidance_figure, controls)


def _norm_matched_strength(slider: Any) -> Callable[[Any], None]:
    """An observer of the step dropdown: "norm_matched" reads the strength as the reference code's
    alpha (refused from 1 up; 0.003 works), so the slider moves there, and back when it leaves.
    Registered before the explorer's own observers, so no redraw sees "norm_matched" with the old
    strength."""
    saved = {"strength": slider.value}

    def on_change(change: Any) -> None:
        if change["new"] == "norm_matched":
            saved["strength"] = slider.value
            slider.value = 0.003
        elif change["old"] == "norm_matched":
            slider.value = saved["strength"]
    return on_change


def prompt_bandwidth_explorer():
    """Explorer (iii): the prompt bandwidth sigma_p of the product kernel (notebook 04)."""
    w = import_optional("ipywidgets", "the explorers")

    return _explorer("Prompt bandwidth σ_p and strength c of the product kernel", prompt_bandwidth_figure, {
        "prompt_bandwidth": w.FloatLogSlider(value=0.3, base=10, min=-1, max=1, step=0.05,
                                             description="σ_p", continuous_update=False),
        "strength": w.FloatLogSlider(value=3.0, base=10, min=-1, max=1, step=0.1,
                                     description="strength c", continuous_update=False),
    })


def grid_explorer(domain: str = "digits"):
    """Explorer (iv): guidance strength x reference count over ``domain``'s precomputed image
    grids ("digits": notebook 05, "shapes": 06, "sd": 07). No sampling happens: each setting is
    looked up in data/explorer (``scripts/precompute_explorer_grids.py`` rebuilds it)."""
    w = import_optional("ipywidgets", "the explorers")

    g = load_explorer_grids(domain)
    d = grid_data(domain)
    return _explorer(f"{g['title']}: strength × reference count (precomputed, seed {g['seed']}, "
                     f"{g['n_measured']} samples measured per cell)", functools.partial(grid_figure, domain), {
        "strength": w.SelectionSlider(options=[(f"{s:g}", s) for s in g["strengths"]], value=d["strength"],
                                      description="strength", continuous_update=False),
        "reference_count": w.SelectionSlider(options=list(g["reference_counts"]), value=d["reference_count"],
                                             description="references", continuous_update=False),
    })

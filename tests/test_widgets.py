"""The explorers' callbacks (mmdg_lite.widgets) are plain functions: data and figures checked
against independent computations; the explorers themselves build and show a static figure."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mmdg_lite import GaussianKernel, MMDGuidance, mmd2_grad, mode_proportions, sample, total_variation
from mmdg_lite import widgets as W
from mmdg_lite.plotting import MAX_COLS


def _panels_per_row(fig: Figure) -> int:
    """Data panels per row (colorbar axes excluded)."""
    rows: dict[float, int] = {}
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        y = round(ax.get_position().y0, 2)
        rows[y] = rows.get(y, 0) + 1
    return max(rows.values())


def test_gradient_field_at_the_generated_points_is_minus_eq6():
    d = W.gradient_field_data(grid_n=5, witness_n=5)
    k, gen, refs = d["kernel"], d["generated"], d["references"]
    # a probe placed exactly on the generated samples feels -grad of Eq. 6 (grad k(z, z) = 0)
    B, N = len(gen), len(refs)
    probe = -(2 / B**2 * k.grad_weighted(gen, gen, torch.ones(B, B))
              - 2 / (B * N) * k.grad_weighted(gen, refs, torch.ones(B, N)))
    assert torch.allclose(probe, -mmd2_grad(gen, refs, k), atol=1e-7)
    assert d["field"].shape == (25, 2) and d["witness_grid"][2].shape == (5, 5)


def test_gradient_field_points_toward_a_lone_reference_mode():
    # references on mode 0 only (at (2, 0)): just outside it, the step points toward it
    d = W.gradient_field_data(reference_set="one mode (0)", bandwidth=1.0, grid_n=17)
    grid, field = d["grid"], d["field"]
    near = ((grid - torch.tensor([2.8, 0.0])).norm(dim=1) < 0.3)
    assert near.any()
    assert (field[near][:, 0] < 0).all()  # pulls in the -x direction, back to (2, 0)
    xx, yy, z = d["witness_grid"]
    i = np.unravel_index(np.argmin(z), z.shape)
    assert math.hypot(xx[i] - 2.0, yy[i]) < 0.5  # the witness is most negative on the mode


@pytest.mark.parametrize("kernel", W.FIELD_KERNELS)
def test_gradient_field_figure_has_colorbars_and_fits_the_column(kernel):
    fig = W.gradient_field_figure(kernel=kernel, grid_n=7, witness_n=20)
    assert isinstance(fig, Figure)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2
    assert _panels_per_row(fig) <= MAX_COLS
    assert fig.get_figwidth() <= 11.5


def test_gradient_field_rejects_bad_settings():
    with pytest.raises(ValueError, match="reference_set"):
        W.gradient_field_data(reference_set="three modes")
    with pytest.raises(ValueError, match="kernel"):
        W.gradient_field_data(kernel="laplace")
    with pytest.raises((ValueError, TypeError), match="bandwidth"):
        W.gradient_field_data(bandwidth=-1.0)


def test_guidance_data_matches_a_direct_run_and_moves_mass():
    d = W.guidance_data(n=120, num_steps=20)
    task = W._ring_task(0)
    guide = MMDGuidance(task.references, kernel=GaussianKernel(median_scale=0.5), strength=3.0,
                        normalization="clipped", clip_norm=0.2)
    direct = sample(task.denoiser, 120, 2, num_steps=20, guidance=guide, seed=0).samples
    assert torch.equal(d["samples"], direct)  # same seed, same numbers
    p = mode_proportions(direct, task.base.means)
    assert d["guided_scores"]["tv"] == pytest.approx(total_variation(p, task.target.weights))
    assert d["guided_scores"]["tv"] < d["unguided_scores"]["tv"] - 0.2


def test_guidance_data_reports_divergence_and_memory_mode_size():
    d = W.guidance_data(strength=1000.0, normalization="none", n=60, num_steps=20)
    assert d["diverged"] and d["samples"] is None and math.isnan(d["guided_scores"]["tv"])
    fig = W.guidance_figure(strength=1000.0, normalization="none", n=60, num_steps=20)
    assert any("diverged" in t.get_text() for ax in fig.axes for t in ax.texts)
    m = W.guidance_data(generated_set="memory", memory_n=4, num_steps=10)
    assert m["n"] == 4 and m["samples"].shape == (4, 2)
    with pytest.raises(ValueError, match="schedule"):
        W.guidance_data(schedule="sometimes")


def test_guidance_figure_fits_the_column():
    fig = W.guidance_figure(n=60, num_steps=10)
    assert _panels_per_row(fig) <= MAX_COLS and fig.get_figwidth() <= 11.5
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert [lab.split(" ")[0] for lab in labels] == ["target", "reference", "unguided", "guided"]


def test_prompt_bandwidth_weights_follow_the_closed_form():
    small = W.prompt_bandwidth_data(prompt_bandwidth=0.3, n_per_prompt=10, num_steps=10)
    big = W.prompt_bandwidth_data(prompt_bandwidth=10.0, n_per_prompt=10, num_steps=10)
    # unit prompt features: ||u - v||^2 = 2 - 2 cos; cat-dog cosine 0.5, cat-car 0
    for d, bw in ((small, 0.3), (big, 10.0)):
        w = d["weights"]
        assert torch.allclose(w.diagonal(), torch.ones(3), atol=1e-6)
        assert float(w[0, 1]) == pytest.approx(math.exp(-1.0 / (2 * bw**2)), rel=1e-4)
        assert float(w[0, 2]) == pytest.approx(math.exp(-2.0 / (2 * bw**2)), rel=1e-4)
    assert small["samples"].shape == (30, 2) and len(small["prompts"]) == 30
    assert torch.allclose(small["table"].sum(1), torch.ones(3, dtype=small["table"].dtype), atol=1e-6)


def test_prompt_bandwidth_figure_has_three_panels():
    fig = W.prompt_bandwidth_figure(prompt_bandwidth=1.0, n_per_prompt=10, num_steps=10)
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 3
    assert _panels_per_row(fig) <= MAX_COLS and fig.get_figwidth() <= 11.5


def _fake_display(monkeypatch):
    """Record what an explorer displays (IPython.display.display) instead of showing it."""
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle() if display_id else None

    import IPython.display
    monkeypatch.setattr(IPython.display, "display", fake_display)
    return shown


def _is_png(obj) -> bool:
    from IPython.display import Image

    return isinstance(obj, Image) and obj.format == "png" and obj.data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("explorer, control, value", [
    (W.gradient_field_explorer, 2, 2.0),             # the bandwidth slider
    (lambda: W.grid_explorer("digits"), 0, 0.0),     # the strength slider: back to unguided
])
def test_explorer_shows_a_static_figure_and_redraws_on_change(explorer, control, value, monkeypatch):
    pytest.importorskip("ipywidgets")
    shown = _fake_display(monkeypatch)
    box = explorer()
    figures = [o for kind, o in shown if _is_png(o)]
    assert len(figures) == 1, "the static figure at the default setting, as a PNG output"
    slider = box.children[1].children[control]
    slider.value = value
    assert box.children[2].value == "", box.children[2].value  # no error reported
    assert shown[-1][0] == "update" and _is_png(shown[-1][1])
    assert shown[-1][1].data != figures[0].data  # a new figure for the new setting


def test_figure_png_is_one_draw_at_the_figures_size():
    from PIL import Image as PILImage
    import io

    fig = Figure(figsize=(4, 2), dpi=90, layout="constrained")
    fig.subplots().plot([0, 1], [1, 0])
    img = PILImage.open(io.BytesIO(W.figure_png(fig).data))
    assert img.size == (360, 180)  # figsize x dpi, no bounding-box trim


def test_guidance_data_caches_runs_without_sharing_tensors():
    a = W.guidance_data(n=40, num_steps=10, strength=2.0)
    a["samples"].add_(100.0)  # a caller scribbling on the result
    b = W.guidance_data(n=40, num_steps=10, strength=2.0)
    assert float(b["samples"].abs().max()) < 10, "the cached run was modified through a result"
    assert b["seconds"] == a["seconds"]  # the same (cached) run
    with pytest.raises((ValueError, TypeError), match="strength"):
        W.guidance_data(strength=-1.0)


# (iv) precomputed image grids ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_grids(tmp_path_factory):
    """A 2 x 2 digits sweep on a tiny budget, written and read back through the real functions."""
    folder = tmp_path_factory.mktemp("explorer")
    arrays, meta = W.explorer_grid_sweep("digits", factors=(0.0, 1.0), reference_counts=(10, 20),
                                         n_shown=3, n_measured=4, num_steps=3)
    W.save_explorer_grids(arrays, meta, folder)
    return folder


def test_grid_sweep_stores_the_librarys_own_samples(tiny_grids):
    from mmdg_lite.images.adaptation import PRESETS, digits_task, run_method

    g = W.load_explorer_grids("digits", folder=tiny_grids)
    assert g["images"].shape == (2, 2, 3, 1, 16, 16) and g["images"].dtype == np.uint8
    assert g["references"].shape == (2, 3, 1, 16, 16)
    assert np.array_equal(g["images"][0, 0], g["images"][0, 1])  # unguided: the references play no part
    task = digits_task(n_refs=10)
    eta = PRESETS["digits"]["mmd x0_hat"].get("eta", 0.0)  # every cell samples with the preset's DDIM eta
    direct = run_method(task, "unguided", n=4, num_steps=3, eta=eta)
    want = ((direct.images[:3].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(g["images"][0, 0], want)
    assert g["style_rate"][0][0] == pytest.approx(direct.style_rate)
    assert np.array_equal(g["references"][0], ((task.reference_images[:3] + 1) * 127.5).round().to(torch.uint8).numpy())
    assert not np.array_equal(g["images"][1, 0], g["images"][0, 0])  # guidance moved the images
    assert g["models"] == W.grid_model_hashes("digits")


def test_load_explorer_grids_says_how_to_rebuild(tiny_grids, tmp_path):
    import json
    import shutil

    with pytest.raises(FileNotFoundError, match=r"precompute_explorer_grids\.py --domain shapes"):
        W.load_explorer_grids("shapes", folder=tiny_grids)
    with pytest.raises(ValueError, match="domain"):
        W.load_explorer_grids("faces")
    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / "digits.json").read_text())
    meta["style_rate"] = meta["style_rate"][:1]  # one strength row short
    (tmp_path / "digits.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"style_rate must be 2 rows of 2.*--domain digits"):
        W.load_explorer_grids("digits", folder=tmp_path)
    (tmp_path / "digits.npz").write_bytes(b"not a zip")
    (tmp_path / "digits.json").write_text((tiny_grids / "digits.json").read_text())
    with pytest.raises(ValueError, match=r"digits\.npz cannot be read.*--domain digits"):
        W.load_explorer_grids("digits", folder=tmp_path)


def test_grid_figure_shows_the_cell_and_rejects_values_not_precomputed(tiny_grids, monkeypatch):
    real = W.load_explorer_grids
    monkeypatch.setattr(W, "load_explorer_grids", lambda domain="digits": real(domain, folder=tiny_grids))
    d = W.grid_data("digits")  # default: the calibrated strength (factor 1), the middle count
    assert d["strength"] == d["strengths"][1] and d["reference_count"] == 20
    fig = W.grid_figure("digits", strength=0.0, reference_count=10)
    assert np.array_equal(fig.axes[0].images[0].get_array(), W._u8_grid(real("digits", tiny_grids)["images"][0, 0], 1))
    assert _panels_per_row(fig) <= MAX_COLS and fig.get_figwidth() <= 11.5
    ringed = [l for l in fig.axes[2].lines if l.get_label() == "shown"][0]
    assert ringed.get_xdata()[0] == 0 and ringed.get_ydata()[0] == pytest.approx(d["table"][0, 0])
    with pytest.raises(ValueError, match=r"strength must be one of the precomputed values"):
        W.grid_data("digits", strength=0.5)
    with pytest.raises(ValueError, match=r"reference_count must be one of the precomputed values \[10, 20\]"):
        W.grid_data("digits", reference_count=50)


def test_grid_figure_marks_a_diverged_cell(tiny_grids, tmp_path, monkeypatch):
    import json
    import shutil

    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / "digits.json").read_text())
    meta["diverged"][1][0], meta["style_rate"][1][0], meta["valid_rate"][1][0] = True, None, None
    (tmp_path / "digits.json").write_text(json.dumps(meta))
    real = W.load_explorer_grids
    monkeypatch.setattr(W, "load_explorer_grids", lambda domain="digits": real(domain, folder=tmp_path))
    fig = W.grid_figure("digits", strength=meta["strengths"][1], reference_count=10)
    assert any(t.get_text() == "diverged" for t in fig.axes[0].texts)


@pytest.mark.parametrize("domain", W.GRID_DOMAINS)
def test_shipped_grids_match_the_shipped_models_and_settings(domain):
    """Stale grids fail here: a retrained model or a recalibrated default needs a rerun of
    scripts/precompute_explorer_grids.py --domain DOMAIN."""
    g = W.load_explorer_grids(domain)
    rerun = f"stale: rerun `.venv/bin/python scripts/precompute_explorer_grids.py --domain {domain}`"
    assert g["models"] == W.grid_model_hashes(domain), rerun
    want = W._grid_settings(domain)
    assert g["guidance"] == {k: v for k, v in want.items() if k != "sampler"}, rerun
    assert g["sampler"] == want["sampler"], rerun
    assert g["strengths"] == pytest.approx([f * want["strength"] for f in g["factors"]])


@pytest.mark.parametrize("domain", W.GRID_DOMAINS)
def test_shipped_grids_are_small_and_show_guidance_working(domain):
    from mmdg_lite._resources import data_path

    g = W.load_explorer_grids(domain)
    size = sum(data_path("explorer", f"{domain}.{ext}").stat().st_size for ext in ("npz", "json"))
    assert size < 250_000, f"{domain}: {size} bytes"
    assert g["strengths"][0] == 0 and g["reference_counts"] == [10, 50, 200] and g["n_shown"] == 8
    for j in range(3):  # the unguided row is one run
        assert np.array_equal(g["images"][0, j], g["images"][0, 0])
    i = g["factors"].index(1.0)
    rates = np.array([[np.nan if v is None else v for v in row] for row in g["style_rate"]])
    assert rates[0, 0] < 0.45, "unguided: the style is a pretraining minority"
    assert np.nanmin(rates[i]) > rates[0, 0] + 0.2, "the calibrated strength raises the style rate"


def test_precompute_script_writes_loadable_grids(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "precompute_explorer_grids.py"
    spec = importlib.util.spec_from_file_location("precompute_explorer_grids", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--domain", "digits", "--tiny", "--out", str(tmp_path)]) == 0
    g = W.load_explorer_grids("digits", folder=tmp_path)
    assert g["command"].endswith("--domain digits --tiny") and g["images"].shape[:3] == (2, 2, 4)
    with pytest.raises(ValueError, match="read-only"):
        g["images"][0, 0, 0] = 0  # the cached arrays cannot be changed through a result
    with pytest.raises(SystemExit):
        script.main(["--domain", "faces"])


# ---------------------------------------------------------------- found by an outside probe

def test_explorer_data_are_copies_of_the_caches():
    a = W.guidance_data(n=40, num_steps=5)
    tv = a["unguided_scores"]["tv"]
    a["unguided"].zero_()
    a["references"].zero_()
    b = W.guidance_data(n=40, num_steps=5)
    assert b["unguided_scores"]["tv"] == tv and float(b["unguided"].abs().max()) > 0
    assert float(b["references"].abs().max()) > 0
    g = W.grid_data("digits")
    g["strengths"].append(99.0)
    assert 99.0 not in W.grid_data("digits")["strengths"]


def test_explorer_arguments_are_named_as_given():
    with pytest.raises(ValueError, match="memory_n must be an integer >= 2; got 0"):
        W.guidance_data(generated_set="memory", memory_n=0)
    with pytest.raises(TypeError, match="task_seed must be an integer"):
        W.guidance_data(task_seed="a")
    with pytest.raises(ValueError, match="sample_bandwidth must be"):
        W.prompt_bandwidth_data(sample_bandwidth=0)


def test_grid_data_takes_numpy_and_torch_scalars():
    assert W.grid_data("digits", strength=np.float32(0.0))["strength"] == 0.0
    assert W.grid_data("digits", strength=torch.tensor(0.0))["strength"] == 0.0


def test_norm_matched_moves_the_strength_slider_to_an_alpha_and_back():
    ipywidgets = pytest.importorskip("ipywidgets")
    slider = ipywidgets.FloatLogSlider(value=3.0, base=10, min=-2.5, max=1.5)
    step = ipywidgets.Dropdown(options=["none", "norm_matched", "clipped"], value="clipped")
    step.observe(W._norm_matched_strength(slider), names="value")
    step.value = "norm_matched"  # strength 3 as alpha is refused: the explorer showed only an error
    assert slider.value == pytest.approx(0.003, rel=0.2)
    W.guidance_data(strength=slider.value, normalization="norm_matched", n=20, num_steps=5)  # valid
    step.value = "clipped"
    assert slider.value == pytest.approx(3.0)


def test_explorer_redraws_in_a_plain_python_process(capsys):
    """Outside IPython, display(..., display_id=True) returns None: every control change of an
    explorer built in a plain process reported "AttributeError: 'NoneType' object has no
    attribute 'update'" instead of drawing the new setting."""
    pytest.importorskip("ipywidgets")
    from IPython.core.interactiveshell import InteractiveShell

    assert not InteractiveShell.initialized(), "this test needs the real display without a shell"
    box = W.gradient_field_explorer()
    bandwidth = box.children[1].children[2]
    for value in (10**bandwidth.min, 10**bandwidth.max):  # the slider's two ends
        bandwidth.value = value
        assert box.children[2].value == "", box.children[2].value
    assert capsys.readouterr().out.count("Image object") == 3  # the first figure and two redraws


# ---------------------------------------------------------------- an instructor's probe

@pytest.mark.parametrize("name", ["gradient_field", "guidance", "prompt_bandwidth"])
def test_explorer_title_states_no_value_a_control_changes(name, monkeypatch):
    """Explorer (iii)'s title said "(product kernel, c = 3)" above its strength-c slider: moved to
    c = 1 the explorer still claimed c = 3 (and the figure shows only sigma_p)."""
    ipywidgets = pytest.importorskip("ipywidgets")
    _fake_display(monkeypatch)
    monkeypatch.setattr(W, f"{name}_figure", lambda **settings: Figure(figsize=(2, 1)))  # no sampling
    box = getattr(W, f"{name}_explorer")()
    title = box.children[0].value
    sliders = [c for c in box.children[1].children if isinstance(c, ipywidgets.FloatLogSlider)]
    assert sliders
    for slider in sliders:
        symbol = slider.description.replace("(", " ").replace(")", " ").split()[-1]  # "strength c" -> c
        assert f"{symbol} = " not in title, f"{title!r} fixes {symbol}, which the {slider.description!r} slider changes"


@pytest.mark.parametrize("factors", [(0.0, float("inf")), (0.0, float("nan")), (0, True), (0.0, np.float64("inf"))])
def test_grid_sweep_refuses_factors_before_sampling(factors, monkeypatch):
    """inf or NaN factors were refused by MMDGuidance ('strength must be a finite number') only
    after the unguided run of the first reference count (minutes per domain at the shipped size),
    and a True factor was taken as 1."""
    import mmdg_lite.images.adaptation as A

    monkeypatch.setattr(A, "run_method", lambda *a, **k: pytest.fail("sampled before refusing the factors"))
    with pytest.raises(ValueError, match=r"factors must be increasing finite numbers >= 0 starting at 0"):
        W.explorer_grid_sweep("digits", factors=factors, reference_counts=(10,), n_shown=2, n_measured=2,
                              num_steps=2)


def test_prompt_bandwidth_data_hands_out_copies_of_its_cache():
    """Explorer (iii) returned the cached references and reference prompts themselves: a caller
    that changed them (zeroed the references, relabelled a prompt) changed every later run."""
    a = W.prompt_bandwidth_data(n_per_prompt=4, num_steps=4)
    refs, prompts = a["references"].clone(), list(a["reference_prompts"])
    a["references"].zero_()
    a["reference_prompts"][:] = ["car"] * len(prompts)
    b = W.prompt_bandwidth_data(n_per_prompt=4, num_steps=4)
    assert torch.equal(b["references"], refs) and b["reference_prompts"] == prompts
    assert torch.equal(b["samples"], a["samples"]) and torch.equal(b["weights"], a["weights"])  # same run


def test_a_refused_save_leaves_the_grids_there_untouched(tiny_grids, tmp_path):
    """save_explorer_grids wrote the npz (and JSON) first and checked them after: a grid it then
    refused (float images, a setting JSON cannot hold) had already replaced the good one, by
    default the shipped data/explorer/<domain>.npz."""
    import shutil

    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    g = W.load_explorer_grids("digits", folder=tmp_path)
    meta = {k: v for k, v in g.items() if k not in ("images", "references")}
    arrays = {"images": np.array(g["images"]), "references": np.array(g["references"])}
    with pytest.raises(ValueError, match="images must be uint8; got float32"):
        W.save_explorer_grids({**arrays, "images": arrays["images"].astype(np.float32)}, meta, tmp_path)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    with pytest.raises(TypeError, match="not JSON serializable"):
        W.save_explorer_grids({**arrays, "images": arrays["images"] // 2}, {**meta, "seed": object()}, tmp_path)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    W.save_explorer_grids(arrays, meta, tmp_path / "again")  # a valid grid is written and reads back
    assert np.array_equal(W.load_explorer_grids("digits", folder=tmp_path / "again")["images"], g["images"])


@pytest.mark.parametrize("seed", [[1], {"a": 1}, {1}])
def test_guidance_data_names_a_seed_that_is_not_an_integer(seed):
    """An unhashable seed reached the run caches first: TypeError "unhashable type: 'list'"."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\); got " + re.escape(repr(seed))):
        W.guidance_data(n=10, num_steps=2, seed=seed)
    assert torch.equal(W.guidance_data(n=10, num_steps=2, seed=np.int64(3))["samples"],
                       W.guidance_data(n=10, num_steps=2, seed=3)["samples"])  # numpy ints: the same run


@pytest.mark.parametrize("factors", [[0.0, 1.0, 3.0], [0.0, 3.0]])
def test_load_explorer_grids_refuses_factors_out_of_step_with_the_strengths(tiny_grids, tmp_path, factors):
    """The factors were never checked against the strengths: a JSON whose factors list had another
    length or values opened with the wrong default cell ('the calibrated strength, factor 1') or
    an IndexError in grid_data."""
    import json
    import shutil

    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / "digits.json").read_text())
    assert meta["factors"] == [0.0, 1.0]
    meta["factors"] = factors
    (tmp_path / "digits.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"factors must give the strengths \[0\.0, .*\] as multiples of guidance\['strength'\] .*--domain digits"):
        W.load_explorer_grids("digits", folder=tmp_path)


def test_load_explorer_grids_hands_out_copies_of_its_settings():
    """load_explorer_grids returned the cache's own dict: a caller's g["strengths"].append(99) or
    g["style_rate"][2][1] = 0.0 showed up in every later load, in grid_data and in the explorer."""
    g = W.load_explorer_grids("digits")
    strengths, rate, title = list(g["strengths"]), g["style_rate"][2][1], g["title"]
    g["strengths"].append(99.0)
    g["style_rate"][2][1] = 0.0
    g["title"] = "scribbled"
    again = W.load_explorer_grids("digits")
    assert again["strengths"] == strengths and again["style_rate"][2][1] == rate and again["title"] == title
    d = W.grid_data("digits", strength=strengths[2], reference_count=50)
    assert d["style_rate"] == rate and d["title"] == title
    assert again["images"] is g["images"]  # the read-only arrays are still shared, not copied


@pytest.mark.parametrize("seed", [None, -1, 1.5, "0"])
def test_gradient_field_data_names_its_seed(seed):
    """The seed went straight to the mixture's sample(): -1 or 1.5 were refused as 'generator must
    be ...' (an argument the explorer does not have) and None failed at seed + 1 with TypeError
    "unsupported operand type(s) for +"."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\); got " + re.escape(repr(seed))):
        W.gradient_field_data(seed=seed, grid_n=3, witness_n=3)
    a = W.gradient_field_data(seed=np.int64(2), grid_n=3, witness_n=3)
    assert torch.equal(a["field"], W.gradient_field_data(seed=2, grid_n=3, witness_n=3)["field"])


def test_gradient_field_data_names_a_reference_set_that_is_not_a_name():
    """A list was "TypeError: unhashable type: 'list'" from the dict lookup."""
    with pytest.raises(ValueError, match=r"reference_set must be one of \[.*\]; got \['one mode \(0\)'\]"):
        W.gradient_field_data(reference_set=["one mode (0)"], grid_n=3, witness_n=3)


def test_grid_shows_only_the_references_a_cell_has(tiny_grids, tmp_path, monkeypatch):
    """With fewer references than n_shown (reference_counts=(2, ...), n_shown=4) the sweep pads
    the shown references with zeros: the figure drew blank squares as references under the
    title 'references (first 4 of 2)'."""
    import json
    import shutil

    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / "digits.json").read_text())
    assert meta["n_shown"] == 3
    meta["reference_counts"] = [2, 20]
    (tmp_path / "digits.json").write_text(json.dumps(meta))
    real = W.load_explorer_grids
    monkeypatch.setattr(W, "load_explorer_grids", lambda domain="digits": real(domain, folder=tmp_path))
    d = W.grid_data("digits", reference_count=2)
    assert d["references"].shape[0] == 2
    assert W.grid_data("digits", reference_count=20)["references"].shape[0] == 3  # n_shown of 20
    fig = W.grid_figure("digits", reference_count=2)
    assert fig.axes[1].get_title() == "references (first 2 of 2)"
    assert fig.axes[1].images[0].get_array().shape[1] < W._u8_grid(real("digits", tmp_path)["references"][0], 3).shape[1]


@pytest.mark.parametrize("kw", [{"factors": np.array([0.0, 1.0])}, {"reference_counts": np.array([10, 20])},
                                {"reference_counts": (np.int64(10), np.int64(20))}])
def test_grid_sweep_reads_numpy_factors_and_counts(kw, monkeypatch):
    """A numpy array failed the emptiness check with "The truth value of an array with more than one
    element is ambiguous", and numpy integer counts were refused as 'reference_counts must be
    increasing integers >= 2; got (np.int64(10), np.int64(20))'."""
    seen = {}

    def stop(domain):
        seen["ok"] = True
        raise RuntimeError("validated")

    monkeypatch.setattr(W, "_grid_settings", stop)  # the first step after the checks
    with pytest.raises(RuntimeError, match="validated"):
        W.explorer_grid_sweep("digits", **kw)
    assert seen["ok"]
    with pytest.raises(ValueError, match=r"reference_counts must be increasing integers >= 2; got \(\[10, 20\],\)"):
        W.explorer_grid_sweep("digits", reference_counts=np.array([[10, 20]]))  # was "unhashable type: 'list'"


@pytest.mark.parametrize("field, value, match", [
    ("strengths", [0.0, "1.5"], r"strengths must be a list of numbers; got \[0\.0, '1\.5'\]"),
    ("strengths", [0.0, None], r"strengths must be a list of numbers"),
    ("reference_counts", [10, "20"], r"reference_counts must be a list of integers; got \[10, '20'\]"),
    ("factors", None, r"factors must be a list of numbers; got None"),
    ("n_shown", "3", r"n_shown must be an integer; got '3'"),
    ("style_rate", [[0.5, 0.5], None], r"style_rate must be 2 rows of 2"),
    ("valid_rate", [[1.0, 1.0], [1.0, "1.0"]], r"valid_rate\[1\]\[1\] = '1\.0' \(diverged False\): a rate in \[0, 1\]"),
])
def test_load_explorer_grids_names_a_hand_edited_value_of_the_wrong_type(tiny_grids, tmp_path, field, value, match):
    """A JSON edited by hand with a string or null where a number belongs failed inside the checks
    with a bare TypeError ("'<' not supported between instances of 'str' and 'float'", "object of
    type 'NoneType' has no len()"), not the promised error naming the file and the rebuild command."""
    import json
    import shutil

    for f in tiny_grids.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = json.loads((tmp_path / "digits.json").read_text())
    meta[field] = value
    (tmp_path / "digits.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"digits\.json: " + match + r".*--domain digits"):
        W.load_explorer_grids("digits", folder=tmp_path)


@pytest.mark.parametrize("kernel", W.FIELD_KERNELS)
def test_gradient_field_is_minus_eq6_at_every_probe_point(kernel):
    """The field explorer (i) draws, by autograd through the kernel's Gram matrix: at a probe t,
    Eq. 6 for a generated sample placed there is (2/B) grad_t [mean_j k(t, z_j) - mean_j k(t, z^r_j)].
    (The test above checks the formula at the generated points, not the field the explorer returns.)"""
    d = W.gradient_field_data(kernel=kernel, bandwidth=0.7, grid_n=6, witness_n=3)
    k, gen, refs = d["kernel"], d["generated"].double(), d["references"].double()
    t = d["grid"].double().requires_grad_(True)
    (grad,) = torch.autograd.grad((k(t, gen).mean(1) - k(t, refs).mean(1)).sum(), t)
    assert torch.allclose(d["field"].double(), -2 / len(gen) * grad, rtol=1e-4, atol=1e-7)


def test_precompute_script_states_the_time_its_runs_record():
    """The script's docstring said 'About 1-3 minutes per domain on one CPU thread' while the
    shipped grids record 16 s, 40 s and 30 s (one thread), as data/README.md states."""
    import json
    from pathlib import Path

    from mmdg_lite._resources import data_path

    doc = (Path(__file__).resolve().parents[1] / "scripts" / "precompute_explorer_grids.py").read_text()
    low, high, unit = re.search(r"About (\d+)-(\d+) (s|minutes) per domain on one CPU thread", doc).groups()
    scale = 60 if unit == "minutes" else 1
    for domain in W.GRID_DOMAINS:
        meta = json.loads(data_path("explorer", f"{domain}.json").read_text())
        assert meta["threads"] == 1 and int(low) * scale <= meta["seconds"] <= int(high) * scale, (domain, meta["seconds"])


def test_guidance_explorer_runs_norm_matched_at_the_alpha_it_names(monkeypatch):
    """Switching the step to norm_matched set the strength slider to 0.003, but the slider started
    at 10**-2.5: ipywidgets clamped the value to 0.00316, and the run used that, not the alpha the
    docstrings name ('0.003 works', 'try 0.003')."""
    pytest.importorskip("ipywidgets")
    _fake_display(monkeypatch)
    seen = []

    def figure(**settings):
        seen.append(settings)
        return Figure(figsize=(1, 1))

    monkeypatch.setattr(W, "guidance_figure", figure)
    box = W.guidance_explorer()
    controls = {c.description: c for c in box.children[1].children}
    controls["step"].value = "norm_matched"
    assert seen[-1]["normalization"] == "norm_matched" and seen[-1]["strength"] == 0.003
    controls["step"].value = "clipped"
    assert seen[-1]["strength"] == pytest.approx(3.0)


def test_prompt_bandwidth_figure_says_how_many_samples_lie_outside_its_view():
    """The samples panel is drawn in a fixed box; at the explorer's top strength (10) 66-99 of the
    180 samples landed outside it and were cut off silently (the style table counted them)."""
    fig = W.prompt_bandwidth_figure(strength=10.0, n_per_prompt=20, num_steps=20)
    d = W.prompt_bandwidth_data(strength=10.0, n_per_prompt=20, num_steps=20)
    x = d["samples"]
    out = int(((x[:, 0].abs() > 2.3) | (x[:, 1] < -1.35) | (x[:, 1] > 2.15)).sum())
    assert out > 0, "the setting should throw samples outside the view"
    assert [t.get_text() for t in fig.axes[0].texts] == [f"{out} of {len(x)} samples outside the view"]

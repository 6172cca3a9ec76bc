"""The explorers' callbacks (mmdg_lite.widgets) are plain functions: data and figures checked
against independent computations; the explorers themselves build and show a static figure."""
from __future__ import annotations

import math

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


@pytest.mark.parametrize("explorer", [W.gradient_field_explorer])
def test_explorer_shows_a_static_figure_and_redraws_on_change(explorer, monkeypatch):
    pytest.importorskip("ipywidgets")
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle() if display_id else None

    import IPython.display
    monkeypatch.setattr(IPython.display, "display", fake_display)
    box = explorer()
    figures = [o for kind, o in shown if isinstance(o, Figure)]
    assert len(figures) == 1, "the static figure at the default setting"
    slider = box.children[1].children[2]  # the bandwidth slider
    slider.value = 2.0
    assert shown[-1][0] == "update" and isinstance(shown[-1][1], Figure)
    assert box.children[2].value == "", box.children[2].value  # no error reported

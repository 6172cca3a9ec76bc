"""mmdg_lite.plotting: the course's palette and layout rules, and the table readers."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from mmdg_lite import plotting as P  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_palette_has_one_distinct_colour_per_role():
    roles = ("generated", "reference", "unguided", "guided")
    colours = [P.role_color(r) for r in roles]
    assert len(set(colours)) == len(roles)
    assert P.role_color("guided, c = 3") == P.PALETTE["guided"]
    assert P.role_color("unguided") == P.PALETTE["unguided"]  # not mistaken for "guided"
    with pytest.raises(ValueError, match="role"):
        P.role_color("sampled")


@pytest.mark.parametrize("n, rows", [(1, 1), (3, 1), (4, 2), (5, 2), (7, 3)])
def test_panel_grid_never_puts_more_than_three_panels_in_a_row(n, rows):
    fig, axes = P.panel_grid(n)
    assert len(axes) == n and len(fig.axes) == n  # unused cells removed
    ys = [round(ax.get_position().y0, 3) for ax in axes]
    assert len(set(ys)) == rows
    assert max(ys.count(y) for y in set(ys)) <= P.MAX_COLS
    assert fig.get_figwidth() <= P.BOOK_WIDTH + 1e-9
    with pytest.raises(ValueError, match="ncols"):
        P.panel_grid(4, ncols=4)


def test_plot_samples_draws_references_under_generated_with_role_colours():
    g = torch.randn(20, 2)
    r = torch.randn(10, 2)
    ax = P.plot_samples(g, r, role="guided")
    ref_coll, gen_coll = ax.collections
    assert ref_coll.get_zorder() < gen_coll.get_zorder()
    assert to_hex(gen_coll.get_facecolor()[0]) == P.PALETTE["guided"].lower()
    assert to_hex(ref_coll.get_facecolor()[0]) == P.PALETTE["reference"].lower()
    leg = ax.get_legend()
    assert leg is not None
    # outside the data: anchored right of the axes
    fig = ax.figure
    fig.canvas.draw()
    assert leg.get_window_extent().x0 >= ax.get_window_extent().x1


def test_figure_legend_collects_each_label_once_below_the_panels():
    fig, axes = P.panel_grid(2)
    for ax in axes:
        P.plot_samples(torch.randn(5, 2), torch.randn(5, 2), ax=ax, role="unguided")
    leg = P.legend_outside(fig)
    assert [t.get_text() for t in leg.get_texts()] == ["reference", "unguided"]
    assert all(ax.get_legend() is None for ax in axes)


def test_plot_ring_panel_marks_a_diverged_run():
    fig, (ax,) = P.panel_grid(1)
    P.plot_ring_panel(ax, None, torch.randn(5, 2), "x")
    assert [t.get_text() for t in ax.texts] == ["diverged"]


def test_plot_field_colorbar_when_colour_encodes_magnitude():
    fig, ax = plt.subplots()
    pts = torch.randn(10, 2)
    P.plot_field(pts, pts * 2, ax=ax, normalize=True, colorbar=True)
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)


def test_read_markdown_table_finds_the_section():
    text = ("# T\n\n## Results\n\nintro\n\n| a | b |\n|---|---|\n| **1** | x |\n| 2 | y |\n\n"
            "## Other\n\n| c |\n|---|\n| 3 |\n")
    df = P.read_markdown_table(text, "Results")
    assert list(df.columns) == ["a", "b"] and df["a"].tolist() == ["1", "2"]
    assert P.read_markdown_table(text, "Other")["c"].tolist() == ["3"]
    with pytest.raises(KeyError, match="Results"):
        P.read_markdown_table(text, "Missing")


def test_load_results_json_missing_file_says_how_to_make_it(tmp_path, capsys):
    rows, data = P.load_results_json("nothing_here", results=tmp_path)
    assert rows is None and data == {}
    assert "benchmarks/run_all.sh" in capsys.readouterr().out
    (tmp_path / "t.json").write_text('{"rows": [{"a": 1}, {"a": 2}], "meta": {}}')
    rows, data = P.load_results_json("t", results=tmp_path)
    assert rows["a"].tolist() == [1, 2] and "meta" in data


def test_plain_log_ticks_labels_log_axes_with_plain_numbers():
    fig, ax = plt.subplots()
    ax.loglog([0.1, 1, 10], [1, 10, 100])
    P.plain_log_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "0.1" in labels and "10" in labels and not any("10^" in s or "$" in s for s in labels)


def test_fit_loglog_slope_recovers_a_power_law():
    x = np.array([10, 20, 50, 100, 200.0])
    slope, _ = P.fit_loglog_slope(x, 3 * x**-0.5)
    assert slope == pytest.approx(-0.5, abs=1e-9)


# ---------------------------------------------------------------- found by an outside probe

def test_loglog_fit_names_values_it_cannot_take_logs_of():
    assert P.fit_loglog_slope([1, 10, 100], [1.0, 0.1, 0.01])[0] == pytest.approx(-1.0)
    for y, match in (([0.5, 0.0, 0.1], r"y must be finite and > 0.*got 1 other value\(s\), e.g. 0.0"),
                     ([0.5, -0.2, 0.1], "y must be finite and > 0"),  # an unbiased MMD^2 estimate can be negative
                     ([0.5, np.nan, 0.1], "y must be finite and > 0")):  # LAPACK's DLASCL before
        with pytest.raises(ValueError, match=match):
            P.fit_loglog_slope([1, 2, 3], y)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"yerr must have y's shape \(3,\)"):
        P.plot_loglog([1, 2, 3], [1.0, 0.5, 0.3], yerr=[0.1, 0.1], ax=ax)
    with pytest.raises(ValueError, match="x and y must have the same shape"):
        P.plot_loglog([1, 2], [1.0, 0.5, 0.3], ax=ax)
    plt.close(fig)


def test_prompt_samples_refuse_an_order_that_drops_labels():
    fig, ax = plt.subplots()
    pts = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"order must list every label.*\['dog'\]"):
        P.plot_prompt_samples(pts, ["cat", "dog", "cat"], order=["cat"], ax=ax)  # drew 2 of 3 points
    with pytest.raises(ValueError, match="reference_labels has 1 entries but references has 2"):
        P.plot_prompt_samples(pts, ["cat"] * 3, references=np.zeros((2, 2)), reference_labels=["cat"], ax=ax)
    plt.close(fig)


def test_read_markdown_table_takes_windows_line_endings_and_a_last_line_heading():
    text = "## A\r\n\r\n| x | y |\r\n|---|---|\r\n| 1 | **2** |\r\n"
    assert P.read_markdown_table(text, "A").to_dict("records") == [{"x": "1", "y": "2"}]
    with pytest.raises(ValueError, match="section 'B' has no markdown table"):
        P.read_markdown_table("## A\n| x |\n|---|\n| 1 |\n## B", "B")  # "heading 'B' not found; ... ['A', 'B']"


def test_setup_notebook_checks_threads_and_dpi():
    from mmdg_lite.notebook import setup_notebook

    before = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="threads must be an integer >= 1; got 0"):
            setup_notebook(threads=0)
        with pytest.raises(TypeError, match="threads must be an integer"):
            setup_notebook(threads=2.0)
        with pytest.raises(ValueError, match="dpi must be"):
            setup_notebook(dpi=0)  # the next plt.subplots() failed instead
    finally:
        torch.set_num_threads(before)


def test_setup_notebook_refuses_before_changing_anything():
    """A bad dpi or seed used to be refused only after the torch threads (and, for the seed, the
    figure style and dpi) had already been changed: a refused call altered the session."""
    import matplotlib as mpl

    from mmdg_lite.notebook import setup_notebook

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        mpl.rcParams["figure.dpi"] = 55.0
        for kwargs, error in ((dict(threads=2, dpi=0), ValueError), (dict(seed=-1, threads=2, dpi=70), ValueError)):
            with pytest.raises(error, match="dpi|seed"):
                setup_notebook(**kwargs)
            assert torch.get_num_threads() == 1 and mpl.rcParams["figure.dpi"] == 55.0, kwargs
    finally:
        torch.set_num_threads(before)
        mpl.rcParams["figure.dpi"] = mpl.rcParamsDefault["figure.dpi"]


def test_results_are_found_from_outside_the_repository(tmp_path, monkeypatch):
    """A student notebook written with make_student_notebooks --out /some/dir and run there
    printed "[missing] benchmarks/results/... run python benchmarks/..." for tables the checkout
    ships, and skipped their plots."""
    shipped = Path(P.__file__).resolve().parent.parent / "benchmarks" / "results"
    assert shipped.is_dir()
    monkeypatch.chdir(tmp_path)
    assert P.find_results_dir() == shipped
    assert P.find_results_dir(tmp_path) is None  # an explicit start is searched upward only


# ---------------------------------------------------------------- odd inputs (an instructor's probe)

@pytest.mark.parametrize("fn, match", [
    (lambda t: torch.full((len(t),), float("nan")), r"fn returned 14400 non-finite value\(s\)"),
    (lambda t: torch.where(t[:, 0] > 0, float("inf"), 1.0), r"non-finite value\(s\) \(NaN or inf\)"),
    (lambda t: torch.zeros(len(t), 2), r"fn must map the \(T, 2\) grid points to \(T,\) values, T = 14400"),
])
def test_plot_witness_names_values_it_cannot_draw(fn, match):
    """A NaN witness (a diverged sample in the batch) failed inside matplotlib's colour scale with
    'vmin, vcenter, vmax must increase monotonically', an inf one with 'lower_level and upper_level
    cannot be NaN', a (T, 2) output with numpy's 'cannot reshape array of size 28800'."""
    with pytest.raises(ValueError, match=match):
        P.plot_witness(fn, (-1.0, 1.0))
    with pytest.raises(ValueError, match="levels must be an integer >= 2; got 1"):
        P.plot_witness(lambda t: t[:, 0], (-1.0, 1.0), levels=1)
    z = P.plot_witness(lambda t: t[:, 0] - t[:, 1], (-1.0, 1.0), n=5)  # the ordinary path still draws
    xx, yy, _ = P.grid_2d((-1.0, 1.0), n=5)
    assert np.allclose(z, xx - yy)


def test_plot_gram_refuses_arrays_that_are_not_matrices():
    """A (n, n, 3) or (n, n, 4) array was drawn as an RGB(A) image with a clipping warning, a 1-D
    one failed with matplotlib's 'Invalid shape (4,) for image data'."""
    for bad in (torch.rand(4, 4, 3), torch.rand(4)):
        with pytest.raises(ValueError, match=r"K must be a Gram matrix of shape \(n, m\); got shape " + re.escape(str(tuple(bad.shape)))):
            P.plot_gram(bad)
    K = torch.rand(3, 5)
    ax = P.plot_gram(K)
    assert np.array_equal(ax.images[0].get_array(), K.numpy())


def test_fit_loglog_slope_needs_two_distinct_x():
    """Equal x (one sample size repeated) was a LinAlgError 'SVD did not converge' after LAPACK
    printed 'On entry to DLASCL parameter number 4 had an illegal value'."""
    with pytest.raises(ValueError, match=r"x needs at least 2 distinct values for a log-log fit; got only 8.0"):
        P.fit_loglog_slope([8, 8, 8], [1.0, 2.0, 3.0])
    slope, _ = P.fit_loglog_slope([8, 8, 32], [1.0, 1.0, 0.5])  # repeats with another x are fine
    assert slope == pytest.approx(np.polyfit(np.log([8, 8, 32]), np.log([1.0, 1.0, 0.5]), 1)[0])


@pytest.mark.parametrize("kw, err, match", [
    ({"n": 2.5}, TypeError, "n must be an integer >= 1; got float 2.5"),
    ({"n": 3, "ncols": 2.0}, TypeError, "ncols must be an integer >= 1; got float 2.0"),
    ({"n": 0}, ValueError, "n must be an integer >= 1; got 0"),
])
def test_panel_grid_names_a_count_that_is_not_an_integer(kw, err, match):
    """A float count reached plt.subplots: 'Number of rows must be a positive integer, not 1.0'."""
    n_figs = len(plt.get_fignums())
    with pytest.raises(err, match=match):
        P.panel_grid(**kw)
    assert len(plt.get_fignums()) == n_figs, "refused before a figure is made"


def test_legend_outside_refuses_a_place_it_does_not_draw():
    """loc="left" (or "upper left", matplotlib's own names) was drawn on the right, silently."""
    ax = P.plot_samples(torch.randn(5, 2), legend=False)
    with pytest.raises(ValueError, match="loc must be 'right' or 'below'; got 'left'"):
        P.legend_outside(ax, loc="left")
    below = P.legend_outside(ax, loc="below")
    ax.figure.canvas.draw()
    assert below.get_window_extent().y1 <= ax.get_window_extent().y0  # under the axes


def test_proportion_table_refuses_a_highlight_outside_the_table():
    """A (row, col) beyond the table was framed beside the heatmap, silently (e.g. a style index
    of another world)."""
    t = np.array([[0.2, 0.8], [0.6, 0.4]])
    for bad in ((2, 0), (0, -1), (0.0, 1)):
        with pytest.raises(ValueError, match=r"highlight must list \(row, col\) cells of the 2 x 2 table"):
            P.plot_proportion_table(t, ["a", "b"], ["x", "y"], highlight=[bad])
    ax = P.plot_proportion_table(t, ["a", "b"], ["x", "y"], highlight=[(1, np.int64(0))])
    frame = ax.patches[-1]
    assert frame.get_xy() == (0, 1) and frame.get_width() == 1 == frame.get_height()


def test_grid_2d_names_a_point_count_that_is_not_an_integer():
    """n=2.5 (or a slider's float) failed inside numpy.linspace: "'float' object cannot be
    interpreted as an integer"; n=True was taken for a count."""
    with pytest.raises(TypeError, match="n must be an integer >= 2; got float 2.5"):
        P.grid_2d((0.0, 1.0), n=2.5)
    with pytest.raises(TypeError, match="n must be an integer >= 2"):
        P.grid_2d((0.0, 1.0), n=True)
    with pytest.raises(ValueError, match="n must be an integer >= 2; got 1"):
        P.grid_2d((0.0, 1.0), n=1)
    xx, yy, pts = P.grid_2d((0.0, 1.0), (2.0, 4.0), n=np.int64(3))
    assert np.array_equal(xx[0], [0.0, 0.5, 1.0]) and np.array_equal(yy[:, 0], [2.0, 3.0, 4.0]) and pts.shape == (9, 2)


def test_plot_loglog_refuses_values_a_log_axis_drops_without_a_fit():
    """With fit=False a negative estimate (an unbiased MMD^2), a zero or a NaN was left out of the
    log-log plot silently, and its reference line through a negative first point vanished; a 2-D
    array was drawn as one line per column."""
    fig, ax = plt.subplots()
    for y, match in (([0.5, -0.2, 0.1], r"y must be finite and > 0 for a log-log plot; got 1 other value\(s\), e\.g\. -0\.2"),
                     ([0.0, 0.2, 0.1], "y must be finite and > 0"), ([0.5, np.nan, 0.1], "y must be finite and > 0")):
        with pytest.raises(ValueError, match=match):
            P.plot_loglog([1, 2, 3], y, ax=ax, fit=False)
    with pytest.raises(ValueError, match=r"x must be finite and > 0 for a log-log plot.*e\.g\. 0\.0"):
        P.plot_loglog([0, 2, 3], [1.0, 0.5, 0.3], ax=ax, fit=False)
    with pytest.raises(ValueError, match=r"x and y must be 1-D with at least one value; got shape \(2, 2\)"):
        P.plot_loglog(np.ones((2, 2)), np.ones((2, 2)), ax=ax, fit=False)
    assert len(ax.lines) == 0, "refused before drawing"
    assert P.plot_loglog([1, 4], [1.0, 0.5], ax=ax, fit=False) is None
    measured, ref = ax.lines[:2]
    assert np.allclose(ref.get_ydata(), [1.0, 0.5])  # slope -1/2 through the first point


def test_prompt_samples_refuse_one_string_for_the_labels():
    """plot_prompt_samples(x, "cat") for 3 points coloured them as prompts 'c', 'a' and 't'
    (list("cat")), silently; a string order or reference_labels were split the same way."""
    pts = np.zeros((3, 2))
    fig, ax = plt.subplots()
    for kw in ({"labels": "cat"}, {"labels": ["cat"] * 3, "order": "cat"},
               {"labels": ["cat"] * 3, "references": np.ones((3, 2)), "reference_labels": "cat"}):
        name = [k for k, v in kw.items() if isinstance(v, str)][0]
        with pytest.raises(TypeError, match=rf"{name} must be a sequence of prompts, one per point; got the string 'cat'"):
            P.plot_prompt_samples(pts, ax=ax, **kw)
    P.plot_prompt_samples(pts, ("cat", "dog", "cat"), ax=ax, legend=True)  # a tuple is a sequence
    assert ax.get_legend_handles_labels()[1] == ["prompt 'cat'", "prompt 'dog'"]


@pytest.mark.parametrize("labels", [("guided",), "gr", ("a", "b", "c")])
def test_plot_samples_labels_must_be_a_pair(labels):
    """One label was an IndexError ('tuple index out of range') once references were drawn, a
    string "gr" labelled the sets 'g' and 'r', a third label was ignored."""
    with pytest.raises(ValueError, match=r"labels must be a pair \(generated label, reference label\)"):
        P.plot_samples(torch.randn(3, 2), torch.randn(3, 2), labels=labels)
    ax = P.plot_samples(torch.randn(3, 2), torch.randn(3, 2), labels=["mine", "theirs"], ax=plt.figure().subplots())
    assert ax.get_legend_handles_labels()[1] == ["theirs", "mine"]  # references first, drawn underneath


def test_bfloat16_tensors_are_plotted():
    """A bfloat16 pipeline's samples failed inside torch: 'TypeError: Got unsupported ScalarType
    BFloat16' (numpy has no bfloat16), from every plotting function through to_numpy."""
    x = torch.tensor([[0.5, -1.25], [2.0, 0.75]])  # exact in bfloat16
    assert P.to_numpy(x.to(torch.bfloat16)).tolist() == x.tolist()
    fig, ax = plt.subplots()
    P.plot_samples(x.to(torch.bfloat16), ax=ax, legend=False)
    assert ax.collections[0].get_offsets().tolist() == x.tolist()
    plt.close(fig)


def test_read_markdown_table_finds_a_heading_with_trailing_blanks():
    """An editor's trailing blank after a heading ('## Results ') made it unfindable, with the
    contradicting message "heading 'Results' not found; the sections are ['Results']"."""
    text = "## Results \n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n##  Other\t\n| c |\n|---|\n| 3 |\n"
    assert P.read_markdown_table(text, "Results").to_dict("records") == [{"a": "1", "b": "2"}]
    assert P.read_markdown_table(text, "Other")["c"].tolist() == ["3"]
    with pytest.raises(KeyError, match=r"heading 'Result' not found; the sections are \['Results', 'Other'\]"):
        P.read_markdown_table(text, "Result")


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_plot_loglog_refuses_an_error_band_it_cannot_draw(bad):
    """The std over a single seed is NaN: fill_between left the band out at that point and the
    figure showed no spread there, silently; a negative error drew the band upside down."""
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"yerr must be finite and >= 0.*got 1 other value\(s\), e\.g\. " + re.escape(repr(bad))):
        P.plot_loglog([1, 2, 4], [1.0, 0.5, 0.25], yerr=[0.1, bad, 0.02], ax=ax)
    P.plot_loglog([1, 2, 4], [1.0, 0.5, 0.25], yerr=[0.1, 0.0, 0.02], ax=ax)  # a zero spread is drawn
    assert len(ax.collections) == 1
    plt.close(fig)


def test_load_results_json_names_synthetic_tables_only_for_its_tables(tmp_path, capsys):
    """Every missing table was said to come from benchmarks/synthetic_tables.py, which writes only
    table1/3/4 (its docstring): a reader missing images.json was told to run a script that never
    creates it (benchmarks/images.py does)."""
    P.load_results_json("table4_reference_count", results=tmp_path)
    assert "benchmarks/synthetic_tables.py" in capsys.readouterr().out
    P.load_results_json("images", results=tmp_path)
    out = capsys.readouterr().out
    assert "synthetic_tables.py" not in out and "benchmarks/run_all.sh" in out and "images.json" in out


def test_plot_field_shows_tiny_magnitudes_as_they_are_and_skips_zero_vectors():
    """normalize=True floored the magnitude at 1e-12: a step of 1e-20 (a narrow kernel far from
    the data) was coloured as 1e-12 and drawn 1e-8 long instead of unit length, and an exact zero
    (no direction) was drawn as a dot coloured 1e-12."""
    fig, ax = plt.subplots()
    v = np.array([[1e-20, 0.0], [0.0, 0.0], [0.0, -3.0]])
    q = P.plot_field(np.zeros((3, 2)), v, ax=ax, normalize=True, colorbar=True)
    assert np.allclose(np.hypot(q.U, q.V)[[0, 2]], 1.0)  # every direction drawn at unit length
    c = q.get_array()
    assert c[0] == pytest.approx(-20.0) and c[2] == pytest.approx(np.log10(3.0))
    assert np.ma.getmaskarray(c).tolist() == [False, True, False]  # the zero vector is left out
    plt.close(fig)


@pytest.mark.parametrize("normalize", [False, True])
def test_plot_field_refuses_non_finite_arrows(normalize):
    """A field with NaN (a kernel evaluated on a blown-up sample) was drawn without those arrows,
    a plausible-looking field with holes."""
    fig, ax = plt.subplots()
    v = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, np.inf]])
    with pytest.raises(ValueError, match=r"vectors must be finite; got 2 of 3 rows with NaN or inf"):
        P.plot_field(np.zeros((3, 2)), v, ax=ax, normalize=normalize)
    with pytest.raises(ValueError, match=r"points must be finite; got 1 of 3 rows"):
        P.plot_field(np.array([[0.0, 0.0], [0.0, np.nan], [1.0, 1.0]]), np.ones((3, 2)), ax=ax, normalize=normalize)
    plt.close(fig)


def test_scatter_plots_refuse_non_finite_points():
    """plot_samples and plot_prompt_samples drew a set with NaN rows without them (matplotlib's
    scatter skips them): 3 samples passed, 2 shown, no word."""
    fig, ax = plt.subplots()
    x = np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"generated must be finite; got 1 of 3 rows with NaN or inf"):
        P.plot_samples(x, ax=ax)
    with pytest.raises(ValueError, match=r"reference must be finite; got 1 of 3 rows"):
        P.plot_samples(np.zeros((2, 2)), torch.tensor(x), ax=ax)
    with pytest.raises(ValueError, match=r"points must be finite; got 1 of 3 rows"):
        P.plot_prompt_samples(x, ["a", "b", "a"], ax=ax)
    P.plot_samples(np.array([[0, 1], [2, 3]]), ax=ax, legend=False)  # integers: always finite
    plt.close(fig)


def test_to_numpy_returns_a_copy_as_it_says():
    """'A numpy copy of a tensor ... or of anything array-like': a CPU tensor's .numpy() and
    np.asarray of an array share memory, so writing into the result changed the caller's data."""
    t, a = torch.zeros(3), np.zeros(3)
    P.to_numpy(t)[0] = 5.0
    P.to_numpy(a)[0] = 5.0
    assert float(t.abs().max()) == 0.0 and float(np.abs(a).max()) == 0.0
    assert P.to_numpy([1.0, 2.0]).tolist() == [1.0, 2.0]


def test_plot_ring_panel_says_how_many_samples_lie_outside_its_fixed_view():
    """The ring panel's limits are fixed (+-3.2) so panels compare; samples thrown beyond them
    (the guidance explorer at strength 10 unclipped: 27 of 300) were cut off without a word."""
    fig, (a, b) = P.panel_grid(2)
    inside = torch.tensor([[0.0, 2.0], [-2.0, 0.0], [3.1, -3.1]])
    P.plot_ring_panel(a, inside, torch.zeros(2, 2), "in")
    assert not a.texts
    P.plot_ring_panel(b, torch.cat([inside, torch.tensor([[4.0, 0.0], [0.0, -9.0]])]), None, "out")
    assert [t.get_text() for t in b.texts] == ["2 of 5 samples outside the view"]
    plt.close(fig)


def test_read_markdown_table_reads_the_first_table_of_a_section():
    """'The first markdown table under the section': every '|' line of the section was taken, so a
    second table's header and '---' row became data rows of the first (same width), or pandas
    failed with '2 columns passed, passed data had 4 columns' (benchmarks/results/distributed.md,
    section 'Cost model on paper: ...')."""
    text = ("## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nBetween the tables.\n\n"
            "| c | d |\n|---|---|\n| 3 | 4 |\n")
    assert P.read_markdown_table(text, "Results").to_dict("records") == [{"a": "1", "b": "2"}]
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "distributed.md"
    heading = next(ln[3:].strip() for ln in results.read_text().splitlines() if ln.startswith("## Cost model"))
    df = P.read_markdown_table(results.read_text(), heading)
    assert list(df.columns) == ["quantity", "value"] and df["value"].iloc[0] == "256 KiB"


@pytest.mark.parametrize("row", ["| 1 | 2 | 3 |", "| 1 |"])
def test_read_markdown_table_names_a_row_that_does_not_fit_the_header(row):
    """A row with a cell too few was padded with None by pandas, silently, and one with a cell
    too many (an unescaped '|' in a note) failed with '2 columns passed, passed data had 3
    columns', naming neither the section nor the row."""
    text = f"## Results\n\n| a | b |\n|---|---|\n| 5 | 6 |\n{row}\n"
    with pytest.raises(ValueError, match=r"section 'Results': a row has \d cells where the header has 2 .*" + re.escape(repr(row))):
        P.read_markdown_table(text, "Results")


def test_load_results_json_reads_a_table_without_rows():
    """10 of the 16 committed results JSON files (images, sd, defaults, ...) have no 'rows' list:
    load_results_json('images') failed with a bare KeyError: 'rows', and calibration_digits' dict
    of methods came back as a DataFrame of nested dicts posing as rows."""
    import json

    results = P.find_results_dir()
    for stem in ("images", "calibration_digits"):
        rows, data = P.load_results_json(stem)
        assert rows is None and data == json.loads((results / f"{stem}.json").read_text())
    rows, data = P.load_results_json("table1_synthetic")
    assert len(rows) == len(data["rows"]) and list(rows.columns) == list(data["rows"][0])

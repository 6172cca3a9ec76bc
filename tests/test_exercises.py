"""The coursework: every coding exercise has a solution (mmdg_lite/solutions), a stub and a check.

- each solution function is shown by exactly one solution cell of its notebook, and each
  solution cell names a solution that exists (so stubs, which are generated from the
  solutions, correspond one to one);
- each check cell passes with the solution, fails with NotImplementedError on the stub, and
  fails (AssertionError) on a slightly wrong answer: the checks can fail;
- the student version (scripts/make_student_notebooks.py) has no solutions, no instructor
  answers and no outputs, and runs on a kernel up to its first stub, which raises.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdg_lite.solutions import all_solutions, exercise_label, solution_modules, stub_source

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = all_solutions()
# The notebooks in the coursework: those with a solutions module (all of 01-08; a new notebook joins
# by adding mmdg_lite/solutions/nbNN.py and tagging its cells, see scripts/make_student_notebooks.py).
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                   if f"nb{p.name[:2]}" in solution_modules())


def _script():
    spec = importlib.util.spec_from_file_location("make_student_notebooks",
                                                  ROOT / "scripts" / "make_student_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MSN = _script()


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _nb04_answer_and_world(k: int) -> tuple:
    """Notebook 04's instructor answer k (whitespace joined), its conditional toy model and world, the
    world's encoder, and Section 2's references (50 per category, seed 0) with their prompts."""
    from mmdg_lite.toys import PAIRED_STYLES, load_or_train_cond_2d

    nb = _nb(ROOT / "notebooks" / "04_prompt_aware.ipynb")
    answer = next(" ".join(_src(c).split()) for c in nb["cells"]
                  if MSN.ANSWER in MSN.tags(c) and f"Answer {k}" in _src(c))
    model, world = load_or_train_cond_2d()
    refs, ref_prompts = world.references(PAIRED_STYLES, n_per_category=50, seed=0)
    return answer, model, world, world.encoder(), refs, ref_prompts


def _notebook_of(exercise: str) -> Path:
    number = exercise.split(".")[0][2:]
    matches = [p for p in NOTEBOOKS if p.name.startswith(number + "_")]
    assert len(matches) == 1, f"{exercise}: no notebook notebooks/{number}_*.ipynb"
    return matches[0]


def _cells_of(exercise: str):
    nb = _nb(_notebook_of(exercise))
    found = [(i, kind) for i, kind, ex in MSN.exercise_cells(nb) if ex == exercise]
    return nb, found


def test_the_first_notebooks_are_in_the_coursework():
    assert {p.name[:2] for p in NOTEBOOKS} >= {"01", "02", "03", "04", "08"}


def test_solutions_and_solution_cells_correspond_one_to_one():
    in_notebooks = {}
    for path in NOTEBOOKS:
        for _, kind, ex in MSN.exercise_cells(_nb(path)):
            if kind == MSN.SOLUTION:
                assert ex not in in_notebooks, f"{ex} has two solution cells"
                in_notebooks[ex] = path.name
                assert ex.split(".")[0][2:] == path.name[:2], f"{ex} is solved in {path.name}"
    assert set(in_notebooks) == set(SOLUTIONS), (
        f"solutions without a notebook cell: {sorted(set(SOLUTIONS) - set(in_notebooks))}; "
        f"cells without a solution: {sorted(set(in_notebooks) - set(SOLUTIONS))}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_has_one_to_three_coding_exercises(path):
    mod = solution_modules().get(f"nb{path.name[:2]}")
    assert mod is not None, f"add mmdg_lite/solutions/nb{path.name[:2]}.py for {path.name}"
    assert 1 <= len(mod.__all__) <= 3


@pytest.mark.parametrize("exercise", list(SOLUTIONS))
def test_solution_cell_comes_before_its_check(exercise):
    nb, found = _cells_of(exercise)
    kinds = [k for _, k in found]
    assert kinds.count(MSN.SOLUTION) == 1 and kinds.count("check") >= 1, found
    sol = next(i for i, k in found if k == MSN.SOLUTION)
    assert all(i > sol for i, k in found if k == "check"), "a check cell must follow the solution"
    cell = nb["cells"][sol]
    assert "hide-cell" in MSN.tags(cell), "solution cells are collapsed in the book (tag hide-cell)"
    assert exercise.split(".")[1] in _src(cell), "the solution cell must import and show its function"


@pytest.mark.parametrize("exercise", list(SOLUTIONS))
def test_stub_has_the_solutions_signature_and_raises(exercise):
    fn = SOLUTIONS[exercise]
    ns: dict = {}
    exec(compile(stub_source(fn), f"<stub {exercise}>", "exec"), ns)
    stub = ns[fn.__name__]
    assert inspect.signature(stub).parameters.keys() == inspect.signature(fn).parameters.keys()
    assert stub.__doc__ == fn.__doc__
    args = [None] * len(inspect.signature(fn).parameters)
    with pytest.raises(NotImplementedError, match=exercise_label(fn)):
        stub(*args)


def _perturb(fn):
    """A slightly wrong answer: every numeric output scaled by 1.05 and shifted by 0.01."""
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, (torch.Tensor, np.ndarray, float)):
            return out * 1.05 + 0.01
        pytest.skip(f"{fn.__name__} returns {type(out).__name__}: no generic perturbation")
    return wrong


def _namespace(exercise: str) -> tuple[dict, str]:
    """The notebook's import cell executed in a fresh namespace, and the check cells' code."""
    nb, found = _cells_of(exercise)
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    ns: dict = {"__name__": "__main__"}
    from IPython.display import display
    ns["display"] = display
    exec(compile(_src(first_code), "<imports>", "exec"), ns)
    checks = "\n".join(_src(nb["cells"][i]) for i, k in found if k == "check")
    return ns, checks


@pytest.mark.parametrize("exercise", list(SOLUTIONS))
def test_check_passes_with_the_solution_and_fails_otherwise(exercise):
    fn = SOLUTIONS[exercise]
    nb, found = _cells_of(exercise)
    ns, checks = _namespace(exercise)
    sol = next(i for i, k in found if k == MSN.SOLUTION)
    exec(compile(_src(nb["cells"][sol]), "<solution>", "exec"), ns)
    assert ns[fn.__name__] is fn
    exec(compile(checks, "<check>", "exec"), ns)  # passes

    ns, _ = _namespace(exercise)
    exec(compile(stub_source(fn), "<stub>", "exec"), ns)
    with pytest.raises(NotImplementedError, match=exercise_label(fn)):
        exec(compile(checks, "<check>", "exec"), ns)

    ns, _ = _namespace(exercise)
    ns[fn.__name__] = _perturb(fn)
    with pytest.raises(AssertionError):
        exec(compile(checks, "<check>", "exec"), ns)


@pytest.mark.parametrize("exercise", list(SOLUTIONS))
def test_the_solution_can_be_written_with_the_notebooks_imports(exercise):
    """A student who types the solution's body into the stub cell has every name it uses."""
    fn = SOLUTIONS[exercise]
    ns, checks = _namespace(exercise)
    from mmdg_lite.solutions import solution_source
    stub_head = stub_source(fn).split("# Exercise")[0]  # the import line the stub carries, if any
    exec(compile(stub_head + solution_source(fn), "<typed solution>", "exec"), ns)
    exec(compile(checks, "<check>", "exec"), ns)


def test_student_versions_have_stubs_and_no_solutions_or_outputs(tmp_path):
    assert MSN.main(["--out", str(tmp_path), *map(str, NOTEBOOKS)]) == 0
    for path in NOTEBOOKS:
        student = _nb(tmp_path / path.name)
        cells = student["cells"]
        assert not [c for c in cells if MSN.SOLUTION in MSN.tags(c) or MSN.ANSWER in MSN.tags(c)]
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in cells if c["cell_type"] == "code"), f"{path.name}: outputs left"
        stubs = [c["metadata"]["exercise"] for c in cells if MSN.STUB in MSN.tags(c)]
        expected = [f"nb{path.name[:2]}.{n}" for n in solution_modules()[f"nb{path.name[:2]}"].__all__]
        assert stubs == expected, f"{path.name}: stubs {stubs}, solutions {expected}"
        text = json.dumps(cells)
        for ex in expected:  # no solution body leaks into the student version
            body = inspect.getsource(SOLUTIONS[ex]).strip().splitlines()[-1].strip()
            assert body not in text, f"{path.name}: the solution of {ex} leaks ({body!r})"
        assert "metadata" not in student or "widgets" not in student["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_runs_up_to_its_first_stub(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    student = MSN.student_version(_nb(path))
    cells = student["cells"]
    first_stub = next(i for i, c in enumerate(cells) if MSN.STUB in MSN.tags(c))
    ex = cells[first_stub]["metadata"]["exercise"]
    first_check = next(i for i, c in enumerate(cells)
                       if MSN.CHECK in MSN.tags(c) and c["metadata"].get("exercise") == ex)
    student["cells"] = cells[:first_check + 1]  # everything after would also need the answer
    nb = nbformat.reads(json.dumps(student), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        client.execute()
    assert err.value.ename == "NotImplementedError", err.value
    assert exercise_label(SOLUTIONS[ex]) in str(err.value)
    ran = [c for c in nb.cells[:first_check] if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in ran), "a cell before the first check did not run"


def _write_nb(path: Path, cells: list) -> Path:
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.mark.parametrize("cells, match", [
    ([{"cell_type": "code", "metadata": {"tags": ["solution"], "exercise": "nb01.nope"}, "source": "x",
       "outputs": []}], r"cell 0 is tagged 'solution' but its 'exercise' metadata is 'nb01.nope'"),
    ([{"cell_type": "markdown", "metadata": {}, "source": "hi"},
      {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "x", "outputs": []}],
     r"cell 1 is tagged 'solution' but its 'exercise' metadata is None"),
    ([{"source": "x"}], r"cell 0 is not a notebook cell"),
    ("oops", r"'cells' must be a list"),
])
def test_student_script_refuses_bad_exercise_cells_before_writing_anything(tmp_path, capsys, cells, match):
    """A solution cell naming no known exercise (or a malformed cell) was a raw KeyError /
    AttributeError traceback, after the notebooks before it on the command line were written."""
    good = tmp_path / "01_mmd_basics.ipynb"
    good.write_bytes((ROOT / "notebooks" / "01_mmd_basics.ipynb").read_bytes())
    bad = _write_nb(tmp_path / "02_bad.ipynb", cells)
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as exit_info:
        MSN.main(["--out", str(out), str(good), str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "02_bad.ipynb" in err
    assert re.search(match, err), err
    assert not out.exists(), "nothing is written when one notebook is refused"


def test_student_version_drops_the_instructor_runs_execution_metadata():
    """Outputs were cleared but every code cell kept the instructor run's iopub timestamps."""
    for path in NOTEBOOKS:
        nb = _nb(path)
        assert any("execution" in c.get("metadata", {}) for c in nb["cells"]), path.name  # there to drop
        student = MSN.student_version(nb)
        kept = [i for i, c in enumerate(student["cells"]) if "execution" in c.get("metadata", {})]
        assert not kept, f"{path.name}: cells {kept} keep the instructor's execution metadata"
        checks = [c for c in student["cells"] if MSN.CHECK in MSN.tags(c)]
        assert checks and all(c["metadata"].get("exercise") for c in checks), "check metadata survives"


def test_student_script_refuses_two_notebooks_with_one_name(tmp_path, capsys):
    """Two inputs with the same file name were both written to --out/<name>: the second silently
    replaced the first student version."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "01_mmd_basics.ipynb").write_bytes((ROOT / "notebooks" / "01_mmd_basics.ipynb").read_bytes())
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as exit_info:
        MSN.main(["--out", str(out), str(tmp_path / "a" / "01_mmd_basics.ipynb"), str(tmp_path / "b" / "01_mmd_basics.ipynb")])
    assert exit_info.value.code == 2 and "have the same name" in capsys.readouterr().err and not out.exists()
    same = str(tmp_path / "a" / "01_mmd_basics.ipynb")  # the same file twice is harmless
    assert MSN.main(["--out", str(out), same, same]) == 0 and (out / "01_mmd_basics.ipynb").is_file()


def test_student_script_reports_an_out_folder_it_cannot_create(tmp_path, capsys):
    """--out under a file was a raw NotADirectoryError traceback from mkdir."""
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        MSN.main(["--out", str(tmp_path / "a_file" / "student"), str(NOTEBOOKS[0])])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--out: cannot create the folder" in err and "a_file" in err, err
    assert (tmp_path / "a_file").read_text() == "mine"


# ---------------------------------------------------------------- an instructor's probe of the checks

def _weights_normalising_the_samples_only(sample_features, reference_features, prompt_bandwidth):
    u = sample_features / sample_features.norm(dim=1, keepdim=True)
    d2 = ((u[:, None, :] - reference_features[None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * prompt_bandwidth**2))


def _hole_fraction_of_every_blob(images):
    from scipy import ndimage

    ink = ((images + 1) / 2).clamp(0, 1).max(1).values.numpy() > 0.5  # (N, H, W)
    return torch.tensor([0.0 if not m.any() else 1 - m.sum() / ndimage.binary_fill_holes(m).sum() for m in ink])


def _erosion_survival_without_a_blank_guard(images):
    x = ((images + 1) / 2).clamp(0, 1)
    eroded = -torch.nn.functional.max_pool2d(-x, kernel_size=3, stride=1, padding=1)
    return eroded.sum((1, 2, 3)) / x.sum((1, 2, 3))  # 0/0 = NaN for a blank image


@pytest.mark.parametrize("exercise, wrong", [
    ("nb04.eq11_prompt_weights", _weights_normalising_the_samples_only),
    ("nb06.hole_fraction", _hole_fraction_of_every_blob),
    ("nb05.erosion_survival", _erosion_survival_without_a_blank_guard),
])
def test_check_rejects_a_plausible_wrong_answer(exercise, wrong):
    """Answers that skip one step of the docstring passed the check: 04.1's reference features
    came from the toy encoder already unit-length (only the samples were rescaled), 06.2's drawn
    shapes are one blob each (the largest-blob step never mattered), 05.1 had no blank image (its
    docstring's '0 for a blank image' was unchecked: NaN passed)."""
    ns, checks = _namespace(exercise)
    ns[SOLUTIONS[exercise].__name__] = wrong
    with pytest.raises(AssertionError):
        exec(compile(checks, "<check>", "exec"), ns)


def test_show_solution_prints_the_source_outside_ipython(capsys, monkeypatch):
    """Outside a kernel (a plain Python process with IPython installed) display(Markdown(...))
    printed '<IPython.core.display.Markdown object>', not the source its docstring promises."""
    from IPython.core.interactiveshell import InteractiveShell

    from mmdg_lite.solutions import show_solution, solution_source

    fn = SOLUTIONS["nb02.tweedie_x0"]
    assert not InteractiveShell.initialized(), "this test needs a process without an IPython shell"
    assert show_solution(fn) == solution_source(fn)
    out = capsys.readouterr().out
    assert "Markdown object" not in out and solution_source(fn) in out and exercise_label(fn) in out

    import IPython
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # inside a kernel: Markdown, as before
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show_solution(fn)
    assert capsys.readouterr().out == "" and len(shown) == 1
    assert isinstance(shown[0], IPython.display.Markdown) and solution_source(fn) in shown[0].data


def test_student_versions_do_not_point_to_removed_answers():
    """Notebook 05's summary cited '(answer 4 below)': the instructor answers are removed from
    the student version, so students were sent to a cell they do not have."""
    for path in NOTEBOOKS:
        student = MSN.student_version(_nb(path))
        for i, cell in enumerate(student["cells"]):
            if cell["cell_type"] == "markdown":
                found = re.search(r"\banswers? \d", _src(cell), re.IGNORECASE)
                assert not found, f"{path.name} cell {i} cites {found.group(0)!r}, an instructor answer"


def test_student_script_reads_and_writes_utf8_whatever_the_locale(tmp_path):
    """Under a non-UTF-8 locale (LANG=C without coercion; Windows' cp1252) the script decoded the
    notebooks with the locale's codec: '01_mmd_basics.ipynb' was refused as "not a notebook
    ('ascii' codec can't decode byte 0xc2)"; cp1252 fails on notebook 01's byte 0x9d."""
    import os
    import subprocess
    import sys

    nb = NOTEBOOKS[0]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_student_notebooks.py"), "--out",
                          str(tmp_path / "c"), str(nb)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert MSN.main(["--out", str(tmp_path / "utf8"), str(nb)]) == 0
    written = (tmp_path / "c" / nb.name).read_bytes()
    assert written == (tmp_path / "utf8" / nb.name).read_bytes() and "σ".encode() in written


@pytest.mark.usefixtures("one_thread")  # small tensors: one thread is many times faster
def test_notebook03_answer_on_the_clip_matches_a_tracked_run():
    """Answer 4 of notebook 03 said `step_norm` equals `clip_norm` early 'while `grad_norm` is
    large' and to plot both 'to see where they separate': grad_norm is the gradient of MMD^2
    (~4e-4, with Eq. 6's 1/B) and step_norm the applied step (~0.2), so the curves never meet.
    The answer now reads the clip off their ratio; its figures must be Section 1's preset run's."""
    from mmdg_lite import make_task, sample
    from mmdg_lite.toys.tasks import task_guidance

    nb = _nb(ROOT / "notebooks" / "03_mmd_guidance_2d.ipynb")
    answer = next(" ".join(_src(c).split()) for c in nb["cells"]
                  if MSN.ANSWER in MSN.tags(c) and "Answer 4" in _src(c))
    task = make_task("ring2d_4modes", seed=0)
    guide = task_guidance(task, track=True)
    sample(task.denoiser, 1000, task.dim, num_steps=100, guidance=guide, seed=0)  # Section 1's x_guided
    rows = guide.history
    ratio = [r["step_norm"] / r["grad_norm"] for r in rows]
    lam = ratio[-1]  # no sample is clipped at the last guided step: the ratio is lambda = c B sigma^2
    clipped = [i for i, q in enumerate(ratio) if q < lam * (1 - 1e-5)]
    first = rows[0]
    stated = {f"{lam:,.0f}", f"step {clipped[-1] + 1} of 100", f"after step {len(rows) - 1}",
              f"{first['step_norm']:.4f}", f"{first['grad_norm'] * lam:.2f}",  # the mean unclipped step
              f"about {round(ratio[0], -1):.0f}"}
    missing = [s for s in stated if s not in answer]
    assert not missing, f"Answer 4 does not state the tracked run's {missing}: {answer}"
    assert ratio[0] < lam / 5 and first["step_norm"] > 0.99 * 0.2  # clipped from the start


@pytest.mark.usefixtures("one_thread")  # small tensors: one thread is many times faster
def test_notebook04_answer_on_a_wide_sample_kernel_names_the_method_that_loses_most():
    """Answer 3 of notebook 04 said that with the median-heuristic k_z 'the product kernel suffers
    most'; rerunning Section 2 (seeds 0-4) gives plain MMD 0.58 -> 0.35 paired, the product
    kernel 0.94 -> 0.85. Seed 0 of the same runs must rank the two as the answer does, and the
    median distance it quotes must be the unguided run's."""
    import numpy as np

    from mmdg_lite import GaussianKernel, MMDGuidance, median_bandwidth
    from mmdg_lite.prompts import prompt_aware_guidance, sample_with_prompts
    from mmdg_lite.toys import PAIRED_STYLES

    answer, model, world, enc, refs, ref_prompts = _nb04_answer_and_world(3)
    prompts = [c for c in world.categories for _ in range(100)]

    def paired(method: str, kernel) -> float:  # Section 2's samplers: plain at c = 1, Eq. 11 at c = 3
        guide = (MMDGuidance(refs, kernel=kernel, strength=1.0, normalization="none", stop=1.0)
                 if method == "plain" else
                 prompt_aware_guidance(refs, ref_prompts, enc, prompts, prompt_bandwidth=0.3,
                                       kernel=kernel, strength=3.0, normalization="none", stop=1.0,
                                       prompt_weighting="joint"))
        x = sample_with_prompts(model, prompts, enc, guidance=guide, seed=0)
        return float(np.mean([d["paired"] for d in world.pairing_scores(x, prompts, PAIRED_STYLES).values()]))

    loss = {m: paired(m, GaussianKernel(0.75)) - paired(m, GaussianKernel()) for m in ("plain", "product")}
    assert min(loss.values()) > 0, loss  # both lose
    most = "plain MMD" if loss["plain"] > loss["product"] else "the product kernel"
    assert f"Both lose, {most} the most" in answer, (loss, answer)
    unguided = sample_with_prompts(model, prompts, enc, seed=0)
    assert f"({median_bandwidth(unguided, refs):.2f})" in answer


@pytest.mark.usefixtures("one_thread")  # small tensors: one thread is many times faster
def test_notebook04_answer_on_a_cats_only_batch_matches_its_runs():
    """Answer 1 of notebook 04 said the product kernel 'is unaffected by the batch's composition'
    when 100 cats are sampled alone. With Section 2's Eq. 11 joint weights the cats hold the whole
    batch but a third of the references, so the push wins and they scatter (70 % off the modes);
    only the default conditional weights keep 0.95 paired. Every figure the answer gives is
    recomputed here (seeds 0-2)."""
    import numpy as np

    from mmdg_lite import GaussianKernel, MMDGuidance
    from mmdg_lite.prompts import prompt_aware_guidance, sample_with_prompts
    from mmdg_lite.toys import PAIRED_STYLES

    answer, model, world, enc, refs, ref_prompts = _nb04_answer_and_world(1)
    cats, kz = ["cat"] * 100, GaussianKernel(0.75)
    common = dict(kernel=kz, normalization="none", stop=1.0)
    guides = {"plain": MMDGuidance(refs, strength=1.0, **common),
              "joint": prompt_aware_guidance(refs, ref_prompts, enc, cats, prompt_bandwidth=0.3, strength=3.0,
                                             prompt_weighting="joint", **common),
              "conditional": prompt_aware_guidance(refs, ref_prompts, enc, cats, prompt_bandwidth=0.3,
                                                   strength=1.0, **common)}
    mean = {}
    for name, guide in guides.items():
        scores = [world.pairing_scores(sample_with_prompts(model, cats, enc, guidance=guide, seed=s), cats,
                                       PAIRED_STYLES)["cat"] for s in range(3)]
        mean[name] = {k: float(np.mean([d[k] for d in scores])) for k in scores[0]}
    stated = [f"paired {mean['plain']['paired']:.2f} against",
              f"{100 * mean['plain']['contamination']:.0f} % contaminated",
              f"{100 * mean['plain']['off_mode']:.0f} % off the modes). The product",
              f"paired {mean['joint']['paired']:.2f}, {100 * mean['joint']['off_mode']:.0f} % off the modes",
              f"reach {mean['conditional']['paired']:.2f} paired", "is *not* spared"]
    missing = [s for s in stated if s not in answer]
    assert not missing, (missing, answer)


@pytest.mark.usefixtures("one_thread")
def test_notebook08_density_of_a_shrunk_set_is_reported_as_measured():
    """Notebook 08's exercise 4 asked to 'show that density of the shrunk set grows as its std
    falls (0.5, 0.3, 0.1 x)' and answer 4 said it does; it peaks near 0.5 x and falls back to
    ~1.07 at 0.1 x (points piled on the mode centres sit in few reference balls), so density alone
    cannot flag over-sharpening. The answer's figures are recomputed (10 draws per std)."""
    import numpy as np

    from mmdg_lite import GaussianMixture, density_coverage, make_generator, make_task, rrke

    nb = _nb(ROOT / "notebooks" / "08_evaluation.ipynb")
    answer = next(" ".join(_src(c).split()) for c in nb["cells"]
                  if MSN.ANSWER in MSN.tags(c) and "Answer 4" in _src(c))
    question = next(" ".join(_src(c).split()) for c in nb["cells"] if "4. **Density > 1.**" in _src(c))
    assert "grows as its std falls" not in question
    task = make_task("ring2d_4modes", seed=0)
    t = task.target
    stats = {}
    for f in (1.0, 0.5, 0.3, 0.1):
        rows = []
        for s in range(10):
            x = GaussianMixture(t.means, t.weights, f * t.std).sample(1000, make_generator(100 + s))[0]
            dc = density_coverage(task.references, x, k=5)
            rows.append((dc.density, dc.coverage, rrke(x, task.references, 0.7)))
        stats[f] = np.mean(rows, axis=0)
    d = {f: v[0] for f, v in stats.items()}
    assert max(d, key=d.get) not in (1.0, 0.1), d  # density peaks at a moderate shrink
    stated = [f"{d[1.0]:.2f} at the target's std, {d[0.5]:.2f} at 0.5×, {d[0.3]:.2f} at 0.3× and back to "
              f"{d[0.1]:.2f} at 0.1×", ", ".join(f"{stats[f][1]:.2f}" for f in (1.0, 0.5, 0.3, 0.1)),
              f"{stats[1.0][2]:.3f} to {stats[0.1][2]:.3f}"]
    missing = [s for s in stated if s not in answer]
    assert not missing, (missing, answer)


def test_student_version_refuses_tags_that_are_not_a_list():
    """Tags written as one string ("tags": "solution", a hand edit) were read letter by letter, so
    the solution cell was not recognised and went into the student version as it was: it imported
    the solution from mmdg_lite.solutions and the check below it passed without the student's code."""
    cell = {"cell_type": "code", "metadata": {"tags": "solution", "exercise": "nb01.unbiased_mmd2"},
            "source": "from mmdg_lite.solutions.nb01 import unbiased_mmd2\n", "outputs": []}
    with pytest.raises(ValueError, match=r"cell 0 is not a notebook cell .*tags are a list"):
        MSN.student_version({"cells": [cell], "metadata": {}})
    cell["metadata"]["tags"] = ["solution"]
    assert MSN.STUB in MSN.tags(MSN.student_version({"cells": [cell], "metadata": {}})["cells"][0])


def test_stub_leaves_out_the_solutions_decorators(monkeypatch):
    """stub_source promises 'the solution's decorators-free signature', but the stub began at the
    first line of the source, its decorators: a solution decorated with a helper of its module gave
    a stub cell that failed with NameError before the student wrote anything."""
    from mmdg_lite.solutions import nb01

    def keep(fn):
        return fn

    @keep
    def decorated(x: torch.Tensor) -> torch.Tensor:
        """Doc line."""
        return x

    decorated.__module__ = nb01.__name__
    monkeypatch.setattr(nb01, "__all__", [*nb01.__all__, "decorated"])
    monkeypatch.setattr(nb01, "decorated", decorated, raising=False)
    stub = stub_source(decorated)
    assert "@keep" not in stub and '"""Doc line."""' in stub
    namespace: dict = {}
    exec(stub, namespace)  # noqa: S102 - the stub cell as a student runs it
    with pytest.raises(NotImplementedError, match=r"Exercise 01\.3: write the body of decorated"):
        namespace["decorated"](torch.zeros(1))

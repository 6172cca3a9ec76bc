"""The code the docs show runs: README's quick-start block and data/README's load recipes.

A doc line that names a stale shape or a renamed function fails here, not in a user's session
(the shapes card once said (4, 8, 8) after the latents had moved to 8 channels)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def recipe_bullets(path: Path) -> dict[str, list[str]]:
    """card heading -> the runnable code spans of its "Load it" / "Use it" bullet: the spans that
    compile as statements and call or import something, leaving out retraining (minutes) and prose
    names ("retrain=", not "retrain": every from_pretrained call was left out too)."""
    out, heading = {}, ""
    for bullet in re.split(r"\n(?=- |#)", path.read_text()):
        if bullet.startswith("#"):
            heading = bullet.splitlines()[0].lstrip("# ")
            continue
        if not re.match(r"- \*\*(Load|Use) it:\*\*", bullet):
            continue
        spans = []
        for code in re.findall(r"`([^`]+)`", bullet.replace("\n  ", " ")):
            try:
                compile(code, "<doc>", "exec")
            except SyntaxError:
                continue
            if ("(" in code or code.startswith("import ")) and "retrain=" not in code:
                spans.append(code)
        out[heading] = spans
    return out


def test_readme_quick_start_runs_and_moves_mass_to_the_chosen_modes():
    (block, *_) = python_blocks(ROOT / "README.md")
    code = block + "\nprint('MASS', float(mode_proportions(x, ring.means)[:4].sum()))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mass = float(re.search(r"MASS (\S+)", proc.stdout).group(1))
    assert mass > 0.9, proc.stdout  # unguided: 0.5 (4 of 8 equal modes)


CARDS = recipe_bullets(ROOT / "data" / "README.md")


def test_every_shipped_model_card_has_a_recipe():
    assert {"toy/mlp_2d", "toy/cond_2d", "images/digits_unet", "images/shapes_vae",
            "images/shapes_unet"} <= {h.split(" ")[0] for h in CARDS}
    assert all(CARDS.values()), CARDS


@pytest.mark.parametrize("heading", sorted(CARDS), ids=lambda h: h.split(" ")[0])
def test_data_card_recipe_runs(heading, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as from an installed wheel: no data/ below the working directory
    import mmdg_lite
    import mmdg_lite.images as mi
    import mmdg_lite.toys  # noqa: F401  (the toy cards write mmdg_lite.toys.load_or_train_...)

    ns = {"mmdg_lite": mmdg_lite, **{k: getattr(mi, k) for k in mi.__all__},
          "n": 2, "images": mi.make_shapes(2, seed=0).images}
    for code in CARDS[heading]:
        exec(code, ns)  # noqa: S102  (the docs' own code)
    for name in ("x", "z"):  # a drawn or encoded batch has the card's n rows and is finite
        if isinstance(ns.get(name), torch.Tensor):
            assert len(ns[name]) == 2 and bool(torch.isfinite(ns[name]).all()), (heading, name)


def test_readme_images_quick_start_runs_and_moves_shapes_toward_the_folder(tmp_path):
    """The second block: a folder of outlined shapes (25 % of the shapes model's pretraining)."""
    from mmdg_lite.images import make_shapes
    from PIL import Image

    (_, block, *_) = python_blocks(ROOT / "README.md")
    folder = tmp_path / "my_shapes"
    folder.mkdir()
    for i, img in enumerate(make_shapes(30, {"fill": {"outlined": 1.0}}, seed=5).images):  # (3, 32, 32)
        arr = ((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(arr).resize((48, 40)).save(folder / f"{i:02d}.png")  # not square: fit="crop"
    code = block + (
        "\nimport torch\nfrom mmdg_lite.images import detect_shapes\n"
        "plain = decode_latents(vae, sample(UNetDenoiser(unet), 16, sample_shape(unet), scheduler='ddim',"
        " num_steps=50, seed=0).samples)\n"
        "rate = lambda x: float((detect_shapes(x).attributes['fill'] == 1).float().mean())\n"
        "print('SHAPE', tuple(guided.shape), 'RATES', rate(plain), rate(guided))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"SHAPE \(16, 3, 32, 32\) RATES (\S+) (\S+)", proc.stdout)
    assert m, proc.stdout
    plain, guided = float(m.group(1)), float(m.group(2))
    assert guided >= plain + 0.25, proc.stdout  # the benchmark's untuned rate: 0.226 -> 0.761


def _doc_texts() -> list[tuple[str, str]]:
    """(name, text) of every hand-written doc: markdown files and the notebooks' markdown cells."""
    import json

    out = []
    for p in sorted([*ROOT.glob("*.md"), *ROOT.glob("book/**/*.md"), *ROOT.glob("data/**/*.md"),
                     *ROOT.glob("benchmarks/results/*.md")]):
        if "_build" not in p.parts:
            out.append((str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")))
    for nb in sorted(ROOT.glob("notebooks/*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                out.append((f"{nb.name} cell {i}", "".join(cell["source"])))
    return out


def test_docs_hold_no_control_characters():
    # book/method.md once held a form feed, a carriage return and a newline where \frac, \rho and
    # \nabla had been (a non-raw Python string wrote it); MathJax rendered "abla_{z_i} = rac{2ho_i}"
    bad = [(name, repr(m.group()), text[max(m.start() - 20, 0):m.start()])
           for name, text in _doc_texts() for m in re.finditer(r"[\x00-\x08\x0b-\x1f\x7f]", text)]
    assert not bad, bad
    assert len(_doc_texts()) > 50  # the globs found the docs


def test_latex_commands_are_not_split_across_lines():
    # the same accident with a newline leaves a line starting "abla" (from \nabla) or "rac{"
    hits = [(name, line) for name, text in _doc_texts() for line in text.splitlines()
            if re.match(r"\s*(abla[_^ {]|rac\{|ho_|imes\b|heta\b|ag\{)", line)
            or re.search(r"\t(heta|imes|au\b|ext\{|ilde)", line)]  # \t from \theta, \times, ...
    assert not hits, hits


def test_every_benchmark_parses_its_command_line():
    # four scripts ignored --help and ran the whole benchmark, overwriting its committed results
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) > 15
    parsers = ("argparse.ArgumentParser", "parse_jobs()", "parse_no_options(")
    silent = [p.name for p in scripts if "def main(" in p.read_text() and not any(s in p.read_text() for s in parsers)]
    assert not silent, f"benchmarks without a command-line parser (--help would run them): {silent}"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shapes_validity.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: shapes_validity.py")


def test_repository_files_the_docs_name_exist():
    # book/_config.yml twice named tests/test_book_offline.py (the checks had moved to
    # tests/test_book_site.py): a reader looking for the offline and launch-link tests found nothing
    pattern = re.compile(r"\b(?:tests|scripts|benchmarks)/[\w/.-]+?\.(?:py|sh|md|json|png)\b")
    texts = _doc_texts() + [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))
                            for p in [*ROOT.glob("book/_*.yml"), *ROOT.glob("benchmarks/*.py"),
                                      *ROOT.glob("benchmarks/*.sh"), *ROOT.glob("scripts/*.py"),
                                      *ROOT.glob("scripts/*.sh")]]
    made_by_the_reader = {"benchmarks/my_tables.py"}  # notebook 08's exercise 5 asks the reader to create it
    missing = sorted({(name, m.group()) for name, text in texts for m in pattern.finditer(text)
                      if m.group() not in made_by_the_reader and not (ROOT / m.group()).exists()})
    assert not missing, missing


def _recorded_commands() -> dict[str, str]:
    """results file -> the benchmark command it says wrote it (script and options, no interpreter)."""
    out = {}
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        m = re.search(r"`(?:\S*python) (benchmarks/\w+\.py[^`]*)`", p.read_text(encoding="utf-8"))
        assert m, f"{p.name} does not say which command wrote it"
        out[p.name] = " ".join(m.group(1).split())
    return out


def test_run_all_reruns_the_commands_the_tables_record():
    # run_all.sh says its arguments are "the ones that produced the committed tables", but it ran
    # fd_samples without --jobs 2 (twice the 212 s) and distributed.py with --repeats 3 while the
    # table recorded plain `python benchmarks/distributed.py` (its "best of 3" came from nowhere)
    entries = re.findall(r'^\s*"(\w+)\|([^"]*)"', (ROOT / "benchmarks" / "run_all.sh").read_text(), flags=re.M)
    assert len(entries) > 15
    run_all = {" ".join(f"benchmarks/{name}.py {args}".split()) for name, args in entries}
    recorded = _recorded_commands()
    assert not {f: c for f, c in recorded.items() if c not in run_all}, (recorded, run_all)
    assert run_all <= set(recorded.values()), run_all - set(recorded.values())


def test_distributed_table_quotes_the_measured_rff_derivative_error():
    # distributed.md said the RFF derivative's error "grows like 2 sqrt(D / F) (rff.md)" while
    # rff.md fits 1.59 (README: 1.6), so its 8x error, F = 400 D and 7 TB were all overstated
    results = ROOT / "benchmarks" / "results"
    fitted = [float(c) for c in re.findall(r"derivative estimator's error ≈ ([\d.]+)·√\(D/F\)",
                                            (results / "rff.md").read_text(encoding="utf-8"))]
    quoted = re.search(r"relative error grows like ([\d.]+) sqrt\(D / F\)", (results / "distributed.md").read_text())
    assert fitted and quoted
    assert min(fitted) - 0.05 <= float(quoted.group(1)) <= max(fitted) + 0.05, (fitted, quoted.group(1))


def test_the_package_all_lists_exactly_its_public_names_and_star_import_gives_them():
    # mmdg_lite had no __all__, so `from mmdg_lite import *` also brought in its submodules (kernels, mmd,
    # sampling, ...) and a name added to __init__ had no list to be checked against
    import inspect

    import mmdg_lite

    public = {n for n, v in vars(mmdg_lite).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert sorted(mmdg_lite.__all__) == sorted(public)
    assert len(set(mmdg_lite.__all__)) == len(mmdg_lite.__all__)
    scope: dict = {}
    exec("from mmdg_lite import *", scope)
    assert set(scope) - {"__builtins__"} == public
    undocumented = [n for n in mmdg_lite.__all__ if not inspect.getdoc(getattr(mmdg_lite, n))]
    assert not undocumented, undocumented


def test_no_test_module_defines_a_test_twice():
    # two probes' fixes merged into one file left two functions of one name: Python keeps the later,
    # so pytest silently ran only one of them
    import ast
    import collections

    repeated = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = collections.Counter(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
        if dupes := sorted(n for n, c in names.items() if c > 1):
            repeated[path.name] = dupes
    assert not repeated, repeated


# README numbers that no committed table holds on purpose: the target, and the timing
# runs before the committed one that its text reports as such (the table keeps the last run)
_README_HISTORY = {"1.05", "1.035", "1.022", "1.050", "1.024", "1.062", "0.899", "0.894"}


def _numbers(text: str) -> list[str]:
    """Decimals, 1,234-style and 3+-digit integers (not 10^4, 4×128, 100–103's parts or words)."""
    return re.findall(r"(?<![\w.^−-])\d[\d,]*\.\d+(?:e-?\d+)?(?![\w.])|(?<![\w.^−-])\d{3,}(?![\w.,])"
                      r"|(?<![\w.])\d{1,3}(?:,\d{3})+(?![\w.])", text)


def _matches(quoted: str, source: list[str]) -> bool:
    """quoted equals a source number as written, or that number rounded to quoted's digits."""
    from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
    q = Decimal(quoted.replace(",", ""))
    for s in source:
        try:
            if Decimal(s.replace(",", "")).quantize(q, rounding=ROUND_HALF_UP) == q:
                return True
        except InvalidOperation:  # not a number, or too many digits at quoted's precision
            continue
    return False


def test_readme_measured_figures_are_in_the_tables_each_paragraph_cites():
    # the toy paragraph gave the untuned default's "FD 3.76" citing defaults.md (which has no FD;
    # table1_synthetic.md does): a figure a reader cannot find where the paragraph points
    results = ROOT / "benchmarks" / "results"
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Measured figures", 1)[1]
    missing = []
    for para in re.split(r"\n(?=\*\*)", section):
        cited = {results / f"{name}.md" for name in re.findall(r"(\w+)\.md", para)} | (
            set(results.glob("calibration_*.md")) if "calibration_*.md" in para else set())
        cited = [p for p in cited if p.exists()]
        cited += [ROOT / "data" / "README.md"] if "data/README.md" in para else []
        cited += sorted((ROOT / "data").glob("**/training.json")) if "training.json" in para else []
        if not cited:
            continue
        text = " ".join(p.read_text(encoding="utf-8") for p in [*cited, *(p.with_suffix(".json") for p in cited)]
                        if p.exists())
        source = re.findall(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)  # every number, as written
        missing += [(para[:30], n) for n in _numbers(para) if n not in _README_HISTORY and not _matches(n, source)]
    assert not missing, missing


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_package_name_the_docs_and_model_records_give_exists():
    # toy/cond_2d's training.json named its world 'mmdg_lite.prompt_world.toy_world()', a module
    # that moved to mmdg_lite.toys (ModuleNotFoundError for a reader who followed it)
    texts = [*_doc_texts(), *((str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))
                              for p in sorted((ROOT / "data").rglob("*.json")))]
    bad = sorted({(name, dotted) for name, text in texts
                  for dotted in re.findall(r"\bmmdg_lite(?:\.[A-Za-z_]\w*)+", text) if not _resolves(dotted)})
    assert not bad, bad


def _doc_calls() -> list[tuple[str, str, str, str]]:
    """(file, span, name, args) of every call f(args) written in a code span of the hand-written
    pages (README, data/README, book) whose f is a public name of the package."""
    out = []
    for p in [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "book").glob("*.md"))]:
        text = p.read_text(encoding="utf-8").replace("\n  ", " ")
        for span in re.findall(r"`([^`\n]+)`", text):
            for name, args in re.findall(r"\b([A-Za-z_]\w*)\(([^()]*)\)", span):
                if args.strip() and "..." not in args:
                    out.append((str(p.relative_to(ROOT)), span, name, args))
    return out


def test_calls_the_docs_write_fit_the_signatures():
    # data/README wrote make_shapes(n, proportions, seed) (seed is keyword-only: TypeError) and
    # FeatureKernel(cnn) (shape is required); a call given only keywords names an option
    # (sample(per_sample_seed=True)), so only the keywords are checked there
    import importlib
    import inspect

    names: dict[str, object] = {}
    for mod in ("", ".images", ".toys", ".images.adaptation", ".images.evaluation", ".images.models",
                ".metrics", ".training", ".pipelines", ".pipelines.adapt", ".distributed"):
        m = importlib.import_module("mmdg_lite" + mod)
        for k in getattr(m, "__all__", dir(m)):
            obj = getattr(m, k, None)
            if callable(obj) and (getattr(obj, "__module__", "") or "").startswith("mmdg_lite"):
                names.setdefault(k, obj)
    bad, checked = [], 0
    for file, span, name, args in _doc_calls():
        if name not in names:
            continue
        parts = [a.strip() for a in re.split(r",(?![^\[]*\])", args) if a.strip()]
        pos = [a for a in parts if not re.match(r"^\w+\s*=(?!=)", a)]
        kw = {a.split("=")[0].strip(): 0 for a in parts if a not in pos}
        sig = inspect.signature(names[name])
        try:
            (sig.bind if pos else sig.bind_partial)(*pos, **kw)
            checked += 1
        except TypeError as err:
            bad.append((file, span, str(err)))
    assert not bad, bad
    assert checked >= 20, checked


def test_data_card_sizes_are_the_shipped_folders_sizes():
    # images/ was '≈ 7.7 MB in all' for 7.97 MB of files (7.60 MiB), digits_unet 2.5 for 2.58,
    # shapes_unet 3.7 for 3.81, the SD pipeline 5.6 for 5.73: stale in either unit
    units = {"kB": 1e3, "MB": 1e6}
    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    cards = re.findall(r"^##+ (\S+) — .*?≈ ([\d.]+) (kB|MB)", text, flags=re.M)
    cards += re.findall(r"the whole (folder) holds ≈ ([\d.]+) (MB)", text)  # data/ itself
    assert len(cards) >= 10, cards
    for folder, size, unit in cards:
        path = ROOT / "data" / ("" if folder == "folder" else folder.rstrip("/"))
        files = [p for p in path.rglob("*") if p.is_file()]
        have = sum(p.stat().st_size for p in files) / units[unit]
        decimals = len(size.partition(".")[2])
        # as written, rounded to its digits, with 1 % slack for a record that grows a little
        assert abs(have - float(size)) <= 0.5 * 10 ** -decimals + 0.01 * float(size), (folder, size, unit, have)

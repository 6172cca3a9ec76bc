"""The package as users install it: a wheel built from a copy of the source, installed (not
editable) into an empty folder, used from outside the repository.

The wheel must carry every file of data/ byte for byte and every module of mmdg_lite; installed,
it must find its own data, load the shipped toy models without training (the trainers are
replaced by functions that fail) and give the same outputs as the checkout's models; its ``mmdg``
script must run. ``import mmdg_lite`` must work without the plotting and table libraries, which
are notebook extras.
"""
from __future__ import annotations

import email
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info", "build")


def _files(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under folder (skipping caches)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part in {"__pycache__", ".ipynb_checkpoints"} for part in rel.parts) \
                and p.suffix != ".pyc":
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the build reads, so that no build folder is left in the checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("mmdg_lite", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=SKIP)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The wheel ``pip install .`` builds."""
    src = source
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(out), str(src)])
    (whl,) = out.glob("mmdg_lite-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed with pip into an empty folder (used through PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
          str(target), str(wheel)])
    return target


def _env(target: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def test_wheel_holds_every_data_file_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = {n[len("mmdg_lite/_data/"):]: hashlib.sha256(z.read(n)).hexdigest()
                   for n in z.namelist() if n.startswith("mmdg_lite/_data/") and not n.endswith("/")}
    want = _files(ROOT / "data")
    assert {"toy/mlp_2d/model.safetensors", "toy/mlp_2d/config.json",
            "toy/cond_2d/model.safetensors", "toy/cond_2d/config.json"} <= set(want)
    assert sorted(set(want) - set(shipped)) == [], "files of data/ missing from the wheel"
    assert sorted(set(shipped) - set(want)) == [], "files in the wheel's data that data/ lacks"
    assert [k for k in want if shipped[k] != want[k]] == [], "data files differ from data/"


def test_sdist_holds_every_data_file(source, tmp_path):
    """The source distribution (what ``python -m build`` makes first) carries data/ and setup.py."""
    code = "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_sdist(sys.argv[1]))"
    src = tmp_path / "src"
    shutil.copytree(source, src)  # the build writes an egg-info folder beside the sources
    out = _run([sys.executable, "-c", code, str(tmp_path)], cwd=src)
    name = out.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    want = {f"data/{k}" for k in _files(ROOT / "data")} | {"setup.py", "pyproject.toml", "LICENSE"}
    assert sorted(want - members) == []


def test_wheel_holds_every_module_and_its_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_string(z.read(meta_name).decode())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    modules = {f"mmdg_lite/{k}" for k in _files(ROOT / "mmdg_lite") if k.endswith(".py")}
    assert sorted(modules - names) == [], "modules missing from the wheel (a package without __init__.py?)"
    assert meta["License-Expression"] == "MIT"
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))  # the text ships too
    with zipfile.ZipFile(wheel) as z:
        assert z.read(licence) == (ROOT / "LICENSE").read_bytes()
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in core if r.split()[0].split(">")[0] in {"matplotlib", "seaborn", "pandas"}], core
    assert "mmdg = mmdg_lite.cli:main" in entry_points


_LOAD = textwrap.dedent("""
    import json, sys
    import torch
    import mmdg_lite
    import mmdg_lite.toys.models as m

    def refuse(*args, **kwargs):
        raise AssertionError("the installed package started training")

    m.train_toy_2d = m.train_cond_2d = m.train_denoiser = refuse
    toy, _ = m.load_or_train_toy_2d(progress=False)
    cond, _ = m.load_or_train_cond_2d()
    x = torch.linspace(-2, 2, 10).reshape(5, 2)
    t = torch.tensor([0, 10, 100, 500, 999])
    c = torch.eye(8)[:5]
    with torch.no_grad():
        outs = [toy(x, t).tolist(), cond(x, t, c).tolist()]
    print(json.dumps({"package": mmdg_lite.__file__, "data": str(mmdg_lite._resources.DATA_DIR),
                      "toy_dir": str(m.TOY_2D_DIR), "outs": outs}))
""")


def test_installed_wheel_loads_the_shipped_models_without_training(installed, tmp_path):
    import torch

    from mmdg_lite.denoisers import load_denoiser

    out = _run([sys.executable, "-c", _LOAD], cwd=tmp_path, env=_env(installed))
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["package"]).is_relative_to(installed), got["package"]  # not the checkout
    assert Path(got["data"]) == installed / "mmdg_lite" / "_data"
    assert Path(got["toy_dir"]).is_relative_to(installed)
    # Same weights as the checkout's data/: identical outputs on a fixed input.
    x, t, c = torch.linspace(-2, 2, 10).reshape(5, 2), torch.tensor([0, 10, 100, 500, 999]), torch.eye(8)[:5]
    with torch.no_grad():
        want = [load_denoiser(ROOT / "data/toy/mlp_2d")(x, t).tolist(),
                load_denoiser(ROOT / "data/toy/cond_2d")(x, t, c).tolist()]
    # float32 sums may be ordered differently with another thread count: not bit-equal, but the
    # same weights give outputs equal to rounding (other weights would differ at the 1e-1 level)
    for g, w in zip(got["outs"], want):
        torch.testing.assert_close(torch.tensor(g), torch.tensor(w), rtol=1e-5, atol=1e-6)


def test_installed_wheel_without_its_weights_raises_instead_of_training(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    weights = site / "mmdg_lite" / "_data" / "toy" / "mlp_2d" / "model.safetensors"
    weights.unlink()
    code = ("import mmdg_lite.toys.models as m\n"
            "m.train_toy_2d = m.train_denoiser = None  # calling either would raise a TypeError\n"
            "try:\n    m.load_or_train_toy_2d(progress=False)\n"
            "except FileNotFoundError as err:\n    print(err)\n")
    out = _run([sys.executable, "-c", code], cwd=tmp_path, env=_env(site))
    assert str(weights) in out.stdout and "retrain=True" in out.stdout, out.stdout


def test_installed_mmdg_script_runs(installed, tmp_path):
    script = installed / "bin" / "mmdg"
    assert script.is_file(), f"pip installed no mmdg script in {installed / 'bin'}"
    info = _run([str(script), "info"], cwd=tmp_path, env=_env(installed))
    assert f"data dir  {installed / 'mmdg_lite' / '_data'}" in info.stdout, info.stdout
    assert "FAILS" not in info.stdout, info.stdout
    for name in ("toy/mlp_2d", "toy/cond_2d"):
        assert any(line.split()[1:3] == [name, "loads"] for line in info.stdout.splitlines()), info.stdout


_BLOCKED = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"matplotlib", "seaborn", "pandas"}:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import mmdg_lite, mmdg_lite.toys, mmdg_lite.cli
    from mmdg_lite import setup_notebook
    setup_notebook(0)  # seeds and threads apply without the plotting extras
    mmdg_lite.load_or_train_toy_2d(progress=False)
    try:
        import mmdg_lite.plotting
    except ImportError:
        pass
    else:
        raise AssertionError("the blocker did not block")
    print("ok")
""")


def test_import_without_plotting_or_table_libraries(tmp_path):
    out = _run([sys.executable, "-c", _BLOCKED], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().endswith("ok")


# --- nothing points outside the repository -----------------------------------------------------

_OUTSIDE = re.compile(r"(?<![\w.-])(?:\.\./)*" + "shared" + r"/|(?<![\w.-])/" + "work" + r"/")


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / p for p in out.stdout.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]


def test_no_file_refers_to_paths_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}"
            for p in _tracked_text_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if _OUTSIDE.search(line)]
    assert not hits, "references to paths outside the repository:\n" + "\n".join(hits)


def test_outside_reference_pattern():
    shared = "shared" + "/"  # spelled in pieces so this file does not match itself
    assert all(_OUTSIDE.search(s) for s in (f"see ../{shared}DESIGN.md", f"{shared}reference/method.md",
                                             "/" + "work/main/data"))
    assert not any(_OUTSIDE.search(s) for s in ("a shared helper", "homework/", "network/x", "pre-shared/x"))


def test_rebuilt_wheel_drops_files_removed_since_the_last_build(tmp_path):
    """``pip install .`` twice in one checkout: a file removed (or renamed) between the builds must
    not ship in the second wheel (setuptools kept it from build/lib/ of the first build)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "mmdg_lite", src / "mmdg_lite", ignore=SKIP)
    shutil.copytree(ROOT / "data" / "toy", src / "data" / "toy", ignore=SKIP)  # small: a fast build

    def build(out: str) -> set[str]:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-q", "-w", str(tmp_path / out), str(src)])
        (whl,) = (tmp_path / out).glob("mmdg_lite-*.whl")
        with zipfile.ZipFile(whl) as z:
            return set(z.namelist())

    first = build("w1")
    assert {"mmdg_lite/_data/toy/mlp_2d/training.json", "mmdg_lite/seeding.py"} <= first
    assert (src / "build" / "lib").is_dir()  # what the second build starts from
    (src / "data" / "toy" / "mlp_2d" / "training.json").unlink()
    (src / "mmdg_lite" / "seeding.py").rename(src / "mmdg_lite" / "seeding_renamed.py")
    second = build("w2")
    assert "mmdg_lite/seeding_renamed.py" in second
    assert sorted({"mmdg_lite/_data/toy/mlp_2d/training.json", "mmdg_lite/seeding.py"} & second) == []


def test_a_missing_notebooks_extra_is_named_with_its_install_command(monkeypatch):
    """Without the notebooks extra (``pip install .`` alone), the plotting helpers, the explorers and
    show_images say which extra to install, not a bare "No module named 'matplotlib'"."""
    import importlib

    import torch

    from mmdg_lite._io import MissingExtraError

    install = r"needs {}, which is not installed: pip install 'mmdg_lite\[notebooks\]'"
    import mmdg_lite.widgets as widgets  # with matplotlib: imported before it is hidden below
    from mmdg_lite.images.display import show_images

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # None in sys.modules: import raises
    with pytest.raises(MissingExtraError, match="the explorers " + install.format("ipywidgets")):
        widgets.gradient_field_explorer()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match="show_images " + install.format("matplotlib")):
        show_images(torch.zeros(1, 1, 4, 4))
    for module in ("mmdg_lite.plotting", "mmdg_lite.widgets"):
        monkeypatch.delitem(sys.modules, module)  # restored after the test
        with pytest.raises(MissingExtraError, match=f"{module} " + install.format("matplotlib")):
            importlib.import_module(module)

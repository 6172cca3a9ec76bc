"""environment.yml (conda users) must install exactly what pyproject.toml declares.

environment.yml lets conda provide Python and pip only, and pip-installs ``-e .[extras]``; the
dependency list then lives in one place (pyproject.toml). These tests expand what
environment.yml installs and compare it with pyproject.toml, so a dependency added to one file
but not the other (or a new extra group that the conda file does not request) fails.

The last tests compare pyproject.toml with the code: every third-party import of mmdg_lite maps
(through the installed distributions) to a declared dependency, core for an import at module
level, core or an extra for a lazy or ImportError-guarded one; every core dependency is imported;
the notebooks import only core and ``[notebooks]`` packages.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

yaml = pytest.importorskip("yaml")
try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# Conda packages that provide the environment rather than a dependency of the project.
CONDA_INFRA = {"python", "pip"}
# Conda package names that differ from their PyPI names.
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-cpu": "torch"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pyproject_requirements(pp: dict, extras: set[str] | None = None) -> dict[str, Requirement]:
    """name -> Requirement for the core dependencies plus the given extras (all if None)."""
    project = pp["project"]
    groups = project.get("optional-dependencies", {})
    extras = set(groups) if extras is None else extras
    unknown = extras - set(groups)
    if unknown:
        raise AssertionError(f"environment.yml requests extras {sorted(unknown)} that pyproject.toml "
                             f"does not define (defined: {sorted(groups)})")
    reqs = list(project.get("dependencies", []))
    for group in sorted(extras):
        reqs += groups[group]
    out: dict[str, Requirement] = {}
    for r in reqs:
        req = Requirement(r)
        out[canonicalize_name(req.name)] = req
    return out


def conda_name(spec: str) -> str:
    name = re.split(r"[\s=<>!~]", spec.split("::")[-1].strip(), maxsplit=1)[0]
    return canonicalize_name(CONDA_TO_PYPI.get(name.lower(), name))


def env_install(env_doc: dict, pp: dict) -> tuple[set[str], set[str], list[str]]:
    """What environment.yml installs: (package names, extras of the project, constraint files)."""
    names: set[str] = set()
    extras: set[str] = set()
    constraints: list[str] = []
    pip_lines: list[str] = []
    for dep in env_doc.get("dependencies", []):
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected entry in dependencies: {dep!r}"
            pip_lines += list(dep["pip"])
        else:
            name = conda_name(str(dep))
            if name not in CONDA_INFRA:
                names.add(name)
    for line in pip_lines:
        line = str(line).strip()
        if line.startswith(("-c ", "--constraint ")):
            constraints.append(line.split(maxsplit=1)[1])
            continue
        editable = re.fullmatch(r"(?:-e\s+|--editable\s+)?\.(?:\[([^\]]*)\])?", line)
        if editable:  # the project itself: its dependencies come from pyproject.toml
            requested = {e.strip() for e in (editable.group(1) or "").split(",") if e.strip()}
            extras |= requested
            names |= set(pyproject_requirements(pp, requested))
            names.add("__project__")
            continue
        assert not line.startswith("-"), f"unsupported pip option in environment.yml: {line!r}"
        names.add(canonicalize_name(Requirement(line).name))
    return names, extras, constraints


def mismatch(env_doc: dict, pp: dict) -> tuple[set[str], set[str]]:
    """(only in environment.yml, only in pyproject.toml) package names."""
    names, _, _ = env_install(env_doc, pp)
    want = set(pyproject_requirements(pp)) | {"__project__"}
    return names - want, want - names


# --- the real files ---------------------------------------------------------------------------

def test_environment_installs_exactly_pyprojects_dependencies(env, pyproject):
    only_env, only_pyproject = mismatch(env, pyproject)
    assert not only_env, f"in environment.yml but not in pyproject.toml: {sorted(only_env)}"
    assert not only_pyproject, f"in pyproject.toml but not installed by environment.yml: {sorted(only_pyproject)}"


def test_environment_requests_every_extra(env, pyproject):
    _, extras, _ = env_install(env, pyproject)
    assert extras == set(pyproject["project"]["optional-dependencies"])


def test_environment_python_satisfies_requires_python(env, pyproject):
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and conda_name(d) == "python"]
    assert len(pythons) == 1, "environment.yml must pin one python version"
    version = pythons[0].split("=", 1)[1].lstrip("=")
    assert version in SpecifierSet(pyproject["project"]["requires-python"])


def test_environment_uses_ci_constraints_and_they_agree_with_pyproject(env, pyproject):
    _, _, constraints = env_install(env, pyproject)
    assert constraints == [".ci/constraints.txt"]
    path = ROOT / constraints[0]
    assert path.exists()
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    declared = pyproject_requirements(pyproject)
    assert "torch" in pins, "the constraints file must hold torch at the CPU build"
    for name, req in pins.items():
        assert name in declared, f"constraint on {name}, which pyproject.toml does not declare"
        version = str(req.specifier).lstrip("=")
        assert version in declared[name].specifier, (
            f"constraint {req} contradicts pyproject's {declared[name]}")


# --- the comparison itself fails on drift ------------------------------------------------------

def test_check_fails_when_a_dependency_is_added_to_environment_only(env, pyproject):
    drifted = copy.deepcopy(env)
    next(d for d in drifted["dependencies"] if isinstance(d, dict))["pip"].append("requests>=2")
    drifted["dependencies"].insert(0, "h5py")
    only_env, only_pyproject = mismatch(drifted, pyproject)
    assert only_env == {"requests", "h5py"} and not only_pyproject


def test_check_fails_when_a_dependency_is_added_to_pyproject_only(pyproject):
    # An environment that lists the dependencies explicitly goes stale when pyproject grows.
    explicit = {"dependencies": ["python=3.11", "pip", "pytorch>=2.4",
                                 {"pip": [str(r) for n, r in pyproject_requirements(pyproject).items()
                                          if n != "torch"] + ["-e ."]}]}
    assert mismatch(explicit, pyproject) == (set(), set())
    grown = copy.deepcopy(pyproject)
    grown["project"]["optional-dependencies"]["dev"].append("hypothesis>=6")
    assert mismatch(explicit, grown) == (set(), {"hypothesis"})


def test_check_fails_when_pyproject_gains_an_extra_group(env, pyproject):
    grown = copy.deepcopy(pyproject)
    grown["project"]["optional-dependencies"]["gpu"] = ["xformers>=0.0.20"]
    assert mismatch(env, grown) == (set(), {"xformers"})


# --- the declared dependencies match what the code imports -------------------------------------

import ast  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

# Modules of the package that are notebook extras: they may import the notebooks extra at top level.
EXTRA_MODULES = {"mmdg_lite/plotting.py": "notebooks", "mmdg_lite/widgets.py": "notebooks"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[bool, bool]:
    """(inside a function or class body, inside ``try: ... except ImportError``)."""
    lazy = guarded = False
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lazy = True
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
                for h in node.handlers):
            guarded = True
    return lazy, guarded


def third_party_imports(source: str) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level unguarded) for each absolute import."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        lazy, guarded = _guarded(node, parents)
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in {"mmdg_lite", "__future__"}:
                out.append((top, not (lazy or guarded)))
    return out


@functools.lru_cache(maxsize=None)
def _module_to_dists() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    dists = _module_to_dists().get(module)
    assert dists, f"no installed distribution provides the module {module!r}"
    return canonicalize_name(dists[0])


def _notebook_sources() -> dict[str, str]:
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = ["\n".join(line for line in "".join(c["source"]).splitlines()
                          if not line.lstrip().startswith(("%", "!")))
                for c in cells if c["cell_type"] == "code"]
        out[nb.name] = "\n".join(code)
    return out


def test_core_dependencies_are_exactly_what_the_package_imports_unconditionally(pyproject):
    core = set(pyproject_requirements(pyproject, set()))
    declared = set(pyproject_requirements(pyproject))
    groups = {g: set(pyproject_requirements({"project": {"optional-dependencies":
                                                         pyproject["project"]["optional-dependencies"]}}, {g}))
              for g in pyproject["project"]["optional-dependencies"]}
    needed_core, undeclared = set(), []
    for path in sorted((ROOT / "mmdg_lite").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for module, eager in third_party_imports(path.read_text()):
            dist = _distribution(module)
            extra = EXTRA_MODULES.get(rel)
            if eager and extra is None:
                needed_core.add(dist)
                if dist not in core:
                    undeclared.append(f"{rel} imports {module} ({dist}) at module level: not a core dependency")
            elif dist not in (core | groups[extra] if extra else declared):
                undeclared.append(f"{rel} imports {module} ({dist}), declared nowhere")
    lazily = {_distribution(m) for p in (ROOT / "mmdg_lite").rglob("*.py")
              if p.relative_to(ROOT).as_posix() not in EXTRA_MODULES
              for m, _ in third_party_imports(p.read_text())}
    assert not undeclared, "\n".join(undeclared)
    unused = sorted(core - needed_core - lazily)
    assert not unused, f"core dependencies that mmdg_lite never imports: {unused}"
    plotting = {"matplotlib", "seaborn", "pandas"} & core
    assert not plotting, f"plotting/table libraries in the core dependencies: {sorted(plotting)}"


def test_notebook_imports_are_declared_in_core_or_the_notebooks_extra(pyproject):
    allowed = set(pyproject_requirements(pyproject, {"notebooks"}))
    missing = sorted({f"{name}: {module} ({_distribution(module)})"
                      for name, source in _notebook_sources().items()
                      for module, _ in third_party_imports(source)
                      if _distribution(module) not in allowed})
    assert not missing, f"notebooks import packages that core + [notebooks] do not declare: {missing}"
    assert "pandas" in set(pyproject_requirements(pyproject, {"notebooks"})) - set(
        pyproject_requirements(pyproject, set()))


def test_import_scanner_sees_eager_lazy_and_guarded_imports():
    source = ("import numpy as np\nfrom scipy import stats\nimport os\nfrom . import x\n"
              "def f():\n    import sklearn\n"
              "try:\n    import matplotlib\nexcept ImportError:\n    pass\n")
    assert sorted(third_party_imports(source)) == [("matplotlib", False), ("numpy", True),
                                                   ("scipy", True), ("sklearn", False)]

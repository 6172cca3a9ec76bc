"""Solutions to the notebooks' coding exercises: the one place they live.

One module per notebook, ``nbNN`` for ``notebooks/NN_*.ipynb``; its ``__all__`` lists the
exercise functions in the order the notebook asks for them (exercise NN.1, NN.2, ...). A
notebook's solution cell (tags ``solution`` + ``hide-cell``, metadata ``"exercise": "nbNN.name"``)
imports the function and shows its source with ``show_solution``, so the executed notebook and
the book (collapsed) show the solution. ``python scripts/make_student_notebooks.py --out DIR``
replaces every solution cell by ``stub_source(fn)``: the same signature and docstring, with a
body that raises ``NotImplementedError``. The check cell after it asserts against an
independent oracle (a library function, autograd, a closed form or a simulation).

A new notebook joins by adding ``nbNN.py`` here and the tagged cells in the notebook; the tests
(tests/test_exercises.py) find both.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from types import FunctionType, ModuleType

__all__ = ["show_solution", "solution_source", "stub_source", "exercise_id", "exercise_label",
           "all_solutions", "solution_modules"]


def solution_modules() -> dict[str, ModuleType]:
    """{"nb01": module, ...}: every ``nbNN`` module of this package, sorted by name."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("nb"))
    return {n: importlib.import_module(f"{__name__}.{n}") for n in names}


def all_solutions() -> dict[str, FunctionType]:
    """{"nb01.unbiased_mmd2": function, ...} in notebook and exercise order."""
    out: dict[str, FunctionType] = {}
    for mod_name, mod in solution_modules().items():
        for name in mod.__all__:
            out[f"{mod_name}.{name}"] = getattr(mod, name)
    return out


def exercise_id(fn: FunctionType) -> str:
    """"nbNN.name" of a solution function (its key in ``all_solutions``)."""
    mod = fn.__module__.rsplit(".", 1)[-1]
    key = f"{mod}.{fn.__name__}"
    if key not in all_solutions():
        raise ValueError(f"{fn.__qualname__} is not a solution listed in mmdg_lite.solutions.{mod}.__all__")
    return key


def exercise_label(fn: FunctionType) -> str:
    """"Exercise 01.2" for the second function of nb01's ``__all__``."""
    mod_name, name = exercise_id(fn).split(".")
    number = solution_modules()[mod_name].__all__.index(name) + 1
    return f"Exercise {mod_name[2:]}.{number}"


def solution_source(fn: FunctionType) -> str:
    """The source of a solution function, dedented."""
    return textwrap.dedent(inspect.getsource(fn)).rstrip() + "\n"


def stub_source(fn: FunctionType) -> str:
    """The student's stub: the solution's decorators-free signature and docstring, with a body
    that raises NotImplementedError naming the exercise."""
    src = solution_source(fn)
    tree = ast.parse(src)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef):
        raise TypeError(f"{fn.__qualname__}: a solution must be a plain function definition")
    lines = src.splitlines()
    body0 = node.body[0]
    has_doc = isinstance(body0, ast.Expr) and isinstance(getattr(body0, "value", None), ast.Constant) \
        and isinstance(body0.value.value, str)
    keep_to = body0.end_lineno if has_doc else node.body[0].lineno - 1  # 1-based, inclusive
    head = "\n".join(lines[node.lineno - 1:keep_to])  # from the def: its decorators' lines come before
    indent = " " * body0.col_offset
    label = exercise_label(fn)
    imports = "from torch import Tensor  # the type in the signature\n\n\n" if "Tensor" in head else ""
    return (f"{imports}# {label}: replace the `raise` by your code; the check cell below tells you when it is right.\n"
            f"{head}\n{indent}# your code here\n"
            f"{indent}raise NotImplementedError(\"{label}: write the body of {fn.__name__}\")\n")


def show_solution(fn: FunctionType) -> str:
    """Display a solution's source as a highlighted code block (plain text outside IPython);
    returns the source."""
    src = solution_source(fn)
    where = f"mmdg_lite/solutions/{exercise_id(fn).split('.')[0]}.py"
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the notebooks extra
        get_ipython = None
    if get_ipython is None or get_ipython() is None:  # a plain Python process: display() would
        print(f"{exercise_label(fn)}, solution ({where})\n\n{src}", end="")  # print the object's repr
    else:
        display(Markdown(f"**{exercise_label(fn)}, solution** (`{where}`)\n\n```python\n{src}```"))
    return src

"""Write the student versions of the notebooks: solution cells become stubs, outputs cleared.

    python scripts/make_student_notebooks.py --out DIR [notebooks/01_mmd_basics.ipynb ...]

In the committed (instructor) notebooks a coding exercise is three kinds of cell:
- a solution cell, tags ``solution`` (+ ``hide-cell`` for the book), metadata
  ``"exercise": "nbNN.name"``: it imports ``mmdg_lite.solutions.nbNN.name`` and shows its source;
- a check cell, tag ``exercise-check``, same ``exercise`` metadata: asserts against an oracle;
- optional worked answers to the question exercises, tag ``instructor-answer``.
The student version replaces each solution cell by ``stub_source(fn)`` (same signature and
docstring, body raises NotImplementedError), drops the instructor answers, clears every output
and the saved widget state (and the instructor run's execution timestamps). Every notebook
01-08 has its exercises tagged this way; a new notebook joins by tagging its cells the same way.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdg_lite.solutions import all_solutions, stub_source  # noqa: E402

SOLUTION, CHECK, ANSWER, STUB = "solution", "exercise-check", "instructor-answer", "exercise-stub"


def tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercise_cells(nb: dict) -> list[tuple[int, str, str]]:
    """(cell index, kind "solution" | "check", exercise id) for every tagged exercise cell."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        kind = SOLUTION if SOLUTION in tags(cell) else "check" if CHECK in tags(cell) else None
        if kind is None:
            continue
        ex = cell.get("metadata", {}).get("exercise")
        if not ex:
            raise ValueError(f"cell {i} is tagged {kind!r} but has no 'exercise' metadata "
                             "(e.g. \"exercise\": \"nb01.unbiased_mmd2\")")
        out.append((i, kind, ex))
    return out


def student_version(nb: dict) -> dict:
    """A copy of the notebook dict with stubs for solutions, no instructor answers, no outputs.
    Raises ValueError (naming the cell) for a malformed cell or a solution cell whose
    ``exercise`` metadata is missing or not in mmdg_lite.solutions."""
    solutions = all_solutions()
    nb = copy.deepcopy(nb)
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"'cells' must be a list of cells; got {type(nb.get('cells')).__name__}")
    cells = []
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") \
                or not isinstance(cell.get("metadata", {}), dict) \
                or not isinstance(cell.get("metadata", {}).get("tags", []), list):  # "solution": its letters
            raise ValueError(f"cell {i} is not a notebook cell (a dict with cell_type code, markdown "
                             f"or raw and dict metadata whose tags are a list)")
        t = tags(cell)
        if ANSWER in t:
            continue
        if SOLUTION in t:
            ex = cell["metadata"].get("exercise")
            if ex not in solutions:
                raise ValueError(f"cell {i} is tagged {SOLUTION!r} but its 'exercise' metadata is {ex!r}, "
                                 f"not one of mmdg_lite.solutions: {sorted(solutions)}")
            cell = {"cell_type": "code", "execution_count": None, "id": cell.get("id", ex.replace(".", "-")),
                    "metadata": {"tags": [STUB], "exercise": ex}, "outputs": [],
                    "source": stub_source(solutions[ex]).splitlines(keepends=True)}
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            cell.get("metadata", {}).pop("execution", None)  # the instructor run's timestamps
        cells.append(cell)
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    ap.add_argument("notebooks", nargs="*", type=Path,
                    help="notebooks to convert (default: every notebooks/NN_*.ipynb)")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out: {str(args.out)!r} exists and is not a folder")
    names: dict[str, Path] = {}
    for path in paths:
        if not path.is_file() or path.suffix != ".ipynb":
            ap.error(f"not a notebook: {str(path)!r}")
        first = names.setdefault(path.name, path)
        if first.resolve() != path.resolve():  # both would be written to --out/<name>
            ap.error(f"{str(first)!r} and {str(path)!r} have the same name: the second student version "
                     "would replace the first in --out; convert them into separate folders")
        if (args.out / path.name).resolve() == path.resolve():  # --out notebooks: the instructor copies
            ap.error(f"--out {str(args.out)!r} would overwrite {str(path)!r} itself; write the student "
                     "versions to another folder")
    students = []  # every notebook is converted before any is written: an error leaves no partial set
    for path in paths:
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))  # notebooks are UTF-8 whatever the locale
            if not isinstance(nb, dict) or "cells" not in nb:
                raise ValueError("no cells")
        except ValueError as err:
            ap.error(f"not a notebook: {str(path)!r} ({err})")
        try:
            students.append((path, student_version(nb)))
        except ValueError as err:
            ap.error(f"{str(path)!r}: {err}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent is a file, no permission, ...
        ap.error(f"--out: cannot create the folder {str(args.out)!r} ({err.strerror})")
    for path, student in students:
        n_stubs = sum(STUB in tags(c) for c in student["cells"])
        (args.out / path.name).write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.name}: {n_stubs} exercise stub(s) -> {args.out / path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

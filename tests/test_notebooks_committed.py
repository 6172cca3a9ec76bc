"""Committed notebooks are executed top to bottom and carry their figures (the book shows them).

nbval re-runs every notebook; this checks what is *committed*: a notebook executed with a
non-inline matplotlib backend (e.g. MPLBACKEND=Agg) would silently lose every figure.
"""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_in_order_with_figures(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, f"{path.name}: unexecuted code cells"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not run top to bottom on a fresh kernel"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{path.name}: error output"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figures in the committed outputs"
    head = " ".join("".join(c["source"]).lower() for c in cells[:3])
    tail = " ".join("".join(c["source"]).lower() for c in cells[-4:])
    assert "objective" in head, f"{path.name}: learning objectives missing at the top"
    assert "exercise" in tail and "summary" in tail, f"{path.name}: summary/exercises missing at the end"


def test_every_notebook_is_a_chapter_of_the_book():
    toc = (Path(__file__).resolve().parent.parent / "book" / "_toc.yml").read_text()
    missing = [p.stem for p in NOTEBOOKS if f"notebooks/{p.stem}" not in toc]
    assert not missing, f"add to book/_toc.yml: {missing}"

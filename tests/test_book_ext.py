"""The book's own Sphinx helpers (book/_ext): docstring escaping, the API plan, the vendoring.

These need no built book and no network; tests/test_book_site.py checks the built site.
"""
from __future__ import annotations

import base64
import hashlib
import inspect
import io
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the book extra is not installed: pip install -e '.[book]'")
from docutils.core import publish_doctree  # noqa: E402  (docutils comes with sphinx)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "book" / "_ext"))
import mmdg_book  # noqa: E402
import vendor  # noqa: E402

PLAIN_DOCSTRINGS = [
    "Conventions: x (n, *S) are generated points, y (m, *S) are references.",
    "sum_{i,i'} w_i w_i' k(z_i, z_i'), total variation 0.5 * |p - q|_1 of x_ and __init__.",
    "Only kernel *values* are approximated; see ``GaussianKernel(median_scale=0.5)`` and **kwargs.",
    "c ~ 1-2 works; 2*x and a * b; **strong** stays strong.",
]


def _parse(text: str):
    warnings = io.StringIO()
    doctree = publish_doctree(text, settings_overrides={"warning_stream": warnings, "report_level": 1,
                                                        "halt_level": 5})
    return doctree, warnings.getvalue()


@pytest.mark.parametrize("text", PLAIN_DOCSTRINGS)
def test_escaped_docstrings_parse_cleanly_and_keep_their_text(text):
    raw_tree, raw_warnings = _parse(text)
    fixed = "\n".join(mmdg_book.plain_text_docstring([text]))
    tree, warnings = _parse(fixed)
    assert not warnings, warnings
    shown = tree.astext()
    # every character the author wrote is shown, except the markup of literals and emphasis
    expected = text.replace("``", "")
    for marked in ("*values*", "**strong**"):
        expected = expected.replace(marked, marked.strip("*"))
    assert shown == expected


def test_escaping_keeps_markup_that_was_meant():
    (line,) = mmdg_book.plain_text_docstring(["the *their* weights, ``x * y``, **bold**"])
    tree, warnings = _parse(line)
    assert not warnings
    assert [n.astext() for n in tree.findall(lambda n: n.tagname == "emphasis")] == ["their"]
    assert [n.astext() for n in tree.findall(lambda n: n.tagname == "literal")] == ["x * y"]
    assert [n.astext() for n in tree.findall(lambda n: n.tagname == "strong")] == ["bold"]


def test_bullet_lists_stay_lists():
    text = ["Points:", "", '* "x_t": z = c x_t, before the step', "  (paper Eq. 5).", "* 2*x and (n, *S)"]
    tree, warnings = _parse("\n".join(mmdg_book.plain_text_docstring(text)))
    assert not warnings, warnings
    items = [n.astext() for n in tree.findall(lambda n: n.tagname == "list_item")]
    assert items == ['"x_t": z = c x_t, before the step\n(paper Eq. 5).', "2*x and (n, *S)"]


def test_the_unescaped_examples_really_break_restructuredtext():
    """The oracle above is meaningful: without escaping, docutils complains."""
    broken = [t for t in PLAIN_DOCSTRINGS[:2] if _parse(t)[1]]
    assert len(broken) == 2


def test_api_plan_documents_each_top_level_object_once_where_it_is_defined():
    import mmdg_lite

    plan, targets = mmdg_book.api_plan()
    documented = [f"{mod}.{name}" for mod, entries in plan.items() for d, name in entries if d != "constant"]
    assert len(documented) == len(set(documented)), "an object is documented twice"
    for name in dir(mmdg_lite):
        obj = getattr(mmdg_lite, name)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if any(part.startswith("_") for part in obj.__module__.split(".")):
            continue
        assert f"{obj.__module__}.{name}" in documented, name
        assert targets[name] == f"{obj.__module__}.{name}"
    assert all(not any(p.startswith("_") for p in m.split(".")) for m in plan)


def test_vendor_rejects_a_tarball_with_the_wrong_hash():
    data = b"not the tarball"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    vendor._check_integrity(data, good, "x")
    with pytest.raises(RuntimeError, match="expected"):
        vendor._check_integrity(data + b"!", good, "x")
    for pkg in vendor.PACKAGES:  # pinned exact versions with registry integrity values
        assert pkg["integrity"].startswith("sha512-") and pkg["version"] in pkg["tarball"]




def test_every_class_and_function_on_the_api_page_has_a_docstring():
    """An entry without a docstring shows a bare signature on the API page (build_parser,
    held_out_digits, held_out_shapes and save_feature_net did)."""
    import importlib

    plan, _ = mmdg_book.api_plan()
    bare = []
    for modname, entries in plan.items():
        module = importlib.import_module(modname)
        for directive, name in entries:
            if directive in ("autoclass", "autofunction") and not inspect.getdoc(getattr(module, name)):
                bare.append(f"{modname}.{name}")
    assert not bare, sorted(bare)


def test_vendor_without_the_registry_fails_with_a_message(tmp_path, monkeypatch, capsys):
    """Offline, the first build's `python book/_ext/vendor.py` ended in a CalledProcessError
    traceback from `npm pack`; it now says what failed and what to do, and exits 1."""
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error network request failed' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setattr(vendor, "DEST", tmp_path / "vendor")
    monkeypatch.setattr(vendor, "STAMP", tmp_path / "vendor" / "vendor.json")
    monkeypatch.setattr(vendor.shutil, "which", lambda name: str(npm))
    assert vendor.main([]) == 1
    err = capsys.readouterr().err
    assert "could not vendor" in err and "npm" in err and "book/_vendor" in err
    assert not (tmp_path / "vendor" / "vendor.json").exists()
    # --force without the registry keeps the copy it could not replace
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "require.js").write_text("kept")
    assert vendor.main(["--force"]) == 1
    assert (tmp_path / "vendor" / "require.js").read_text() == "kept"

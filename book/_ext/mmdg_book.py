"""Sphinx extension for the mmdg_lite book (listed under ``sphinx.local_extensions``).

- Serves the vendored widget scripts (``book/_vendor/vendor``, made by ``vendor.py``) as
  ``_static/vendor``, and fails the build when they are missing, so no page falls back to a CDN.
- The ``mmdg-api`` directive writes the API reference from the package itself: every public
  module of mmdg_lite (found with pkgutil, so moved or new modules appear without editing the
  page), its docstring, and each class, function and constant it defines, through autodoc.
  Each object is documented once, under the module that defines it, and the top-level names
  (``from mmdg_lite import X``) are listed in a table that links to them. The exercise
  solutions (``mmdg_lite.solutions``) are course material, not API, and are left out.
- Docstrings are plain text with maths (``(n, *S)``, ``|p - q|``): they are escaped for
  reStructuredText before napoleon reads them, so they cannot break the -W build.
- Removes repeated identical script/style entries (sphinx-thebe adds one twice, which throws).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import vendor  # book/_ext/vendor.py (this folder is on sys.path)

PACKAGE = "mmdg_lite"
EXCLUDED = ("mmdg_lite.solutions",)  # with their submodules


def _add_vendor_static(app: Sphinx, config) -> None:
    if not vendor.is_complete():
        raise ConfigError(f"vendored widget scripts missing in {vendor.DEST}: run `python book/_ext/vendor.py` "
                          "(scripts/build_book.sh does) so widget pages do not load them from a CDN")
    # Added here, after Jupyter Book has auto-registered every .js under _static on every page:
    # these scripts are only put on pages with widget views (nb_ipywidgets_js).
    config.html_static_path = list(config.html_static_path) + [str(vendor.DEST.parent)]


def _dedupe_assets(app: Sphinx, pagename, templatename, context, doctree) -> None:
    """Drop repeated identical <script>/<link> entries. sphinx-thebe registers its inline
    configuration twice under Jupyter Book (filename None, then ""), and the second
    ``const THEBE_JS_URL`` throws a SyntaxError on every page (the browser test fails on it)."""
    for key in ("script_files", "css_files"):
        seen, kept = set(), []
        for asset in context.get(key, []):
            attrs = getattr(asset, "attributes", {})
            ident = (str(getattr(asset, "filename", asset) or ""),
                     tuple(sorted((k, str(v)) for k, v in attrs.items())))
            if ident not in seen:
                seen.add(ident)
                kept.append(asset)
        if key in context:
            context[key] = kept


def public_modules(package: str = PACKAGE) -> list[str]:
    """Importable public modules of ``package`` (no component starting with ``_``), sorted."""
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split("."))
                  and not any(n == x or n.startswith(x + ".") for x in EXCLUDED))


def _defined_here(module, name: str) -> bool:
    obj = getattr(module, name, None)
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__


def api_plan(package: str = PACKAGE) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """({module: [(directive, name)]}, {top-level name: documented target})."""
    top = importlib.import_module(package)
    top_names = [n for n in dir(top) if not n.startswith("_")
                 and not inspect.ismodule(getattr(top, n))]
    plan: dict[str, list[tuple[str, str]]] = {}
    for modname in public_modules(package):
        module = importlib.import_module(modname)
        listed = getattr(module, "__all__", None)
        names = list(listed) if listed is not None else [n for n in vars(module) if not n.startswith("_")]
        # top-level names defined in this module but missing from its __all__ are documented too
        names += [n for n in top_names if n not in names and _defined_here(module, n)]
        try:  # constants are documented when they carry a `#:` doc comment
            commented = {n for (cls, n) in ModuleAnalyzer.for_module(modname).find_attr_docs() if not cls}
        except Exception:  # noqa: BLE001 - no source available: document no constants
            commented = set()
        entries, constants = [], []
        for name in names:
            obj = getattr(module, name, None)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if obj.__module__ == modname:
                    entries.append(("autoclass" if inspect.isclass(obj) else "autofunction", name))
            elif listed is not None and name in listed and not inspect.ismodule(obj):
                # a constant the module exports on purpose; without a doc comment autodoc would
                # show the docstring of its type (dict, tuple), so it is only named then
                (entries if name in commented else constants).append(("autodata", name))
        plan[modname] = entries + [("constant", n) for _, n in constants]
    targets = {}
    for name in top_names:
        obj = getattr(top, name)
        home = getattr(obj, "__module__", None)
        if home in plan and any(n == name and d != "constant" for d, n in plan[home]):
            targets[name] = f"{home}.{name}"
    return plan, targets


def api_rst(package: str = PACKAGE) -> list[str]:
    """The reStructuredText of the API reference."""
    plan, targets = api_plan(package)
    top = importlib.import_module(package)
    lines = ["Top-level names", "---------------", "",
             f"Everything below is importable as ``from {package} import NAME``.", "",
             ".. list-table::", "   :header-rows: 1", "", "   * - name", "     - defined in"]
    for name in sorted(targets, key=str.lower):
        home = targets[name].rsplit(".", 1)[0]
        role = "class" if inspect.isclass(getattr(top, name)) else "obj"
        lines += [f"   * - :py:{role}:`{name} <{targets[name]}>`", f"     - ``{home}``"]
    lines += ["", "Modules", "-------", ""]
    for modname, entries in plan.items():
        lines += [f"``{modname}``", "~" * (len(modname) + 4), "", f".. automodule:: {modname}", ""]
        named = [n for d, n in entries if d == "constant"]
        if named:
            lines += ["Constants: " + ", ".join(f"``{n}``" for n in named) + ".", ""]
        for directive, name in entries:
            if directive == "constant":
                continue
            lines.append(f".. {directive}:: {modname}.{name}")
            if directive == "autoclass":
                # undocumented public methods too (Kernel.gram, PromptEncoder.encode): autodoc
                # leaves a member without a docstring out unless asked
                lines += ["   :members:", "   :undoc-members:", "   :show-inheritance:"]
            lines.append("")
    return lines


_LITERAL = re.compile(r"``.+?``")
_BULLET = re.compile(r"^\s*[*+-] ")
_EMPHASIS = re.compile(r"(?<![\w*\\])(\*{1,2})(?![\s*])([^*]*?[^\s*\\])\1(?![\w*])")


def _escape_plain(segment: str) -> str:
    """Escape the characters plain-text docstrings use as maths, outside *emphasis* spans."""
    out, pos = [], 0
    for match in _EMPHASIS.finditer(segment):
        out.append(_escape_chars(segment[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_escape_chars(segment[pos:]))
    return "".join(out)


def _escape_chars(text: str) -> str:
    text = re.sub(r"(?<!\\)\*", r"\\*", text)  # (n, *S), 2*x, **kwargs
    text = re.sub(r"(?<!\\)\|", r"\\|", text)  # |p - q|, |x_i| are not substitutions
    return re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", text)  # x_ / __init__ are not link targets


def plain_text_docstring(lines: list[str]) -> list[str]:
    """Make a plain-text docstring safe for reStructuredText, keeping ``literals`` and *emphasis*.

    The package's docstrings are written as plain text with maths such as ``(n, *S)``,
    ``|p - q|`` or ``sum_{i,i'}``; reStructuredText would read those as broken markup and fail
    the -W build. Double-backtick literals and well-formed *emphasis* / **strong** pass as is.
    """
    fixed = []
    for line in lines:
        bullet = _BULLET.match(line)  # "* item" starts a list: keep its marker
        head, line = (bullet.group(0), line[bullet.end():]) if bullet else ("", line)
        parts, pos = [head], 0
        for match in _LITERAL.finditer(line):
            parts.append(_escape_plain(line[pos:match.start()]))
            parts.append(match.group(0))
            pos = match.end()
        parts.append(_escape_plain(line[pos:]))
        fixed.append("".join(parts))
    return fixed


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    if name.startswith(PACKAGE + "."):
        lines[:] = plain_text_docstring(lines)


class ApiDirective(SphinxDirective):
    """``.. mmdg-api::`` -- the whole API reference of mmdg_lite (see the module docstring)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        source = self.get_source_info()[0]
        content = StringList()
        for i, line in enumerate(api_rst()):
            content.append(line, source, i)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        for path in {Path(importlib.import_module(m).__file__) for m in public_modules()}:
            self.env.note_dependency(str(path))
        return container.children


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _add_vendor_static)
    app.connect("html-page-context", _dedupe_assets, priority=900)
    app.add_directive("mmdg-api", ApiDirective)
    # before napoleon (priority 500) turns "Args:" sections into field lists
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

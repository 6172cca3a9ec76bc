"""The built book (book/_build/html): offline, complete, numbered, with working launch links.

Reads the HTML that `bash scripts/build_book.sh` wrote; scripts/test.sh builds it first. Without
a build the tests skip locally and fail under CI=true. tests/test_book_browser.py opens the same
pages in a real browser.
"""
from __future__ import annotations

import inspect
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SITE = BOOK / "_build" / "html"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [c["file"] for c in part["chapters"]]
    return files


def _numbered_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [c["file"] for p in toc.get("parts", []) if p.get("numbered") for c in p["chapters"]]


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        message = f"no built book in {SITE}: run `bash scripts/build_book.sh` first"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return SITE


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))


class _Resources(HTMLParser):
    """Collects what a page makes the browser fetch: scripts, stylesheets/preloads/icons,
    images, frames and media. Plain <a href> links are navigation, not loads."""

    LOADING_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch",
                    "manifest", "apple-touch-icon"}

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.h1: list[str] = []
        self._in_h1 = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed", "track") and a.get("src"):
            self.loads.append((tag, a["src"]))
        if tag == "img" and a.get("srcset"):
            self.loads += [("img srcset", s.split()[0]) for s in a["srcset"].split(",") if s.strip()]
        if tag == "object" and a.get("data"):
            self.loads.append((tag, a["data"]))
        if tag == "link" and a.get("href"):
            rels = set((a.get("rel") or "").lower().split())
            if rels & self.LOADING_RELS:
                self.loads.append((f"link rel={a.get('rel')}", a["href"]))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "h1":
            self._in_h1 += 1
            self.h1.append("")

    def handle_endtag(self, tag):
        if tag == "h1" and self._in_h1:
            self._in_h1 -= 1

    def handle_data(self, data):
        if self._in_h1:
            self.h1[-1] += data


def _parse(page: Path) -> _Resources:
    parser = _Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _is_remote(url: str) -> bool:
    return url.strip().lower().startswith(("http://", "https://", "//", "ws://", "wss://"))


def test_every_toc_entry_is_a_page(site):
    missing = [f for f in _toc_files() if not (site / f"{f}.html").is_file()]
    assert not missing, f"toc entries without a built page: {missing}"
    assert len(_pages(site)) >= len(_toc_files())


def test_no_page_loads_anything_from_the_network(site):
    remote = []
    for page in _pages(site):
        remote += [f"{page.relative_to(site)}: <{tag}> {url}" for tag, url in _parse(page).loads
                   if _is_remote(url)]
    assert not remote, "the book must work offline; remote loads:\n" + "\n".join(remote[:30])


def test_local_resources_exist(site):
    """Every local script, stylesheet and image a page names is in the build (no 404s)."""
    missing = []
    for page in _pages(site):
        for tag, url in _parse(page).loads:
            if _is_remote(url) or url.startswith(("data:", "blob:")):
                continue
            path = urlparse(url).path
            if path and not (page.parent / path).resolve().is_file():
                missing.append(f"{page.relative_to(site)}: <{tag}> {url}")
    assert not missing, "\n".join(missing[:30])


def test_stylesheets_import_nothing_remote(site):
    remote = []
    for css in (site / "_static").rglob("*.css"):
        text = re.sub(r"/\*.*?\*/", "", css.read_text(encoding="utf-8", errors="replace"), flags=re.S)
        for url in re.findall(r"""(?:url\(|@import\s+)\s*["']?([^"')\s;]+)""", text):
            if _is_remote(url):
                remote.append(f"{css.relative_to(site)}: {url}")
    assert not remote, "\n".join(remote[:30])


def test_math_and_widget_scripts_are_served_locally(site):
    mathjax = [p for p in _pages(site) if 'class="math' in p.read_text(encoding="utf-8")]
    assert mathjax, "no page has math: the method page should"
    for page in mathjax:
        scripts = [urlparse(url).path for tag, url in _parse(page).loads if tag == "script"]
        assert any(url.endswith("_static/mathjax/tex-chtml.js") for url in scripts), page.name
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    vendor = site / "_static" / "vendor"
    assert (vendor / "require.js").is_file() and (vendor / "html-manager" / "embed-amd.js").is_file()
    for page in _pages(site):
        if "application/vnd.jupyter.widget-state+json" in page.read_text(encoding="utf-8"):
            scripts = [urlparse(url).path for tag, url in _parse(page).loads if tag == "script"]
            assert any(u.endswith("_static/vendor/html-manager/embed-amd.js") for u in scripts), page.name
            assert any(u.endswith("_static/vendor/require.js") for u in scripts), page.name


def test_chapters_are_numbered_in_toc_order(site):
    numbered = _numbered_files()
    assert numbered, "no numbered part in book/_toc.yml"
    for number, doc in enumerate(numbered, start=1):
        headings = [t.strip() for t in _parse(site / f"{doc}.html").h1]  # the header repeats it unnumbered
        assert any(t.startswith(f"{number}. ") for t in headings), f"{doc}: {headings} is not chapter {number}"
        html = (site / f"{doc}.html").read_text(encoding="utf-8")
        # sections keep the notebook's own numbers ("## 2. ..."), not a second "1.2." prefix
        assert not re.search(r"<h[2-6][^>]*>\s*<span class=\"section-number\">", html), doc


def test_front_and_back_matter(site):
    docs = _toc_files()
    for page in ("intro", "method", "references", "api"):
        assert page in docs, f"{page} missing from the toc"
    method = (site / "method.html").read_text(encoding="utf-8")
    for tag in ("5", "6", "10", "11"):
        assert f"\\tag{{{tag}}}" in method, f"method page lacks paper Eq. {tag}"
    assert "Tweedie" in method and "reference code" in method
    references = (site / "references.html").read_text(encoding="utf-8")
    assert "2601.08379" in references


def test_api_page_documents_every_top_level_name(site):
    import mmdg_lite

    html = (site / "api.html").read_text(encoding="utf-8")
    expected = []
    for name in dir(mmdg_lite):
        obj = getattr(mmdg_lite, name)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if any(part.startswith("_") for part in obj.__module__.split(".")):
            continue  # defined in a private module
        expected.append(f"{obj.__module__}.{name}")
    assert len(expected) > 20
    missing = [t for t in expected if f'id="{t}"' not in html]
    assert not missing, f"api page lacks: {missing}"
    assert 'id="mmdg_lite.mmd.mmd2_grad"' in html and "Eq. 6" in html


def test_launch_links_open_real_notebooks(site):
    """Colab and Binder links name files that exist in the repository as plain files (Colab
    reads GitHub, which does not follow the book/notebooks symlink)."""
    notebooks = [f for f in _toc_files() if f.startswith("notebooks/")]
    assert notebooks
    for doc in notebooks:
        links = _parse(site / f"{doc}.html").links
        colab = [u for u in links if u.startswith("https://colab.research.google.com/github/")]
        binder = [u for u in links if u.startswith("https://mybinder.org/v2/gh/")]
        assert colab and binder, f"{doc}: launch buttons missing"
        path = colab[0].split("/blob/main/", 1)[1]
        assert path == f"{doc}.ipynb", colab[0]
        assert "urlpath=lab/tree/" + path in binder[0], binder[0]
        assert (ROOT / path).is_file(), path
        crossed = [ROOT.joinpath(*Path(path).parts[:i]) for i in range(1, len(Path(path).parts) + 1)]
        assert not any(p.is_symlink() for p in crossed), f"{path} goes through a symlink"


def test_api_page_lists_every_public_method_and_property(site):
    """autodoc's ``:members:`` leaves out a member without a docstring, so the page silently lacked
    Kernel.gram, PromptEncoder.encode, MMDGuidance.strength, ... Every public method, classmethod,
    staticmethod and property a documented class defines must have its entry."""
    import importlib

    html = (site / "api.html").read_text(encoding="utf-8")
    classes = re.findall(r'<dl class="py class">\s*<dt class="sig[^"]*" id="([^"]+)"', html)
    assert len(classes) > 30
    missing = []
    for target in classes:
        module, name = target.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        for member, value in vars(cls).items():
            if member.startswith("_"):
                continue
            if inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod, property)):
                if f'id="{target}.{member}"' not in html:
                    missing.append(f"{target}.{member}")
    assert not missing, f"api page lacks {len(missing)} members: {missing[:20]}"


def _config_leaves(config: dict, prefix: tuple = ()):
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from _config_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,)


def test_every_config_entry_reaches_sphinx():
    """Each setting in book/_config.yml changes the Sphinx configuration Jupyter Book derives from
    it (its own yaml_to_sphinx is the oracle). `html.use_download_button` was silently dropped:
    Jupyter Book 1.x passes only the repository/issues/edit buttons on to the theme."""
    import copy

    config_module = pytest.importorskip("jupyter_book.config")
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    full = config_module.yaml_to_sphinx(copy.deepcopy(config))
    ignored = []
    for path in _config_leaves(config):
        trimmed = copy.deepcopy(config)
        parent = trimmed
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        try:
            changed = config_module.yaml_to_sphinx(trimmed) != full
        except ValueError:  # e.g. repository.url: the repository button needs it
            changed = True
        if not changed:
            ignored.append(".".join(map(str, path)))
    assert not ignored, f"book/_config.yml entries that Jupyter Book ignores: {ignored}"


class _Prose(HTMLParser):
    """The article's running text: no code, cell outputs or maths (MathJax's own elements)."""

    SKIP_CLASSES = ("math", "highlight", "cell_output", "output")

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self._article = 0
        self._skip: list[str] = []  # [tag, ...]: the open element being skipped, and nested ones

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self._article += 1
        classes = (dict(attrs).get("class") or "").split()
        if self._skip:
            if tag == self._skip[0]:
                self._skip.append(tag)
        elif tag in ("pre", "code", "script", "style") or any(c in self.SKIP_CLASSES for c in classes):
            self._skip.append(tag)

    def handle_endtag(self, tag):
        if self._skip and tag == self._skip[0]:
            self._skip.pop()
        elif tag == "article":
            self._article -= 1

    def handle_data(self, data):
        if self._article and not self._skip:
            self.text.append(data)


def test_no_tex_written_outside_maths(site):
    """Sub- and superscripts in braces (x_{t-1}, sigma^{2}) in running text were meant as maths but
    are shown as typed: they belong in $...$. The API page is exempt (docstrings are plain text)."""
    found = []
    for page in _pages(site):
        if page.name in ("api.html", "genindex.html", "search.html", "py-modindex.html"):
            continue
        parser = _Prose()
        parser.feed(page.read_text(encoding="utf-8"))
        text = " ".join("".join(parser.text).split())
        found += [f"{page.relative_to(site)}: ...{text[max(0, m.start() - 40):m.end() + 20]}..."
                  for m in re.finditer(r"\w[_^]\{", text)]
    assert not found, "TeX outside $...$:\n" + "\n".join(found)

"""Every page of the built book in a real browser (headless Chromium driven by playwright).

The site is served from 127.0.0.1 on a free port; any request to another host is blocked and
fails the test, so this also proves the book works offline. Per page: it renders (title and
heading), loads no missing file and throws no script error. Pages with maths must have it
typeset by MathJax (no raw TeX left in the text). Notebook pages must show their figures
(every <img> decoded, naturalWidth > 0) at a readable width, and every widget must render with
its static figure. A screenshot of each page goes to book/_build/screenshots/.

Uses Debian's chromium at /usr/bin/chromium (`.ci/run` installs it; never `playwright install`).
Without it, or without a built book, the tests skip locally and fail under CI=true.
MMDG_BOOK_SITE=path points the test at another built site.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("MMDG_BOOK_SITE", ROOT / "book" / "_build" / "html"))
SHOTS = SITE.parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VIEWPORT = {"width": 1440, "height": 900}
# A wide figure must get at least this many CSS pixels (or its natural width) at VIEWPORT:
# the theme's default column gave ~790 px; book/_static/mmdg.css gives ~1100 px.
MIN_FIGURE_PX = 1000
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(frac|mathrm|sum|nabla|hat|sqrt|lambda)\b"
                     r"|(?<![\w$])\$[^\s$][^$\n]{0,200}?[^\s$\\]\$(?![\w$])")


def _unavailable(reason: str):
    if CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


def _pages() -> list[str]:
    if not SITE.is_dir():
        return []
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if not p.relative_to(SITE).parts[0].startswith("_"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        _unavailable(f"no built book in {SITE}: run `bash scripts/build_book.sh` first")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(SITE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        _unavailable(f"{CHROMIUM} missing: `apt-get install -y chromium` (.ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright missing: pip install -e '.[dev]'")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


# In the page: wait for MathJax and the widget manager, then report what the checks need.
_INSPECT = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  for (let i = 0; i < 100 && views.length; i++) {  // html-manager renders asynchronously
    if (views.every(v => v.parentElement.querySelector('.jupyter-widgets, .widget-box, .widget-inline-hbox'))) break;
    await new Promise(r => setTimeout(r, 100));
  }
  const imgs = [...document.querySelectorAll('img')];
  for (const img of imgs) { img.loading = 'eager'; }
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  const article = document.querySelector('article') || document.body;
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, mjx-container, script, style, .cell_input, .output.text_plain, .output.stream').forEach(e => e.remove());
  const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  return {
    title: document.title,
    h1: [...article.querySelectorAll('h1')].map(h => h.textContent.trim()),
    mathSource: article.querySelectorAll('.math, .MathJax_Preview').length,
    mathTypeset: article.querySelectorAll('mjx-container').length,
    text: prose.innerText,
    outputImages: article.querySelectorAll('.cell_output img').length,
    images: imgs.map(img => ({src: img.currentSrc.slice(0, 80), complete: img.complete,
      natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
      figure: !!img.closest('.cell_output') && visible(img) && !img.closest('details, .toggle-hidden, .jupyter-widgets')})),
    widgets: views.map(v => {
      const cell = v.closest('.cell') || v.parentElement;
      const rendered = [...cell.querySelectorAll('.jupyter-widgets, .widget-box, .widget-inline-hbox')].filter(visible);
      const pics = [...cell.querySelectorAll('img')].filter(i => i.naturalWidth > 0);
      return {rendered: rendered.length, images: pics.length};
    }),
  };
}"""


@pytest.mark.parametrize("page_path", _pages() or ["index.html"])
def test_page_in_browser(server, browser, page_path):
    blocked, failed, errors = [], [], []
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(120_000)  # generous: CI machines and shared CPUs can be slow
    page = context.new_page()

    def route(r):
        url = urlparse(r.request.url)
        if url.scheme in ("data", "blob", "about") or url.hostname == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}")
            if resp.status >= 400 and not resp.url.endswith("/favicon.ico") else None)
    page.on("requestfailed", lambda req: None if req.url in blocked else failed.append(f"failed {req.url}"))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server}/{page_path}", wait_until="load")
        page.wait_for_load_state("networkidle")
        info = page.evaluate(_INSPECT)
        page.screenshot(path=str(SHOTS / (page_path.replace("/", "_").removesuffix(".html") + ".png")))
        figures = [i for i in info["images"] if i["figure"]]
        if figures:  # a second view where the first figure is, the one a reader looks at
            page.locator(".cell_output img").first.scroll_into_view_if_needed()
            page.mouse.wheel(0, -120)
            page.wait_for_timeout(200)
            page.screenshot(path=str(SHOTS / (page_path.replace("/", "_").removesuffix(".html") + "_figure.png")))
    finally:
        context.close()

    problems = []
    if blocked:
        problems.append(f"requested other hosts (the book must work offline): {blocked[:10]}")
    if failed:
        problems.append(f"failed requests: {failed[:10]}")
    if errors:
        problems.append(f"script errors: {errors[:5]}")
    if not info["title"].strip():
        problems.append("empty <title>")
    if not info["h1"] and page_path not in ("search.html", "genindex.html", "py-modindex.html"):
        problems.append("no heading rendered")
    if info["mathSource"] and not info["mathTypeset"]:
        problems.append(f"{info['mathSource']} math blocks, none typeset by MathJax")
    raw = RAW_TEX.findall(info["text"])
    if raw:
        problems.append(f"raw TeX left in the text: {raw[:5]}")
    if page_path.startswith("notebooks/") and not info["outputImages"]:
        problems.append("a notebook page without figures in its outputs")
    broken = [i["src"] for i in info["images"] if not (i["complete"] and i["natural"] > 0)]
    if broken:
        problems.append(f"images that did not load: {broken[:5]}")
    small = [f"{i['src']}: {i['shown']:.0f} of {i['natural']} px" for i in info["images"]
             if i["figure"] and i["shown"] < min(i["natural"], MIN_FIGURE_PX) - 2]
    if small:
        problems.append(f"figures shrunk at {VIEWPORT['width']} px: {small[:5]}")
    for n, widget in enumerate(info["widgets"]):
        if not widget["rendered"]:
            problems.append(f"widget view {n} did not render (vendored html-manager?)")
        elif not widget["images"]:
            problems.append(f"widget view {n} has no static figure beside it")
    SUMMARY.append({"page": page_path, "images": len(info["images"]), "outputs": info["outputImages"],
                    "figures": sum(i["figure"] for i in info["images"]),
                    "math": info["mathTypeset"], "widgets": len(info["widgets"]), "problems": problems})
    assert not problems, f"{page_path}:\n" + "\n".join(problems)


SUMMARY: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _write_summary():
    """book/_build/screenshots/summary.md: one row per page opened (for the report)."""
    yield
    if not SUMMARY or not SHOTS.is_dir():
        return
    rows = ["| page | images (all decoded) | in cell outputs | checked for width | MathJax elements | widgets | result |",
            "|---|---|---|---|---|---|---|"]
    for r in SUMMARY:
        result = "pass" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])[:200]
        rows.append(f"| {r['page']} | {r['images']} | {r['outputs']} | {r['figures']} | {r['math']} "
                    f"| {r['widgets']} | {result} |")
    total = {k: sum(r[k] for r in SUMMARY) for k in ("images", "outputs", "figures", "math", "widgets")}
    passed = sum(not r["problems"] for r in SUMMARY)
    rows.append(f"| **{len(SUMMARY)} pages** | {total['images']} | {total['outputs']} | {total['figures']} | {total['math']} "
                f"| {total['widgets']} | {passed} passed |")
    (SHOTS / "summary.md").write_text("\n".join(rows) + "\n")

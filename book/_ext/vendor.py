"""Vendor the browser scripts that widget views need, so the built book loads nothing from a CDN.

myst-nb embeds ipywidgets views with RequireJS and the ipywidgets HTML manager, both taken from
cdnjs / jsdelivr by default. This script fetches the two npm packages once (pinned versions,
sha512-checked against the registry's integrity values), and keeps only the files the book
serves in ``book/_vendor/vendor/`` (git-ignored); the ``mmdg_book`` extension copies that folder
into ``_build/html/_static/vendor``. It is idempotent: with the files present it does nothing.

    python book/_ext/vendor.py          # scripts/build_book.sh runs this before every build

It uses ``npm pack`` when npm is installed, otherwise it downloads the same tarball from the
npm registry with the standard library.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent
DEST = BOOK / "_vendor" / "vendor"
STAMP = DEST / "vendor.json"

# name, version, registry tarball, sha512 integrity, {path in the tarball: path under DEST}
PACKAGES = [
    {
        "name": "requirejs",
        "version": "2.3.8",
        "tarball": "https://registry.npmjs.org/requirejs/-/requirejs-2.3.8.tgz",
        "integrity": "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        "files": {"package/require.js": "require.js", "package/package.json": "requirejs.package.json"},
    },
    {
        "name": "@jupyter-widgets/html-manager",
        "version": "1.0.15",
        "tarball": "https://registry.npmjs.org/@jupyter-widgets/html-manager/-/html-manager-1.0.15.tgz",
        "integrity": "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        # embed-amd.js and the icon fonts its bundled CSS loads (relative to the script); each
        # package.json records the version and licence (requirejs: MIT, html-manager: BSD-3-Clause).
        "files": {"package/dist/embed-amd.js": "html-manager/embed-amd.js",
                  "package/package.json": "html-manager/package.json",
                  "package/dist/*.woff2": "html-manager/", "package/dist/*.woff": "html-manager/",
                  "package/dist/*.ttf": "html-manager/", "package/dist/*.eot": "html-manager/",
                  "package/dist/*.svg": "html-manager/"},
    },
]

# Loaded after require.js and before embed-amd.js (our own code, not from npm):
# - the manager's bundled modules are AMD modules that find their assets (icon fonts) relative
#   to their RequireJS module URL, which defaults to the page's folder: map their id to the
#   folder beside this script, which works at any page depth;
# - ipywidgets' controls typeset labels through the MathJax 2 API (MathJax.Hub.Queue) whenever
#   window.MathJax exists, and the book runs MathJax 3: bridge that one call, or every widget
#   with a description throws a TypeError.
SETUP_JS = """// Written by book/_ext/vendor.py: serve the ipywidgets HTML manager's assets locally,
// and let its MathJax 2 calls reach the book's MathJax 3.
(function () {
  var here = new URL("html-manager/", document.currentScript.src).href;
  window.__jupyter_widgets_assets_path__ = here;
  window.require.config({paths: {"@jupyter-widgets/html-manager/dist": here.replace(/\\/$/, "")}});
  function bridge() {
    if (window.MathJax && !window.MathJax.Hub) {
      window.MathJax.Hub = {Queue: function (job) {
        if (window.MathJax.typesetPromise && job && job[2]) { window.MathJax.typesetPromise([job[2]]); }
      }};
    }
  }
  bridge();
  window.addEventListener("load", bridge);
})();
"""
SETUP_NAME = "widgets-setup.js"


def _want() -> dict:
    return {p["name"]: p["version"] for p in PACKAGES}


def is_complete() -> bool:
    """True when every vendored file is in place for the pinned versions."""
    if not STAMP.is_file():
        return False
    try:
        stamp = json.loads(STAMP.read_text())
    except ValueError:
        return False
    return stamp.get("packages") == _want() and SETUP_NAME in stamp.get("files", []) and all((DEST / f).is_file() for f in stamp.get("files", []))


def _check_integrity(data: bytes, integrity: str, name: str) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise RuntimeError(f"{name}: tarball {algo} is {got}, expected {want} (pinned in {__file__})")


def _fetch(pkg: dict) -> bytes:
    spec = f"{pkg['name']}@{pkg['version']}"
    npm = shutil.which("npm")
    if npm:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([npm, "pack", spec, "--silent", "--pack-destination", tmp], check=True,
                           stdout=subprocess.DEVNULL)
            (tgz,) = Path(tmp).glob("*.tgz")
            return tgz.read_bytes()
    with urllib.request.urlopen(pkg["tarball"], timeout=120) as response:  # the npm registry
        return response.read()


def _extract(data: bytes, files: dict[str, str]) -> list[str]:
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for pattern, target in files.items():
            names = sorted(n for n in members if Path(n).match(pattern)) if "*" in pattern else [pattern]
            if not names or names[0] not in members:
                raise RuntimeError(f"{pattern} not found in the tarball")
            for name in names:
                rel = target + Path(name).name if target.endswith("/") else target
                out = DEST / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(members[name]).read())
                written.append(rel)
    return written


def vendor(force: bool = False) -> Path:
    """Fetch and unpack the pinned packages into ``book/_vendor/vendor`` unless already there."""
    if is_complete() and not force:
        return DEST
    tarballs = []  # every download checked before the current copy is removed
    for pkg in PACKAGES:
        data = _fetch(pkg)
        _check_integrity(data, pkg["integrity"], pkg["name"])
        tarballs.append(data)
    shutil.rmtree(DEST, ignore_errors=True)
    DEST.mkdir(parents=True)
    written = []
    for pkg, data in zip(PACKAGES, tarballs):
        written += _extract(data, pkg["files"])
        print(f"[vendor] {pkg['name']}@{pkg['version']} -> {DEST}")
    (DEST / SETUP_NAME).write_text(SETUP_JS)
    written.append(SETUP_NAME)
    STAMP.write_text(json.dumps({"packages": _want(), "files": written}, indent=1) + "\n")
    return DEST


def main(argv: list[str]) -> int:
    """Command line: ``--force`` fetches again. A failed download is one line, not a traceback."""
    try:
        vendor(force="--force" in argv)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:  # URLError is an OSError
        print(f"[vendor] could not vendor the widget scripts into {DEST}: {exc}\n"
              f"[vendor] the first build needs the npm registry (npm pack, or https to registry.npmjs.org); "
              f"offline, copy book/_vendor/ from a checkout that has it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

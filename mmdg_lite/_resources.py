"""Where the shipped artifacts (data/) live, for an editable checkout and an installed wheel.

A wheel carries data/ inside the package as ``mmdg_lite/_data`` (setup.py maps it); a source
checkout, editable installs included, keeps it at the repository root. ``DATA_DIR`` is the first of
the two that exists; where neither does, it is the wheel's location, so an error about a missing
file names where the package data should have been.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["data_path", "DATA_DIR"]

_PACKAGE = Path(__file__).resolve().parent
_CANDIDATES = (_PACKAGE / "_data", _PACKAGE.parent / "data")
DATA_DIR = next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0])


def data_path(*parts: str) -> Path:
    """The path of a shipped artifact, e.g. ``data_path("toy", "mlp_2d")``."""
    return DATA_DIR.joinpath(*parts)

"""Where the shipped artifacts (data/) live, for an editable checkout and an installed wheel.

A wheel carries data/ inside the package as ``mmdg_lite/_data``; a source checkout keeps it at
the repository root. ``data_path`` returns the first of the two that exists.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["data_path", "DATA_DIR"]

_PACKAGE = Path(__file__).resolve().parent
_CANDIDATES = (_PACKAGE / "_data", _PACKAGE.parent / "data")
DATA_DIR = next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[-1])


def data_path(*parts: str) -> Path:
    """The path of a shipped artifact, e.g. ``data_path("toy", "mlp_2d")``."""
    return DATA_DIR.joinpath(*parts)

"""argparse types shared by the ``mmdg`` command, the build scripts and the benchmarks: a bad
value is a usage error (exit status 2) that names the flag and what is valid, not a traceback
after minutes of work."""
from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["integer", "positive_int", "number", "positive_float"]


def integer(minimum: int = 1, maximum: int | None = None, *, maximum_label: str | None = None
            ) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum) (no upper bound when maximum is None)."""
    if maximum is not None:
        what = f"an integer in [{minimum}, {maximum_label or maximum})"
    else:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
        if value < minimum or (maximum is not None and value >= maximum):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
        return value

    return parse


def number(minimum: float = 0.0, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number > minimum (>= with ``inclusive``); nan and inf are refused."""
    what = ("a positive number" if minimum == 0 and not inclusive
            else f"a finite number {'>=' if inclusive else '>'} {minimum:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
        return value

    return parse


positive_int = integer(1)
positive_float = number(0.0)

"""The ``mmdg`` command line (``[project.scripts]`` in pyproject.toml).

    mmdg --help          the subcommands
    mmdg --version
    mmdg info            version, data folder, shipped models and whether each loads

Adding a subcommand: write ``_add_NAME(subparsers)`` that creates its parser and sets
``func=_run_NAME``, write ``_run_NAME(args) -> int`` (the exit status), and list ``_add_NAME``
in ``SUBCOMMANDS``. Imports a subcommand alone needs go inside its ``_run_NAME``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser", "SUBCOMMANDS", "shipped_models"]


def _version() -> str:
    from . import __version__

    return __version__


# --- mmdg info ---------------------------------------------------------------------------------

def shipped_models() -> dict[str, tuple[Path, Callable[[], object]]]:
    """name -> (folder, loader) of every model that ships in data/."""
    from .toys import models

    return {"toy/mlp_2d": (models.TOY_2D_DIR, lambda: models.load_or_train_toy_2d(progress=False)),
            "toy/cond_2d": (models.COND_2D_DIR, lambda: models.load_or_train_cond_2d())}


def _check_sha256(folder: Path) -> str:
    """'sha256 ok' / 'sha256 MISMATCH' against training.json, or '' when it records none."""
    info = folder / "training.json"
    weights = folder / "model.safetensors"
    if not (info.is_file() and weights.is_file()):
        return ""
    try:
        want = json.loads(info.read_text()).get("sha256")
    except ValueError:
        return "training.json unreadable"
    if not want:
        return "no sha256 in training.json"
    have = hashlib.sha256(weights.read_bytes()).hexdigest()
    return "sha256 ok" if have == want else "sha256 MISMATCH with training.json"


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="version, data folder, shipped models and whether each loads",
                              description="Print the version, where the shipped data lives, and load "
                                          "each shipped model (never retraining) to report whether it works.")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from ._resources import DATA_DIR

    print(f"mmdg_lite {_version()}")
    print(f"python    {sys.version.split()[0]}")
    try:
        import torch

        print(f"torch     {torch.__version__}")
    except ImportError:
        print("torch     not installed")
    print(f"data dir  {DATA_DIR}{'' if DATA_DIR.is_dir() else '  (MISSING)'}")
    failures = 0
    for name, (folder, load) in shipped_models().items():
        try:
            load()
            status = "loads"
        except Exception as err:  # report every failure, whatever its kind
            failures += 1
            status = f"FAILS: {type(err).__name__}: {err}"
        extra = _check_sha256(folder)
        print(f"model     {name:<12} {status}{'  (' + extra + ')' if extra else ''}")
    return 1 if failures else 0


# --- the parser --------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdg", description="MMD Guidance toolkit: adapt a diffusion model toward a few "
                                 "reference samples without training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="subcommands", dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmdg`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

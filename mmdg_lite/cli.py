"""The ``mmdg`` command line (``[project.scripts]`` in pyproject.toml).

    mmdg --help          the subcommands
    mmdg --version
    mmdg info            version, data folder, every shipped model and whether it loads

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
from typing import Any

__all__ = ["main", "build_parser", "SUBCOMMANDS", "shipped_models"]


def _version() -> str:
    from . import __version__

    return __version__


# --- mmdg info ---------------------------------------------------------------------------------

Loader = Callable[[], object]


def _loader_for(folder: Path) -> Loader | None:
    """How to load the model folder ``folder`` by its config: a ``save_denoiser`` folder through
    ``load_denoiser``, a diffusers ``save_pretrained`` folder (model or pipeline) through the
    checked ``from_pretrained``; None for a format without a generic loader."""
    from . import _io

    def diffusers_class(name: str) -> Any:
        import diffusers

        return getattr(diffusers, name)

    if (folder / "model_index.json").is_file():
        return lambda: _io.from_pretrained(diffusers_class("DiffusionPipeline"), folder)
    try:
        config = _io.read_json(folder / "config.json")
    except (OSError, ValueError) as err:  # report it when the model is loaded
        def broken(err: Exception = err) -> object:
            raise err
        return broken
    if isinstance(config, dict) and isinstance(config.get("_class_name"), str):
        return lambda: _io.from_pretrained(diffusers_class(config["_class_name"]), folder)
    if isinstance(config, dict) and config.get("class") == "MLPDenoiser":
        from .denoisers import load_denoiser

        return lambda: load_denoiser(folder)
    return None


def shipped_models() -> dict[str, tuple[Path, Loader | None]]:
    """name -> (folder, loader) of every model folder in data/ (a folder with a config.json; a
    diffusers pipeline counts once). The toy models go through their own loaders, which never
    retrain; a loader of None marks a format ``mmdg info`` cannot check generically."""
    from ._resources import DATA_DIR
    from .toys import models

    found: dict[Path, Loader | None] = {
        models.TOY_2D_DIR: lambda: models.load_or_train_toy_2d(progress=False),
        models.COND_2D_DIR: lambda: models.load_or_train_cond_2d()}
    pipelines = [p.parent for p in DATA_DIR.rglob("model_index.json")]
    for config in sorted(DATA_DIR.rglob("config.json")):
        folder = config.parent
        if folder in found or any(root in folder.parents for root in pipelines):
            continue
        found[folder] = _loader_for(folder)
    for folder in pipelines:
        found.setdefault(folder, _loader_for(folder))
    return {_name(folder, DATA_DIR): (folder, load) for folder, load in sorted(found.items())}


def _name(folder: Path, root: Path) -> str:
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return str(folder)


def _check_sha256(folder: Path) -> str:
    """The weights' sha256 against the one training.json records, if both exist."""
    info = folder / "training.json"
    weights = next((w for w in (folder / "model.safetensors", folder / "diffusion_pytorch_model.safetensors")
                    if w.is_file()), None)
    if not info.is_file() or weights is None:
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
    shipped = shipped_models()
    width = max(map(len, shipped), default=0)
    for name, (folder, load) in shipped.items():
        if load is None:
            status = "present (no generic loader for its config; not checked)"
        else:
            try:
                load()
                status = "loads"
            except Exception as err:  # report every failure, whatever its kind
                failures += 1
                status = f"FAILS: {type(err).__name__}: {err}"
        extra = _check_sha256(folder)
        print(f"model     {name:<{width}}  {status}{'  (' + extra + ')' if extra else ''}")
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

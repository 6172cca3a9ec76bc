"""The shipped toy models: the 2-D ring DDPM (notebooks 02-03) and the conditional 2-D model
of the prompt world (notebook 04). Each loads from data/toy/ (``mmdg_lite._resources``; a wheel
carries it) and can be retrained by the recipe that built it (scripts/train_toy_models.py,
train_conditional_toy.py). Loading never retrains silently: a missing model raises.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .._io import ArtifactError
from .._resources import data_path
from .._validation import check_bool, with_overrides
from ..denoisers import MLPDenoiser, load_denoiser
from ..sampling import make_scheduler
from ..seeding import seed_everything
from ..training import train_denoiser
from .mixtures import GaussianMixture, circle_mixture
from .prompt_world import PromptWorld, toy_world

__all__ = ["TOY_2D_DIR", "TOY_2D_RECIPE", "train_toy_2d", "load_or_train_toy_2d",
           "COND_2D_DIR", "COND_2D_RECIPE", "train_cond_2d", "load_or_train_cond_2d"]

TOY_2D_DIR = data_path("toy", "mlp_2d")
# The recipe of the shipped data/toy/mlp_2d (scripts/train_toy_models.py); retraining repeats it.
TOY_2D_RECIPE: dict[str, Any] = {"seed": 0, "n_data": 50_000, "steps": 6000, "batch_size": 256,
                                 "lr": 3e-3, "hidden": 128, "layers": 3}


_recipe = with_overrides  # an unknown key (a typo such as ``step=``) raises a TypeError


def train_toy_2d(progress: bool = True,
                 **overrides: Any) -> tuple[MLPDenoiser, list[float], GaussianMixture, float]:
    """Train the 2-D 8-mode ring model by ``TOY_2D_RECIPE``; returns (model, losses, mixture, seconds)."""
    recipe = _recipe(TOY_2D_RECIPE, overrides, "train_toy_2d")
    mixture = circle_mixture()
    gen = seed_everything(recipe["seed"])  # also fixes the model's initial weights
    data, _ = mixture.sample(recipe["n_data"], gen)  # (N, 2)
    model = MLPDenoiser(2, hidden=recipe["hidden"], layers=recipe["layers"])
    start = time.perf_counter()
    losses = train_denoiser(model, data, make_scheduler("ddpm", 1000, "linear"), steps=recipe["steps"],
                            batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"],
                            progress=progress)
    return model, losses, mixture, time.perf_counter() - start


def _folder(folder: Any, default: Path, retrain: bool = False) -> tuple[Path, bool]:
    """(the folder, whether it is the shipped one)."""
    if folder is None:
        return default, True
    if retrain:  # it was silently ignored: retraining reads no folder and writes none
        raise ValueError(f"folder={str(folder)!r} is where a trained model is loaded from; retrain=True trains "
                         "one in memory and writes nothing: pass one or the other (save the retrained model "
                         "with save_denoiser(model, folder))")
    if not isinstance(folder, (str, Path)):
        raise TypeError(f"folder must be a path (str or Path) to a save_denoiser folder; got {type(folder).__name__}")
    return Path(folder), Path(folder) == default


def _load_shipped(folder: Path, shipped: bool, script: str, loader: str, dim: int,
                  cond_dim: int) -> MLPDenoiser:
    """``load_denoiser(folder)`` for a model of ``dim`` and ``cond_dim``; a missing or damaged model
    says how to rebuild it, never retrains."""
    rebuild = (f"rebuild it with `python scripts/{script}` in a source checkout, or pass "
               f"retrain=True to {loader} to train one now")
    if not (folder / "model.safetensors").is_file():
        where = "the package data is missing or incomplete" if shipped else "is it a save_denoiser folder?"
        raise FileNotFoundError(f"no trained model at {folder / 'model.safetensors'} ({where}); {rebuild}")
    try:
        model = load_denoiser(folder)
    except (FileNotFoundError, ArtifactError) as err:
        raise type(err)(f"{err}; {rebuild}") from err
    got = (model.config.get("dim"), model.config.get("cond_dim", 0))
    if got != (dim, cond_dim):  # e.g. the conditional model handed to the unconditional loader
        raise ArtifactError(f"{folder} holds a model of dim={got[0]}, cond_dim={got[1]}; {loader} needs dim={dim}, "
                            f"cond_dim={cond_dim}")
    return model


def load_or_train_toy_2d(retrain: bool = False, folder: str | Path | None = None,
                         progress: bool = True) -> tuple[MLPDenoiser, GaussianMixture]:
    """The 2-D ring model (DDPM, 1000 linear-beta train steps) and its mixture ``circle_mixture()``.

    Loads ``data/toy/mlp_2d`` (or ``folder``); a missing or damaged model raises an error that
    names the file and how to rebuild it. ``retrain=True`` retrains by the same recipe instead
    (well under a minute on a laptop CPU; in memory, so not with ``folder``).
    """
    retrain, progress = check_bool(retrain, "retrain"), check_bool(progress, "progress")  # "no" would retrain
    folder, shipped = _folder(folder, TOY_2D_DIR, retrain)
    if not retrain:
        return _load_shipped(folder, shipped, "train_toy_models.py", "load_or_train_toy_2d", 2, 0), circle_mixture()
    model, _, mixture, _ = train_toy_2d(progress=progress)
    return model, mixture


COND_2D_DIR = data_path("toy", "cond_2d")
COND_2D_RECIPE: dict[str, Any] = {"seed": 0, "n_data": 60_000, "steps": 5000, "batch_size": 256,
                                  "lr": 3e-3, "hidden": 128, "layers": 3, "cond_dropout": 0.1}


def train_cond_2d(progress: bool = False, **overrides: Any):
    """Train the conditional toy model on ``toy_world()`` (categories uniform, styles at base
    rates, prompt embedding as condition, condition dropout for CFG).
    Returns (model, losses, world, seconds)."""
    recipe = _recipe(COND_2D_RECIPE, overrides, "train_cond_2d")
    world = toy_world()
    gen = seed_everything(recipe["seed"])  # also fixes the model's initial weights
    idx = torch.randint(0, len(world.categories), (recipe["n_data"],), generator=gen)
    prompts = [world.categories[i] for i in idx.tolist()]
    data, _ = world.sample(prompts, gen)  # (N, 2)
    cond = world.encoder().encode(prompts)  # (N, 8)
    model = MLPDenoiser(2, hidden=recipe["hidden"], layers=recipe["layers"], cond_dim=cond.shape[1])
    start = time.perf_counter()
    losses = train_denoiser(model, data, make_scheduler("ddpm"), steps=recipe["steps"],
                            batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"],
                            cond=cond, cond_dropout=recipe["cond_dropout"], progress=progress)
    return model, losses, world, time.perf_counter() - start


def load_or_train_cond_2d(retrain: bool = False, folder: str | Path | None = None,
                          progress: bool = False):
    """(model, world): loads ``data/toy/cond_2d`` (or ``folder``); ``retrain=True`` retrains by
    ``COND_2D_RECIPE`` instead (in memory, so not with ``folder``). A missing or damaged model
    raises (naming the file), never retrains."""
    retrain, progress = check_bool(retrain, "retrain"), check_bool(progress, "progress")
    folder, shipped = _folder(folder, COND_2D_DIR, retrain)
    if not retrain:
        world = toy_world()
        return _load_shipped(folder, shipped, "train_conditional_toy.py", "load_or_train_cond_2d", 2,
                             world.encoder().dim), world
    model, _, world, _ = train_cond_2d(progress=progress)
    return model, world

"""The ``mmdg`` command line (``[project.scripts]`` in pyproject.toml).

    mmdg --help          the subcommands
    mmdg --version
    mmdg info            version, data folder, every shipped model and whether it loads
    mmdg adapt           images from an SD/SDXL pipeline, MMD-guided toward a reference folder

Adding a subcommand: write ``_add_NAME(subparsers)`` that creates its parser and sets
``func=_run_NAME``, write ``_run_NAME(args) -> int`` (the exit status), and list ``_add_NAME``
in ``SUBCOMMANDS``. Imports a subcommand alone needs go inside its ``_run_NAME``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._argtypes import integer, number, positive_int

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
    from .images.features import FEATURE_NET_DIR, load_feature_net
    from .toys import models

    found: dict[Path, Loader | None] = {
        models.TOY_2D_DIR: lambda: models.load_or_train_toy_2d(progress=False),
        models.COND_2D_DIR: lambda: models.load_or_train_cond_2d(),
        FEATURE_NET_DIR: load_feature_net}
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


def _check_sha256(folder: Path) -> tuple[str, bool]:
    """The weights' sha256 against the one training.json records, if both exist: (note, whether
    it is a failure). Weights that differ from the recorded ones, or cannot be read, fail. A
    pipeline folder records one sha256 per weights file (``{"unet/...safetensors": hex}``)."""
    info = folder / "training.json"
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        return "", False
    if not info.is_file():  # said nothing, as if the weights had been checked
        return "no training.json", False
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "training.json unreadable", False
    want = record.get("sha256") if isinstance(record, dict) else None
    if isinstance(want, str):  # one weights file: model.safetensors or the diffusers name
        want = {w.relative_to(folder).as_posix(): want for w in weights if w.parent == folder}
    if not want or not isinstance(want, dict):
        return "no sha256 in training.json", False
    have_files = {w.relative_to(folder).as_posix(): w for w in weights}
    if set(want) != set(have_files):
        return "weights files differ from those training.json records", True
    for rel, expected in want.items():
        try:
            have = hashlib.sha256(have_files[rel].read_bytes()).hexdigest()
        except OSError as err:
            return f"cannot read {rel}: {type(err).__name__}: {err.strerror or err}", True
        if have != expected:
            return "sha256 MISMATCH with training.json", True
    return "sha256 ok", False


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="version, data folder, shipped models and whether each loads",
                              description="Print the version, where the shipped data lives, and load "
                                          "each shipped model (never retraining) to report whether it "
                                          "works; the exit status is 1 if one fails or its weights "
                                          "differ from the sha256 its training.json records.")
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
    _silence_libraries()  # the loaders' own bars and notices would bury the report
    failures = 0
    shipped = shipped_models()
    width = max(map(len, shipped), default=0)
    for name, (folder, load) in shipped.items():
        if load is None:
            status = "present (no generic loader for its config; not checked)"
        else:
            from ._io import MissingExtraError

            try:
                load()
                status = "loads"
            except MissingExtraError as err:  # an optional extra, not a broken model
                status = f"not checked: {err}"
            except Exception as err:  # report every failure, whatever its kind
                failures += 1
                # one line per model: torch's state-dict errors run to a line per tensor
                status = f"FAILS: {type(err).__name__}: {_shorten(' '.join(str(err).split()))}"
        extra, bad_weights = _check_sha256(folder)
        failures += bad_weights
        print(f"model     {name:<{width}}  {status}{'  (' + extra + ')' if extra else ''}")
    return 1 if failures else 0


# --- mmdg adapt --------------------------------------------------------------------------------

class _BadInput(ValueError):
    """Bad command-line input: printed as ``mmdg adapt: error: ...``, exit status 2."""


_seed = integer(0, 2**63, maximum_label="2**63")
_strength = number(0.0, inclusive=True)
_guidance_scale = number(1.0, inclusive=True)  # diffusers runs every scale below 1 as 1 (CFG off)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options that have a real default (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


# --scheduler: the diffusers schedulers guidance is checked to work with (sampling.WORKING_SCHEDULERS)
_SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
               "euler-ancestral": "EulerAncestralDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler"}


def _add_adapt(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt", help="generate images steered toward a folder of reference images (MMD guidance)",
        description="Sample a Stable Diffusion (1.x/2.x) or SDXL pipeline with MMD guidance toward "
                    "a folder of reference images, optionally prompt-aware (one prompt per "
                    "reference). Writes the images, a grid and metrics.json into --out; nothing is "
                    "written when an input is bad.",
        formatter_class=_DefaultsFormatter, allow_abbrev=False)
    p.add_argument("--model", default=None, metavar="PATH_OR_ID",
                   help="a diffusers pipeline folder or a hub id (downloads need network; set "
                        "HF_HUB_OFFLINE=1 to forbid them). Default: the embedded pipeline that ships with "
                        "mmdg_lite (a tiny SD-shaped model of 32x32 shapes; `mmdg info` shows where)")
    p.add_argument("--references", required=True, metavar="DIR",
                   help="folder of reference images (any size/mode; photos turned upright by their EXIF "
                        "tag; resized to the model's resolution)")
    p.add_argument("--fit", default="squash", choices=("squash", "crop", "pad"),
                   help="how a non-square reference becomes square: squash it whole (its aspect ratio "
                        "changes), crop its centred square, or pad it with black bands")
    p.add_argument("--reference-prompts", default=None, metavar="FILE",
                   help="text file, one prompt per reference image in file-name order (names sorted "
                        "as text: 10.png before 2.png; metrics.json lists each file's prompt): turns on "
                        "prompt-aware guidance (product kernel, paper Eq. 10-11, with each prompt's "
                        "weights normalised so every prompt is pulled toward its own references)")
    p.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                   help="the text prompt (repeat the flag for several prompts)")
    p.add_argument("--num-images", type=positive_int, default=4, metavar="N",
                   help="images per prompt (guided jointly as one batch)")
    p.add_argument("--strength", type=_strength, default=1.0, metavar="S",
                   help="guidance strength c >= 0, scale-free: each step moves a sample by 2c times its "
                        "kernel-weighted displacement toward the references (less the batch's own), "
                        "capped (MMDGuidance's default); 0 = the unguided pipeline")
    p.add_argument("--seed", type=_seed, default=0, metavar="K", help="random seed (same seed, same images) (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (must not exist or be empty; its parent must exist)")
    p.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    p.add_argument("--guidance-scale", type=_guidance_scale, default=5.0,
                   help="classifier-free guidance scale >= 1 (1 = off; the pipelines run every value "
                        "below 1 as 1)")
    p.add_argument("--eval-point", default="x_t", choices=("x_t", "x_prev", "x0_hat"),
                   help="where the kernel sees the sample (x0_hat runs through the scheduler-step wrapper)")
    p.add_argument("--scheduler", default="keep", choices=("keep", *_SCHEDULERS),
                   help="the pipeline's own scheduler (keep), or one built from its config; guidance cannot "
                        "run through some (PNDM, Stable Diffusion 1.x's default; Heun; UniPC), which are "
                        "refused before sampling")
    p.add_argument("--baseline", action="store_true",
                   help="also sample unguided with the same seed and report both in metrics.json")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or diffusers notices")
    p.set_defaults(func=_run_adapt)


def _check_adapt_inputs(args: argparse.Namespace) -> tuple[str, Path, list[str] | None, Path]:
    """Validate everything that can be checked before loading a model; nothing is written."""
    from .pipelines.adapt import EMBEDDED_PIPELINE, looks_like_path

    if args.model is None:
        if not (EMBEDDED_PIPELINE / "model_index.json").is_file():
            raise _BadInput(f"--model is required: the embedded pipeline {EMBEDDED_PIPELINE} is not built "
                            "yet (scripts/train_sd_pipeline.py builds it); give a diffusers pipeline "
                            "folder or a hub id")
        model = str(EMBEDDED_PIPELINE)
    else:
        model = args.model
        if looks_like_path(model):
            folder = Path(model).expanduser()
            if not folder.is_dir():
                raise _BadInput(f"--model: {model!r} is not a folder (expected a diffusers pipeline "
                                "folder with model_index.json, or a hub id such as owner/name)")
            if not (folder / "model_index.json").is_file():
                raise _BadInput(f"--model: {model!r} has no model_index.json; it is not a diffusers "
                                "pipeline folder (save one with pipe.save_pretrained)")
            model = str(folder.resolve())  # metrics.json names the folder, wherever it is read from
    refs = Path(args.references).expanduser()
    if not refs.is_dir():
        raise _BadInput(f"--references: {args.references!r} is not a folder of images")
    from .images.references import _dangling, _subfolders

    if not any((p.is_file() or _dangling(p)) and not p.name.startswith(".") for p in refs.iterdir()):
        subfolders = _subfolders(refs)  # a linked folder among them: mmdg adapt reads no subfolder
        raise _BadInput(f"--references: the folder {args.references!r} is empty; put reference images in it"
                        + (f" (its subfolders {subfolders} are not read)" if subfolders else ""))
    prompts = None
    if args.reference_prompts is not None:
        try:
            # utf-8-sig: a byte-order mark (Windows Notepad) is not part of the first prompt
            text = Path(args.reference_prompts).expanduser().read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise _BadInput(f"--reference-prompts: cannot read {args.reference_prompts!r} "
                            f"({type(err).__name__}: {err})") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise _BadInput(f"--reference-prompts: {args.reference_prompts!r} has no prompts (one per line)")
    if any(not p.strip() for p in args.prompt):
        raise _BadInput(f"--prompt: prompts must be non-empty text; got {args.prompt!r}")
    # Read every reference once at a small size before any model loads (an SDXL load takes minutes):
    # unreadable files and a prompt count that does not match are reported now, not after it.
    from .images import load_reference_folder

    try:
        count = len(load_reference_folder(refs, 8, 3, fit=args.fit))
    except (OSError, ValueError) as err:
        raise _BadInput(f"--references: {err}") from None
    if prompts is not None and len(prompts) != count:
        raise _BadInput(f"--reference-prompts: {args.reference_prompts!r} has {len(prompts)} prompts but "
                        f"{args.references!r} has {count} images; give one prompt per reference image, "
                        "in file-name order")
    if not args.out.strip():
        raise _BadInput(f"--out: must name a folder; got {args.out!r}")
    out = Path(args.out).expanduser()
    if out.is_symlink() and not out.exists():
        raise _BadInput(f"--out: {args.out!r} is a link to {os.readlink(out)!r}, which does not exist; "
                        "create that folder, or choose another --out")
    # absolute, so that "." and "./" have a name and a parent; a link to a folder: the folder it names
    out = out.resolve() if out.is_symlink() else Path(os.path.abspath(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _BadInput(f"--out: {args.out!r} already exists and is not an empty folder; choose a new folder")
    if not out.parent.is_dir():
        raise _BadInput(f"--out: the parent folder {str(out.parent)!r} does not exist")
    if args.device is not None:
        from .sampling import _check_device

        try:
            _check_device(args.device)
        except ValueError as e:
            raise _BadInput(f"--device: {e}") from None
    return model, refs, prompts, out


def _partial_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` (results are moved into place only when complete), or
    inside ``out`` when only that existing empty folder is writable (a mount point under /mnt)."""
    import contextlib
    import tempfile

    prefix = f".{out.name}.partial-"
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as err:
        if out.is_dir():
            with contextlib.suppress(OSError):
                return Path(tempfile.mkdtemp(prefix=prefix, dir=out))
        raise _BadInput(f"--out: cannot write in {str(out.parent)!r} ({type(err).__name__}: "
                        f"{err.strerror or err}); choose a folder you can write to") from None


def _run_adapt(args: argparse.Namespace) -> int:
    import shutil

    tmp: Path | None = None
    try:
        model, refs_dir, ref_prompts, out = _check_adapt_inputs(args)
        tmp = _partial_folder(out)  # before the model loads: an unwritable --out fails fast
        from .images import load_reference_folder
        from .images.display import save_grid
        from .images.references import _listed_files
        from .pipelines import encode_images, pipeline_guidance, pipeline_image_size
        from .pipelines.adapt import check_text_to_image, generate, latent_mmd2, load_pipeline

        if args.quiet:  # diffusers' and transformers' own loading bars and notices too
            _silence_libraries()
        try:
            pipe = load_pipeline(model, device=args.device)
        except Exception as err:  # any loading failure: say which model and why
            raise _BadInput(f"--model: cannot load {model!r} as a diffusers pipeline "
                            f"({type(err).__name__}: {_shorten(str(err))})") from None
        try:
            check_text_to_image(pipe)
        except ValueError as err:
            raise _BadInput(f"--model: {model!r}: {err}") from None
        _use_scheduler(pipe, args.scheduler, args.steps, args.eval_point, model)
        size = pipeline_image_size(pipe)
        try:
            images = load_reference_folder(refs_dir, size, 3, fit=args.fit)
        except (OSError, ValueError) as err:
            raise _BadInput(f"--references: {err}") from None
    except BaseException as err:
        if tmp is not None:
            tmp.rmdir()  # nothing was written into it yet
        if not isinstance(err, _BadInput):
            raise
        print(f"mmdg adapt: error: {err}", file=sys.stderr)
        return 2
    try:
        latents = encode_images(pipe, images)
        aware = ref_prompts is not None
        names = [f.name for f in _listed_files(refs_dir)]  # the order load_reference_folder read
        names = dict(zip(names, ref_prompts)) if aware else names  # the pairing, to check by eye
        guidance = pipeline_guidance(pipe, latents, reference_prompts=ref_prompts,
                                     prompts=args.prompt if aware else None,
                                     num_images_per_prompt=args.num_images if aware else 1,
                                     strength=args.strength, eval_point=args.eval_point)
        common = dict(steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                      progress=not args.quiet, size=size)
        guided, seconds = generate(pipe, args.prompt, args.num_images, guidance=guidance, **common)
        metrics: dict[str, Any] = {
            "model": model, "references": str(refs_dir.resolve()),
            "reference_prompts": (str(Path(args.reference_prompts).expanduser().resolve())
                                  if args.reference_prompts is not None else None),
            "prompts": args.prompt, "num_images_per_prompt": args.num_images,
            "strength": args.strength, "seed": args.seed, "steps": args.steps,
            "guidance_scale": args.guidance_scale, "eval_point": args.eval_point,
            "scheduler": type(pipe.scheduler).__name__, "num_references": len(images), "fit": args.fit,
            "prompt_aware": ref_prompts is not None, "image_size": size,
            "reference_files": names,
            "guided": {"seconds": round(seconds, 3), "latent_mmd2": latent_mmd2(pipe, guided, latents)}}
        _save_images(guided, tmp / "images", save_grid, args.num_images)
        if args.baseline:
            plain, base_s = generate(pipe, args.prompt, args.num_images, guidance=None, **common)
            metrics["unguided"] = {"seconds": round(base_s, 3), "latent_mmd2": latent_mmd2(pipe, plain, latents)}
            metrics["time_ratio"] = round(seconds / base_s, 4)
            _save_images(plain, tmp / "unguided", save_grid, args.num_images)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out.exists():  # the user's empty folder (perhaps the current one): fill it, keep it as it is
            for child in tmp.iterdir():
                child.rename(out / child.name)
            tmp.rmdir()
        else:
            tmp.chmod(_folder_mode(out))  # mkdtemp made tmp private (0700)
            tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            print(f"mmdg adapt: error: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        raise
    also = " (and the unguided ones in unguided/, grid_unguided.png)" if args.baseline else ""
    print(f"wrote {len(guided)} image{'s' if len(guided) != 1 else ''}, grid.png and metrics.json{also} to {out}")
    return 0


# how to undo _silence_libraries; main() runs them after the command, so `mmdg info` or `adapt --quiet`
# called from Python (a notebook) no longer silenced diffusers and transformers for the rest of the process
_UNSILENCE: list[Callable[[], None]] = []


def _silence_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging

    libraries = [diffusers_logging]
    try:
        from transformers.utils import logging as transformers_logging
        libraries.append(transformers_logging)
    except ImportError:  # a pipeline without text encoders needs no transformers
        pass
    for lib in libraries:
        level, bar = lib.get_verbosity(), lib.is_progress_bar_enabled()
        _UNSILENCE.append(lambda lib=lib, level=level, bar=bar: (
            lib.set_verbosity(level), lib.enable_progress_bar() if bar else lib.disable_progress_bar()))
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def _unsilence_libraries() -> None:
    while _UNSILENCE:  # the latest first: a second silencing recorded the silenced state
        _UNSILENCE.pop()()


def _use_scheduler(pipe: Any, name: str, steps: int, eval_point: str, model: str) -> None:
    """Replace the pipeline's scheduler (``--scheduler``, from its config), check ``--steps``
    against it and refuse one guidance cannot run through before any work: Stable Diffusion 1.x
    ships PNDM, and the run failed only after the references were encoded and a UNet step ran."""
    import copy
    from types import SimpleNamespace

    import diffusers

    from .sampling import WORKING_SCHEDULERS, check_scheduler

    if name != "keep":
        pipe.scheduler = getattr(diffusers, _SCHEDULERS[name]).from_config(pipe.scheduler.config)
    _check_steps(pipe.scheduler, steps, model)
    trial = copy.deepcopy(pipe.scheduler)
    trial.set_timesteps(steps)
    try:
        check_scheduler(trial, SimpleNamespace(eval_point=eval_point))
    except ValueError as err:
        if type(trial).__name__ in WORKING_SCHEDULERS:  # a working scheduler out of distinct timesteps
            raise _BadInput(f"--steps {steps} ({model!r}): {err}") from None
        raise _BadInput(f"--scheduler {name} ({model!r}): {err}; choose one with --scheduler "
                        f"{', '.join(_SCHEDULERS)}") from None


def _check_steps(scheduler: Any, steps: int, model: str) -> None:
    """--steps must give the scheduler timesteps inside its training range (a steps_offset with
    "leading" spacing shifts them up by one, so 1,000 of 1,000 steps would index past the end)."""
    import copy

    from .pipelines.adapt import _check_first_timestep

    n_train = getattr(scheduler.config, "num_train_timesteps", None)
    if n_train is None or not hasattr(scheduler, "set_timesteps"):
        return

    def fits(k: int) -> bool:
        trial = copy.deepcopy(scheduler)
        try:
            trial.set_timesteps(k)
        except (ValueError, IndexError):
            return False
        return int(trial.timesteps.max()) < int(n_train)

    if steps <= int(n_train) and fits(steps):
        try:  # 'leading' spacing at 1 step: only t = steps_offset, the lowest noise level
            _check_first_timestep(scheduler, steps)
        except ValueError as err:
            raise _BadInput(f"--steps {steps} ({model!r}): {err}") from None
        return
    top = next((k for k in range(min(steps, int(n_train)), 0, -1) if fits(k)), None)
    if top is None:  # fewer steps do not help (PNDM's Runge-Kutta warm-up needs more than 3)
        raise _BadInput(f"--steps {steps}: {type(scheduler).__name__} of {model!r} cannot set up {steps} or fewer "
                        "steps; use more --steps, or another --scheduler")
    raise _BadInput(f"--steps must be at most {top} for {type(scheduler).__name__} of {model!r} "
                    f"(num_train_timesteps {n_train}, steps_offset "
                    f"{getattr(scheduler.config, 'steps_offset', 0)}); got {steps}")


def _shorten(text: str, limit: int = 400) -> str:
    """``text`` up to ``limit`` characters, cut after a sentence or a line, never mid-word."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(". "), head.rfind("\n"))
    if cut < limit // 3:
        cut = head.rfind(" ")
    return head[:cut + 1].rstrip() + " [...]"


def _folder_mode(out: Path) -> int:
    """The permissions a new results folder gets: the umask's, as mkdir would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _save_images(images: Any, folder: Path, save_grid: Callable[..., None], nrow: int) -> None:
    """One PNG per image (N, 3, H, W) in [-1, 1] and the grid, one row per prompt."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    arrays = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    for k, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{k:04d}.png")
    save_grid(images, folder.parent / ("grid.png" if folder.name == "images" else f"grid_{folder.name}.png"),
              nrow=nrow)


# --- the parser --------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_adapt]


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser reports its own unknown arguments, with its own usage (argparse
    passes them up to be reported as ``mmdg: error`` under the top-level usage)."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace, unknown


def build_parser() -> argparse.ArgumentParser:
    """The ``mmdg`` command's argument parser, with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="mmdg", allow_abbrev=False, description="MMD Guidance toolkit: adapt a diffusion model toward a few "
                                 "reference samples without training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(title="subcommands", dest="command", metavar="COMMAND",
                                       parser_class=_SubcommandParser)
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
    try:
        status = int(args.func(args))
        if sys.stdout is not None:  # None when the command runs with stdout closed (>&-)
            sys.stdout.flush()  # a reader that left shows here, not as a traceback at exit
    except BrokenPipeError:  # `mmdg info | head -1`: the rest of the output has no reader
        _discard_stdout()
        return 1
    except KeyboardInterrupt:  # Ctrl-C (adapt has removed its partial folder by now)
        print(f"mmdg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _unsilence_libraries()
    return status


def _discard_stdout() -> None:
    """Point stdout at os.devnull, so that Python's flush at exit does not fail on the closed
    pipe again (the recipe of Python's signal module documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


if __name__ == "__main__":
    sys.exit(main())

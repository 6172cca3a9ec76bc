"""Reading saved models: every failure names the file and says what is wrong with it.

One small set of readers for every loader in the package (``denoisers.load_denoiser``, the image
and diffusers loaders): ``read_config`` (JSON object, allowed and required keys),
``read_safetensors`` (missing, truncated, garbage or non-finite weights), ``load_weights``
(tensors that do not match the model the config builds) and ``from_pretrained`` (a diffusers
folder, checked file by file before diffusers reads it).
"""
from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ArtifactError", "MissingExtraError", "import_optional", "read_json", "read_config", "read_safetensors",
           "check_state_dict", "load_weights", "check_folder", "check_pipeline_folder", "from_pretrained"]

_LFS_POINTER = b"version https://git-lfs"
# files a model component (a folder with config.json) of a diffusers pipeline loads its weights from
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx"})


class ArtifactError(ValueError):
    """A saved file exists but cannot be used; the message names the file and the defect."""


class MissingExtraError(ImportError):
    """A saved model or a module needs a library that is not installed (an optional extra of
    mmdg_lite)."""


def import_optional(module: str, needed_by: str) -> Any:
    """``importlib.import_module(module)`` for a library of the notebooks extra; a missing one raises
    ``MissingExtraError`` naming what needs it and the extra, not a bare ModuleNotFoundError."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        library = (err.name or module).split(".")[0]
        raise MissingExtraError(f"{needed_by} needs {library}, which is not installed: pip install "
                                "'mmdg_lite[notebooks]' (the extra for the notebooks' plots, tables and "
                                "widgets)") from err


def _listing(names: Iterable[Any], limit: int = 8) -> str:
    """``['a', 'b']``, or the first ``limit`` names and how many more."""
    names = sorted(map(str, names))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def _existing_file(path: str | Path, hint: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {where}{'; ' + hint if hint else ''}")
    return path


def read_json(path: str | Path, hint: str = "") -> Any:
    """Parse a JSON file; invalid JSON raises ``ArtifactError`` with the line and column."""
    path = _existing_file(path, hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path}: not a text file ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: "
                            f"{err.msg}") from err


def read_config(path: str | Path, allowed_keys: Iterable[str] | None = None,
                required_keys: Iterable[str] = (), hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path`` whose keys are all in ``allowed_keys`` (None: any) and that
    holds every key of ``required_keys``."""
    config = read_json(path, hint)
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: expected a JSON object of settings, got a JSON "
                            f"{type(config).__name__}")
    if allowed_keys is not None:
        allowed = set(allowed_keys)
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ArtifactError(f"{path}: unknown config keys {unknown}; valid keys are {sorted(allowed)}")
    missing = sorted(set(required_keys) - set(config))
    if missing:
        raise ArtifactError(f"{path}: missing config keys {missing}")
    return config


def _diagnose_safetensors(path: Path) -> str | None:
    """What is structurally wrong with a safetensors file, or None if its layout is sound.

    Layout: 8-byte little-endian header length n, n bytes of JSON header, then the tensor data
    whose end offsets the header lists.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        if fh.read(len(_LFS_POINTER)) == _LFS_POINTER:
            return "a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
        if size < 8:
            return f"truncated: {size} bytes, shorter than the 8-byte header length"
        fh.seek(0)
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            return (f"not a safetensors file (garbage or truncated): its first 8 bytes announce a "
                    f"{n:,}-byte header but the file has {size:,} bytes")
        try:
            header = json.loads(fh.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "not a safetensors file (its header is not a valid safetensors JSON header)"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"truncated: {size:,} bytes, its header describes {expected:,}"
    if size > expected:
        return f"{size - expected:,} unexpected bytes after the tensor data ({size:,} bytes, header describes {expected:,})"
    return None


def read_safetensors(path: str | Path, device: str | torch.device = "cpu", check_finite: bool = True,
                     hint: str = "") -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file; a missing, truncated, garbage or (with
    ``check_finite``) NaN/inf-holding file raises an error that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing_file(path, hint)
    defect = _diagnose_safetensors(path)
    if defect is not None:
        raise ArtifactError(f"{path}: {defect}{'; ' + hint if hint else ''}")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ArtifactError(f"{path}: cannot be read as safetensors: {err}") from err
    if check_finite:
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ArtifactError(f"{path}: tensors {_listing(bad)} hold NaN or inf values")
    return state


def check_state_dict(expected: Mapping[str, Tensor], loaded: Mapping[str, Tensor], weights: str | Path,
                     config: str | Path | None = None) -> None:
    """Raise ``ArtifactError`` unless ``loaded`` has exactly the names and shapes of ``expected``
    (the state of the model built from ``config``)."""
    source = f" (the model built from {config})" if config is not None else ""
    problems = []
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_listing(unexpected)}")
    shapes = [f"{k}: {tuple(loaded[k].shape)} in the file, {tuple(expected[k].shape)} expected"
              for k in sorted(set(expected) & set(loaded)) if loaded[k].shape != expected[k].shape]
    if shapes:
        more = f" and {len(shapes) - 8} more" if len(shapes) > 8 else ""
        problems.append("shape mismatch " + "; ".join(shapes[:8]) + more)
    if problems:
        raise ArtifactError(f"{weights} does not match its config{source}: " + "; ".join(problems))


def load_weights(model: nn.Module, weights: str | Path, config: str | Path | None = None,
                 hint: str = "") -> nn.Module:
    """Load ``weights`` (safetensors) into ``model`` after checking names and shapes. Weights
    saved in one floating dtype (float64, float16, ...) come back in it: the model is cast to it
    first (load_state_dict alone would round them into the model's float32)."""
    state = read_safetensors(weights, hint=hint)
    check_state_dict(model.state_dict(), state, weights, config)
    kinds = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(kinds) == 1:
        model.to(kinds.pop())
    model.load_state_dict(state)
    return model


def check_folder(folder: str | Path, hint: str = "") -> Path:
    """Check every ``*.json`` and ``*.safetensors`` file under ``folder`` (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder{'; ' + hint if hint else ''}")
    for path in sorted(folder.rglob("*.json")):
        read_json(path)
    for path in sorted(folder.rglob("*.safetensors")):
        defect = _diagnose_safetensors(path)
        if defect is not None:
            raise ArtifactError(f"{path}: {defect}{'; ' + hint if hint else ''}")
    return folder


def check_pipeline_folder(folder: str | Path) -> Path:
    """A diffusers pipeline folder: every component its model_index.json names has a non-empty
    folder (a missing tokenizer folder let transformers build an empty tokenizer that failed
    only at sampling), every model component (a folder with config.json) a weights file, and the
    libraries of those components are installed (the text encoder and tokenizer need
    transformers: ``MissingExtraError`` names the extra that brings it)."""
    folder = Path(folder)
    _checked_index(folder)
    return folder


def _checked_index(folder: Path, given: Iterable[str] = ()) -> dict[str, Any]:
    """``check_pipeline_folder``'s checks; the folder's model_index.json, read once. Components in
    ``given`` (passed to from_pretrained, e.g. safety_checker=None) are not read from the folder."""
    index = read_json(folder / "model_index.json")
    if not isinstance(index, dict):
        raise ArtifactError(f"{folder / 'model_index.json'}: not a JSON object")
    given = set(given)
    parts = {name: spec[0] for name, spec in index.items() if not name.startswith("_") and name not in given
             and isinstance(spec, list) and len(spec) == 2 and spec[0] is not None}
    missing = [name for name in parts if not (folder / name).is_dir() or not any((folder / name).iterdir())]
    if missing:
        raise ArtifactError(f"{folder}: model_index.json names the component(s) {_listing(missing)}, but "
                            f"their folders are missing or empty; copy the whole pipeline folder again")
    weightless = [name for name in parts if (folder / name / "config.json").is_file()
                  and not any(p.suffix in _WEIGHT_SUFFIXES for p in (folder / name).iterdir())]
    if weightless:  # diffusers' own error names a .bin file and mentions unsafe serialisation
        raise ArtifactError(f"{folder}: the component(s) {_listing(weightless)} hold a config.json but no "
                            f"weights file ({', '.join(sorted(_WEIGHT_SUFFIXES))}); copy the whole pipeline "
                            "folder again")
    absent = sorted({lib for lib in parts.values() if not _library_installed(lib)})
    if absent:
        raise MissingExtraError(f"{folder}: the pipeline's {_listing(n for n, lib in parts.items() if lib in absent)} "
                                f"need {', '.join(absent)}, which is not installed: pip install "
                                "'mmdg_lite[sd]' (the extra for Stable Diffusion pipelines)")
    _check_tokenizer_files(folder, {name: spec for name, spec in index.items() if name not in given})
    return index


def _library_installed(library: str) -> bool:
    """Whether a component's library in model_index.json can be imported: a package, or a module of
    diffusers' pipelines (SD 1.x records its safety checker's as 'stable_diffusion')."""
    if importlib.util.find_spec(library) is not None:
        return True
    try:
        return importlib.util.find_spec(f"diffusers.pipelines.{library}") is not None
    except ImportError:  # no diffusers
        return False


def _check_tokenizer_files(folder: Path, index: dict[str, Any]) -> None:
    """Every transformers tokenizer component holds its vocabulary: tokenizer.json, or all the
    files its class reads without it (CLIPTokenizer: vocab.json and merges.txt). Without them
    transformers 5 builds a tokenizer of its special tokens alone, which reads every prompt as
    the same unknown tokens, and the pipeline "loads". tokenizer_config.json too: without it the
    prompt length (model_max_length) is 1e30, which the pipelines pad every prompt to."""
    empty, unconfigured = [], []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] != "transformers":
            continue
        import transformers

        names = getattr(getattr(transformers, str(spec[1]), None), "vocab_files_names", None)
        if not isinstance(names, dict):  # not a tokenizer (a text encoder, an image processor)
            continue
        if not (folder / name / "tokenizer_config.json").is_file():
            unconfigured.append(name)
        slow = sorted(set(names.values()) - {"tokenizer.json"})
        if not (folder / name / "tokenizer.json").is_file() and not (
                slow and all((folder / name / f).is_file() for f in slow)):
            empty.append(f"{name} ({spec[1]} needs tokenizer.json{', or ' + ' and '.join(slow) if slow else ''})")
    if empty:
        raise ArtifactError(f"{folder}: the tokenizer component(s) {', '.join(empty)} hold no vocabulary: "
                            "transformers would build a tokenizer of its special tokens alone, the same "
                            "for every prompt; copy the whole pipeline folder again")
    if unconfigured:
        raise ArtifactError(f"{folder}: the tokenizer component(s) {_listing(unconfigured)} have no "
                            "tokenizer_config.json (the prompt length and special tokens): transformers "
                            "would pad every prompt to 1e30 tokens; copy the whole pipeline folder again")


def _is_diffusers_model(cls: Any) -> bool:
    try:
        from diffusers import ModelMixin
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, ModelMixin)


def _is_transformers_model(cls: Any) -> bool:
    if importlib.util.find_spec("transformers") is None:
        return False
    from transformers import PreTrainedModel

    return isinstance(cls, type) and issubclass(cls, PreTrainedModel)


def _pipeline_models(folder: Path, index: dict[str, Any], hint: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's model components (diffusers and transformers models), each loaded on its
    own through the strict ``from_pretrained``: a pipeline's from_pretrained initialises a tensor
    its weights file lacks (at random, or to its default) and loads without an error."""
    models = {}
    for name, spec in index.items():
        if name.startswith("_") or name in kwargs or not isinstance(spec, list) or len(spec) != 2 \
                or spec[0] not in ("diffusers", "transformers"):
            continue
        cls = getattr(importlib.import_module(spec[0]), str(spec[1]), None)
        if _is_diffusers_model(cls) or _is_transformers_model(cls):
            # the variant too: without it a component read the non-variant file (or none) of its folder
            extra = {k: kwargs[k] for k in ("torch_dtype", "variant") if k in kwargs}
            models[name] = from_pretrained(cls, folder / name, hint, **extra)
    return models


def from_pretrained(cls: Any, folder: str | Path, hint: str = "", strict: bool = True,
                    **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, local_files_only=True, **kwargs)`` for a local diffusers
    (or transformers) folder: its JSON and safetensors files are checked first, and any error
    ``from_pretrained`` raises is re-raised as ``ArtifactError`` naming the folder and its files.

    For a diffusers or transformers model class, ``strict`` also rejects weights that do not
    match the config: diffusers itself only warns and initialises missing tensors at random.
    For a pipeline folder, it loads each model component that way and hands them to the pipeline.
    """
    folder = check_folder(folder, hint)
    if (folder / "model_index.json").is_file():
        index = _checked_index(folder, kwargs)
        if strict:
            kwargs = {**_pipeline_models(folder, index, hint, kwargs), **kwargs}
    kwargs.setdefault("local_files_only", True)
    if _is_diffusers_model(cls):  # without accelerate diffusers falls back, with a long warning
        kwargs.setdefault("low_cpu_mem_usage", importlib.util.find_spec("accelerate") is not None)
    strict = strict and (_is_diffusers_model(cls) or _is_transformers_model(cls)) \
        and "output_loading_info" not in kwargs
    name = getattr(cls, "__name__", repr(cls))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    try:
        out = cls.from_pretrained(str(folder), output_loading_info=True, **kwargs) if strict \
            else cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        # the cause first: mmdg shortens a failure to one line, and a pipeline has many files
        raise ArtifactError(f"{folder}: {name}.from_pretrained failed: {type(err).__name__}: {err}"
                            f"{'; ' + hint if hint else ''} (files: {_listing(files)})") from err
    if not strict:
        return out
    model, info = out
    problems = [f"{what.replace('_', ' ')} {_listing(info[what])}"
                for what in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
                if info.get(what)]
    if problems:
        weights = [f for f in files if Path(f).suffix in _WEIGHT_SUFFIXES]
        raise ArtifactError(f"{folder}: the weights in {_listing(weights)} do not match its config.json for {name}: "
                            + "; ".join(problems) + (f"; {hint}" if hint else ""))
    return model

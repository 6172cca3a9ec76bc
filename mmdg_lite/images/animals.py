"""A third real image set: the ``animal-mnist`` wheel's 10,000 28x28 animal silhouettes (MIT).

The wheel stores its arrays as gzipped pickles, and ``pickle.load`` runs whatever a pickle names.
``load_animals`` therefore reads them with ``safe_load_array``, whose unpickler resolves only
numpy's array globals and raises on anything else. The wheel declares tensorflow, which its data does
not need, so install it without dependencies::

    pip install --no-deps animal-mnist
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["AnimalSet", "load_animals", "safe_load_array", "ANIMAL_CLASSES"]

# labels 0..9 in the order the wheel's description lists the classes (checked by eye on a grid per label)
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            # protocol 5 rebuilds arrays from their buffer; protocols 0-2 encode bytes as latin-1 text
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


def _latin1_only(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as numpy's protocol 0-2 pickles use it, and nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}: numpy pickles use latin1")
    return text.encode("latin1", errors)
_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global (a function, a class) raises."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays "
                                         f"({sorted(f'{m}.{n}' for m, n in _ALLOWED)}) are allowed")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_only
        return super().find_class(module, name)


def safe_load_array(data: bytes) -> np.ndarray:
    """The numpy array pickled in ``data`` (gzip-compressed or not), through ``_ArrayUnpickler``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):  # a path: "'PosixPath' object is not subscriptable"
        raise TypeError(f"data must be the pickle's bytes, e.g. Path(file).read_bytes(); got {type(data).__name__}")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out = _ArrayUnpickler(io.BytesIO(data)).load()
    if not isinstance(out, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array; the pickle holds {type(out).__name__}")
    return out


@dataclass
class AnimalSet:
    """The silhouettes and their class labels."""

    images: Tensor  # (N, 1, 28, 28) float32 in [-1, 1]: animals bright on -1 (zebras grey-striped)
    labels: Tensor  # (N,) long, index into ANIMAL_CLASSES

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _package_folder() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("load_animals needs the animal-mnist wheel: pip install --no-deps animal-mnist "
                                  "(or pass folder= with its two .gz files)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def _read(path: Path) -> np.ndarray:
    """``safe_load_array`` of one file; its errors name the file (they said only 'Ran out of
    input' or 'Error -3 while decompressing data', for either of the two)."""
    try:
        return safe_load_array(path.read_bytes())
    except pickle.UnpicklingError as err:  # refused, or not a pickle
        raise pickle.UnpicklingError(f"{path}: {err}") from None
    except (EOFError, OSError, zlib.error, TypeError, ValueError, RuntimeError, AttributeError, IndexError,
            KeyError) as err:  # numpy's own refusals of crafted states (object data from raw bytes) among them
        raise ValueError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); reinstall the data: "
                         "pip install --force-reinstall --no-deps animal-mnist") from None


def load_animals(folder: Path | str | None = None) -> AnimalSet:
    """The 10,000 silhouettes and labels, from ``folder`` (default: the installed wheel's data)."""
    folder = Path(folder) if folder is not None else _package_folder()
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"folder {folder} lacks {missing}; expected the animal-mnist files {list(_FILES)}")
    x, y = (_read(folder / f) for f in _FILES)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"unexpected animal-mnist arrays: images {x.shape}, labels {y.shape}; expected "
                         "(N, 28, 28) images and (N,) labels")
    if x.dtype != np.uint8:  # 0-255 pixels; anything else would map outside [-1, 1]
        raise ValueError(f"animal-mnist images must be uint8 pixels; got dtype {x.dtype}")
    if y.dtype.kind not in "iu" or (len(y) and (int(y.min()) < 0 or int(y.max()) > 9)):
        raise ValueError(f"animal-mnist labels must be integers 0-9; got dtype {y.dtype}"
                         + (f", values {int(y.min())} to {int(y.max())}" if y.dtype.kind in "iu" and len(y) else ""))
    images = torch.from_numpy(x.astype(np.float32) / 255.0 * 2 - 1)[:, None]  # (N, 1, 28, 28)
    return AnimalSet(images=images, labels=torch.from_numpy(y.astype(np.int64)))

"""The animal-mnist loader: a restricted unpickler (numpy arrays only) and the real data."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from mmdg_lite.images import animals
from mmdg_lite.images.animals import ANIMAL_CLASSES, load_animals, safe_load_array


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a hostile pickle does: call an arbitrary function on load
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("compress", [False, True])
def test_safe_unpickler_round_trips_numpy_arrays(compress):
    for a in (np.arange(12, dtype=np.uint8).reshape(3, 4), np.linspace(0, 1, 5), np.array([3, 1], dtype="i8")):
        blob = pickle.dumps(a, protocol=4)
        out = safe_load_array(gzip.compress(blob) if compress else blob)
        assert out.dtype == a.dtype and np.array_equal(out, a)


def test_safe_unpickler_refuses_other_globals_without_running_them(tmp_path):
    target = tmp_path / "created_by_pickle"
    blob = pickle.dumps(_Evil(str(target)))
    assert pickle.loads(blob) is None and target.is_dir()  # plain pickle runs it ...
    target.rmdir()
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|nt|os).mkdir"):
        safe_load_array(blob)
    assert not target.exists()  # ... the safe one does not
    with pytest.raises(pickle.UnpicklingError, match="expected a numpy array; the pickle holds dict"):
        safe_load_array(pickle.dumps({"a": 1}))


def test_load_animals_names_missing_files_and_the_install_command(tmp_path, monkeypatch):
    (tmp_path / "animal_data_version_3.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="animal_label_version_3.gz"):
        load_animals(tmp_path)
    monkeypatch.setattr(animals.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps animal-mnist"):
        load_animals()


def test_load_animals_from_a_folder_of_pickled_arrays(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for name, arr in (("animal_data_version_3.gz", x), ("animal_label_version_3.gz", np.arange(6) % 10)):
        (tmp_path / name).write_bytes(gzip.compress(pickle.dumps(arr)))
    s = load_animals(tmp_path)
    assert s.images.shape == (6, 1, 28, 28) and s.images.dtype == torch.float32
    torch.testing.assert_close(s.images[:, 0], torch.from_numpy(x).float() / 255 * 2 - 1)
    assert s.labels.tolist() == list(range(6))


def test_the_installed_wheel_holds_10000_silhouettes_in_10_balanced_classes():
    pytest.importorskip("animal_mnist", exc_type=ImportError)
    s = load_animals()
    assert len(s) == 10_000 and s.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(s.labels, minlength=len(ANIMAL_CLASSES)).tolist() == [1000] * 10
    assert float(s.images.min()) == -1.0 and float(s.images.max()) == 1.0
    ink = (s.images > 0).float().mean((1, 2, 3))  # silhouettes: some but not most pixels are ink
    assert 0.05 < float(ink.median()) < 0.6


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_unpickler_reads_every_protocol_numpy_writes(protocol):
    # protocols 0-2 (latin-1 text via _codecs.encode) and 5 (_frombuffer) were refused as "globals"
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(safe_load_array(pickle.dumps(a, protocol=protocol)), a)


def test_safe_unpickler_allows_codecs_only_for_latin1():
    import codecs

    class Rot13:
        def __reduce__(self):
            return (codecs.encode, ("payload", "rot13"))
    with pytest.raises(pickle.UnpicklingError, match="refusing _codecs.encode with encoding 'rot13'"):
        safe_load_array(pickle.dumps(Rot13(), protocol=2))


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((5, 28, 28), np.uint8), np.zeros((5, 3), np.int64), r"expected \(N, 28, 28\) images and \(N,\) labels"),
    (np.zeros((5, 28, 28), np.uint8), np.full(5, -7.9), "labels must be integers 0-9; got dtype float64"),
    (np.zeros((5, 28, 28), np.uint8), np.full(5, 12), "labels must be integers 0-9; got dtype int64, values 12 to 12"),
    (np.full((5, 28, 28), 1000.0), np.zeros(5, np.int64), "images must be uint8 pixels; got dtype float64"),
])
def test_load_animals_checks_labels_and_pixels(tmp_path, images, labels, match):
    # (5, 3) labels, -7.9 read as class -7, pixels of 1000 read as 6.84 in "[-1, 1]": all loaded
    for name, arr in zip(animals._FILES, (images, labels)):
        (tmp_path / name).write_bytes(gzip.compress(pickle.dumps(arr, protocol=4)))
    with pytest.raises(ValueError, match=match):
        load_animals(folder=tmp_path)


class _ObjectFromBytes:
    def __reduce__(self):  # an object array whose pointers come from raw bytes: numpy refuses it (TypeError)
        _reconstruct = np.zeros(1).__reduce__()[0]  # what numpy pickles its arrays with

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype("O"), False, b"AAAAAAAA"))


def test_load_animals_names_the_file_that_is_corrupt_or_refused(tmp_path):
    """A truncated or corrupt file, or a hostile pickle, in the folder: the error names which of
    the two files (it said 'Ran out of input', or raised zlib.error, for either), and the hostile
    one is still refused without running."""
    labels = gzip.compress(pickle.dumps(np.zeros(3, np.int64)))
    data = gzip.compress(pickle.dumps(np.zeros((3, 28, 28), np.uint8)))
    target = tmp_path / "created_by_pickle"
    for blob, error, match in ((b"", ValueError, "truncated or corrupt"),
                               (data[: len(data) // 2], ValueError, "truncated or corrupt"),
                               (b"\x1f\x8b\x08\x00" + bytes(range(40)), ValueError, "truncated or corrupt"),
                               (pickle.dumps(_ObjectFromBytes()), ValueError, "truncated or corrupt"),
                               (gzip.compress(pickle.dumps(_Evil(str(target)))), pickle.UnpicklingError,
                                "refusing to load global")):
        (tmp_path / "animal_data_version_3.gz").write_bytes(blob)
        (tmp_path / "animal_label_version_3.gz").write_bytes(labels)
        with pytest.raises(error, match=f"animal_data_version_3.gz.*{match}"):
            load_animals(tmp_path)
    assert not target.exists()


def test_safe_load_array_names_a_path_passed_for_the_bytes(tmp_path):
    f = tmp_path / "a.gz"
    f.write_bytes(gzip.compress(pickle.dumps(np.arange(3, dtype=np.uint8))))
    for bad in (f, str(f)):  # "'PosixPath' object is not subscriptable", "a bytes-like object is required"
        with pytest.raises(TypeError, match=r"data must be the pickle's bytes, e.g. Path\(file\).read_bytes\(\)"):
            safe_load_array(bad)
    for ok in (f.read_bytes(), bytearray(f.read_bytes()), memoryview(f.read_bytes())):
        assert safe_load_array(ok).tolist() == [0, 1, 2]

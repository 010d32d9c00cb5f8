"""fwedge.data: sources, preprocessing, streaming, seeded sampling and bad input."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from fwedge.data import Preprocess, check_batch_shape, open_dataset, read_idx
from fwedge.errors import DataError


def _write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.fixture
def idx_pair(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, 20, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, compress=True)
    return tmp_path / "train-images-idx3-ubyte.gz", images, labels


def test_idx_read_subset_and_labels(idx_pair):
    path, images, labels = idx_pair
    np.testing.assert_array_equal(read_idx(path, [1, 4, 19]), images[[1, 4, 19]])
    dataset = open_dataset(path)
    assert dataset.num_samples == 20 and dataset.has_labels
    spec = Preprocess(color="grayscale", layout="NCHW")
    batches = list(dataset.batches(spec, batch_size=8))
    assert [len(b.x) for b in batches] == [8, 8, 4]
    x = np.concatenate([b.x for b in batches])
    np.testing.assert_allclose(x[:, 0], images.astype(np.float32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b.y for b in batches]), labels)


def test_seeded_sampling_is_deterministic(idx_pair):
    dataset = open_dataset(idx_pair[0])
    first = dataset.select(limit=7, seed=3)
    assert np.array_equal(first, dataset.select(limit=7, seed=3))
    assert not np.array_equal(first, dataset.select(limit=7, seed=4))
    assert np.all(np.diff(first) > 0)


def test_more_samples_than_available(idx_pair):
    with pytest.raises(DataError, match=r"25 samples requested.*only 20"):
        open_dataset(idx_pair[0]).select(limit=25)


def test_truncated_idx(tmp_path):
    images = np.zeros((4, 3, 3), np.uint8)
    path = tmp_path / "bad-images-idx3-ubyte"
    _write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"bad-images-idx3-ubyte.*truncated at record 3"):
        read_idx(path)


@pytest.mark.fashion_mnist
def test_fashion_mnist_named_source():
    dataset = open_dataset("fashion-mnist:test")
    assert dataset.num_samples == 10000 and dataset.has_labels
    batch = next(dataset.batches(Preprocess(resize=(28, 28), color="grayscale"), batch_size=4))
    assert batch.x.shape == (4, 1, 28, 28) and batch.x.dtype == np.float32
    assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    dataset = open_dataset(tmp_path)
    assert dataset.class_names == ["cat", "dog"] and dataset.num_samples == 6
    spec = Preprocess(resize=(8, 8), color="rgb", layout="NHWC", mean=(0.5,), std=(0.5,))
    batch = next(dataset.batches(spec, batch_size=6))
    assert batch.x.shape == (6, 8, 8, 3)
    assert list(batch.y) == [0, 0, 0, 1, 1, 1]
    assert -1.0 <= batch.x.min() and batch.x.max() <= 1.0


def test_image_folder_mixed_sizes_need_resize(tmp_path):
    Image.new("L", (5, 5)).save(tmp_path / "a.png")
    Image.new("L", (7, 4)).save(tmp_path / "b.png")
    dataset = open_dataset(tmp_path)
    with pytest.raises(DataError, match="differ in size"):
        next(dataset.batches(Preprocess(), batch_size=2))
    batch = next(dataset.batches(Preprocess(resize=(6, 6), color="grayscale"), batch_size=2))
    assert batch.x.shape == (2, 1, 6, 6)


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no images found"):
        open_dataset(tmp_path / "empty")


def test_npz_with_labels_and_nan(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)
    x[6, 0, 1, 2] = np.nan
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(10))
    dataset = open_dataset(tmp_path / "data.npz")
    assert dataset.has_labels
    with pytest.raises(DataError, match=r"data\.npz.*sample 6.*NaN or Inf"):
        list(dataset.batches(batch_size=4))


def test_npy_refuses_pickles(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy.*without pickle"):
        open_dataset(tmp_path / "objects.npy")


def test_wrong_shape_names_file_and_shapes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.float32))
    batch = next(open_dataset(tmp_path / "x.npy").batches(batch_size=3))
    with pytest.raises(DataError, match=r"x\.npy.*'input' expects shape \[N,1,28,28\], got \[N,28,28\]"):
        check_batch_shape(batch.x, ["N", 1, 28, 28], str(tmp_path / "x.npy"), "input")


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*not found"):
        open_dataset(tmp_path / "nowhere")


def test_preprocess_round_trip():
    spec = Preprocess(resize=(28, 28), color="grayscale", mean=(0.5,), std=(0.25,))
    assert Preprocess.from_dict(spec.to_dict()) == spec
    with pytest.raises(DataError, match="unknown keys"):
        Preprocess.from_dict({"colour": "rgb"})


def test_idx_batches_continue_one_stream(idx_pair, monkeypatch):
    """Successive batches read forward through one handle instead of reopening the gzip file."""
    import fwedge.data as data_module

    opened = []
    real_open = data_module._open_maybe_gzip
    monkeypatch.setattr(data_module, "_open_maybe_gzip", lambda path: opened.append(path) or real_open(path))
    path, images, labels = idx_pair
    dataset = open_dataset(path)
    opened.clear()
    x = np.concatenate([b.x for b in dataset.batches(Preprocess(color="grayscale"), batch_size=3, limit=11, seed=1)])
    chosen = dataset.select(limit=11, seed=1)
    np.testing.assert_allclose(x[:, 0], images[chosen].astype(np.float32) / 255.0, rtol=1e-6)
    # Per file: one open to read the header, one for the stream; not one per batch (4 batches).
    assert len(opened) == 4, f"opened {len(opened)} times"

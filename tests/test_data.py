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
    # The header declares more records than the file holds: refused before any record is read.
    with pytest.raises(DataError, match=r"bad-images-idx3-ubyte.*declares 4 records.*holds only 47 bytes"):
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


# --------------------------------------------------------------------------------------------
# Hostile data: one DataError line and exit 2, declared sizes checked before allocating
# --------------------------------------------------------------------------------------------

import os
import stat
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

from click.testing import CliRunner

from fwedge.cli import cli

FWEDGE = str(Path(sys.executable).parent / "fwedge")
# Address-space cap for CLI runs that, unfixed, would try to allocate gigabytes: the run fails
# fast instead of taking the machine's memory. Python + numpy + onnxruntime fit well under it.
CLI_MEMORY_CAP = 3 << 30


def _tiny_model(tmp_path, metadata: dict | None = None) -> Path:
    from fwedge import ir
    from tests.helpers import tiny_conv_model

    model = tiny_conv_model()
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return ir.save(model, tmp_path / "m.onnx")


def _one_line_error(result, *fragments: str) -> str:
    """Assert a CliRunner result is exit 2 with one `error:` line holding every fragment."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _capped_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed `fwedge` in a child with a capped address space."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (CLI_MEMORY_CAP, CLI_MEMORY_CAP))

    return subprocess.run([FWEDGE, *args], capture_output=True, text=True, timeout=timeout, preexec_fn=cap)


def _assert_capped_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit {done.returncode}:\n{done.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


_X = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
_Y = np.arange(6, dtype=np.int64) % 3
BAD_ARRAYS = {
    # name: (arrays, fragment of the message)
    "scalar_y": ({"x": _X, "y": np.array(3)}, "labels 'y'"),
    "string_y": ({"x": _X, "y": np.array(["cat"] * 6)}, "labels 'y'"),
    "two_d_y": ({"x": _X, "y": np.zeros((6, 2), np.int64)}, "labels 'y'"),
    "fractional_y": ({"x": _X, "y": np.full(6, 1.5)}, "labels 'y'"),
    "nan_y": ({"x": _X, "y": np.full(6, np.nan)}, "labels 'y'"),
    "negative_y": ({"x": _X, "y": -np.ones(6, np.int64)}, "negative"),
    "string_x": ({"x": np.array([["a"] * 3] * 6), "y": _Y}, "'x'"),
    "complex_x": ({"x": _X.astype(np.complex64), "y": _Y}, "complex"),
    "scalar_x": ({"x": np.array(1.0), "y": _Y}, "'x'"),
    "uint8_nchw": ({"x": (_X * 255).astype(np.uint8), "y": _Y}, "HWC"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_are_one_line_errors_through_the_cli(case, tmp_path):
    arrays, fragment = BAD_ARRAYS[case]
    np.savez(tmp_path / f"{case}.npz", **arrays)
    result = CliRunner().invoke(cli, ["eval", str(_tiny_model(tmp_path)), "--data", str(tmp_path / f"{case}.npz")])
    _one_line_error(result, f"{case}.npz", fragment)


def test_bad_labels_in_idx_are_refused(tmp_path):
    images = np.zeros((4, 8, 8), np.uint8)
    _write_idx(tmp_path / "t-images-idx3-ubyte", images)
    _write_idx(tmp_path / "t-labels-idx1-ubyte", np.array([0, 1, -2, 1], np.int8))
    with pytest.raises(DataError, match=r"t-labels-idx1-ubyte.*negative"):
        list(open_dataset(tmp_path / "t-images-idx3-ubyte").batches(batch_size=2))
    _write_idx(tmp_path / "u-images-idx3-ubyte", images)
    _write_idx(tmp_path / "u-labels-idx1-ubyte", np.zeros((4, 2), np.uint8))
    with pytest.raises(DataError, match=r"u-labels-idx1-ubyte.*one label per sample"):
        open_dataset(tmp_path / "u-images-idx3-ubyte")


def test_zero_dim_idx_is_one_line_error(tmp_path):
    (tmp_path / "z-images-idx3-ubyte").write_bytes(bytes([0, 0, 0x08, 0]))
    result = CliRunner().invoke(cli, ["eval", str(_tiny_model(tmp_path)), "--data", str(tmp_path / "z-images-idx3-ubyte")])
    _one_line_error(result, "z-images-idx3-ubyte", "dimension")


@pytest.mark.parametrize("command", ["eval", "calibrate"])
@pytest.mark.parametrize("size", ["0", "-3"])
def test_batch_size_must_be_positive(command, size, tmp_path):
    np.savez(tmp_path / "d.npz", x=_X, y=_Y)
    args = [command, str(_tiny_model(tmp_path)), "--data", str(tmp_path / "d.npz"), "--batch-size", size]
    if command == "calibrate":
        args += ["--num-samples", "4", "-o", str(tmp_path / "t.json")]
    _one_line_error(CliRunner().invoke(cli, args), "batch size", size)


def test_idx_claiming_four_billion_samples_is_refused_before_allocating(tmp_path):
    # 48 bytes: a header for 2^32-1 images of 8x8 and 32 bytes of data.
    path = tmp_path / "huge-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2**32 - 1, 8, 8) + b"\0" * 32)
    labels = tmp_path / "huge-labels-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2**32 - 1) + b"\0" * 40)
    with pytest.raises(DataError, match=r"huge-images-idx3-ubyte.*declares 4294967295 records.*48 bytes"):
        open_dataset(path)
    gz = tmp_path / "huge-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=r"huge-images-idx3-ubyte.gz.*declares 4294967295 records"):
        open_dataset(gz, labels=labels)
    _assert_capped_error(_capped_cli(["eval", str(_tiny_model(tmp_path)), "--data", str(path)]),
                         "huge-images-idx3-ubyte", "declares")


def _npy_bytes(shape: tuple, payload: bytes) -> bytes:
    """An .npy (format 1.0, float32) that declares `shape` and holds `payload`."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_npz_claiming_a_trillion_elements_is_refused_before_allocating(compress, tmp_path):
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", _npy_bytes((10**12, 1, 8, 8), b"\0" * 64))
    with pytest.raises(DataError, match=r"claims.npz.*'x'.*declares"):
        open_dataset(path)
    _assert_capped_error(_capped_cli(["eval", str(_tiny_model(tmp_path)), "--data", str(path)]), "claims.npz")


def test_npz_zip_bomb_beyond_the_data_limit_is_refused(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((4096, 1, 64, 64), np.float32), y=np.zeros(4096, np.int64))
    assert path.stat().st_size < 1 << 20  # 64 MiB of zeros in well under a MiB
    env = dict(os.environ, FWEDGE_MAX_DATA_BYTES=str(32 << 20))
    done = subprocess.run([FWEDGE, "eval", str(_tiny_model(tmp_path)), "--data", str(path), "--limit", "10"],
                          capture_output=True, text=True, timeout=120, env=env)
    _assert_capped_error(done, "bomb.npz", "FWEDGE_MAX_DATA_BYTES")


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_limited_npz_read_streams_only_the_needed_rows(compress, tmp_path):
    import tracemalloc

    rows = 4096
    x = np.random.default_rng(1).random((rows, 1, 8, 64), dtype=np.float32)  # 8 MiB
    path = tmp_path / "big.npz"
    (np.savez_compressed if compress else np.savez)(path, x=x, y=np.arange(rows) % 3)
    dataset = open_dataset(path)
    wanted = dataset.select(limit=10, seed=0)
    tracemalloc.start()
    try:
        batches = list(dataset.batches(None, batch_size=4, limit=10, seed=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x[wanted])
    np.testing.assert_array_equal(np.concatenate([b.y for b in batches]), (np.arange(rows) % 3)[wanted])
    assert peak < x.nbytes // 4, f"reading 10 of {rows} rows peaked at {peak} bytes"


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height 8-bit grayscale and holds one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [100_000, 12_000])
def test_decompression_bomb_png_is_a_data_error(side, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _png_header_only(folder / "bomb.png", side, side)
    Image.new("L", (8, 8)).save(folder / "fine.png")
    model = _tiny_model(tmp_path, {"fwedge.preprocess": '{"resize": [8, 8], "color": "grayscale"}'})
    done = _capped_cli(["eval", str(model), "--data", str(folder), "--reference", str(model)])
    _assert_capped_error(done, "bomb.png", "pixels")


@pytest.mark.parametrize("resize", [[100000, 100000], [0, 8], [8, -1], [8], ["8", "a"], [True, 8], 5, [8.5, 8]])
def test_preprocess_resize_must_be_sane(resize):
    with pytest.raises(DataError, match="resize"):
        Preprocess.from_dict({"resize": resize})


@pytest.mark.parametrize("bad", [{"scale": float("nan")}, {"mean": [float("inf")]}, {"std": "x"},
                                 {"dtype": "complex64"}, {"dtype": "object"}, {"layout": 3}, {"mean": [0.0, 0.0]},
                                 {"std": [1.0, 1.0, 1.0, 1.0]}])
def test_preprocess_values_are_checked(bad):
    with pytest.raises(DataError, match="preprocess"):
        Preprocess.from_dict(bad)


def test_model_metadata_with_a_huge_resize_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.zeros(2, np.int64))
    model = _tiny_model(tmp_path, {"fwedge.preprocess": '{"resize": [100000, 100000], "color": "grayscale"}'})
    _assert_capped_error(_capped_cli(["eval", str(model), "--data", str(tmp_path / "d.npz")]),
                         "fwedge.preprocess", "resize")
    model = _tiny_model(tmp_path, {"fwedge.preprocess": "[1, 2]"})
    _one_line_error(CliRunner().invoke(cli, ["eval", str(model), "--data", str(tmp_path / "d.npz")]),
                    "fwedge.preprocess")


def _release_fifo_later(path: Path, delay: float = 5.0) -> threading.Thread:
    """Open the FIFO's write end after `delay` so that a reader blocked on it cannot hang the test."""
    def release():
        import time

        time.sleep(delay)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_fifo_in_an_image_folder_is_refused(tmp_path):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "a.png")
    os.mkfifo(folder / "b.png")
    _release_fifo_later(folder / "b.png")
    result = CliRunner().invoke(cli, ["eval", str(_tiny_model(tmp_path)), "--data", str(tmp_path / "images")])
    _one_line_error(result, "b.png", "not a regular file")


def test_image_replaced_by_a_fifo_after_listing_is_refused_without_blocking(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "b.png")
    dataset = open_dataset(tmp_path)
    (tmp_path / "b.png").unlink()
    os.mkfifo(tmp_path / "b.png")
    _release_fifo_later(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png.*not a regular file"):
        list(dataset.batches(Preprocess(color="grayscale"), batch_size=1))


@pytest.mark.parametrize("name", ["x.npy", "x.npz", "x.png", "t-images-idx3-ubyte"])
def test_a_fifo_or_device_as_the_data_file_is_refused(name, tmp_path):
    os.mkfifo(tmp_path / name)
    _release_fifo_later(tmp_path / name)
    with pytest.raises(DataError, match="not a regular file"):
        open_dataset(tmp_path / name)
    with pytest.raises(DataError, match="not a regular file"):
        open_dataset("/dev/zero")


def test_npz_of_an_unsupported_zip_version_is_a_data_error(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, x=_X, y=_Y)
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 6 : central + 8] = struct.pack("<H", 255)  # "version needed to extract" 25.5
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"v\.npz"):
        open_dataset(path)

"""Datasets for calibration and evaluation: image folders, .npy/.npz arrays and IDX files, streamed."""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# The file checks and RecordReader live in fwedge/data_files.py, Preprocess in fwedge/preprocess.py
# and the .npy/.npz readers in fwedge/data_arrays.py. Their public names are re-exported here, so
# `from fwedge.data import ...` stays the one import for all of them.
from fwedge.data_arrays import ArrayEntry, _array_reader, read_array_entry  # noqa: F401
from fwedge.data_files import (  # noqa: F401
    _REAL_KINDS, DEFAULT_MAX_DATA_BYTES, DEFLATE_MAX_RATIO, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE,
    RecordReader, _ClosingStream, _open_regular, _require_regular, max_data_bytes,
)
from fwedge.errors import DataError
from fwedge.preprocess import Preprocess, _is_int, check_batch_shape, preprocess_from_metadata  # noqa: F401

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")

# IDX type codes (LeCun's MNIST file format): 0x08 ubyte ... 0x0E double, stored big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def _open_maybe_gzip(path: Path):
    handle = _open_regular(path, "IDX file")
    magic = handle.read(2)
    handle.seek(0)
    return gzip.GzipFile(fileobj=handle, mode="rb") if magic == b"\x1f\x8b" else handle


@dataclass(frozen=True)
class IdxHeader:
    """Header of an IDX file: element dtype, full shape and the byte offset of the data."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def _close_gzip(handle) -> None:
    inner = getattr(handle, "fileobj", None)
    handle.close()
    if inner is not None:
        inner.close()


def read_idx_header(path: str | os.PathLike) -> IdxHeader:
    """Read the header of an IDX (or IDX.gz) file and check what it declares against the file.

    Raises:
        DataError: the file is missing or not regular, is not an IDX file, has no dimensions or
            empty records, or declares more data than the file (or FWEDGE_MAX_DATA_BYTES) holds.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"IDX file '{path}': not found")
    size = _require_regular(path, "IDX file").st_size
    try:
        handle = _open_maybe_gzip(path)
        compressed = isinstance(handle, gzip.GzipFile)
        try:
            head = handle.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"IDX file '{path}': bad magic {head!r}, expected 00 00 <type> <ndim>")
            ndim = head[3]
            dims = handle.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise DataError(f"IDX file '{path}': truncated header")
        finally:
            _close_gzip(handle) if compressed else handle.close()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file '{path}': cannot read ({exc})") from exc
    if ndim == 0:
        raise DataError(f"IDX file '{path}': declares 0 dimensions, expected at least 1 (the record count)")
    shape = struct.unpack(">" + "I" * ndim, dims)
    header = IdxHeader(_IDX_DTYPES[head[2]], tuple(shape), 4 + 4 * ndim)
    record = int(np.prod(shape[1:], dtype=object)) * header.dtype.itemsize
    if record == 0:
        raise DataError(f"IDX file '{path}': records of shape {list(shape[1:])} are empty")
    declared = header.offset + shape[0] * record
    what = f"IDX file '{path}': declares {shape[0]} records of shape {list(shape[1:])} ({declared} bytes)"
    if compressed:
        if declared > size * DEFLATE_MAX_RATIO:
            raise DataError(f"{what}, more than a gzip file of {size} bytes can hold")
        if declared > max_data_bytes():
            raise DataError(f"{what}, beyond FWEDGE_MAX_DATA_BYTES={max_data_bytes()}")
    elif declared > size:
        raise DataError(f"{what}, but the file holds only {size} bytes")
    return header


class IdxReader(RecordReader):
    """Reads records of an IDX (or IDX.gz) file (see RecordReader)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header = read_idx_header(self.path)
        super().__init__(f"IDX file '{self.path}'", self._open, self.header.offset, self.header.dtype,
                         self.header.shape[1:], self.header.shape[0])

    def _open(self):
        handle = _open_maybe_gzip(self.path)
        if isinstance(handle, gzip.GzipFile):
            return _ClosingStream(handle, handle.fileobj)
        return handle


def read_idx(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Read records of an IDX file (optionally only `indices`, which must be sorted ascending).

    Raises:
        DataError: the file is missing, not IDX, or shorter than its header says.
    """
    reader = IdxReader(path)
    try:
        return reader.read(indices)
    finally:
        reader.close()


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch: model-ready inputs, labels (or None) and the source sample indices."""

    x: np.ndarray
    y: np.ndarray | None
    indices: np.ndarray


@dataclass
class Dataset:
    """A source of samples. `kind` is "idx", "images" or "arrays".

    Raw images are HWC uint8; arrays of another dtype are taken as model-ready tensors and are
    passed through unchanged (only cast), so the preprocessing spec applies to images only.
    """

    path: Path
    kind: str
    num_samples: int
    labels_path: Path | None = None
    class_names: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    file_labels: list[int] = field(default_factory=list)
    array_keys: tuple[str | None, str | None] = ("x", None)
    _readers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.labels_path is not None or bool(self.file_labels) or (
            self.kind == "arrays" and self.array_keys[1] is not None)

    def select(self, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """Indices of the samples to use: all, or a seeded random subset (sorted).

        Raises:
            DataError: `limit` is larger than the dataset.
        """
        if limit is None or limit == self.num_samples:
            return np.arange(self.num_samples)
        if limit <= 0:
            raise DataError(f"data '{self.path}': sample count must be positive, got {limit}")
        if limit > self.num_samples:
            raise DataError(
                f"data '{self.path}': {limit} samples requested, but it holds only {self.num_samples}"
            )
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.num_samples, size=limit, replace=False))

    def fingerprint(self, indices: np.ndarray) -> str:
        """A sha256 over the source identity and the selected indices."""
        digest = hashlib.sha256()
        digest.update(str(self.path.resolve()).encode())
        stat = self.path.stat()
        digest.update(f"{stat.st_size}:{self.kind}:{self.num_samples}".encode())
        digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
        return digest.hexdigest()

    # -- raw access ---------------------------------------------------------------------------

    def _reader(self, key) -> RecordReader:
        if key not in self._readers:
            if self.kind == "idx":
                self._readers[key] = IdxReader(key)
            else:
                self._readers[key] = _array_reader(self.path, key)
        return self._readers[key]

    def close(self) -> None:
        """Close open file handles (record readers); batches() does this when it finishes."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def _read_raw(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.kind == "idx":
            x = self._reader(self.path).read(indices)
            if x.ndim == 3:
                x = x[..., None]
            y = None
            if self.labels_path:
                y = _checked_labels(self._reader(self.labels_path).read(indices), f"IDX labels '{self.labels_path}'")
            return x, y
        if self.kind == "images":
            images = [_load_image(self.files[i]) for i in indices]
            y = np.asarray([self.file_labels[i] for i in indices], dtype=np.int64) if self.file_labels else None
            if len({image.shape for image in images}) > 1:
                # Mixed sizes: hand back a list; `batches` preprocesses (resizes) one by one.
                return images, y
            return np.stack(images), y
        x_key, y_key = self.array_keys
        x = self._reader(x_key).read(indices)
        y = None
        if y_key is not None:
            y = _checked_labels(self._reader(y_key).read(indices), f"data '{self.path}': labels '{y_key}'")
        return x, y

    def batches(
        self,
        preprocess: Preprocess | None = None,
        batch_size: int = 64,
        limit: int | None = None,
        seed: int = 0,
    ) -> Iterator[Batch]:
        """Stream batches of model input. Memory holds one batch at a time.

        Raises:
            DataError: a batch size below 1, NaN/Inf in the data, bad labels, or images that
                preprocessing cannot handle.
        """
        if not _is_int(batch_size) or batch_size < 1:
            raise DataError(f"data '{self.path}': batch size must be a positive integer, got {batch_size!r}")
        indices = self.select(limit, seed)
        try:
            yield from self._batches(indices, preprocess, batch_size)
        finally:
            self.close()

    def _batches(self, indices: np.ndarray, preprocess: Preprocess | None, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            raw, labels = self._read_raw(chunk)
            if isinstance(raw, list):
                if preprocess is None or preprocess.resize is None:
                    sizes = sorted({image.shape for image in raw})[:3]
                    raise DataError(
                        f"image folder '{self.path}': images differ in size {sizes}; "
                        "give a preprocess resize"
                    )
                x = np.concatenate([preprocess.apply(image[None]) for image in raw])
            elif raw.dtype == np.uint8 and raw.ndim in (3, 4):
                images = raw if raw.ndim == 4 else raw[..., None]
                if images.shape[-1] not in (1, 3, 4):
                    raise DataError(
                        f"data '{self.path}': uint8 samples are taken as raw HWC images (N,H,W,C with C 1, 3 "
                        f"or 4), got shape [N,{','.join(str(d) for d in raw.shape[1:])}]; store model-ready "
                        "input (e.g. NCHW) as float32"
                    )
                x = (preprocess or Preprocess()).apply(images)
            else:
                x = np.ascontiguousarray(raw.astype(preprocess.dtype if preprocess else np.float32))
            if np.issubdtype(x.dtype, np.floating):
                finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if not finite.all():
                    bad = int(chunk[int(np.argmin(finite))])
                    raise DataError(f"data '{self.path}': sample {bad} contains NaN or Inf")
            yield Batch(x, labels, chunk)


def _checked_labels(raw: np.ndarray, source: str) -> np.ndarray:
    """Labels as int64 class indices: finite, whole and non-negative."""
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise DataError(f"{source}: labels must be class indices, found NaN or Inf")
        if np.any(raw != np.round(raw)):
            raise DataError(f"{source}: labels must be whole class indices, found {raw[raw != np.round(raw)][0]!r}")
    if raw.size and raw.min() < 0:
        raise DataError(f"{source}: labels must be class indices >= 0, found negative {int(raw.min())}")
    return raw.astype(np.int64)


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with _open_regular(path, "image") as handle, warnings.catch_warnings():
            # The size check below is stricter than Pillow's warning, and says which file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                width, height = image.size
                # The header gives the size before anything is decoded.
                if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"image '{path}': {width}x{height} pixels, more than the "
                        f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} accepted (a decompression bomb?)"
                    )
                array = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise DataError(f"image '{path}': too many pixels to decode ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise DataError(f"image '{path}': cannot decode ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array


def _idx_labels_for(images: Path) -> Path | None:
    name = images.name
    for old, new in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if old in name:
            candidate = images.with_name(name.replace(old, new))
            if candidate.is_file():
                return candidate
    return None


def open_dataset(spec: str | os.PathLike, labels: str | os.PathLike | None = None) -> Dataset:
    """Open a dataset from a path or a named source.

    Args:
        spec: one of
            - `fashion-mnist:train` / `fashion-mnist:test` (Debian's dataset-fashion-mnist);
            - an IDX or IDX.gz images file (labels found beside it by name, or `labels`);
            - a directory of IDX files holding the Fashion-MNIST names (test split);
            - a folder of images, optionally one sub-folder per class;
            - an .npy file (inputs only) or an .npz file with `x` and optionally `y`.
        labels: an explicit labels file (IDX or .npy) for IDX or .npy inputs.

    Returns:
        The Dataset; samples are read lazily by `Dataset.batches`.

    Raises:
        DataError: the source is missing, empty, or of an unknown kind.
    """
    text = str(spec)
    if text.startswith("fashion-mnist"):
        split = text.partition(":")[2] or "test"
        if split not in FASHION_MNIST_FILES:
            raise DataError(f"data '{text}': split must be train or test, got {split!r}")
        images, label_file = (FASHION_MNIST_DIR / name for name in FASHION_MNIST_FILES[split])
        if not images.is_file():
            raise DataError(
                f"data '{text}': '{images}' not found; install Debian's dataset-fashion-mnist"
            )
        return _idx_dataset(images, label_file)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data '{path}': not found")
    if not path.is_dir():
        _require_regular(path, "data")
    if labels is not None:
        _require_regular(Path(labels), "labels")
    if path.is_dir():
        idx_names = FASHION_MNIST_FILES["test"]
        if (path / idx_names[0]).is_file():
            return _idx_dataset(path / idx_names[0], path / idx_names[1])
        return _image_folder(path)
    if path.suffix in (".npy", ".npz"):
        return _array_dataset(path, Path(labels) if labels else None)
    if "idx" in path.name or path.name.endswith(".gz"):
        label_file = Path(labels) if labels else _idx_labels_for(path)
        return _idx_dataset(path, label_file)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Dataset(path=path, kind="images", num_samples=1, files=[path])
    raise DataError(
        f"data '{path}': unknown kind; expected an image folder, .npy/.npz, or an IDX file"
    )


def _idx_dataset(images: Path, label_file: Path | None) -> Dataset:
    header = read_idx_header(images)
    if header.shape[0] == 0:
        raise DataError(f"IDX file '{images}': holds no samples")
    if label_file is not None:
        label_header = read_idx_header(label_file)
        if len(label_header.shape) != 1:
            raise DataError(
                f"IDX labels '{label_file}': expected one label per sample (1 dimension), "
                f"got shape {list(label_header.shape)}"
            )
        if label_header.dtype.kind not in "iu":
            raise DataError(f"IDX labels '{label_file}': labels must be integers, got {label_header.dtype}")
        if label_header.shape[0] != header.shape[0]:
            raise DataError(
                f"IDX labels '{label_file}': {label_header.shape[0]} labels for "
                f"{header.shape[0]} images in '{images}'"
            )
    return Dataset(path=images, kind="idx", num_samples=header.shape[0], labels_path=label_file)


def _image_files(folder: Path) -> list[Path]:
    """Files in `folder` with an image suffix; anything there that is not a regular file is refused."""
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        _require_regular(entry, "image")
        files.append(entry)
    return files


def _image_folder(folder: Path) -> Dataset:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    file_labels: list[int] = []
    if subdirs:
        for label, sub in enumerate(subdirs):
            for file in _image_files(sub):
                files.append(file)
                file_labels.append(label)
    else:
        files = _image_files(folder)
    if not files:
        raise DataError(
            f"image folder '{folder}': no images found (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return Dataset(
        path=folder,
        kind="images",
        num_samples=len(files),
        class_names=[sub.name for sub in subdirs],
        files=files,
        file_labels=file_labels,
    )


def _check_samples(path: Path, entry: ArrayEntry) -> int:
    """The sample count of input array `entry` ('x' or the .npy), after checking its kind and shape."""
    name = f"'{entry.key}'" if entry.key else "the array"
    if entry.dtype.kind == "c":
        raise DataError(f"data '{path}': {name} is complex ({entry.dtype}); expected real numbers")
    if entry.dtype.kind not in _REAL_KINDS:
        raise DataError(f"data '{path}': {name} must hold numbers, got dtype {entry.dtype}")
    if not entry.shape:
        raise DataError(f"data '{path}': {name} is a scalar; expected an array of samples [N, ...]")
    if entry.shape[0] == 0:
        raise DataError(f"data '{path}': holds no samples (shape {list(entry.shape)})")
    if 0 in entry.shape[1:]:
        raise DataError(f"data '{path}': {name} has empty samples (shape {list(entry.shape)})")
    return entry.shape[0]


def _array_dataset(path: Path, labels: Path | None) -> Dataset:
    if path.suffix == ".npz":
        try:
            with _open_regular(path, "data") as handle, zipfile.ZipFile(handle) as archive:
                keys = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError) as exc:
            raise DataError(f"data '{path}': cannot read .npz ({exc})") from exc
        if "x" not in keys:
            raise DataError(f"data '{path}': .npz must hold an array 'x', found {keys[:20]}")
        count = _check_samples(path, read_array_entry(path, "x"))
        y_key = "y" if "y" in keys else None
        if y_key:
            y = read_array_entry(path, "y")
            if y.dtype.kind not in "iuf" or len(y.shape) != 1:
                raise DataError(
                    f"data '{path}': labels 'y' must be one integer class index per sample, "
                    f"got {y.dtype} of shape {list(y.shape)}"
                )
            if y.shape[0] != count:
                raise DataError(f"data '{path}': {y.shape[0]} labels 'y' for {count} samples 'x'")
        return Dataset(path=path, kind="arrays", num_samples=count, array_keys=("x", y_key))
    count = _check_samples(path, read_array_entry(path, None))
    return Dataset(path=path, kind="arrays", num_samples=count, array_keys=(None, None))

"""Datasets for calibration and evaluation: image folders, .npy/.npz arrays and IDX files, streamed."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import stat
import struct
import threading
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fwedge.errors import DataError
from fwedge.limits import byte_limit

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")

# Limits on what a data file may declare. Uncompressed sizes are checked against the file itself;
# compressed ones cannot be, so they are checked against the deflate ratio and this cap
# (FWEDGE_MAX_DATA_BYTES, bytes) before anything is inflated.
DEFAULT_MAX_DATA_BYTES = 4 << 30
# Deflate (gzip, zip) emits at most 258 bytes per 2-bit code, about 1032:1 after block overhead; a
# header that declares more than that from its compressed size is lying.
DEFLATE_MAX_RATIO = 1032
# Images are decoded whole: refuse sides and pixel counts beyond these before decoding (and
# Pillow's own decompression-bomb check, which only warns below twice its limit).
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
# numpy dtype kinds taken as data: bool, signed, unsigned, float (no complex, strings, objects).
_REAL_KINDS = "biuf"


def max_data_bytes() -> int:
    """The cap on the declared size of a compressed array or IDX file (FWEDGE_MAX_DATA_BYTES).

    Raises:
        DataError: the variable is set but is not a positive integer.
    """
    return byte_limit("FWEDGE_MAX_DATA_BYTES", DEFAULT_MAX_DATA_BYTES, DataError)


def _require_regular(path: Path, what: str) -> os.stat_result:
    """stat() a data file and refuse anything but a regular file (a FIFO or device would block)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(f"{what} '{path}': cannot read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{what} '{path}': not a regular file (a FIFO, device or socket is refused)")
    return info


def _open_regular(path: Path, what: str):
    """Open a data file for reading, refusing non-regular files without blocking on them.

    O_NONBLOCK makes opening a FIFO return at once, and fstat() on the open descriptor checks what
    was actually opened, so a file swapped for a FIFO after listing cannot hang the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DataError(f"{what} '{path}': cannot open ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{what} '{path}': not a regular file (a FIFO, device or socket is refused)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


class RecordReader:
    """Reads records of a stream of fixed-size records in ascending index order through one handle.

    A compressed stream (gzip, a deflated .npz entry) can only seek by decompressing, so
    successive batches continue from where the last one stopped instead of reopening the file
    (which would decompress from the start for every batch). Reading backwards reopens it.
    Memory holds only the records asked for.

    Args:
        source: what error messages name (e.g. "IDX file 'x'").
        opener: returns a fresh binary handle positioned at the start of the stream.
        offset: bytes before the first record.
        dtype, record_shape, count: the records, as declared (already checked against the file).
    """

    def __init__(self, source: str, opener, offset: int, dtype: np.dtype, record_shape: tuple, count: int):
        self.source = source
        self._opener = opener
        self.offset = offset
        self.dtype = dtype
        self.record_shape = tuple(record_shape)
        self.record_bytes = int(np.prod(self.record_shape, dtype=np.int64)) * dtype.itemsize
        self.count = count
        self._handle = None
        self._position = 0
        self._lock = threading.Lock()

    def _rewind(self) -> None:
        self.close()
        self._handle = self._opener()
        skip = self._handle.read(self.offset)
        if len(skip) != self.offset:
            raise DataError(f"{self.source}: truncated header")
        self._position = 0

    def read(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Records at `indices` (strictly ascending), or all records.

        Raises:
            DataError: an index is out of range or not ascending, or the file is truncated.
        """
        wanted = np.arange(self.count) if indices is None else np.asarray(indices, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.count):
            raise DataError(f"{self.source}: index out of range 0..{self.count - 1}")
        if wanted.size > 1 and np.any(np.diff(wanted) <= 0):
            raise DataError(f"{self.source}: indices must be strictly ascending")
        out = np.empty((wanted.size,) + self.record_shape, dtype=self.dtype.newbyteorder("="))
        if not wanted.size:
            return out
        with self._lock:
            try:
                self._read_into(out, wanted)
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError) as exc:
                self.close()
                raise DataError(f"{self.source}: cannot read ({exc})") from exc
        return out

    def _read_into(self, out: np.ndarray, wanted: np.ndarray) -> None:
        if self._handle is None or wanted[0] < self._position:
            self._rewind()
        # Read runs of consecutive indices with one call each.
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        slot = 0
        for run in np.split(wanted, breaks):
            first, length = int(run[0]), len(run)
            skip = (first - self._position) * self.record_bytes
            if skip:
                self._handle.seek(skip, os.SEEK_CUR)
            raw = self._handle.read(length * self.record_bytes)
            if len(raw) != length * self.record_bytes:
                got = first + len(raw) // self.record_bytes
                raise DataError(f"{self.source}: truncated at record {got} of {self.count}")
            out[slot : slot + length] = np.frombuffer(raw, dtype=self.dtype).reshape(
                (length,) + self.record_shape
            )
            slot += length
            self._position = first + length

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _ClosingStream:
    """A read handle that also closes the handles it was opened through (gzip or zip entry)."""

    def __init__(self, stream, *owners):
        self._stream, self._owners = stream, owners

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR and offset > 0:
            # Skip forward by reading in small pieces: a zip entry's own seek inflates up to
            # 16 MiB at a time into memory.
            while offset > 0:
                piece = self._stream.read(min(offset, 1 << 16))
                if not piece:
                    break
                offset -= len(piece)
            return self._stream.tell()
        return self._stream.seek(offset, whence)

    def close(self) -> None:
        self._stream.close()
        for owner in self._owners:
            owner.close()


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
# Preprocessing
# --------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _shown(value) -> str:
    """A short repr for an error message (hostile values can be long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Preprocess:
    """How raw images (HWC uint8) become model input. Written verbatim into bundle manifests.

    Attributes:
        resize: (height, width) or None to keep the source size.
        color: "grayscale", "rgb", or None to keep the source channels.
        layout: "NCHW" or "NHWC".
        scale: multiplier applied to raw pixel values first (1/255 maps uint8 to [0, 1]).
        mean, std: per-channel normalisation after scaling (one value broadcasts).
        dtype: numpy dtype name of the model input.
    """

    resize: tuple[int, int] | None = None
    color: str | None = None
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"preprocess: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.color not in (None, "grayscale", "rgb"):
            raise DataError(f"preprocess: color must be grayscale or rgb, got {self.color!r}")
        if self.resize is not None:
            # Each image is resized to this size in memory: bound it like a decoded image.
            if (not isinstance(self.resize, tuple) or len(self.resize) != 2
                    or not all(_is_int(side) and 1 <= side <= MAX_IMAGE_SIDE for side in self.resize)):
                raise DataError(
                    f"preprocess: resize must be [height, width], integers in 1..{MAX_IMAGE_SIDE}, "
                    f"got {_shown(self.resize)}"
                )
        if not _is_real(self.scale) or not math.isfinite(self.scale):
            raise DataError(f"preprocess: scale must be a finite number, got {_shown(self.scale)}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if (not isinstance(values, tuple) or len(values) not in (1, 3)
                    or not all(_is_real(v) and math.isfinite(v) for v in values)):
                raise DataError(f"preprocess: {key} must be 1 or 3 finite numbers, got {_shown(values)}")
        if any(value == 0 for value in self.std):
            raise DataError("preprocess: std must be non-zero")
        try:
            kind = np.dtype(self.dtype).kind if isinstance(self.dtype, str) else ""
        except TypeError:
            kind = ""
        if kind not in _REAL_KINDS:
            raise DataError(f"preprocess: dtype must name a real numeric dtype such as float32, got {_shown(self.dtype)}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["resize"] = list(self.resize) if self.resize else None
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        """Parse a preprocessing dict (model metadata, a bundle manifest, --preprocess).

        Raises:
            DataError: not a dict, unknown keys, or a value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise DataError(f"preprocess: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"preprocess: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        values = dict(data)
        if values.get("resize") is not None:
            resize = values["resize"]
            values["resize"] = tuple(resize) if isinstance(resize, (list, tuple)) else resize
        for key in ("mean", "std"):
            if key in values:
                raw = values[key]
                values[key] = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
        if "scale" in values and _is_int(values["scale"]):
            values["scale"] = float(values["scale"])
        for key in ("mean", "std"):
            if key in values and all(_is_real(v) for v in values[key]):
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def for_input_shape(cls, shape: Sequence[int | None]) -> "Preprocess":
        """Guess a preprocessing spec from a 4-D model input shape (NCHW if dim 1 is 1 or 3)."""
        if len(shape) != 4:
            return cls()
        if shape[1] in (1, 3):
            channels, height, width, layout = shape[1], shape[2], shape[3], "NCHW"
        else:
            height, width, channels, layout = shape[1], shape[2], shape[3], "NHWC"
        resize = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        color = {1: "grayscale", 3: "rgb"}.get(channels)
        return cls(resize=resize, color=color, layout=layout)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Turn a batch of HWC images (N, H, W, C) into model input."""
        from PIL import Image

        batch = images
        if batch.shape[-1] == 4:
            batch = batch[..., :3]  # RGBA: the alpha channel is not model input
        if self.color is not None:
            want = 1 if self.color == "grayscale" else 3
            if batch.shape[-1] != want:
                if want == 1:
                    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[: batch.shape[-1]]
                    batch = (batch.astype(np.float32) @ (weights / weights.sum()))[..., None]
                    if images.dtype == np.uint8:
                        batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
                else:
                    batch = np.repeat(batch[..., :1], 3, axis=-1)
        if self.resize is not None and tuple(batch.shape[1:3]) != tuple(self.resize):
            height, width = self.resize
            resized = []
            for image in batch:
                mode_image = image[..., 0] if image.shape[-1] == 1 else image
                pil = Image.fromarray(np.ascontiguousarray(mode_image))
                pil = pil.resize((width, height), Image.BILINEAR)
                array = np.asarray(pil)
                resized.append(array[..., None] if array.ndim == 2 else array)
            batch = np.stack(resized)
        out = batch.astype(np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = (out - mean) / std
        if self.layout == "NCHW":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out.astype(self.dtype))


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


# --------------------------------------------------------------------------------------------
# .npy / .npz arrays: headers checked against the file before anything is read
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayEntry:
    """One array of an .npy file or .npz entry, from its header.

    Attributes:
        key: the array name ("x", "y"), or None for an .npy file.
        dtype, shape, fortran_order: from the npy header.
        offset: byte offset of the data in the .npy file or in the uncompressed entry.
        file_offset: byte offset of the data in the file itself, when it can be memory-mapped
            (an .npy file or a stored, uncompressed .npz entry), else None.
    """

    key: str | None
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int
    file_offset: int | None


def _read_npy_header(handle, source: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise DataError(f"{source}: npy format version {version} is not supported (1.0 and 2.0 are)")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zlib.error, zipfile.BadZipFile,
            tokenize.TokenError, RecursionError, MemoryError) as exc:
        # numpy parses the header dict with the tokenizer and ast.literal_eval.
        raise DataError(f"{source}: not a readable npy header ({exc})") from exc
    if dtype.hasobject:
        raise DataError(f"{source}: holds Python objects, which cannot be loaded without pickle; refused")
    return dtype, tuple(int(d) for d in shape), bool(fortran_order)


def _check_declared(source: str, dtype: np.dtype, shape: tuple, available: int, compressed_size: int | None) -> int:
    """The declared data size in bytes, after checking it against what the file can hold."""
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    what = f"{source}: declares shape {list(shape)} of {dtype} ({declared} bytes)"
    if declared > available:
        raise DataError(f"{what}, but holds only {available} bytes")
    if compressed_size is not None:
        if declared > compressed_size * DEFLATE_MAX_RATIO:
            raise DataError(f"{what}, more than {compressed_size} compressed bytes can hold")
        if declared > max_data_bytes():
            raise DataError(f"{what}, beyond FWEDGE_MAX_DATA_BYTES={max_data_bytes()}; raise it to read this file")
    return declared


def _npz_entry_info(archive: zipfile.ZipFile, key: str, source: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(f"{key}.npy")
    except KeyError as exc:
        raise DataError(f"{source}: no array '{key}'") from exc


def _local_data_start(handle, info: zipfile.ZipInfo, source: str) -> int:
    """File offset of a zip entry's data: after its local header, whose lengths may differ from the central one."""
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"{source}: bad zip local header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def read_array_entry(path: Path, key: str | None) -> ArrayEntry:
    """Read and check the header of an .npy file (key None) or of array `key` in an .npz.

    The declared size is checked against the file (or the zip's declared uncompressed size), and
    for a compressed entry also against the deflate ratio and FWEDGE_MAX_DATA_BYTES, before any
    data is read.

    Raises:
        DataError: not a readable npy/npz, a missing key, object arrays, or a declared size that
            the file cannot hold.
    """
    size = _require_regular(path, "data").st_size
    if key is None:
        source = f"data '{path}'"
        with _open_regular(path, "data") as handle:
            dtype, shape, fortran_order = _read_npy_header(handle, source)
            offset = handle.tell()
        _check_declared(source, dtype, shape, size - offset, None)
        return ArrayEntry(None, dtype, shape, fortran_order, offset, offset)
    source = f"data '{path}': '{key}'"
    with _open_regular(path, "data") as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                info = _npz_entry_info(archive, key, f"data '{path}'")
                if info.flag_bits & 0x1:
                    raise DataError(f"{source}: encrypted zip entries are not supported")
                with archive.open(info) as member:
                    dtype, shape, fortran_order = _read_npy_header(member, source)
                    offset = member.tell()
                stored = info.compress_type == zipfile.ZIP_STORED
                file_offset = None
                if stored:
                    file_offset = _local_data_start(handle, info, source) + offset
                    available = min(info.file_size - offset, size - file_offset)
                else:
                    available = info.file_size - offset
                _check_declared(source, dtype, shape, available, None if stored else info.compress_size)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError,
                zlib.error, ValueError) as exc:
            raise DataError(f"data '{path}': cannot read .npz ({exc})") from exc
    return ArrayEntry(key, dtype, shape, fortran_order, offset, file_offset)


class _MappedReader:
    """Records of an array stored uncompressed in the file: memory-mapped, read by index."""

    def __init__(self, path: Path, entry: ArrayEntry, source: str):
        self.source = source
        self._handle = _open_regular(path, "data")
        try:
            self._array = np.memmap(self._handle, dtype=entry.dtype, mode="r", offset=entry.file_offset,
                                    shape=entry.shape, order="F" if entry.fortran_order else "C")
        except (ValueError, OSError) as exc:
            self._handle.close()
            raise DataError(f"{source}: cannot map ({exc})") from exc

    def read(self, indices: Sequence[int]) -> np.ndarray:
        wanted = np.asarray(indices, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= len(self._array)):
            raise DataError(f"{self.source}: index out of range 0..{len(self._array) - 1}")
        return np.ascontiguousarray(self._array[wanted]).astype(self._array.dtype.newbyteorder("="))

    def close(self) -> None:
        self._array = None
        self._handle.close()


class _WholeReader:
    """A small array (labels, or a Fortran-order compressed entry) read once, within the checked size."""

    def __init__(self, array: np.ndarray, source: str):
        self._array, self.source = array, source

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return self._array[np.asarray(indices, dtype=np.int64)]

    def close(self) -> None:
        pass


def _array_reader(path: Path, key: str | None):
    """A reader of the records (first-axis slices) of an .npy file or an .npz entry."""
    entry = read_array_entry(path, key)
    source = f"data '{path}'" + (f": '{key}'" if key else "")
    if entry.file_offset is not None:
        return _MappedReader(path, entry, source)

    def open_member():
        handle = _open_regular(path, "data")
        try:
            archive = zipfile.ZipFile(handle)
            return _ClosingStream(archive.open(f"{key}.npy"), archive, handle)
        except BaseException:
            handle.close()
            raise

    if entry.fortran_order:
        # Records of a Fortran-order array are not contiguous: inflate it whole (its size is checked).
        stream = open_member()
        try:
            stream.read(entry.offset)
            wanted = int(np.prod(entry.shape, dtype=np.int64)) * entry.dtype.itemsize
            raw = stream.read(wanted)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise DataError(f"{source}: cannot read ({exc})") from exc
        finally:
            stream.close()
        if len(raw) != wanted:
            raise DataError(f"{source}: truncated, {len(raw)} of {wanted} bytes")
        array = np.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape, order="F")
        return _WholeReader(array.astype(array.dtype.newbyteorder("=")), source)
    return RecordReader(source, open_member, entry.offset, entry.dtype, entry.shape[1:], entry.shape[0])


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


def check_batch_shape(x: np.ndarray, expected: Sequence[int | str | None], source: str, name: str) -> None:
    """Check a batch against a model input shape (dynamic dims match anything).

    Raises:
        DataError: rank or a static dimension differs; the message names both shapes.
    """
    shown = "[" + ",".join("N" if i == 0 else str(d) if isinstance(d, int) else "?" for i, d in enumerate(expected)) + "]"
    got = "[N," + ",".join(str(d) for d in x.shape[1:]) + "]"
    if x.ndim != len(expected) or any(
        isinstance(want, int) and want > 0 and want != have
        for want, have in list(zip(expected, x.shape))[1:]
    ):
        raise DataError(f"data '{source}': input '{name}' expects shape {shown}, got {got}")


def preprocess_from_metadata(model) -> Preprocess | None:
    """The preprocessing spec stored in an ONNX model's metadata (key fwedge.preprocess)."""
    for prop in model.metadata_props:
        if prop.key == "fwedge.preprocess":
            try:
                return Preprocess.from_dict(json.loads(prop.value))
            except DataError as exc:
                raise DataError(f"model metadata fwedge.preprocess: {exc}") from exc
            except (ValueError, TypeError, RecursionError) as exc:
                raise DataError(f"model metadata fwedge.preprocess is malformed ({exc})") from exc
    return None

"""Datasets for calibration and evaluation: image folders, .npy/.npz arrays and IDX files, streamed."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fwedge.errors import DataError

log = logging.getLogger(__name__)

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
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


@dataclass(frozen=True)
class IdxHeader:
    """Header of an IDX file: element dtype, full shape and the byte offset of the data."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def read_idx_header(path: str | os.PathLike) -> IdxHeader:
    """Read the header of an IDX (or IDX.gz) file.

    Raises:
        DataError: the file is missing or is not an IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file '{path}': not found")
    try:
        with _open_maybe_gzip(path) as handle:
            head = handle.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"IDX file '{path}': bad magic {head!r}, expected 00 00 <type> <ndim>")
            ndim = head[3]
            dims = handle.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise DataError(f"IDX file '{path}': truncated header")
    except (OSError, EOFError) as exc:
        raise DataError(f"IDX file '{path}': cannot read ({exc})") from exc
    shape = struct.unpack(">" + "I" * ndim, dims)
    return IdxHeader(_IDX_DTYPES[head[2]], tuple(shape), 4 + 4 * ndim)


class IdxReader:
    """Reads records of an IDX (or IDX.gz) file in ascending index order through one open handle.

    A gzip stream can only seek by decompressing, so successive batches continue from where the
    last one stopped instead of reopening the file (which would decompress from the start for
    every batch). Reading backwards reopens the file. Memory holds only the records asked for.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header = read_idx_header(self.path)
        self.record_shape = self.header.shape[1:]
        self.record_bytes = int(np.prod(self.record_shape, dtype=np.int64)) * self.header.dtype.itemsize
        self.count = self.header.shape[0]
        self._handle = None
        self._position = 0
        self._lock = threading.Lock()

    def _rewind(self) -> None:
        self.close()
        self._handle = _open_maybe_gzip(self.path)
        self._handle.read(self.header.offset)
        self._position = 0

    def read(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Records at `indices` (strictly ascending), or all records.

        Raises:
            DataError: an index is out of range or not ascending, or the file is truncated.
        """
        wanted = np.arange(self.count) if indices is None else np.asarray(indices, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.count):
            raise DataError(f"IDX file '{self.path}': index out of range 0..{self.count - 1}")
        if wanted.size > 1 and np.any(np.diff(wanted) <= 0):
            raise DataError(f"IDX file '{self.path}': indices must be strictly ascending")
        out = np.empty((wanted.size,) + self.record_shape, dtype=self.header.dtype.newbyteorder("="))
        if not wanted.size:
            return out
        with self._lock:
            self._read_into(out, wanted)
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
                raise DataError(f"IDX file '{self.path}': truncated at record {got} of {self.count}")
            out[slot : slot + length] = np.frombuffer(raw, dtype=self.header.dtype).reshape(
                (length,) + self.record_shape
            )
            slot += length
            self._position = first + length

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


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
        if any(value == 0 for value in self.std):
            raise DataError("preprocess: std must be non-zero")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["resize"] = list(self.resize) if self.resize else None
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"preprocess: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if values.get("resize") is not None:
            values["resize"] = tuple(int(v) for v in values["resize"])
        for key in ("mean", "std"):
            if key in values:
                raw = values[key]
                values[key] = tuple(float(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw]))
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
    array_keys: tuple[str, str | None] = ("x", None)
    _readers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.labels_path is not None or bool(self.file_labels) or self.array_keys[1] is not None

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

    def _reader(self, path: Path) -> IdxReader:
        if path not in self._readers:
            self._readers[path] = IdxReader(path)
        return self._readers[path]

    def close(self) -> None:
        """Close open file handles (IDX readers); batches() does this when it finishes."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def _read_raw(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.kind == "idx":
            x = self._reader(self.path).read(indices)
            if x.ndim == 3:
                x = x[..., None]
            y = self._reader(self.labels_path).read(indices).astype(np.int64) if self.labels_path else None
            return x, y
        if self.kind == "images":
            images = [_load_image(self.files[i]) for i in indices]
            y = np.asarray([self.file_labels[i] for i in indices], dtype=np.int64) if self.file_labels else None
            if len({image.shape for image in images}) > 1:
                # Mixed sizes: hand back a list; `batches` preprocesses (resizes) one by one.
                return images, y
            return np.stack(images), y
        x_all, y_all = _load_arrays(self.path, self.array_keys)
        x = np.asarray(x_all[indices])
        y = np.asarray(y_all[indices]).astype(np.int64) if y_all is not None else None
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
            DataError: NaN/Inf in the data, or images that preprocessing cannot handle.
        """
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
            elif raw.dtype == np.uint8 and raw.ndim == 4:
                x = (preprocess or Preprocess()).apply(raw)
            elif raw.dtype == np.uint8 and raw.ndim == 3:
                x = (preprocess or Preprocess()).apply(raw[..., None])
            else:
                x = np.ascontiguousarray(raw.astype(preprocess.dtype if preprocess else np.float32))
            if np.issubdtype(x.dtype, np.floating):
                finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if not finite.all():
                    bad = int(chunk[int(np.argmin(finite))])
                    raise DataError(f"data '{self.path}': sample {bad} contains NaN or Inf")
            yield Batch(x, labels, chunk)


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"image '{path}': cannot decode ({exc})") from exc
    return array[..., None] if array.ndim == 2 else array


_ARRAY_CACHE: dict[tuple[str, tuple], tuple[np.ndarray, np.ndarray | None]] = {}


def _load_arrays(path: Path, keys: tuple[str, str | None]) -> tuple[np.ndarray, np.ndarray | None]:
    """Open an .npy (memory-mapped) or .npz without ever unpickling objects."""
    cache_key = (str(path), keys)
    if cache_key in _ARRAY_CACHE:
        return _ARRAY_CACHE[cache_key]
    try:
        if path.suffix == ".npy":
            result = (np.load(path, mmap_mode="r", allow_pickle=False), None)
        else:
            with np.load(path, allow_pickle=False) as archive:
                x_key, y_key = keys
                result = (archive[x_key], archive[y_key] if y_key else None)
    except ValueError as exc:
        raise DataError(f"data '{path}': cannot load without pickle ({exc})") from exc
    except (OSError, KeyError) as exc:
        raise DataError(f"data '{path}': cannot read ({exc})") from exc
    _ARRAY_CACHE.clear()
    _ARRAY_CACHE[cache_key] = result
    return result


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
        if label_header.shape[0] != header.shape[0]:
            raise DataError(
                f"IDX labels '{label_file}': {label_header.shape[0]} labels for "
                f"{header.shape[0]} images in '{images}'"
            )
    return Dataset(path=images, kind="idx", num_samples=header.shape[0], labels_path=label_file)


def _image_folder(folder: Path) -> Dataset:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    file_labels: list[int] = []
    if subdirs:
        for label, sub in enumerate(subdirs):
            for file in sorted(sub.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(file)
                    file_labels.append(label)
    else:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
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


def _array_dataset(path: Path, labels: Path | None) -> Dataset:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "x" not in keys:
                    raise DataError(f"data '{path}': .npz must hold an array 'x', found {keys}")
                count = archive["x"].shape[0] if archive["x"].ndim else 0
                y_key = "y" if "y" in keys else None
                if y_key and archive["y"].shape[0] != count:
                    raise DataError(
                        f"data '{path}': {archive['y'].shape[0]} labels 'y' for {count} samples 'x'"
                    )
        except (OSError, ValueError) as exc:
            raise DataError(f"data '{path}': cannot read .npz ({exc})") from exc
        if count == 0:
            raise DataError(f"data '{path}': holds no samples")
        return Dataset(path=path, kind="arrays", num_samples=count, array_keys=("x", y_key))
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"data '{path}': cannot load without pickle ({exc})") from exc
    if array.ndim == 0 or array.shape[0] == 0:
        raise DataError(f"data '{path}': holds no samples (shape {list(array.shape)})")
    return Dataset(path=path, kind="arrays", num_samples=int(array.shape[0]))


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
            except (ValueError, TypeError) as exc:
                raise DataError(f"model metadata fwedge.preprocess is malformed ({exc})") from exc
    return None

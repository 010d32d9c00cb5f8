""".npy / .npz arrays: headers checked against the file before anything is read, records read by index."""
from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fwedge.data_files import (
    DEFLATE_MAX_RATIO, RecordReader, _ClosingStream, _open_regular, _require_regular, max_data_bytes,
)
from fwedge.errors import DataError


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

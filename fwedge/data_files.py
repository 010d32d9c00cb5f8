"""Reading data files safely: regular files only, declared sizes bounded, records streamed through one handle."""
from __future__ import annotations

import os
import stat
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from fwedge.errors import DataError
from fwedge.limits import byte_limit

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

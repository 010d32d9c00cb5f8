"""Bundles: a directory of deployable files plus manifest.json, written atomically, verified on load."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from fwedge import __version__, strict_json
from fwedge.errors import DataError, ExportError
from fwedge.ir import _umask, sha256_file

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = "fwedge.bundle/1"
MANIFEST = "manifest.json"
# The manifest's self-digest: sha256 of the canonical JSON of every other field.
DIGEST_KEY = "manifest_sha256"
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 10_000
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 4096
MAX_RANK = 16
DTYPES = frozenset({"float32", "float16", "float64", "bfloat16", "int8", "uint8", "int16", "uint16",
                    "int32", "uint32", "int64", "uint64", "bool"})
LAYOUTS = ("", "NCHW", "NHWC")
REQUIRED_KEYS = ("schema", "target", "arch", "precision", "source_sha256", "inputs", "outputs", "files",
                 DIGEST_KEY)
OPTIONAL_KEYS = ("versions", "preprocess", "sizes", "extra")
_WORD = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The dtype a bundle of each precision stores its weights in: the manifest's extra.weights_dtype.
# An int8 bundle's layers kept in float hold float32 weights; its quantized layers hold int8.
WEIGHTS_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
_TENSOR_KEYS = ("name", "shape", "dtype", "layout", "scale", "zero_point", "source_layout")


@dataclass
class TensorInfo:
    """A bundle input or output as the device sees it.

    Attributes:
        name: tensor name (the ONNX name where the target keeps it).
        shape: static shape, batch included.
        dtype: numpy dtype name on the device ("float32", "int8", ...).
        layout: "NCHW", "NHWC" or "" for non-image tensors.
        scale, zero_point: quantization parameters when dtype is an integer type.
        source_layout: "NHWC" when the source model's own tensor is NHWC and the bundle takes
            (gives) it as it is: the layout pass absorbed the model's Transpose to (from) NCHW.
            "" otherwise: a 4-D tensor is NCHW in the source model, and the runner transposes
            between it and an NHWC device tensor.
    """

    name: str
    shape: list[int]
    dtype: str
    layout: str = ""
    scale: float | None = None
    zero_point: int | None = None
    source_layout: str = ""

    @property
    def transposed(self) -> bool:
        """The device tensor is NHWC and the source model's is NCHW: feeds and results move."""
        return self.layout == "NHWC" and len(self.shape) == 4 and self.source_layout != "NHWC"

    @property
    def logical_shape(self) -> list[int]:
        """The shape of the source model's tensor, which feeds and results have: NCHW for a 4-D
        NHWC device tensor unless the source model's tensor is NHWC itself."""
        if self.transposed:
            batch, height, width, channels = self.shape
            return [batch, channels, height, width]
        return list(self.shape)


@dataclass
class Bundle:
    """A loaded or freshly written bundle. `files` maps relative path -> sha256.

    `manifest_sha256` is the manifest's self-digest (see manifest_digest).
    """

    path: Path
    target: str
    arch: str
    precision: str
    source_sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    files: dict[str, str]
    preprocess: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    manifest_sha256: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def onnx_names(self) -> dict[str, str]:
        """ONNX tensor name -> the bundle's own name, where the target renamed a tensor (the
        manifest's extra "onnx_names"; entries that are not two strings are ignored)."""
        value = self.extra.get("onnx_names")
        if not isinstance(value, dict):
            return {}
        return {key: own for key, own in value.items() if isinstance(key, str) and isinstance(own, str)}

    @property
    def output_steps(self) -> dict[str, float]:
        """ONNX output name -> its quantization step: the manifest's scale of an int8 (uint8)
        device output. A float output has none."""
        own_to_onnx = {own: name for name, own in self.onnx_names.items()}
        return {own_to_onnx.get(spec.name, spec.name): float(spec.scale) for spec in self.outputs
                if spec.dtype in ("int8", "uint8") and spec.scale is not None and spec.scale > 0}

    def output_names(self, output: str | None = None) -> tuple[str, str]:
        """(ONNX name, own name) of the output `output` (an ONNX name, mapped through
        onnx_names), or of the first output for None.

        Raises:
            DataError: the bundle has no such output.
        """
        own_names = [spec.name for spec in self.outputs]
        if not own_names:
            raise ExportError(f"bundle '{self.path}': manifest lists no outputs")
        aliases = self.onnx_names
        onnx_of = {own: own for own in own_names} | {own: name for name, own in aliases.items() if own in own_names}
        if output is None:
            return onnx_of[own_names[0]], own_names[0]
        # onnx_names also maps inner tensors (an int8 bundle's quantized copy of an output,
        # for `fwedge diff`): an alias that is no output falls back to the name itself.
        own = aliases.get(output)
        if own not in own_names:
            own = output
        if own not in own_names:
            raise DataError(f"bundle '{self.name}' has no output '{output}' (no such output among "
                            f"{[onnx_of[name] for name in own_names][:20]})")
        return onnx_of[own], own

    def file(self, relative: str) -> Path:
        """Absolute path of a bundle file listed in the manifest."""
        if relative not in self.files:
            raise ExportError(f"bundle '{self.path}': no file {relative!r} in the manifest")
        # Absolute: runners start the C harness in a temporary working folder, where a bundle
        # loaded by a relative path would not be found.
        return (self.path / relative).absolute()

    def manifest(self) -> dict:
        """The manifest fields, sealed with their digest under DIGEST_KEY."""
        data = {
            "schema": BUNDLE_SCHEMA,
            "target": self.target,
            "arch": self.arch,
            "precision": self.precision,
            "source_sha256": self.source_sha256,
            "versions": self.versions,
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "preprocess": self.preprocess,
            "files": self.files,
            "sizes": self.sizes,
            "extra": self.extra,
        }
        return seal_manifest(data)


def manifest_digest(data: dict) -> str:
    """The sha256 (hex) of a manifest's canonical JSON, without its DIGEST_KEY field.

    Canonical JSON: keys sorted, separators "," and ":" with no spaces, non-ASCII characters
    as UTF-8, no NaN or Infinity. The digest catches accidental and naive edits of the manifest
    (a changed preprocess, dtype or scale). It is not a signature: whoever can edit the file can
    recompute it. A CI gate that must trust a bundle compares this digest with the one its
    reviewed baseline records for that bundle.

    Raises:
        ExportError: the manifest holds values JSON cannot encode canonically.
    """
    body = {key: value for key, value in data.items() if key != DIGEST_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"manifest cannot be encoded as canonical JSON ({exc})") from exc
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def seal_manifest(data: dict) -> dict:
    """A copy of `data` with DIGEST_KEY set to manifest_digest(data)."""
    return {**{key: value for key, value in data.items() if key != DIGEST_KEY}, DIGEST_KEY: manifest_digest(data)}


def host_arch() -> str:
    """The host architecture in fwedge's names (x86_64, aarch64, riscv64, loongarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _check_relative(bundle_dir: Path, relative: str) -> Path:
    resolved = (bundle_dir / relative).resolve()
    if os.path.isabs(relative) or not resolved.is_relative_to(bundle_dir.resolve()):
        raise ExportError(f"bundle '{bundle_dir}': file {relative!r} points outside the bundle")
    return resolved


# -- stale partial folders -----------------------------------------------------------------------
#
# A writer first creates `.NAME.XXXX.lock` and holds an exclusive flock on it for as long as
# its `.NAME.XXXX.partial` (and, while swapping, `.NAME.XXXX.old`) exists; the lock file is
# removed last. A killed writer's lock is released by the kernel, so a later writer that can
# take the lock without blocking knows the partial is stale. A partial or old folder with no
# lock file at all is stale as well: the lock file is created before and removed after them.


# `.NAME.` + tempfile's 8 random characters: only names this module makes are ever removed.
_STEM = re.compile(r"^\..+\.[a-z0-9_]{8}$")


def _stale_candidates(parent: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return groups
    for entry in entries:
        for suffix in (".lock", ".partial", ".old"):
            stem = entry.name[: -len(suffix)]
            if entry.name.endswith(suffix) and _STEM.match(stem):
                groups.setdefault(stem, []).append(Path(entry.path))
    return groups


def clean_stale_partials(parent: str | os.PathLike) -> list[Path]:
    """Remove partial bundle folders in `parent` left by writers that died (SIGKILL, power loss).

    A folder whose writer still holds its lock is left alone. When a writer died between moving
    the previous bundle aside and moving the new one in, the previous bundle is put back.

    Returns:
        The folders removed or restored.
    """
    parent = Path(parent)
    cleaned = []
    for stem, paths in sorted(_stale_candidates(parent).items()):
        lock_path = parent / f"{stem}.lock"
        handle = None
        if lock_path.exists():
            try:
                handle = open(lock_path, "r+b")
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The lock file we hold must still be the one at that name.
                if os.fstat(handle.fileno()).st_ino != os.stat(lock_path).st_ino:
                    handle.close()
                    continue
            except OSError as exc:
                if handle is not None:
                    handle.close()
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOENT):
                    log.warning("cannot check partial bundle lock %s: %s", lock_path, exc)
                continue
        try:
            target_name = handle.read(4096).decode("utf-8", "surrogateescape") if handle else ""
            if handle is not None and not stem.startswith(f".{target_name}."):
                continue  # not a lock file this module wrote
            old = parent / f"{stem}.old"
            target = parent / target_name if target_name and "/" not in target_name else None
            if old.is_dir() and not old.is_symlink() and target is not None and not os.path.lexists(target):
                os.rename(old, target)
                log.warning("restored bundle %s left aside by an interrupted write", target)
                cleaned.append(target)
            for path in (parent / f"{stem}.partial", old):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    log.info("removed stale partial bundle folder %s", path)
                    cleaned.append(path)
            if handle is not None:
                os.unlink(lock_path)
        except OSError as exc:
            log.warning("cannot remove stale partial bundle folder %s: %s", stem, exc)
        finally:
            if handle is not None:
                handle.close()
    return cleaned


class _WriterLock:
    """The lock file of one writer: created and flocked before its partial folder exists."""

    def __init__(self, out_dir: Path):
        fd, name = tempfile.mkstemp(prefix=f".{out_dir.name}.", suffix=".lock", dir=out_dir.parent)
        self.path = Path(name)
        self.handle = os.fdopen(fd, "r+b")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.handle.write(out_dir.name.encode("utf-8", "surrogateescape"))
        self.handle.flush()
        stem = self.path.name[: -len(".lock")]
        self.partial = out_dir.parent / f"{stem}.partial"
        self.old = out_dir.parent / f"{stem}.old"

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.handle.close()


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    target: str,
    arch: str,
    precision: str,
    source_sha256: str,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    write_files: Callable[[Path], dict | None],
    preprocess: dict | None = None,
    toolchain: dict | None = None,
    sizes: dict | None = None,
    extra: dict | None = None,
    reference: dict | None = None,
    kept_float: list[dict] | None = None,
) -> Bundle:
    """Build a bundle in a temporary sibling directory, then rename it into place.

    `reference` (fwedge.reference's manifest entry) goes into extra.reference_model, and
    `kept_float` (the QDQ model's kept-float layers: node, op, reason) into extra.kept_float.

    `write_files(tmp_dir)` writes the target's files and may return extra size figures. An
    exception anywhere leaves the previous bundle at `out_dir` intact (or nothing at all).
    Partial folders of earlier writers that were killed are removed first; those of writers
    still running are left alone (clean_stale_partials).

    Returns:
        The written Bundle.

    Raises:
        ExportError: the writer left a symlink or special file in the bundle.
    """
    out_dir = Path(out_dir)
    # A bundle that load_bundle would refuse is never written: its tensor specs are checked
    # before the target's files are made (a C build takes a while), the whole manifest after.
    for kind, specs in (("inputs", inputs), ("outputs", outputs)):
        for index, spec in enumerate(specs):
            _tensor_info(asdict(spec), f"bundle '{out_dir}': {kind}[{index}]")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out_dir.parent)
    lock = _WriterLock(out_dir)
    # Absolute, so writers that run tools in another working directory (compilers) find it.
    temp = lock.partial.resolve()
    try:
        temp.mkdir(mode=0o777 & ~_umask())
        os.chmod(temp, 0o777 & ~_umask())  # a bundle is meant to be shared
        more_sizes = write_files(temp) or {}
        files = {}
        for file in sorted(temp.rglob("*")):
            relative = file.relative_to(temp).as_posix()
            mode = file.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ExportError(f"bundle '{out_dir}': {relative!r} is not a regular file (symlinks and "
                                  "special files are not allowed in a bundle)")
            if relative != MANIFEST:
                files[relative] = sha256_file(file)
        total_bytes = sum((temp / rel).stat().st_size for rel in files)
        bundle = Bundle(
            path=out_dir,
            target=target,
            arch=arch,
            precision=precision,
            source_sha256=source_sha256,
            inputs=inputs,
            outputs=outputs,
            files=files,
            preprocess=preprocess or {},
            versions={"fwedge": __version__, **(toolchain or {})},
            sizes={"file_bytes": total_bytes, **(sizes or {}), **more_sizes},
            extra={**(extra or {}), **({"reference_model": reference} if reference else {}),
                   **({"kept_float": kept_float} if kept_float else {}),
                   **({"weights_dtype": WEIGHTS_DTYPES[precision]} if precision in WEIGHTS_DTYPES else {})},
        )
        manifest = bundle.manifest()
        _parse_manifest(out_dir, json.loads(json.dumps(manifest)))
        bundle.manifest_sha256 = manifest[DIGEST_KEY]
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap_into_place(temp, out_dir, lock.old)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        lock.release()
    return bundle


def _swap_into_place(temp: Path, out_dir: Path, old: Path) -> None:
    """Replace out_dir by temp with renames only, so a reader never sees half a bundle."""
    if out_dir.exists():
        os.rename(out_dir, old)
        try:
            os.rename(temp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temp, out_dir)


# -- loading and validation ----------------------------------------------------------------------


def _show(value, limit: int = 80) -> str:
    """A short one-line repr of a hostile value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_bundle_path(relative, where: str) -> str:
    """Refuse a manifest file path that is not a plain relative path inside the bundle.

    Raises:
        ExportError: not a string, empty, too long, absolute, with `..`, `.` or empty parts,
            a backslash, a control character (NUL, newline), or the manifest's own name.
    """
    if not isinstance(relative, str):
        raise ExportError(f"{where}: file path {relative!r} must be a string")
    if not relative or len(relative) > MAX_PATH_CHARS:
        raise ExportError(f"{where}: file path {_show(relative)} must be 1..{MAX_PATH_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in relative) or "\\" in relative:
        raise ExportError(f"{where}: file path {_show(relative)} holds a control character or backslash")
    if relative.startswith("/"):
        raise ExportError(f"{where}: file path {_show(relative)} is absolute; it points outside the bundle")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ExportError(f"{where}: file path {_show(relative)} has an empty, '.' or '..' part; "
                          "it points outside the bundle or is not canonical")
    if relative == MANIFEST:
        raise ExportError(f"{where}: the manifest cannot list itself")
    return relative


def _tensor_info(raw, where: str) -> TensorInfo:
    if not isinstance(raw, dict):
        raise ExportError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_TENSOR_KEYS))
    if unknown:
        raise ExportError(f"{where}: unknown keys {unknown[:5]}; known: {list(_TENSOR_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise ExportError(f"{where}: name must be a non-empty string without NUL, got {_show(name)}")
    shape = raw.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(_is_int(dim) and -1 <= dim < 2**31 for dim in shape)):
        raise ExportError(f"{where} {_show(name)}: shape must be a list of at most {MAX_RANK} integers "
                          f"-1..2^31-1 (-1: dynamic), got {_show(shape)}")
    dtype = raw.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ExportError(f"{where} {_show(name)}: dtype must be one of {sorted(DTYPES)}, got {_show(dtype)}")
    layout = raw.get("layout", "")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ExportError(f"{where} {_show(name)}: layout must be one of {list(LAYOUTS)}, got {_show(layout)}")
    source_layout = raw.get("source_layout", "")
    if not isinstance(source_layout, str) or source_layout not in ("", "NHWC"):
        raise ExportError(f"{where} {_show(name)}: source_layout must be '' or 'NHWC', got {_show(source_layout)}")
    if source_layout and (layout != "NHWC" or len(shape) != 4):
        raise ExportError(f"{where} {_show(name)}: source_layout NHWC needs a 4-D NHWC tensor, got layout "
                          f"{_show(layout)} and shape {_show(shape)}")
    scale = raw.get("scale")
    if scale is not None and not (_is_number(scale) and scale > 0):
        raise ExportError(f"{where} {_show(name)}: scale must be a finite number > 0 or null, got {_show(scale)}")
    zero_point = raw.get("zero_point")
    if zero_point is not None and not (_is_int(zero_point) and -2**31 <= zero_point < 2**31):
        raise ExportError(f"{where} {_show(name)}: zero_point must be an integer or null, got {_show(zero_point)}")
    return TensorInfo(name=name, shape=list(shape), dtype=dtype, layout=layout,
                      scale=float(scale) if scale is not None else None, zero_point=zero_point,
                      source_layout=source_layout)


def _parse_manifest(path: Path, data) -> Bundle:
    """Check every manifest field's type and range and build the Bundle (files not read)."""
    where = f"bundle '{path}': {MANIFEST}"
    if not isinstance(data, dict):
        raise ExportError(f"{where}: expected a JSON object at top level, got {type(data).__name__}")
    if data.get("schema") != BUNDLE_SCHEMA:
        raise ExportError(f"bundle '{path}': schema {_show(data.get('schema'))}, expected {BUNDLE_SCHEMA!r}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        hint = " (written by an older fwedge? export it again)" if missing == [DIGEST_KEY] else ""
        raise ExportError(f"{where}: missing {missing}{hint}")
    unknown = sorted(str(key) for key in set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ExportError(f"{where}: unknown keys {[key[:40] for key in unknown[:5]]}")
    recorded = data[DIGEST_KEY]
    actual = manifest_digest(data)
    if recorded != actual:
        raise ExportError(f"{where}: its content does not match its {DIGEST_KEY} "
                          f"({actual[:12]}…, recorded {_show(recorded)}…); refusing an edited manifest")
    for key in ("target", "arch", "precision"):
        if not isinstance(data[key], str) or not _WORD.match(data[key]):
            raise ExportError(f"{where}: {key} must be a short name ({_WORD.pattern}), got {_show(data[key])}")
    # Empty when a target module exported an in-memory model with no source file.
    if not isinstance(data["source_sha256"], str) or not (data["source_sha256"] == "" or _SHA256.match(data["source_sha256"])):
        raise ExportError(f"{where}: source_sha256 must be 64 lowercase hex digits or empty")
    for key in OPTIONAL_KEYS:
        if not isinstance(data.get(key, {}), dict):
            raise ExportError(f"{where}: {key} must be an object, got {type(data[key]).__name__}")
    files = data["files"]
    if not isinstance(files, dict):
        raise ExportError(f"{where}: files must be an object mapping path -> sha256, got {type(files).__name__}")
    if len(files) > MAX_FILES:
        raise ExportError(f"{where}: {len(files)} files listed, at most {MAX_FILES} allowed")
    for relative, digest in files.items():
        check_bundle_path(relative, where)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ExportError(f"{where}: sha256 of {relative!r} must be 64 lowercase hex digits, got {_show(digest)}")
    for key in ("inputs", "outputs"):
        if not isinstance(data[key], list) or len(data[key]) > 1024:
            raise ExportError(f"{where}: {key} must be a list of at most 1024 tensors, got {type(data[key]).__name__}")
    inputs = [_tensor_info(raw, f"{where}: inputs[{i}]") for i, raw in enumerate(data["inputs"])]
    outputs = [_tensor_info(raw, f"{where}: outputs[{i}]") for i, raw in enumerate(data["outputs"])]
    preprocess = data.get("preprocess", {})
    if preprocess:
        _check_preprocess(preprocess, where)
    _check_weights_record(data, where)
    _check_op_facts(data.get("extra", {}), where)
    return Bundle(
        path=path, target=data["target"], arch=data["arch"], precision=data["precision"],
        source_sha256=data["source_sha256"], inputs=inputs, outputs=outputs, files=dict(files),
        preprocess=preprocess, versions=data.get("versions", {}), sizes=data.get("sizes", {}),
        extra=data.get("extra", {}), manifest_sha256=recorded,
    )


def _check_weights_record(data: dict, where: str) -> None:
    """extra.weights_dtype matches the precision (an fp16 bundle must say float16), and the byte
    counts in sizes are non-negative integers."""
    precision = data["precision"]
    recorded = data.get("extra", {}).get("weights_dtype")
    expected = WEIGHTS_DTYPES.get(precision)
    if recorded is None and precision == "fp16":
        raise ExportError(f"{where}: precision fp16 needs extra.weights_dtype 'float16', none recorded")
    if recorded is not None and recorded != expected:
        raise ExportError(f"{where}: extra.weights_dtype {_show(recorded)} does not match precision "
                          f"{_show(precision)} (expected {_show(expected)})")
    for key in ("weights_bytes", "file_bytes"):
        value = data.get("sizes", {}).get(key)
        if value is not None and not (_is_int(value) and 0 <= value < 2**63):
            raise ExportError(f"{where}: sizes.{key} must be a non-negative integer, got {_show(value)}")


# A C manifest's per-op lists (op_names, op_kinds, op_macs: fwedge profile's table), one entry per op.
MAX_OPS = 1_000_000


def _check_op_facts(extra: dict, where: str) -> None:
    lists = {key: extra[key] for key in ("op_names", "op_kinds", "op_macs") if key in extra}
    for key, value in lists.items():
        if not isinstance(value, list) or len(value) > MAX_OPS:
            raise ExportError(f"{where}: extra.{key} must be a list of at most {MAX_OPS:,} entries, got {_show(value)}")
        wrong = next((item for item in value if not (_is_int(item) and 0 <= item < 2 ** 63 if key == "op_macs"
                                                      else isinstance(item, str))), None)
        if wrong is not None or (key == "op_kinds" and any(not _WORD.match(item) for item in value)):
            what = "integers >= 0" if key == "op_macs" else "short names" if key == "op_kinds" else "strings"
            raise ExportError(f"{where}: extra.{key} must hold {what}, got {_show(wrong)}")
    if len({len(value) for value in lists.values()}) > 1:
        raise ExportError(f"{where}: extra op_names, op_kinds and op_macs differ in length "
                          f"({', '.join(f'{key} {len(value)}' for key, value in lists.items())})")


def _check_preprocess(preprocess: dict, where: str) -> None:
    from fwedge.data import Preprocess
    from fwedge.errors import FwEdgeError

    try:
        Preprocess.from_dict(preprocess)
    except (FwEdgeError, TypeError, ValueError, OverflowError) as exc:
        raise ExportError(f"{where}: preprocess is invalid ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from exc


def _check_tree(path: Path, files: dict[str, str]) -> None:
    """Refuse symlinks, special files and regular files the manifest does not list."""
    listed = set(files) | {MANIFEST}
    for root, dirs, names in os.walk(path, followlinks=False):
        for name in sorted(dirs + names):
            full = Path(root) / name
            relative = full.relative_to(path).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ExportError(f"bundle '{path}': {relative!r} is a symlink; a bundle holds regular files only")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ExportError(f"bundle '{path}': {relative!r} is not a regular file")
            if relative not in listed:
                raise ExportError(f"bundle '{path}': {relative!r} is not listed in the manifest; "
                                  "refusing a bundle with unlisted files")


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read a bundle's manifest, check its fields and self-digest, and (by default) its files.

    With `verify`, every listed file must exist as a regular file with the recorded sha256, and
    the folder may hold nothing else (no unlisted file, no symlink).

    Raises:
        ExportError: no manifest, not JSON, wrong schema, a malformed field, a manifest whose
            content does not match its digest, a file missing, outside the bundle, altered or
            unlisted.
    """
    # Absolute: runners start tools in other working folders (the C harness runs in a temp dir).
    path = Path(path).absolute()
    manifest_path = path / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ExportError(f"bundle '{path}': no {MANIFEST} (or not a regular file); not a fwedge bundle")
    try:
        with open(manifest_path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ExportError(f"bundle '{path}': cannot read {MANIFEST} ({exc.strerror or exc})") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ExportError(f"bundle '{path}': {MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = strict_json.loads(raw)
    except (ValueError, RecursionError) as exc:
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ExportError(f"bundle '{path}': {MANIFEST} is not valid JSON ({message})") from exc
    bundle = _parse_manifest(path, data)
    if verify:
        for relative, expected in bundle.files.items():
            file = _check_relative(path, relative)
            if not file.is_file():
                raise ExportError(f"bundle '{path}': file {relative!r} listed in the manifest is missing")
        _check_tree(path, bundle.files)
        for relative, expected in bundle.files.items():
            actual = sha256_file(path / relative)
            if actual != expected:
                raise ExportError(
                    f"bundle '{path}': file {relative!r} does not match the manifest "
                    f"(sha256 {actual[:12]}…, expected {expected[:12]}…); refusing a modified bundle"
                )
    return bundle


def copy_verified(bundle: Bundle, work_dir: str | os.PathLike) -> Bundle:
    """Copy a bundle into a private work folder, verify the copy, and return it.

    The copy is `work_dir/<bundle name>` and holds the manifest and the listed files only. Its
    files are hashed after copying, and its manifest digest must equal the one `bundle` was
    loaded with, so what runs is exactly what was verified, even if the original folder changes
    afterwards.

    Raises:
        ExportError: the original is missing, altered or no longer the bundle loaded earlier.
    """
    source = bundle.path
    target = Path(work_dir) / bundle.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(mode=0o700)
    try:
        for relative in [MANIFEST, *(check_bundle_path(name, f"bundle '{source}'") for name in bundle.files)]:
            origin = source / relative
            if origin.is_symlink() or not origin.is_file():
                raise ExportError(f"bundle '{source}': {relative!r} is missing or not a regular file")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, destination, follow_symlinks=False)
            # Keep the executable bit (harness binaries); never setuid/setgid or group/other write.
            os.chmod(destination, stat.S_IMODE(origin.lstat().st_mode) & 0o755)
    except OSError as exc:
        raise ExportError(f"bundle '{source}': cannot copy it to {target} ({exc.strerror or exc})") from exc
    copy = load_bundle(target)
    if bundle.manifest_sha256 and copy.manifest_sha256 != bundle.manifest_sha256:
        raise ExportError(f"bundle '{source}': its manifest changed since it was loaded "
                          f"({copy.manifest_sha256[:12]}…, was {bundle.manifest_sha256[:12]}…)")
    return copy

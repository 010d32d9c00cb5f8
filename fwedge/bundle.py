"""Bundles: a directory of deployable files plus manifest.json, written atomically, verified on load."""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from fwedge import __version__
from fwedge.errors import ExportError
from fwedge.ir import _umask, sha256_file

BUNDLE_SCHEMA = "fwedge.bundle/1"
MANIFEST = "manifest.json"


@dataclass
class TensorInfo:
    """A bundle input or output as the device sees it.

    Attributes:
        name: tensor name (the ONNX name where the target keeps it).
        shape: static shape, batch included.
        dtype: numpy dtype name on the device ("float32", "int8", ...).
        layout: "NCHW", "NHWC" or "" for non-image tensors.
        scale, zero_point: quantization parameters when dtype is an integer type.
    """

    name: str
    shape: list[int]
    dtype: str
    layout: str = ""
    scale: float | None = None
    zero_point: int | None = None


@dataclass
class Bundle:
    """A loaded or freshly written bundle. `files` maps relative path -> sha256."""

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

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, relative: str) -> Path:
        """Absolute path of a bundle file listed in the manifest."""
        if relative not in self.files:
            raise ExportError(f"bundle '{self.path}': no file {relative!r} in the manifest")
        return self.path / relative

    def manifest(self) -> dict:
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
        return data


def host_arch() -> str:
    """The host architecture in fwedge's names (x86_64, aarch64, riscv64, loongarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _check_relative(bundle_dir: Path, relative: str) -> Path:
    resolved = (bundle_dir / relative).resolve()
    if os.path.isabs(relative) or not resolved.is_relative_to(bundle_dir.resolve()):
        raise ExportError(f"bundle '{bundle_dir}': file {relative!r} points outside the bundle")
    return resolved


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
) -> Bundle:
    """Build a bundle in a temporary sibling directory, then rename it into place.

    `write_files(tmp_dir)` writes the target's files and may return extra size figures. An
    exception anywhere leaves the previous bundle at `out_dir` intact (or nothing at all).

    Returns:
        The written Bundle.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Absolute, so writers that run tools in another working directory (compilers) find it.
    temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)).resolve()
    os.chmod(temp, 0o777 & ~_umask())  # mkdtemp creates 0700; a bundle is meant to be shared
    try:
        more_sizes = write_files(temp) or {}
        files = {}
        for file in sorted(p for p in temp.rglob("*") if p.is_file()):
            relative = file.relative_to(temp).as_posix()
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
            extra=extra or {},
        )
        (temp / MANIFEST).write_text(json.dumps(bundle.manifest(), indent=2, sort_keys=True) + "\n")
        _swap_into_place(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return bundle


def _swap_into_place(temp: Path, out_dir: Path) -> None:
    """Replace out_dir by temp with renames only, so a reader never sees half a bundle."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        old.rmdir()
        os.rename(out_dir, old)
        try:
            os.rename(temp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temp, out_dir)


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) verify every file's sha256.

    Raises:
        ExportError: no manifest, wrong schema, a file missing, outside the bundle, or altered.
    """
    # Absolute: runners start tools in other working folders (the C harness runs in a temp dir).
    path = Path(path).absolute()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"bundle '{path}': no {MANIFEST}; not a fwedge bundle")
    try:
        data = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise ExportError(f"bundle '{path}': {MANIFEST} is not valid JSON ({exc})") from exc
    if data.get("schema") != BUNDLE_SCHEMA:
        raise ExportError(
            f"bundle '{path}': schema {data.get('schema')!r}, expected {BUNDLE_SCHEMA!r}"
        )
    files = data.get("files", {})
    if verify:
        for relative, expected in files.items():
            file = _check_relative(path, relative)
            if not file.is_file():
                raise ExportError(f"bundle '{path}': file {relative!r} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ExportError(
                    f"bundle '{path}': file {relative!r} does not match the manifest "
                    f"(sha256 {actual[:12]}…, expected {expected[:12]}…); refusing a modified bundle"
                )
    try:
        return Bundle(
            path=path,
            target=data["target"],
            arch=data["arch"],
            precision=data["precision"],
            source_sha256=data["source_sha256"],
            inputs=[TensorInfo(**t) for t in data["inputs"]],
            outputs=[TensorInfo(**t) for t in data["outputs"]],
            files=files,
            preprocess=data.get("preprocess", {}),
            versions=data.get("versions", {}),
            sizes=data.get("sizes", {}),
            extra=data.get("extra", {}),
        )
    except (KeyError, TypeError) as exc:
        raise ExportError(f"bundle '{path}': {MANIFEST} is missing or has a malformed field ({exc})") from exc

"""The FP32 reference a bundle is measured against: found, recorded, and verified before use.

- `fwedge quantize` writes the float model it started from into the QDQ model's metadata
  (METADATA_KEY: the path relative to the QDQ file, and the file's sha256).
- `fwedge export` records a reference in the manifest's extra (MANIFEST_KEY: the path relative
  to the bundle folder, and the sha256). It takes `--reference` when given, else the model itself
  for an fp32 export, else the float model the QDQ model names, when that file is still there
  with the same bytes.
- `fwedge run` and `fwedge farm run` use the recorded reference when no `--reference` is given.
  They parse only bytes whose sha256 is the recorded one, so a reference that changed after
  export is refused rather than compared against.

Paths are stored relative so that a folder holding both the model and its bundles can move
between machines; an absolute path is kept when no relative one exists (another drive).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnx

from fwedge import ir
from fwedge.errors import DataError, ExportError, ModelError

METADATA_KEY = "fwedge.float_model"
MANIFEST_KEY = "reference_model"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PATH = 4096


@dataclass(frozen=True)
class Reference:
    """A reference model file; `sha256` is the digest it must have (None: not verified, e.g. a
    path the user gave on the command line)."""

    path: Path
    sha256: str | None = None

    def to_manifest(self, bundle_dir: str | os.PathLike) -> dict:
        """The manifest entry, with the path relative to the (final) bundle folder."""
        return {"path": _relative(self.path, Path(bundle_dir)), "sha256": self.sha256 or of_file(self.path).sha256}

    def matches(self) -> bool:
        """Whether the file has the recorded sha256 now (True when none is recorded)."""
        return self.sha256 is None or ir.sha256_file(self.path) == self.sha256

    def load(self, input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
        """The model, parsed from bytes checked against `sha256`, with `input_shapes` fixed.

        Raises:
            ModelError: the file is missing, changed since it was recorded, or not a valid model.
        """
        model = ir.load(self.path, expect_sha256=self.sha256)
        return ir.set_input_shapes(model, input_shapes) if input_shapes else model


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # no relative path between them
        return str(path.resolve())


def of_file(path: str | os.PathLike) -> Reference:
    """A reference to a regular file, with its sha256 now.

    Raises:
        ModelError: not a regular file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"reference model '{path}': not a file")
    return Reference(path, ir.sha256_file(path))


def verify(reference: Reference) -> None:
    """Check now that a recorded reference still has its sha256 (Reference.load checks the bytes
    it parses again).

    Raises:
        ModelError: the file changed since it was recorded.
    """
    if not reference.matches():
        raise ModelError(f"reference model '{reference.path}': its sha256 is not the {reference.sha256[:12]}… "
                         "recorded with the bundle: the file changed since it was recorded")


def write_metadata(qdq: onnx.ModelProto, float_path: str | os.PathLike, qdq_path: str | os.PathLike) -> None:
    """Name the float model `float_path` in the metadata of `qdq`, which is saved at `qdq_path`."""
    reference = of_file(float_path)
    value = json.dumps({"path": _relative(reference.path, Path(qdq_path).parent), "sha256": reference.sha256})
    ir.set_metadata(qdq, METADATA_KEY, value)


def _entry(value, where: str, base: Path) -> Reference:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ModelError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(value, dict) or set(value) != {"path", "sha256"}:
        raise ModelError(f"{where}: expected an object with exactly 'path' and 'sha256'")
    path, digest = value["path"], value["sha256"]
    if not isinstance(path, str) or not path or len(path) > _MAX_PATH or "\0" in path:
        raise ModelError(f"{where}: path must be a non-empty string of at most {_MAX_PATH} characters")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ModelError(f"{where}: sha256 must be 64 lowercase hex digits")
    return Reference(Path(os.path.normpath(base / path)), digest)


def from_metadata(model: onnx.ModelProto, model_path: str | os.PathLike) -> tuple[Reference | None, str | None]:
    """The float model a QDQ model names, when that file is there with the recorded bytes.

    Returns:
        (reference, None), (None, None) when the model names none, or (None, why) when the
        named file is missing or changed: the export then records no reference and says why.

    Raises:
        ModelError: the metadata entry is malformed.
    """
    for prop in model.metadata_props:
        if prop.key != METADATA_KEY:
            continue
        reference = _entry(prop.value, f"model '{model_path}' metadata {METADATA_KEY}", Path(model_path).parent)
        if not reference.path.is_file():
            return None, f"the float model the QDQ model names, '{reference.path}', is not there"
        if not reference.matches():
            return None, f"the float model the QDQ model names, '{reference.path}', changed since quantization"
        return reference, None
    return None, None


def for_export(model: onnx.ModelProto, model_path: str | os.PathLike, is_int8: bool,
               override: str | os.PathLike | None = None) -> tuple[Reference | None, str | None]:
    """The reference an exported bundle records, and a note when none can be: `override`, else
    the model itself (fp32), else the float model the QDQ model's metadata names."""
    if override is not None:
        return of_file(override), None
    if not is_int8:
        return of_file(model_path), None
    reference, why = from_metadata(model, model_path)
    if reference is None and why is None:
        why = "the QDQ model names no float model (give --reference FLOAT.onnx)"
    return reference, why


def for_bundle(bundle, override: str | os.PathLike | None = None) -> tuple[Reference | None, str | None]:
    """The reference to measure `bundle` against: `override`, else the one its manifest records.

    Returns:
        (reference, None); (None, None) when there is none; (None, why) when the recorded file is
        not there.

    Raises:
        ExportError: the manifest's entry is malformed.
    """
    if override is not None:
        return Reference(Path(override)), None
    value = bundle.extra.get(MANIFEST_KEY)
    if value is None:
        return None, None
    try:
        reference = _entry(value, f"bundle '{bundle.path}': manifest extra.{MANIFEST_KEY}", bundle.path)
    except ModelError as exc:
        raise ExportError(str(exc)) from exc
    if not reference.path.is_file():
        return None, f"bundle '{bundle.name}' records the reference '{reference.path}', which is not there"
    return reference, None


def check_bundle_shapes(bundle, shapes: dict[str, list[int]] | None) -> None:
    """`--input-shape` on a bundle: its inputs were fixed at export, so a shape given for the
    reference must agree with the bundle's input past the batch dimension (in NCHW order; a
    bundle with one input is matched whatever the target renamed it to).

    Raises:
        DataError: an input the bundle does not have, or another shape.
    """
    aliases = bundle.onnx_names
    for name, dims in (shapes or {}).items():
        spec = next((s for s in bundle.inputs if s.name in (name, aliases.get(name))), None)
        if spec is None and len(bundle.inputs) == 1:
            spec = bundle.inputs[0]
        if spec is None:
            raise DataError(f"--input-shape {name}: bundle '{bundle.name}' has no input '{name}'; "
                            f"its inputs are {sorted(s.name for s in bundle.inputs)}")
        have = spec.logical_shape
        if len(have) != len(dims) or any(h > 0 and h != d for h, d in zip(have[1:], dims[1:])):
            raise DataError(f"--input-shape {name}={','.join(map(str, dims))}: bundle '{bundle.name}' was exported "
                            f"with input '{spec.name}' of shape {have} (NCHW)")

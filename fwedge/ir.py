"""Load, validate and atomically save ONNX models."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge.errors import ModelError

log = logging.getLogger(__name__)

MIN_OPSET = 13
_PROTOBUF_LIMIT = 2**31 - 1


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(model: onnx.ModelProto) -> str:
    """The hex sha256 of a model's serialized bytes."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset of a model (0 if it declares none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _iter_graph_tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graph_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _iter_graph_tensors(sub)


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations outside the model's folder (absolute, `..`, symlinks)."""
    folder = path.parent.resolve()
    for tensor in _iter_graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' points its external data at "
                f"{location!r}, outside the model's folder '{folder}'; refused"
            )
        if not target.is_file():
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' external data file '{target}' not found"
            )


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn main-graph Constant nodes holding tensors into initializers, in place.

    Returns:
        The number of Constant nodes converted.
    """
    graph = model.graph
    keep = []
    converted = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attribute = node.attribute[0]
            value = None
            if attribute.name == "value":
                value = numpy_helper.to_array(attribute.t)
            elif attribute.name == "value_float":
                value = np.array(attribute.f, dtype=np.float32)
            elif attribute.name == "value_floats":
                value = np.array(list(attribute.floats), dtype=np.float32)
            elif attribute.name == "value_int":
                value = np.array(attribute.i, dtype=np.int64)
            elif attribute.name == "value_ints":
                value = np.array(list(attribute.ints), dtype=np.int64)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                converted += 1
                continue
        keep.append(node)
    if converted:
        del graph.node[:]
        graph.node.extend(keep)
    return converted


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs, as IR < 4 did)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def shape_of(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value's shape: ints for static dims, the dim_param string or None for dynamic ones.

    Some exporters write -1 as a dim_value for a dynamic dimension; that counts as dynamic.
    """
    dims = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return dims


def set_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of the model with the given graph inputs fixed to static shapes, shapes re-inferred.

    Raises:
        ModelError: an unknown input name, or a rank that differs from the model's.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {value.name: value for value in graph_inputs(out)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise ModelError(f"input '{name}' not in the model; inputs are {sorted(inputs)}")
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ModelError(f"input '{name}': rank {len(dims)} in the model, got shape {list(shape)}")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, data_prop=True)


def with_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a batch of 1 on dynamic leading dims, shapes re-inferred, so that shapes
    (and MACs) are static where only the batch was dynamic. Other dynamic dims stay dynamic."""
    shapes = {}
    for value in graph_inputs(model):
        dims = shape_of(value)
        if dims and not isinstance(dims[0], int) and all(isinstance(d, int) for d in dims[1:]):
            shapes[value.name] = [1, *dims[1:]]
    if not shapes:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    return set_input_shapes(model, shapes)


def load(path: str | os.PathLike, *, upgrade: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX model.

    Checks the file, refuses external data outside the model's folder, turns Constant-node
    weights into initializers, upgrades opset < 13 with onnx.version_converter, runs the onnx
    checker and infers shapes.

    Args:
        path: the .onnx file.
        upgrade: upgrade the default-domain opset to at least 13.

    Returns:
        The validated ModelProto, with external data loaded and shapes inferred.

    Raises:
        ModelError: missing, truncated or corrupt file; not ONNX; no graph inputs; external data
            outside the folder; failed checker or conversion.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model '{path}': file not found")
    if not path.is_file():
        raise ModelError(f"model '{path}': not a file")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"model '{path}': file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise ModelError(
            f"model '{path}': not a valid ONNX protobuf, the file is truncated or corrupt ({exc})"
        ) from exc
    if model.ir_version == 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError(
            f"model '{path}': not an ONNX model (no ir_version, graph or opset_import found)"
        )
    _check_external_data(model, path)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model '{path}': cannot load external data ({exc})") from exc
    if not graph_inputs(model):
        raise ModelError(f"model '{path}': the graph has no inputs (only initializers)")
    if not model.graph.output:
        raise ModelError(f"model '{path}': the graph has no outputs")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"model '{path}': fails the ONNX checker: {first}") from exc
    converted = constants_to_initializers(model)
    if converted:
        log.info("%s: turned %d Constant nodes into initializers", path, converted)
    version = opset_version(model)
    if upgrade and version < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises plain RuntimeError / ConvertError
            raise ModelError(
                f"model '{path}': cannot upgrade opset {version} to {MIN_OPSET} ({exc})"
            ) from exc
        log.info("%s: upgraded opset %d to %d", path, version, MIN_OPSET)
        # The converter can re-emit Constant nodes (e.g. Clip min/max become inputs).
        constants_to_initializers(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"model '{path}': invalid after loading: {first}") from exc
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically: a temp file in the same folder, fsync, then rename.

    Raises:
        ModelError: the model is too large for a single protobuf file.
    """
    path = Path(path)
    data = model.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise ModelError(f"model '{path}': {len(data)} bytes exceeds the 2 GiB protobuf limit")
    write_atomic(path, data)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes or text to `path` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would.
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return path


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers by name."""
    return {init.name: init for init in model.graph.initializer}


def consumer_map(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order (tensors nobody reads are absent)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    return consumers


def value_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Shapes of every named value known to the model (inputs, outputs, value_info, initializers)."""
    shapes: dict[str, list[int | str | None]] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = shape_of(value)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes

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
from onnx import TensorProto, numpy_helper

from fwedge.errors import ModelError
from fwedge.limits import byte_limit
from fwedge.scopes import read_names, rename_reads, sort_nodes, subgraphs  # noqa: F401 (ir.* API)

log = logging.getLogger(__name__)

MIN_OPSET = 13
# Opset 13 came with IR 7. IR < 4 also required every initializer to be a graph input, which
# the initializers that passes add (Q/DQ scales, folded constants) are not.
MIN_IR_VERSION = 7
_PROTOBUF_LIMIT = 2**31 - 1
# No tensor a model creates from constants may be larger than this (FWEDGE_MAX_TENSOR_BYTES):
# shape inference, constant folding and calibration would otherwise allocate it.
DEFAULT_MAX_TENSOR_BYTES = 4 << 30

# Bytes per element of the fixed-size tensor types, and the typed field each stores its
# values in when not in raw_data (onnx.proto: TensorProto).
_ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.UINT16: 2,
    TensorProto.INT16: 2, TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8, TensorProto.UINT32: 4, TensorProto.UINT64: 8,
    TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16, TensorProto.BFLOAT16: 2,
}
_TYPED_FIELD = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.COMPLEX128: ("double_data", 2), TensorProto.STRING: ("string_data", 1),
    **{dtype: ("int32_data", 1) for dtype in (TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
                                              TensorProto.UINT16, TensorProto.UINT8, TensorProto.BOOL,
                                              TensorProto.FLOAT16, TensorProto.BFLOAT16)},
}


# 8-bit floats are one byte each; 4-bit types pack two elements per byte (and per int32_data
# entry). Looked up by name: older onnx releases do not define them.
_BYTE_TYPES = [getattr(TensorProto, name) for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
                                                       "FLOAT8E8M0") if hasattr(TensorProto, name)]
_NIBBLE_TYPES = [getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                 if hasattr(TensorProto, name)]
_ITEMSIZE.update({dtype: 1 for dtype in _BYTE_TYPES})
_TYPED_FIELD.update({dtype: ("int32_data", 1) for dtype in _BYTE_TYPES})
_KNOWN_TYPES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def _stored_size(data_type: int, elements: int) -> int | None:
    """Bytes of raw_data for `elements` values of `data_type` (None for strings)."""
    if data_type in _ITEMSIZE:
        return elements * _ITEMSIZE[data_type]
    if data_type in _NIBBLE_TYPES:
        return (elements + 1) // 2
    return None


def max_tensor_bytes() -> int:
    """The cap on a tensor a model creates from constants (FWEDGE_MAX_TENSOR_BYTES, bytes).

    Raises:
        ModelError: the variable is set but is not a positive integer.
    """
    return byte_limit("FWEDGE_MAX_TENSOR_BYTES", DEFAULT_MAX_TENSOR_BYTES, ModelError)


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


def _check_strings(message, path: Path, where: str) -> None:
    """Refuse string fields that are not valid UTF-8 (the protobuf runtime hands them over as bytes).

    Names flow into checkers, messages, generated code and reports, which all expect text.
    Tensor payloads (raw_data) are not read here.
    """
    if isinstance(message, onnx.TensorProto):
        fields = [(message.DESCRIPTOR.fields_by_name[name], getattr(message, name))
                  for name in ("name", "doc_string", "external_data", "string_data") if _has(message, name)]
    else:
        fields = message.ListFields()
    for descriptor, value in fields:
        label = f"{where}.{descriptor.name}" if where else descriptor.name
        repeated = _is_repeated(descriptor)
        items = list(value) if repeated else [value]
        if descriptor.type == descriptor.TYPE_STRING:
            for index, item in enumerate(items):
                if isinstance(item, bytes):
                    spot = f"{label}[{index}]" if repeated else label
                    raise ModelError(f"model '{path}': {spot} is not valid UTF-8 ({item[:40]!r})")
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            for index, item in enumerate(items):
                _check_strings(item, path, f"{label}[{index}]" if repeated else label)


def _is_repeated(descriptor) -> bool:
    flag = getattr(descriptor, "is_repeated", None)
    return flag if isinstance(flag, bool) else descriptor.label == descriptor.LABEL_REPEATED


def _has(tensor: onnx.TensorProto, name: str) -> bool:
    value = getattr(tensor, name)
    return bool(value) if name in ("external_data", "string_data") else tensor.HasField(name)


def _tensor_elements(tensor: onnx.TensorProto, path: Path) -> int:
    if any(dim < 0 for dim in tensor.dims):
        raise ModelError(f"model '{path}': tensor '{tensor.name}' has negative dims {list(tensor.dims)}")
    # numpy refuses a shape whose non-zero dims multiply past 2**63 bytes, even when a 0 makes it empty.
    if int(np.prod([max(dim, 1) for dim in tensor.dims], dtype=object)) > 2**58:
        raise ModelError(f"model '{path}': tensor '{tensor.name}' has dims {list(tensor.dims)} too large for any array")
    return int(np.prod(list(tensor.dims), dtype=object))


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external data outside the model's folder (absolute, `..`, symlinks, NUL bytes), and
    byte ranges that do not fit the file or the tensor, before anything is read."""
    folder = path.parent.resolve()
    for tensor in _iter_graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if "\0" in location:
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' has an external data location holding a NUL byte "
                f"({location!r}); refused"
            )
        shown = location if len(location) <= 200 else location[:200] + "..."
        try:
            target = (folder / location).resolve()
            if not location or os.path.isabs(location) or not target.is_relative_to(folder):
                raise ModelError(
                    f"model '{path}': tensor '{tensor.name}' points its external data at "
                    f"{shown!r}, outside the model's folder '{folder}'; refused"
                )
            if not target.is_file():
                raise ModelError(
                    f"model '{path}': tensor '{tensor.name}' external data file {shown!r} not found"
                )
            size = target.stat().st_size
        except OSError as exc:  # a name too long, a symlink loop
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' external data location {shown!r} is unusable "
                f"({exc.strerror})"
            ) from exc
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else size - offset
        except ValueError as exc:
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' external data offset/length must be integers, "
                f"got {entries.get('offset')!r}/{entries.get('length')!r}"
            ) from exc
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(
                f"model '{path}': tensor '{tensor.name}' external data range {offset}+{length} does not fit "
                f"'{target.name}' ({size} bytes)"
            )
        expected = _stored_size(tensor.data_type, _tensor_elements(tensor, path))
        if expected is not None:
            if length != expected:
                raise ModelError(
                    f"model '{path}': tensor '{tensor.name}' of shape {list(tensor.dims)} needs {expected} bytes "
                    f"of external data, its range holds {length}"
                )


def _check_tensor_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse initializers and constant tensors whose stored data does not match their shape."""
    for tensor in _iter_graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # checked, then loaded into raw_data by load_external_data_for_model
        elements = _tensor_elements(tensor, path)
        if tensor.data_type not in _KNOWN_TYPES:
            raise ModelError(f"model '{path}': initializer '{tensor.name}' has unknown data type {tensor.data_type}")
        if tensor.HasField("raw_data"):
            want = _stored_size(tensor.data_type, elements)
            if want is None:
                continue
            have = len(tensor.raw_data)
        elif tensor.data_type in _TYPED_FIELD:
            field_name, per_element = _TYPED_FIELD[tensor.data_type]
            have, want = len(getattr(tensor, field_name)), elements * per_element
        elif tensor.data_type in _NIBBLE_TYPES:
            have, want = len(tensor.int32_data), (elements + 1) // 2
        else:
            continue
        if have != want:
            raise ModelError(
                f"model '{path}': initializer '{tensor.name}' of shape {list(tensor.dims)} "
                f"holds {have} values/bytes, expected {want}"
            )


def _check_value_types(model: onnx.ModelProto, path: Path) -> None:
    """Refuse graph inputs, outputs and value_info whose tensor element type onnx does not define."""
    graph = model.graph
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            if value.type.HasField("tensor_type"):
                elem = value.type.tensor_type.elem_type
                if elem and elem not in _KNOWN_TYPES:
                    raise ModelError(f"model '{path}': graph {kind} '{value.name}' has unknown element type {elem}")


def _constant_array(name: str, inits: dict) -> np.ndarray | None:
    tensor = inits.get(name)
    if tensor is None or tensor.data_type not in _ITEMSIZE or _tensor_elements_unchecked(tensor) > 64:
        return None
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError):
        return None


def _tensor_elements_unchecked(tensor: onnx.TensorProto) -> int:
    return int(np.prod([max(dim, 0) for dim in tensor.dims], dtype=object))


def _check_constant_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Refuse ConstantOfShape/Expand/Tile/Range nodes whose constant inputs make a huge tensor.

    Checked before shape inference and constant folding, which would otherwise build it.
    """
    inits = initializer_map(model)
    limit = max_tensor_bytes()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("ConstantOfShape", "Expand", "Tile", "Range"):
            continue
        inputs = list(node.input) + [""] * 3
        elements = None
        itemsize = 4
        if node.op_type == "ConstantOfShape":
            shape = _constant_array(inputs[0], inits)
            if shape is not None:
                elements = int(np.prod([max(int(d), 0) for d in shape.ravel()], dtype=object))
            for attribute in node.attribute:
                if attribute.name == "value":
                    itemsize = _ITEMSIZE.get(attribute.t.data_type, 4)
        elif node.op_type == "Expand":
            shape = _constant_array(inputs[1], inits)
            if shape is not None:
                elements = int(np.prod([max(int(d), 1) for d in shape.ravel()], dtype=object))
        elif node.op_type == "Tile":
            repeats = _constant_array(inputs[1], inits)
            if repeats is not None:
                base = inits.get(inputs[0])
                known = _tensor_elements_unchecked(base) if base is not None else 1
                elements = known * int(np.prod([max(int(r), 0) for r in repeats.ravel()], dtype=object))
        else:
            values = [_constant_array(name, inits) for name in inputs[:3]]
            if all(value is not None and value.size == 1 for value in values):
                start, stop, delta = (float(value.ravel()[0]) for value in values)
                if delta != 0 and all(np.isfinite([start, stop, delta])):
                    elements = max(int(np.ceil((stop - start) / delta)), 0)
                elif delta == 0:
                    raise ModelError(f"model '{path}': Range node '{node.name}' has delta 0")
        if elements is not None and elements * itemsize > limit:
            raise ModelError(
                f"model '{path}': {node.op_type} node '{node.name}' makes a tensor of {elements} elements "
                f"({elements * itemsize} bytes), more than FWEDGE_MAX_TENSOR_BYTES={limit}"
            )


def _check_static_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a model any of whose statically shaped tensors exceeds FWEDGE_MAX_TENSOR_BYTES."""
    limit = max_tensor_bytes()
    producers = {output: node for node in model.graph.node for output in node.output}
    for value in list(model.graph.value_info) + list(model.graph.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if not all(dim.HasField("dim_value") for dim in dims):
            continue
        size = int(np.prod([max(dim.dim_value, 0) for dim in dims], dtype=object)) * _ITEMSIZE.get(tensor_type.elem_type, 1)
        if size > limit:
            node = producers.get(value.name)
            made_by = f"{node.op_type} node '{node.name}' makes " if node is not None else ""
            raise ModelError(
                f"model '{path}': {made_by}tensor '{value.name}' of shape {[dim.dim_value for dim in dims]} "
                f"({size} bytes), more than FWEDGE_MAX_TENSOR_BYTES={limit}"
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


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove, in place, initializers (and their graph-input entries) that no node (nor any
    subgraph) or output reads."""
    used = read_names(graph) | {value.name for value in graph.output}
    names = {init.name for init in graph.initializer}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name in used or value.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)


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


def input_dtype(value: onnx.ValueInfoProto) -> np.dtype:
    """The numpy dtype calibration and evaluation data is fed as: the value's own integer dtype
    (token ids, byte values), else float32 (float16 and float64 inputs take float32 data, which
    the float model has been fed with so far)."""
    elem_type = value.type.tensor_type.elem_type
    if elem_type and elem_type != onnx.TensorProto.BOOL:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        if np.issubdtype(dtype, np.integer):
            return np.dtype(dtype)
    return np.dtype(np.float32)


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) one metadata_props entry of `model`."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def set_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of the model with the given graph inputs fixed to static shapes, shapes re-inferred.

    Raises:
        ModelError: an unknown input name, or a rank that differs from the model's.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {value.name: value for value in graph_inputs(out)}
    fixed_batches = set()
    for name, shape in shapes.items():
        if name not in inputs:
            raise ModelError(f"input '{name}' not in the model; inputs are {sorted(inputs)}")
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ModelError(f"input '{name}': rank {len(dims)} in the model, got shape {list(shape)}")
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 1 and int(shape[0]) == 1:
            fixed_batches.add(dims[0].dim_value)
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    _resize_sizes_batch_one(out, fixed_batches)
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, data_prop=True)


def _resize_sizes_batch_one(model: onnx.ModelProto, fixed_batches: set[int]) -> None:
    """A model exported at a fixed batch N > 1 carries N in its Resize `sizes` constants; with its
    inputs at batch 1 those would resize the batch axis, so a sizes constant whose batch entry is
    such an N gets 1 there (a copy per node: a shared initializer keeps its other readers)."""
    if not fixed_batches:
        return
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        sizes = numpy_helper.to_array(inits[node.input[3]])
        if sizes.ndim == 1 and sizes.size >= 1 and int(sizes[0]) in fixed_batches:
            name = f"{node.input[3]}__batch1_{node.name or node.output[0]}"
            model.graph.initializer.append(numpy_helper.from_array(np.concatenate([[1], sizes[1:]]).astype(sizes.dtype), name))
            node.input[3] = name
    for value in model.graph.output:  # declared at the old batch
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value in fixed_batches:
            dims[0].Clear()


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


def load(path: str | os.PathLike, *, upgrade: bool = True, expect_sha256: str | None = None) -> onnx.ModelProto:
    """Load and validate an ONNX model.

    Checks the file, refuses external data outside the model's folder, turns Constant-node
    weights into initializers, upgrades opset < 13 with onnx.version_converter, runs the onnx
    checker and infers shapes.

    Args:
        path: the .onnx file.
        upgrade: upgrade the default-domain opset to at least 13.
        expect_sha256: refuse the file unless the bytes read (the ones parsed) have this sha256.

    Returns:
        The validated ModelProto, with external data loaded and shapes inferred.

    Raises:
        ModelError: missing, truncated or corrupt file; not ONNX; no graph inputs; external data
            outside the folder; failed checker or conversion; a digest other than expect_sha256.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model '{path}': file not found")
    if not path.is_file():
        raise ModelError(f"model '{path}': not a file")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"model '{path}': file is empty")
    if expect_sha256 is not None and hashlib.sha256(data).hexdigest() != expect_sha256:
        raise ModelError(f"model '{path}': its sha256 is {hashlib.sha256(data).hexdigest()[:12]}…, "
                         f"expected {expect_sha256[:12]}…: the file changed since it was recorded")
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
    _check_strings(model, path, "")
    _check_external_data(model, path)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model '{path}': cannot load external data ({exc})") from exc
    _check_tensor_data(model, path)
    _check_value_types(model, path)
    if not graph_inputs(model):
        raise ModelError(f"model '{path}': the graph has no inputs (only initializers)")
    if not model.graph.output:
        raise ModelError(f"model '{path}': the graph has no outputs")
    if sort_nodes(model.graph):
        # onnxruntime sorts such a graph itself and runs it; the checker and fwedge's passes,
        # which walk the node list once, need the order.
        log.info("%s: nodes were not in topological order; sorted", path)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())[:600]
        raise ModelError(f"model '{path}': fails the ONNX checker: {first}") from exc
    converted = constants_to_initializers(model)
    if converted:
        log.info("%s: turned %d Constant nodes into initializers", path, converted)
    _check_constant_sizes(model, path)
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
        _check_constant_sizes(model, path)
    if upgrade and model.ir_version < MIN_IR_VERSION:
        # The converter keeps the IR version; the upgraded opset needs IR 7.
        log.info("%s: upgraded IR version %d to %d", path, model.ir_version, MIN_IR_VERSION)
        model.ir_version = MIN_IR_VERSION
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"model '{path}': invalid after loading: {first}") from exc
    _check_static_sizes(model, path)
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

"""Op card: Slice, Split and Gather on constant indices (take), the data movement of YOLO heads
(Split of the box and class channels), of attention (Slice of q, k, v) and of OCR heads.

Each output element comes from one input element: for every non-batch axis the card computes,
once, the source index of every output index (a table per axis), by the ONNX rule of the op:

    Slice: starts, ends, axes, steps (constants; negative values and clamping as ONNX has them);
    Split: one contiguous range of the axis per output (split sizes, or equal parts);
    Gather: the constant indices along `axis` (negative ones wrap); a scalar index drops the axis.

The kernel is then a gather with those tables in every runtime (take: y[n, i, j, k] =
x[n, t1[i], t2[j], t3[k]]), and each target checks that it can express them (TFLite:
STRIDED_SLICE for arithmetic progressions, GATHER for one axis of any table; ncnn: Crop and
Slice for contiguous ranges). The batch axis is never sliced. In int8 the output keeps the
input's scale and zero point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.ir import max_tensor_bytes
from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, note_float, same_quant_chain
from fwedge.lowered.graph import LoweredOp, LoweredTensor, ReshapeAttrs
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

MAX_RANK = 4


@dataclass(frozen=True)
class TakeAttrs:
    """The source index of every output index, per non-batch axis (logical NCHW order)."""

    tables: tuple[tuple[int, ...], ...]


def _ints(consts: dict, name: str) -> list[int] | None:
    value = consts.get(name) if name else None
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        return None
    return [int(v) for v in value.reshape(-1)]


def _static(shapes: dict, name: str) -> list[int] | None:
    shape = shapes.get(name)
    if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return list(shape)


def _slice_tables(consts: dict, node: onnx.NodeProto, shape: list[int]) -> list[list[int]] | str:
    starts, ends = _ints(consts, node.input[1]), _ints(consts, node.input[2])
    if starts is None or ends is None or len(starts) != len(ends):
        return "starts and ends must be 1-D integer constants of one length"
    axes = _ints(consts, node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    steps = _ints(consts, node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    if axes is None or steps is None or len(axes) != len(starts) or len(steps) != len(starts):
        return "axes and steps must be integer constants as long as starts"
    tables = [list(range(d)) for d in shape]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -len(shape) <= axis < len(shape) or step == 0:
            return f"axis {axis} or step {step}: an axis of the rank-{len(shape)} input, a step other than 0"
        # ONNX Slice clamps as Python slicing does (negative values count from the end).
        tables[axis % len(shape)] = list(range(shape[axis % len(shape)]))[slice(start, end, step)]
    return tables


def _split_tables(consts: dict, node: onnx.NodeProto, shape: list[int], index: int) -> list[list[int]] | str:
    axis = int(attribute(node, "axis", 0))
    if not -len(shape) <= axis < len(shape):
        return f"axis {axis} of a rank-{len(shape)} input"
    axis %= len(shape)
    sizes = _ints(consts, node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "split", None)
    count = len(node.output)
    if sizes is None:
        part = -(-shape[axis] // count)  # equal parts, the last one smaller (opset 18)
        sizes = [min(part, max(shape[axis] - part * i, 0)) for i in range(count)]
    sizes = [int(s) for s in sizes]
    if len(sizes) != count or any(s < 0 for s in sizes) or sum(sizes) != shape[axis]:
        return f"split sizes {sizes[:8]} for {count} outputs of an axis of {shape[axis]}"
    tables = [list(range(d)) for d in shape]
    begin = sum(sizes[:index])
    tables[axis] = list(range(begin, begin + sizes[index]))
    return tables


def _gather_tables(consts: dict, node: onnx.NodeProto, shape: list[int]) -> list[list[int]] | str:
    indices = consts.get(node.input[1])
    axis = int(attribute(node, "axis", 0))
    if indices is None or indices.dtype.kind not in "iu" or indices.ndim > 1:
        return "indices must be a scalar or 1-D integer constant"
    if not -len(shape) <= axis < len(shape):
        return f"axis {axis} of a rank-{len(shape)} input"
    axis %= len(shape)
    values = [int(v) for v in indices.reshape(-1)]
    if any(not -shape[axis] <= v < shape[axis] for v in values):
        return f"indices {values[:8]} outside an axis of {shape[axis]}"
    tables = [list(range(d)) for d in shape]
    tables[axis] = [v % shape[axis] for v in values]
    return tables


def take_tables(consts: dict, shapes: dict, node: onnx.NodeProto, output: int = 0) -> list[list[int]] | str:
    """The per-axis source tables (batch axis included) of one output of a Slice, Split or
    Gather, or why they cannot be made. `consts` and `shapes` are a view's."""
    shape = _static(shapes, node.input[0]) if node.input else None
    if shape is None:
        return "input shape must be static"
    if not 1 <= len(shape) <= MAX_RANK:
        return f"rank-{len(shape)} input, at most {MAX_RANK}-D"
    if node.op_type == "Slice":
        if len(node.input) < 3:
            return "Slice with starts and ends as inputs (opset 10 or later)"
        tables = _slice_tables(consts, node, shape)
    elif node.op_type == "Split":
        tables = _split_tables(consts, node, shape, output)
    else:
        tables = _gather_tables(consts, node, shape)
    if isinstance(tables, str):
        return tables
    if tables[0] != list(range(shape[0])):
        return "takes along the batch axis"
    if any(not t for t in tables):
        return "an empty output"
    if int(np.prod([len(t) for t in tables], dtype=object)) * 4 > max_tensor_bytes():
        return f"an output of more than the {max_tensor_bytes():,} bytes of FWEDGE_MAX_TENSOR_BYTES"
    return tables


def progression(table) -> tuple[int, int] | None:
    """(start, step) when a table is an arithmetic progression (a strided slice), else None."""
    table = list(table)
    step = table[1] - table[0] if len(table) > 1 else 1
    if step == 0 or any(b - a != step for a, b in zip(table, table[1:])):
        return None
    return table[0], step


def stored_tables(shape, tables) -> tuple[list[list[int]], list[int]]:
    """A take's tables with the batch axis's own in front, and the input's dims, both in the
    order C and TFLite store tensors (NHWC for 4-D)."""
    full, dims = [list(range(int(shape[0])))] + [list(t) for t in tables], [int(d) for d in shape]
    if len(shape) == 4:
        full, dims = [full[axis] for axis in (0, 2, 3, 1)], [dims[axis] for axis in (0, 2, 3, 1)]
    return full, dims


def changed_axes(tables, shape) -> list[int]:
    """The axes whose table is not the whole axis in order."""
    return [axis for axis, table in enumerate(tables) if list(table) != list(range(shape[axis]))]


def check_take(view, node: onnx.NodeProto) -> str | None:
    """Why a Slice, Split or Gather cannot be lowered (or written for ncnn), or None."""
    for index in range(len(node.output)):
        tables = take_tables(view.consts, view.shapes, node, index)
        if isinstance(tables, str):
            return tables
    return None


def _lower_take(builder: Builder, node: onnx.NodeProto) -> None:
    operands = int8_operands(builder, node, (0,))
    int8 = operands is not None
    for index, name in enumerate(node.output):
        if not name:
            continue
        tables = take_tables(builder.view.consts, builder.view.shapes, node, index)
        attrs = TakeAttrs(tuple(tuple(t) for t in tables[1:]))
        kept = tuple([builder.shape(node.input[0])[0]] + [len(t) for t in tables[1:]])
        label = node.name if len(node.output) == 1 else f"{node.name}:{index}"
        out = _output(builder, node, name) if int8 else None
        if out is not None:
            _emit_int8(builder, label, name, kept, attrs, operands[0], out)
            continue
        note_float(builder, node)
        x = builder.float_input(node.input[0])
        y = float_output(builder, name)
        if kept != tuple(builder.shape(name)):
            middle = builder.add_tensor(LoweredTensor(builder.fresh(f"{name}_taken"), kept, "float32"))
            builder.emit("take", label, [x], [middle], attrs)
            builder.emit("reshape", f"{label}_reshape", [middle], [y], ReshapeAttrs(builder.shape(name)))
        else:
            builder.emit("take", label, [x], [y], attrs)


def _output(builder: Builder, node: onnx.NodeProto, name: str):
    """int8_output for one output of a (possibly multi-output) node."""
    single = onnx.NodeProto()
    single.CopyFrom(node)
    del single.output[:]
    single.output.append(name)
    return int8_output(builder, single)


def _emit_int8(builder: Builder, label: str, name: str, kept, attrs: TakeAttrs, x_q, out) -> None:
    y_name, y_quant = out
    if kept == tuple(builder.shape(y_name)):
        fake = onnx.NodeProto(name=label, output=[name])
        same_quant_chain(builder, fake, "take", attrs, x_q, out)
        return
    middle = builder.add_tensor(LoweredTensor(builder.fresh(f"{name}_taken"), kept, "int8", x_q.quant))
    builder.emit("take", label, [x_q.name], [middle], attrs)
    fake = onnx.NodeProto(name=f"{label}_reshape", output=[name])
    same_quant_chain(builder, fake, "reshape", ReshapeAttrs(builder.shape(y_name)), builder.tensors[middle], out)


def run_take(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    return x[(slice(None),) + np.ix_(*[list(t) for t in op.attrs.tables])] if op.attrs.tables else x


register_kind("take", run_take)
_MOVE = OpInfo(quantize_output=False, shares_input_scale=True)
for _op in ("Slice", "Split", "Gather"):
    register_op(_op, _MOVE, kinds=("take",), lower=_lower_take, check=check_take, static_output=True)

"""Op card: PRelu, y = x >= 0 ? x : slope[c] * x with one constant slope per channel (or one).

In int8 it becomes one int8[256] table per channel, computed from the float function between
the exact input and output scales, as the element-wise functions of unary.py are. The slope
stays float in the QDQ model (fwedge.quantization.plan keeps it, as it keeps Clip's bounds),
so the reference is DQ -> PRelu(float slope) -> Q, and the tables reproduce it exactly.
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, note_float
from fwedge.lowered.graph import INT8_MAX, INT8_MIN, LoweredOp, PreluAttrs
from fwedge.lowered.view import QdqView, weight_value
from fwedge.ops.base import OpInfo, register_kind, register_op


def slopes(view, node: onnx.NodeProto) -> np.ndarray | str:
    """The node's slope as float32[C] along axis 1 (or [1]), or why it cannot be taken.

    `view` is the lowering's QdqView or the ncnn writer's FloatView: both have consts and shapes.
    """
    if len(node.input) < 2 or not node.input[1]:
        return "PRelu without a slope"
    slope = view.consts.get(node.input[1])
    if slope is None and isinstance(view, QdqView):  # the ncnn writer's float view has no DQ left
        slope = weight_value(view, node.input[1])
    if slope is None:
        return "slope must be a constant"
    rank = len(view.shapes.get(node.input[0]) or [])
    if rank not in (2, 4):
        return f"rank-{rank} input, only 2-D (N, C) and 4-D (N, C, H, W)"
    shape = view.shapes.get(node.input[0])
    channels = int(shape[1]) if shape and isinstance(shape[1], int) and shape[1] > 0 else None
    slope = np.asarray(slope, dtype=np.float32)
    if slope.size == 1:
        return slope.reshape(1)
    # Broadcast against (N, C[, H, W]) puts a per-channel slope on axis 1 only in these shapes.
    per_channel = {2: [(slope.size,)], 4: [(slope.size, 1, 1), (1, slope.size, 1, 1)]}[rank]
    if tuple(slope.shape) not in per_channel or slope.size != channels:
        return f"slope of shape {list(slope.shape)}: only one slope, or one per channel of axis 1"
    return slope.reshape(-1)


def _check_prelu(view: QdqView, node: onnx.NodeProto) -> str | None:
    found = slopes(view, node)
    return found if isinstance(found, str) else None


def prelu_reference(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x >= 0 ? x : slope[c] * x, with c on axis 1 (float64 when x is)."""
    shape = [1] * x.ndim
    shape[1] = slope.size
    return np.where(x >= 0, x, slope.reshape(shape).astype(x.dtype) * x)


def tables(slope: np.ndarray, x_quant, y_quant) -> np.ndarray:
    """int8[C, 256]: channel c's y_q for every x_q, rounded half to even as QuantizeLinear."""
    levels = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64)
    x = ((levels - x_quant.zero_point[0]) * np.float32(x_quant.scale[0])).astype(np.float32)
    y = np.where(x[None, :] >= 0, x[None, :], slope[:, None] * x[None, :]).astype(np.float32)
    q = np.clip(np.round(y / np.float32(y_quant.scale[0])) + y_quant.zero_point[0], INT8_MIN, INT8_MAX)
    return q.astype(np.int8)


def _lower_prelu(builder: Builder, node: onnx.NodeProto) -> None:
    slope = slopes(builder.view, node)
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        (x_q,), (y_name, y_quant) = operands, out
        builder.emit("prelu", node.name, [x_q.name], [y_name], PreluAttrs(slope, tables(slope, x_q.quant, y_quant)))
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("prelu", node.name, [x], [float_output(builder, node.output[0])], PreluAttrs(slope))


def run_prelu(op: LoweredOp, values, tensors):
    """Interpreter kernel: the per-channel tables in int8, the reference in float64."""
    x = values[op.inputs[0]]
    slope = op.attrs.slope
    if x.dtype == np.int8:
        luts = op.attrs.luts
        channel = np.arange(x.shape[1]).reshape([1, -1] + [1] * (x.ndim - 2)) if luts.shape[0] > 1 else 0
        return luts[channel, x.astype(np.int64) + 128]
    return prelu_reference(x.astype(np.float64), slope.astype(np.float64)).astype(np.float32)


register_kind("prelu", run_prelu)
# Not channel_passthrough: pruning would have to slice the slope, whose channel axis depends on
# its shape; PRelu blocks channel groups instead.
register_op("PRelu", OpInfo(quantizable=True), kinds=("prelu",), lower=_lower_prelu, check=_check_prelu)

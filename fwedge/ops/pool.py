"""Op card: pools. MaxPool (max_pool), AveragePool (avg_pool), GlobalAveragePool and a
ReduceMean over H and W (global_avg_pool), GlobalMaxPool (max_pool with the whole H x W as its
window; a rank-3 [N, C, L] input as [N, C, L, 1], as TF-converted 1-D models pool).
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.lowered.build import (
    Builder, conv_geometry, emit_requantize, float_output, int8_operands, int8_output, note_float, requant,
    lower_data_movement,
)
from fwedge.lowered.arith import multiply_by_quantized_multiplier, requantize, sliding_windows, zp
from fwedge.lowered.graph import (
    INT8_MIN, GlobalPoolAttrs, LoweredOp, LoweredTensor, PoolAttrs, ReshapeAttrs,
)
from fwedge.lowered.view import input_rank
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

def _pool_geometry(builder: Builder, node: onnx.NodeProto) -> dict:
    geometry = conv_geometry(builder, node, (0, 0) + tuple(attribute(node, "kernel_shape")))
    if attribute(node, "ceil_mode", 0):
        # ceil_mode: extra end padding so that the floor formula gives the inferred output size.
        in_shape, out_shape = builder.shape(node.input[0]), builder.shape(node.output[0])
        pads = list(geometry["pads"])
        for axis in range(2):
            need = (out_shape[2 + axis] - 1) * geometry["strides"][axis] + geometry["kernel"][axis]
            have = in_shape[2 + axis] + pads[axis] + pads[axis + 2]
            pads[axis + 2] += max(need - have, 0)
        geometry["pads"] = tuple(pads)
    geometry.pop("dilations")
    return geometry


def _lower_pool(builder: Builder, node: onnx.NodeProto) -> None:
    kind = "max_pool" if node.op_type == "MaxPool" else "avg_pool"
    attrs = PoolAttrs(**_pool_geometry(builder, node),
                      count_include_pad=bool(attribute(node, "count_include_pad", 0)))
    if kind == "max_pool":
        lower_data_movement(builder, node, kind, attrs)
        return
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        (x_q,), (y_name, y_quant) = operands, out
        area = attrs.kernel[0] * attrs.kernel[1]
        counts = np.arange(area + 1, dtype=np.float64)
        counts[0] = 1.0
        reals = np.float64(x_q.quant.scale[0]) / (np.float64(y_quant.scale[0]) * counts)
        attrs = PoolAttrs(attrs.kernel, attrs.strides, attrs.pads, attrs.count_include_pad,
                          requant(reals, "none", y_quant))
        builder.emit(kind, node.name, [x_q.name], [y_name], attrs)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit(kind, node.name, [x], [float_output(builder, node.output[0])], attrs)


def _lower_global_pool(builder: Builder, node: onnx.NodeProto) -> None:
    in_shape = builder.shape(node.input[0])
    out_shape = builder.shape(node.output[0])
    keep = len(out_shape) == 4
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    pooled_shape = (1, in_shape[1], 1, 1)
    if out is not None:
        (x_q,) = operands
        y_name, y_quant = out
        target = y_name if keep else builder.fresh(f"{node.output[0]}_keepdims")
        if not keep:
            builder.add_tensor(LoweredTensor(target, pooled_shape, "int8", y_quant))
        real = np.float64(x_q.quant.scale[0]) / (np.float64(y_quant.scale[0]) * in_shape[2] * in_shape[3])
        builder.emit("global_avg_pool", node.name, [x_q.name], [target],
                     GlobalPoolAttrs(requant([real], "none", y_quant)))
    else:
        note_float(builder, node)
        x = builder.float_input(node.input[0])
        target = node.output[0] if keep else builder.fresh(f"{node.output[0]}_keepdims")
        builder.add_tensor(LoweredTensor(target, pooled_shape, "float32"))
        builder.emit("global_avg_pool", node.name, [x], [target], GlobalPoolAttrs())
        y_name = node.output[0]
        if not keep:
            float_output(builder, y_name)
    if not keep:
        builder.emit("reshape", f"{node.name}_squeeze", [target], [y_name], ReshapeAttrs(out_shape))


def _lower_global_max_pool(builder: Builder, node: onnx.NodeProto) -> None:
    """max_pool over the whole H x W (a rank-3 input reshaped to [N, C, L, 1] first), then a
    reshape to the output's shape; int8 keeps the input's quantization (a requantize if the
    output's differs), as MaxPool does."""
    in_shape, out_shape = tuple(builder.shape(node.input[0])), tuple(builder.shape(node.output[0]))
    shape4 = in_shape + (1,) * (4 - len(in_shape))
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        source, (y_name, y_quant), dtype = operands[0], out, "int8"
    else:
        note_float(builder, node)
        source = builder.tensors[builder.float_input(node.input[0])]
        y_name, y_quant, dtype = float_output(builder, node.output[0]), None, "float32"

    def step(kind: str, suffix: str, x: str, shape: tuple, attrs, quant=source.quant) -> str:
        name = builder.fresh(f"{node.output[0]}_{suffix}")
        builder.add_tensor(LoweredTensor(name, shape, dtype, quant))
        builder.emit(kind, f"{node.name}_{suffix}" if suffix != "pooled" else node.name, [x], [name], attrs)
        return name

    x = source.name if shape4 == in_shape else step("reshape", "4d", source.name, shape4, ReshapeAttrs(shape4))
    pooled_shape = (shape4[0], shape4[1], 1, 1)
    pooled = step("max_pool", "pooled", x, pooled_shape, PoolAttrs((shape4[2], shape4[3]), (1, 1), (0, 0, 0, 0)))
    if y_quant is not None and not source.quant.same_as(y_quant):
        requantized = builder.fresh(f"{node.output[0]}_requantized")
        builder.add_tensor(LoweredTensor(requantized, pooled_shape, dtype, y_quant))
        emit_requantize(builder, f"{node.name}_requantize", builder.tensors[pooled], requantized, y_quant)
        pooled = requantized
    builder.emit("reshape", f"{node.name}_output", [pooled], [y_name], ReshapeAttrs(out_shape))


def _pool_counts(shape, attrs) -> np.ndarray:
    """How many window positions fall inside the input, per output position [OH, OW]."""
    ones = np.ones((1, 1) + tuple(shape[2:]), dtype=np.int64)
    windows = sliding_windows(ones, attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0)
    return windows.sum(axis=(4, 5))[0, 0]


def run_avg_pool(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    attrs = op.attrs
    area = attrs.kernel[0] * attrs.kernel[1]
    counts = np.full_like(_pool_counts(x.shape, attrs), area) if attrs.count_include_pad else _pool_counts(x.shape, attrs)
    if Y.dtype == "int8":
        acc = sliding_windows(x.astype(np.int64) - zp(X), attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0).sum(axis=(4, 5))
        requant = attrs.requant
        y = multiply_by_quantized_multiplier(acc, requant.multiplier[counts], requant.shift[counts]) + zp(Y)
        return np.clip(y, requant.act_min, requant.act_max).astype(np.int8)
    acc = sliding_windows(x.astype(np.float64), attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0.0).sum(axis=(4, 5))
    return (acc / counts).astype(np.float32)


def run_max_pool(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    attrs = op.attrs
    fill = INT8_MIN if x.dtype == np.int8 else -np.inf
    return sliding_windows(x, attrs.kernel, attrs.strides, (1, 1), attrs.pads, fill).max(axis=(4, 5)).astype(x.dtype)


def run_global_avg_pool(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    if Y.dtype == "int8":
        acc = (x.astype(np.int64) - zp(X)).sum(axis=(2, 3), keepdims=True)
        return requantize(acc, op.attrs.requant, zp(Y), axis=None)
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True).astype(np.float32)


def _check_pool(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    if rank != 4:
        return f"rank-{rank} pool, only 2-D"
    if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
        return "dilated pooling"
    if attribute(node, "storage_order", 0):
        return "storage_order"
    if len(node.output) > 1 and node.output[1]:
        return "MaxPool indices output"
    return None


def _check_global_pool(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    return f"rank-{rank} global pool" if rank != 4 else None


def _check_global_max_pool(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    return f"rank-{rank} global max pool, only rank 3 and 4" if rank not in (3, 4) else None


def _check_reduce_mean(view, node: onnx.NodeProto) -> str | None:
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1:
        value = view.const(node.input[1])
        axes = None if value is None else value.tolist()
    if input_rank(view, node) != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        return "ReduceMean other than over H, W of a 4-D tensor"
    return None


register_kind("avg_pool", run_avg_pool)
register_kind("max_pool", run_max_pool)
register_kind("global_avg_pool", run_global_avg_pool)

_POOL = OpInfo(channel_passthrough=True, quantizable=True)
_MAX = OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True)
register_op("MaxPool", _MAX, kinds=("max_pool",), lower=_lower_pool, check=_check_pool)
register_op("AveragePool", _POOL, kinds=("avg_pool",), lower=_lower_pool, check=_check_pool)
register_op("GlobalAveragePool", _POOL, kinds=("global_avg_pool",), lower=_lower_global_pool,
            check=_check_global_pool)
register_op("GlobalMaxPool", _MAX, kinds=("max_pool",), lower=_lower_global_max_pool, check=_check_global_max_pool)
register_op("ReduceMean", OpInfo(channel_passthrough=True), kinds=("global_avg_pool",),
            lower=_lower_global_pool, check=_check_reduce_mean)

"""LiteRT/TFLite target: the lowered graph written as a .tflite flatbuffer (NHWC), run by ai-edge-litert."""
from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fwedge import ir
from fwedge.bundle import Bundle, TensorInfo, write_bundle
from fwedge.errors import UnsupportedOpError
from fwedge.lowered.graph import LoweredGraph, LoweredOp, LoweredTensor, QuantParams
from fwedge.ops import unary
from fwedge.ops.shape import stored_permutation
from fwedge.ops.take import progression, stored_tables
from fwedge.targets.base import ByOpTypeOnly, ExportOptions, Target, TfliteOptions, target
from fwedge.targets import tflite_attention, tflite_float, tflite_runner  # noqa: F401  (they register emitters)
from fwedge.targets.tflite_resize import bilinear_problem, nearest_flags
from fwedge.targets.common import resolve_precision
from fwedge.targets.tflite_runner import MODEL_FILE, NCHW_TO_NHWC, NHWC_TO_NCHW
from fwedge.targets.tflite_writer import (  # noqa: F401  (also re-exported)
    _TYPES, FILE_IDENTIFIER, FIXED_OUTPUT_QUANT, TFLITE_OPS, TFLITE_SCHEMA_VERSION, _Writer, nhwc_axis, nhwc_shape,
    padding_mode, tflite_op, transpose_into,
)

log = logging.getLogger(__name__)

TARGET = "tflite"

def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


# --------------------------------------------------------------------------------------------
# Support check
# --------------------------------------------------------------------------------------------


# Kinds whose TFLite kernels take tensors of any rank TRANSPOSE does (SOFTMAX runs over the innermost
# axis of any rank, between TRANSPOSEs for another axis); all other kinds stop at rank 4.
_ANY_RANK_KINDS = frozenset({"softmax", "quantize", "dequantize"})
_TRANSPOSE_MAX_RANK = 6


def _op_problem(graph: LoweredGraph, op: LoweredOp) -> str | None:
    """Why the TFLite writer cannot take a lowered op, or None."""
    if op.kind not in TFLITE_OPS:
        return f"no TFLite emitter for {op.kind}"
    x = graph.tensors[op.inputs[0]]
    rank = max(len(graph.tensors[name].shape) for name in op.inputs + op.outputs)
    if rank > (_TRANSPOSE_MAX_RANK if op.kind in _ANY_RANK_KINDS else 4):
        return f"rank {rank}"
    if op.kind == "avg_pool":
        mode = padding_mode(x.shape, op.attrs.kernel, op.attrs.strides, (1, 1), op.attrs.pads)
        if mode == "EXPLICIT" and not op.attrs.count_include_pad:
            return f"average pool pads {op.attrs.pads} are not TFLite SAME and exclude the padding"
    if op.kind == "batch_matmul":
        return _batch_matmul_problem(graph, op)
    if op.kind == "resize_nearest" and nearest_flags(x.shape, graph.tensors[op.outputs[0]].shape, op.attrs) is None:
        return (f"nearest resize tables rows {list(op.attrs.rows)[:8]} cols {list(op.attrs.cols)[:8]} follow no "
                "TFLite rule (align_corners, half_pixel_centers)")
    if op.kind == "resize_linear":
        return bilinear_problem(x, graph.tensors[op.outputs[0]], op)
    if op.kind == "concat" and op.attrs.axis == 0:
        return "concat along the batch axis"
    if op.kind == "take" and _take_plan(x.shape, op.attrs.tables) is None:
        return "a take that is neither a strided slice nor a gather along one axis"
    if op.kind == "depth_to_space" and op.attrs.mode != "DCR":
        return f"DepthToSpace mode {op.attrs.mode}: TFLite's DEPTH_TO_SPACE is DCR"
    if op.kind in ("add", "mul", "div"):
        a, b = (graph.tensors[name] for name in op.inputs)
        if len(a.shape) != len(b.shape):
            return "operands of different rank"
    return None


def _batch_matmul_problem(graph: LoweredGraph, op: LoweredOp) -> str | None:
    """TFLite's BATCH_MATMUL has no fused activation: an int8 one must clamp nothing the output
    range does not (a Relu whose zero is the range's bottom); a float one none at all."""
    Y = graph.tensors[op.outputs[0]]
    if Y.dtype == "int8":
        r = op.attrs.requant
        if r.act_min > -128 or r.act_max < 127:
            return (f"int8 MatMul with a fused {op.attrs.activation} that clamps inside the output range "
                    f"[{r.act_min}, {r.act_max}]: BATCH_MATMUL has no fused activation")
    elif op.attrs.activation != "none":
        return f"MatMul with a fused {op.attrs.activation}: BATCH_MATMUL has no fused activation"
    return None


def _lowered(model: onnx.ModelProto, options: ExportOptions) -> LoweredGraph:
    """The lowered graph, checked against the TFLite writer.

    Raises:
        UnsupportedOpError: every node the lowering cannot take (int8 nodes without an int8 form
            too, unless options.allow_float_fallback), else every lowered op the TFLite writer
            cannot express, named by the ONNX node it came from.
        ModelError: dynamic shapes or malformed Q/DQ parameters.
    """
    from fwedge.lowered.lower import lower

    graph = lower(model, target=TARGET, float_fallback=options.allow_float_fallback)
    problems = _tflite_problems(model, graph)
    if problems:
        raise UnsupportedOpError(TARGET, [(n, o, v) for n, o, v, _ in problems],
                                 detail="; ".join(f"{n}: {why}" for n, _, _, why in problems))
    return graph


def _tflite_problems(model: onnx.ModelProto, graph: LoweredGraph) -> list[tuple[str, str, int, str]]:
    op_types = {node.name: node.op_type for node in model.graph.node}
    opset = ir.opset_version(model)
    found = []
    for op in graph.ops:
        problem = _op_problem(graph, op)
        if problem:
            found.append((op.name, op_types.get(op.name, op.kind), opset, problem))
    return found


# --------------------------------------------------------------------------------------------
# Emitters: one per lowered kind (or family), writing through a tflite_writer._Writer
# --------------------------------------------------------------------------------------------

_ACTIVATION = {"none": 0, "relu": 1, "relu6": 3}


def _padding(writer: _Writer, op: LoweredOp, x: int, kernel, strides, dilations, pads, pad_value=None) -> tuple[int, int]:
    """(TFLite Padding enum, input index), inserting an explicit PAD/PADV2 when pads are neither SAME nor VALID."""
    S = writer.schema
    X = writer.graph.tensors[op.inputs[0]]
    mode = padding_mode(X.shape, kernel, strides, dilations, pads)
    if mode != "EXPLICIT":
        return getattr(S.Padding, mode), x
    top, left, bottom, right = pads
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], dtype=np.int32)
    source = writer.info(x)
    shape = list(source.shape)
    shape[1] += top + bottom
    shape[2] += left + right
    dtype = "int8" if source.type == _TYPES["int8"] else "float32"
    padded = writer.temp(f"{op.name}/pad", shape, dtype, X.quant)
    if pad_value is None:
        # PAD fills quantized tensors with the output zero point: real 0.
        writer.op("PAD", [x, writer.const(f"{op.name}/paddings", paddings)], [padded], "PadOptions", writer.options("PadOptionsT"))
    else:
        value = np.array([pad_value], dtype=np.int8 if dtype == "int8" else np.float32)
        writer.op("PADV2", [x, writer.const(f"{op.name}/paddings", paddings),
                            writer.const(f"{op.name}/pad_value", value, X.quant)], [padded],
                  "PadV2Options", writer.options("PadV2OptionsT"))
    return S.Padding.VALID, padded


def _requantize_into(writer: _Writer, op: LoweredOp, produce, out_name: str, fixed: QuantParams) -> None:
    """Run `produce(output_index)` into a tensor with `fixed` quantization, then QUANTIZE to out_name if it differs."""
    Y = writer.graph.tensors[out_name]
    if Y.dtype != "int8" or Y.quant.same_as(fixed):
        produce(writer.tensor(out_name))
        return
    middle = writer.temp(f"{op.name}/fixed", nhwc_shape(Y.shape), "int8", fixed)
    produce(middle)
    writer.op("QUANTIZE", [middle], [writer.tensor(out_name)])


@tflite_op("conv2d")
def emit_conv(writer: _Writer, op: LoweredOp) -> None:
    a = op.attrs
    X, W, B = op.inputs
    x = writer.tensor(X)
    padding, x = _padding(writer, op, x, a.kernel, a.strides, a.dilations, a.pads)
    options = writer.options("Conv2DOptionsT", padding=padding, strideH=a.strides[0], strideW=a.strides[1],
                             dilationHFactor=a.dilations[0], dilationWFactor=a.dilations[1],
                             fusedActivationFunction=_ACTIVATION[a.activation])
    # Weights OIHW -> OHWI (per-channel axis 0 stays 0); grouped convs are split per group.
    if a.groups == 1:
        writer.op("CONV_2D", [x, writer.tensor(W), writer.tensor(B)], [writer.tensor(op.outputs[0])],
                  "Conv2DOptions", options)
        return
    _emit_grouped_conv(writer, op, x, options)


def _emit_grouped_conv(writer: _Writer, op: LoweredOp, x: int, options) -> None:
    """Grouped convolution as SPLIT -> CONV_2D per group -> CONCATENATION on channels."""
    graph = writer.graph
    X, W, B = (graph.tensors[name] for name in op.inputs)
    Y = graph.tensors[op.outputs[0]]
    groups = op.attrs.groups
    source = writer.info(x)
    dtype = "int8" if source.type == _TYPES["int8"] else "float32"
    c_in, m = X.shape[1] // groups, W.shape[0] // groups
    parts = [writer.temp(f"{op.name}/split", list(source.shape[:3]) + [c_in], dtype, X.quant) for _ in range(groups)]
    writer.op("SPLIT", [writer.const(f"{op.name}/split_axis", np.array(3, dtype=np.int32)), x], parts,
              "SplitOptions", writer.options("SplitOptionsT", numSplits=groups))
    outputs = []
    out_shape = nhwc_shape(Y.shape)
    for g, part in enumerate(parts):
        channels = slice(g * m, (g + 1) * m)
        w_quant = _slice_quant(W.quant, channels)
        b_quant = _slice_quant(B.quant, channels)
        w = writer.const(f"{op.name}/weight_{g}", W.data[channels].transpose(NCHW_TO_NHWC), w_quant, 0)
        b = writer.const(f"{op.name}/bias_{g}", B.data[channels], b_quant, 0)
        y = writer.temp(f"{op.name}/group_{g}", out_shape[:3] + [m], dtype, Y.quant)
        writer.op("CONV_2D", [part, w, b], [y], "Conv2DOptions", options)
        outputs.append(y)
    writer.op("CONCATENATION", outputs, [writer.tensor(op.outputs[0])], "ConcatenationOptions",
              writer.options("ConcatenationOptionsT", axis=3))


def _slice_quant(quant: QuantParams | None, channels: slice) -> QuantParams | None:
    if quant is None:
        return None
    if len(quant.scale) == 1:
        return quant
    return QuantParams(quant.scale[channels], quant.zero_point[channels], quant.axis)


@tflite_op("depthwise_conv2d")
def emit_depthwise(writer: _Writer, op: LoweredOp) -> None:
    a = op.attrs
    X, W, B = op.inputs
    lowered_w = writer.graph.tensors[W]
    x = writer.tensor(X)
    padding, x = _padding(writer, op, x, a.kernel, a.strides, a.dilations, a.pads)
    # Weights [M, 1, kH, kW] -> [1, kH, kW, M]; per-channel axis 3.
    w = writer.add(W, [1, a.kernel[0], a.kernel[1], lowered_w.shape[0]], lowered_w.dtype, lowered_w.quant,
                   lowered_w.data.transpose(1, 2, 3, 0), quantized_dimension=3)
    options = writer.options("DepthwiseConv2DOptionsT", padding=padding, strideH=a.strides[0], strideW=a.strides[1],
                             depthMultiplier=a.depth_multiplier, dilationHFactor=a.dilations[0],
                             dilationWFactor=a.dilations[1], fusedActivationFunction=_ACTIVATION[a.activation])
    writer.op("DEPTHWISE_CONV_2D", [x, w, writer.tensor(B)], [writer.tensor(op.outputs[0])],
              "DepthwiseConv2DOptions", options)


@tflite_op("fully_connected")
def emit_fully_connected(writer: _Writer, op: LoweredOp) -> None:
    X, W, B = op.inputs
    rows = len(writer.graph.tensors[X].shape) == 3  # [1, T, K] -> [1, T, N]
    options = writer.options("FullyConnectedOptionsT", fusedActivationFunction=_ACTIVATION[op.attrs.activation],
                             keepNumDims=rows)
    writer.op("FULLY_CONNECTED", [writer.tensor(X), writer.tensor(W), writer.tensor(B)],
              [writer.tensor(op.outputs[0])], "FullyConnectedOptions", options)


@tflite_op("add", "mul", "div")
def emit_elementwise(writer: _Writer, op: LoweredOp) -> None:
    builtin, cls = op.kind.upper(), f"{op.kind.capitalize()}Options"  # ADD, MUL, DIV
    options = writer.options(f"{cls}T", fusedActivationFunction=_ACTIVATION[op.attrs.activation])
    writer.op(builtin, [writer.tensor(name) for name in op.inputs], [writer.tensor(op.outputs[0])], cls, options)


@tflite_op("avg_pool", "max_pool")
def emit_pool(writer: _Writer, op: LoweredOp) -> None:
    a = op.attrs
    X = writer.graph.tensors[op.inputs[0]]
    x = writer.tensor(op.inputs[0])
    int8 = X.dtype == "int8"
    pad_value = (-128 if int8 else float(np.finfo(np.float32).min)) if op.kind == "max_pool" else None
    padding, x = _padding(writer, op, x, a.kernel, a.strides, (1, 1), a.pads, pad_value)
    builtin = "AVERAGE_POOL_2D" if op.kind == "avg_pool" else "MAX_POOL_2D"
    options = writer.options("Pool2DOptionsT", padding=padding, strideH=a.strides[0], strideW=a.strides[1],
                             filterHeight=a.kernel[0], filterWidth=a.kernel[1], fusedActivationFunction=0)
    # TFLite int8 pools keep the input's quantization; requantize after when the output's differs.
    fixed = X.quant if int8 else None
    _requantize_into(writer, op, lambda y: writer.op(builtin, [x], [y], "Pool2DOptions", options),
                     op.outputs[0], fixed)


@tflite_op("global_avg_pool")
def emit_mean(writer: _Writer, op: LoweredOp) -> None:
    axes = writer.const(f"{op.name}/axes", np.array([1, 2], dtype=np.int32))
    writer.op("MEAN", [writer.tensor(op.inputs[0]), axes], [writer.tensor(op.outputs[0])], "ReducerOptions",
              writer.options("ReducerOptionsT", keepDims=True))


@tflite_op("concat")
def emit_concat(writer: _Writer, op: LoweredOp) -> None:
    rank = len(writer.graph.tensors[op.outputs[0]].shape)
    writer.op("CONCATENATION", [writer.tensor(name) for name in op.inputs], [writer.tensor(op.outputs[0])],
              "ConcatenationOptions", writer.options("ConcatenationOptionsT", axis=nhwc_axis(op.attrs.axis, rank),
                                                     fusedActivationFunction=0))


def _take_plan(shape, tables) -> tuple[str, object] | None:
    """("slice", [(start, step, count)] per stored axis) or ("gather", (axis, indices)) for a
    take, in TFLite's stored order (NHWC for 4-D), or None when neither expresses it."""
    full, dims = stored_tables(shape, tables)
    steps = [progression(t) for t in full]
    if all(step is not None for step in steps):
        return "slice", [(start, step, len(t)) for (start, step), t in zip(steps, full)]
    odd = [axis for axis, t in enumerate(full) if t != list(range(dims[axis]))]
    if len(odd) == 1:
        return "gather", (odd[0], full[odd[0]])
    return None


@tflite_op("take")
def emit_take(writer: _Writer, op: LoweredOp) -> None:
    """STRIDED_SLICE for progressions (an end before index 0 goes through end_mask), else GATHER."""
    X = writer.graph.tensors[op.inputs[0]]
    how, plan = _take_plan(X.shape, op.attrs.tables)  # _op_problem checked it
    x, y = writer.tensor(op.inputs[0]), writer.tensor(op.outputs[0])
    if how == "gather":
        axis, indices = plan
        writer.op("GATHER", [x, writer.const(f"{op.name}/indices", np.array(indices, dtype=np.int32))], [y],
                  "GatherOptions", writer.options("GatherOptionsT", axis=axis))
        return
    begin = [start for start, _, _ in plan]
    end = [start + step * count for start, step, count in plan]
    end_mask = sum(1 << axis for axis, value in enumerate(end) if value < 0)
    end = [max(value, 0) for value in end]
    writer.op("STRIDED_SLICE", [x, writer.const(f"{op.name}/begin", np.array(begin, dtype=np.int32)),
                                writer.const(f"{op.name}/end", np.array(end, dtype=np.int32)),
                                writer.const(f"{op.name}/strides", np.array([s for _, s, _ in plan], dtype=np.int32))],
              [y], "StridedSliceOptions", writer.options("StridedSliceOptionsT", endMask=end_mask))


@tflite_op("transpose")
def emit_transpose(writer: _Writer, op: LoweredOp) -> None:
    """TRANSPOSE with the permutation of the stored (NHWC for 4-D) axes."""
    perm = stored_permutation(op.attrs.perm)
    writer.op("TRANSPOSE", [writer.tensor(op.inputs[0]), writer.const(f"{op.name}/perm", np.array(perm, dtype=np.int32))],
              [writer.tensor(op.outputs[0])], "TransposeOptions", writer.options("TransposeOptionsT"))


@tflite_op("depth_to_space")
def emit_depth_to_space(writer: _Writer, op: LoweredOp) -> None:
    """DEPTH_TO_SPACE (mode DCR: _op_problem refused CRD); NHWC, as the lowered layout."""
    writer.op("DEPTH_TO_SPACE", [writer.tensor(op.inputs[0])], [writer.tensor(op.outputs[0])],
              "DepthToSpaceOptions", writer.options("DepthToSpaceOptionsT", blockSize=op.attrs.block))


@tflite_op("reshape")
def emit_reshape(writer: _Writer, op: LoweredOp) -> None:
    """RESHAPE in logical (NCHW) order: transpose rank-4 tensors to NCHW around it unless H = W = 1."""
    X = writer.graph.tensors[op.inputs[0]]
    Y = writer.graph.tensors[op.outputs[0]]
    x = writer.tensor(op.inputs[0])
    y = writer.tensor(op.outputs[0])
    in_trivial = len(X.shape) != 4 or X.shape[2:] == (1, 1)
    out_trivial = len(Y.shape) != 4 or Y.shape[2:] == (1, 1)
    if len(X.shape) == 4 and len(Y.shape) == 4 and X.shape == Y.shape:
        writer.op("RESHAPE", [x, writer.const(f"{op.name}/shape", np.array(nhwc_shape(Y.shape), np.int32))], [y],
                  "ReshapeOptions", writer.options("ReshapeOptionsT", newShape=nhwc_shape(Y.shape)))
        return
    if in_trivial and out_trivial:
        shape = nhwc_shape(Y.shape)
        writer.op("RESHAPE", [x, writer.const(f"{op.name}/shape", np.array(shape, np.int32))], [y],
                  "ReshapeOptions", writer.options("ReshapeOptionsT", newShape=shape))
        return
    if not in_trivial:
        x = transpose_into(writer, op, x, NHWC_TO_NCHW, list(X.shape), X.dtype, X.quant)
    target = y if out_trivial else writer.temp(f"{op.name}/nchw", list(Y.shape), Y.dtype, Y.quant)
    shape = list(Y.shape) if not out_trivial else nhwc_shape(Y.shape)
    writer.op("RESHAPE", [x, writer.const(f"{op.name}/shape", np.array(shape, np.int32))], [target],
              "ReshapeOptions", writer.options("ReshapeOptionsT", newShape=shape))
    if not out_trivial:
        writer.op("TRANSPOSE", [target, writer.const(f"{op.name}/perm", np.array(NCHW_TO_NHWC, np.int32))], [y],
                  "TransposeOptions", writer.options("TransposeOptionsT"))


@tflite_op("pad")
def emit_pad(writer: _Writer, op: LoweredOp) -> None:
    X = writer.graph.tensors[op.inputs[0]]
    rank = len(X.shape)
    widths = list(zip(op.attrs.begin, op.attrs.end))
    if rank == 4:
        widths = [widths[i] for i in NCHW_TO_NHWC]
    paddings = writer.const(f"{op.name}/paddings", np.array(widths, dtype=np.int32))
    x, y = writer.tensor(op.inputs[0]), writer.tensor(op.outputs[0])
    if op.attrs.value == 0.0 or X.dtype == "int8":
        writer.op("PAD", [x, paddings], [y], "PadOptions", writer.options("PadOptionsT"))
    else:
        value = writer.const(f"{op.name}/value", np.array([op.attrs.value], dtype=np.float32))
        writer.op("PADV2", [x, paddings, value], [y], "PadV2Options", writer.options("PadV2OptionsT"))


def emit_function(writer: _Writer, op: LoweredOp) -> None:
    """An element-wise function with a TFLite builtin (fwedge/ops/unary.py spells it)."""
    spelling = unary.BY_KIND[op.kind].tflite
    x = writer.tensor(op.inputs[0])
    produce = lambda y: writer.op(spelling.builtin, [x], [y], int8_version=spelling.int8_version)  # noqa: E731
    if spelling.fixed_output is None:
        produce(writer.tensor(op.outputs[0]))
        return
    scale, zero_point = spelling.fixed_output
    _requantize_into(writer, op, produce, op.outputs[0], QuantParams((scale,), (zero_point,)))


for _function in unary.FUNCTIONS:
    if _function.tflite is not None:
        tflite_op(_function.kind)(emit_function)


@tflite_op("leaky_relu")
def emit_leaky_relu(writer: _Writer, op: LoweredOp) -> None:
    """LEAKY_RELU with alpha in its options; its int8 kernel takes any output quantization."""
    writer.op("LEAKY_RELU", [writer.tensor(op.inputs[0])], [writer.tensor(op.outputs[0])], "LeakyReluOptions",
              writer.options("LeakyReluOptionsT", alpha=float(op.attrs.alpha)))


@tflite_op("prelu")
def emit_prelu(writer: _Writer, op: LoweredOp) -> None:
    """PRELU with the slopes as its alpha tensor, shaped to broadcast on the channel axis (last in
    NHWC). In int8 TFLite quantizes alpha itself (one scale, max|slope| / 127), so its result
    can differ from the per-channel tables by the slope's rounding (tests/tolerances.py)."""
    X = writer.graph.tensors[op.inputs[0]]
    slope = np.asarray(op.attrs.slope, dtype=np.float32)
    shape = [1] if slope.size == 1 else [1] * (len(X.shape) - 2) + [slope.size]
    if X.dtype == "int8":
        scale = float(np.max(np.abs(slope))) / 127.0 or 1.0
        data = np.clip(np.round(slope / np.float32(scale)), -127, 127).astype(np.int8).reshape(shape)
        alpha = writer.const(f"{op.name}/alpha", data, QuantParams((scale,), (0,)))
    else:
        alpha = writer.const(f"{op.name}/alpha", slope.reshape(shape))
    writer.op("PRELU", [writer.tensor(op.inputs[0]), alpha], [writer.tensor(op.outputs[0])], int8_version=1)


@tflite_op("hardsigmoid")
def emit_hardsigmoid(writer: _Writer, op: LoweredOp) -> None:
    """max(0, min(1, alpha*x + beta)) as MUL(alpha) -> ADD(beta, fused RELU) -> MINIMUM(1)."""
    X = writer.graph.tensors[op.inputs[0]]
    Y = writer.graph.tensors[op.outputs[0]]
    alpha, beta = op.attrs.alpha, op.attrs.beta
    x = writer.tensor(op.inputs[0])
    shape = nhwc_shape(X.shape)
    ones = [1] * len(shape)
    if X.dtype == "int8":
        # Constants held exactly as 127 * (c / 127); alpha*x keeps x's integers (scale s_x*alpha).
        scaled_quant = QuantParams((X.quant.scale[0] * alpha,), X.quant.zero_point)
        c_alpha = writer.const(f"{op.name}/alpha", np.full(ones, 127, np.int8), QuantParams((alpha / 127.0,), (0,)))
        c_beta = writer.const(f"{op.name}/beta", np.full(ones, 127, np.int8), QuantParams((beta / 127.0,), (0,)))
        one_q = int(min(127, np.round(1.0 / Y.quant.scale[0]) + Y.quant.zero_point[0]))
        c_one = writer.const(f"{op.name}/one", np.full(ones, one_q, np.int8), Y.quant)
        dtype = "int8"
    else:
        scaled_quant = None
        c_alpha = writer.const(f"{op.name}/alpha", np.full(ones, alpha, np.float32))
        c_beta = writer.const(f"{op.name}/beta", np.full(ones, beta, np.float32))
        c_one = writer.const(f"{op.name}/one", np.full(ones, 1.0, np.float32))
        dtype = "float32"
    scaled = writer.temp(f"{op.name}/scaled", shape, dtype, scaled_quant)
    writer.op("MUL", [x, c_alpha], [scaled], "MulOptions", writer.options("MulOptionsT", fusedActivationFunction=0))
    shifted = writer.temp(f"{op.name}/shifted", shape, dtype, Y.quant)
    writer.op("ADD", [scaled, c_beta], [shifted], "AddOptions", writer.options("AddOptionsT", fusedActivationFunction=1))
    writer.op("MINIMUM", [shifted, c_one], [writer.tensor(op.outputs[0])], "MaximumMinimumOptions",
              writer.options("MaximumMinimumOptionsT"))


@tflite_op("quantize")
def emit_quantize(writer: _Writer, op: LoweredOp) -> None:
    writer.op("QUANTIZE", [writer.tensor(op.inputs[0])], [writer.tensor(op.outputs[0])])


@tflite_op("dequantize")
def emit_dequantize(writer: _Writer, op: LoweredOp) -> None:
    writer.op("DEQUANTIZE", [writer.tensor(op.inputs[0])], [writer.tensor(op.outputs[0])])


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass
class TfliteModel:
    """A serialized .tflite and its I/O as the interpreter sees it."""

    data: bytes
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    float_ops: list[str]
    op_counts: dict[str, int]
    float_islands: list[tuple[str, str]] = ()


def _io_info(tensor: LoweredTensor, name: str, source_layout: str) -> TensorInfo:
    quant = tensor.quant
    return TensorInfo(
        name=name, shape=nhwc_shape(tensor.shape), dtype=tensor.dtype,
        layout="NHWC" if len(tensor.shape) == 4 else "",
        source_layout=source_layout if len(tensor.shape) == 4 else "",
        scale=float(quant.scale[0]) if quant is not None else None,
        zero_point=int(quant.zero_point[0]) if quant is not None else None,
    )


def build_tflite(graph: LoweredGraph, float_io: bool = True, description: str = "fwedge",
                 fp16: bool = False) -> TfliteModel:
    """Serialize a lowered graph as a TFLite flatbuffer.

    Args:
        graph: the lowered graph.
        float_io: keep float32 graph inputs/outputs (QUANTIZE/DEQUANTIZE at the edges of an int8
            graph); False makes an int8 graph take and return the int8 tensors directly.
        description: the model description string.
        fp16: store the float32 constants as FLOAT16, each followed by a DEQUANTIZE to float32.

    Returns:
        The TfliteModel (bytes plus I/O specs named after the ONNX inputs/outputs).
    """
    writer = _Writer(graph, _schema(), fp16=fp16)
    ops = list(graph.ops)
    inputs = {name: name for name in graph.inputs}
    outputs = {name: name for name in graph.outputs}
    if not float_io and graph.precision == "int8":
        # Drop the edge quantize/dequantize ops: the int8 tensors become the graph I/O.
        consumers = graph.consumers()
        for name in graph.inputs:
            users = consumers.get(name, [])
            if len(users) == 1 and users[0].kind == "quantize" and graph.tensors[users[0].outputs[0]].dtype == "int8":
                ops.remove(users[0])
                inputs[name] = users[0].outputs[0]
        producers = graph.producers()
        for name in graph.outputs:
            op = producers.get(name)
            if op is not None and op.kind == "dequantize" and len(consumers.get(name, [])) == 0:
                ops.remove(op)
                outputs[name] = op.inputs[0]
    counts: dict[str, int] = {}
    for name in inputs.values():
        writer.tensor(name)
    for op in ops:
        TFLITE_OPS[op.kind](writer, op)
        counts[op.kind] = counts.get(op.kind, 0) + 1
    input_indices = [writer.tensor(name) for name in inputs.values()]
    output_indices = [writer.tensor(name) for name in outputs.values()]
    # The interpreter sees the ONNX input/output names, also for int8 I/O.
    for index, outer in zip(input_indices + output_indices, list(inputs) + list(outputs)):
        writer.tensors[index].name = outer
    data = writer.serialize(input_indices, output_indices, description)
    return TfliteModel(
        data=data,
        inputs=[_io_info(graph.tensors[inner], outer, graph.io_layouts.get(outer, "")) for outer, inner in inputs.items()],
        outputs=[_io_info(graph.tensors[inner], outer, graph.io_layouts.get(outer, ""))
                 for outer, inner in outputs.items()],
        float_ops=list(graph.float_ops) + [name for name, _ in writer.float_islands],
        op_counts=counts,
        float_islands=list(writer.float_islands),
    )


def _versions() -> dict:
    versions = {}
    for package in ("ai-edge-litert", "flatbuffers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


@target("tflite")
class TfliteTarget(Target):
    """The lowered graph as a .tflite flatbuffer, run by ai-edge-litert; intermediates name ONNX tensors."""

    supports_intermediates = True
    lowers = True
    options_type = TfliteOptions

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Every (node, op, opset) that the TFLite target cannot take.

        The lowering's own list (ops with no lowered form, int8 nodes without an int8 form
        unless options.allow_float_fallback) comes first; then lowered ops the TFLite writer
        cannot express, named by the ONNX node they came from.
        """
        from fwedge.errors import ModelError
        from fwedge.lowered.lower import unsupported_nodes as lowering_gaps

        try:
            _lowered(model, options or ExportOptions())
        except UnsupportedOpError as error:
            return error.nodes
        except ModelError as error:  # dynamic shapes: judged by op type only
            return ByOpTypeOnly(lowering_gaps(model), str(error))
        return []

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Lower a float or QDQ model and write it as a TFLite bundle.

        Args:
            model: a loaded model (fwedge.ir.load): float for fp32, QDQ for int8, static shapes.
            out_dir: the bundle directory to create or replace.
            options: ExportOptions (float_io, allow_float_fallback; TfliteOptions.num_threads is
                recorded for the runner).

        Returns:
            The written Bundle.

        Raises:
            UnsupportedOpError: every node the lowering or the TFLite writer cannot take, before
                anything is written.
            ExportError: the requested precision contradicts the model.
        """
        options = options or ExportOptions()
        own = self.own_options(options)
        precision = resolve_precision(model, options.precision, TARGET)
        graph = _lowered(model, options)
        if graph.float_ops:
            log.warning("tflite: %d node(s) have no Q/DQ around them and stay float32: %s",
                        len(graph.float_ops), ", ".join(graph.float_ops))
        built = build_tflite(graph, float_io=options.float_io, description=f"fwedge {precision} {TARGET}",
                             fp16=precision == "fp16")
        for name, why in built.float_islands:
            log.warning("tflite: '%s' runs in float inside the int8 model: %s", name, why)
        halved = 2 if precision == "fp16" else 1

        def write_files(folder: Path) -> dict:
            ir.write_atomic(folder / MODEL_FILE, built.data)
            weights = sum(t.data.nbytes // (halved if t.data.dtype == np.float32 else 1) for t in graph.constants())
            return {"model_bytes": len(built.data), "weights_bytes": int(weights)}

        return write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision,
            source_sha256=options.source_sha256, inputs=built.inputs, outputs=built.outputs,
            write_files=write_files, preprocess=options.preprocess, reference=options.reference, kept_float=options.kept_float, toolchain=_versions(),
            extra={"float_io": bool(options.float_io), "float_ops": built.float_ops, "op_counts": built.op_counts,
                   "num_threads": int(own.num_threads), "onnx_names": graph.onnx_names,
                   "float_fallback": [{"node": name, "reason": why} for name, why in graph.float_fallback],
                   "float_islands": [{"node": name, "reason": why} for name, why in built.float_islands]},
        )

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False,
            num_threads: int | None = None) -> dict[str, np.ndarray]:
        """Run a TFLite bundle with ai-edge-litert on the host (tflite_runner.run)."""
        self.require_exact(bundle, exact_int8)
        return tflite_runner.run(bundle, feeds, num_threads=num_threads)

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Internal tensors by ONNX name, for `fwedge diff` (tflite_runner.intermediates)."""
        self.require_exact(bundle, exact_int8)
        return tflite_runner.intermediates(bundle, feeds, names)

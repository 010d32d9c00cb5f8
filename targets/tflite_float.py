"""TFLite emitters of the kinds composed of builtins: sqrt, square, layer_norm, silu and embedding.

In an int8 graph sqrt and square run between a DEQUANTIZE and a QUANTIZE (TFLite has no int8
SQRT or SQUARE), the float result rounded to the output's quantization as onnxruntime's
DequantizeLinear -> op -> QuantizeLinear rounds it. TFLite has no LAYER_NORM builtin: layer_norm
is MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD over the last axis, in float. TFLite has no
SiLU builtin: silu is LOGISTIC and MUL in float, and in int8 the lowering's own table read with
GATHER (CAST to int32, ADD 128, GATHER from the int8[256] table), so that the int8 result is
the table's, one rounding from x's quantization to the output's, as in onnxruntime. The one-hot
embedding is GATHER of the lowering's row table at MINIMUM(MAXIMUM(index + 1, 0), rows - 1), the
clamp of fwedge/ops/embedding.py in int32 (TFLite's GATHER refuses an index outside the table).
"""
from __future__ import annotations

import numpy as np

from fwedge.lowered.graph import LoweredOp
from fwedge.targets.tflite_writer import _Writer, nhwc_shape, tflite_op


@tflite_op("sqrt", "square")
def emit_float_function(writer: _Writer, op: LoweredOp) -> None:
    """SQRT, or MUL(x, x) for square, in float (wrapped in DEQUANTIZE / QUANTIZE in int8)."""
    X = writer.graph.tensors[op.inputs[0]]
    x, y = writer.tensor(op.inputs[0]), writer.tensor(op.outputs[0])
    if X.dtype == "int8":
        x_float = writer.temp(f"{op.name}/float_in", nhwc_shape(X.shape), "float32", None)
        writer.op("DEQUANTIZE", [x], [x_float])
        y_float = writer.temp(f"{op.name}/float_out", nhwc_shape(X.shape), "float32", None)
        _emit_float_function(writer, op.kind, x_float, y_float)
        writer.op("QUANTIZE", [y_float], [y])
        return
    _emit_float_function(writer, op.kind, x, y)


def _emit_float_function(writer: _Writer, kind: str, x: int, y: int) -> None:
    if kind == "sqrt":
        return writer.op("SQRT", [x], [y])
    writer.op("MUL", [x, x], [y], "MulOptions", writer.options("MulOptionsT"))  # square


@tflite_op("layer_norm")
def emit_layer_norm(writer: _Writer, op: LoweredOp) -> None:
    """(x - mean) * rsqrt(mean((x - mean)^2) + epsilon) * gamma + beta over the last axis."""
    X = writer.graph.tensors[op.inputs[0]]
    shape = nhwc_shape(X.shape)
    reduced = shape[:-1] + [1]
    x, gamma, beta = (writer.tensor(name) for name in op.inputs)
    axes = writer.const(f"{op.name}/axes", np.array([len(shape) - 1], np.int32))
    mean_options = writer.options("ReducerOptionsT", keepDims=True)

    def temp(role: str, full: bool = True) -> int:
        return writer.temp(f"{op.name}/{role}", shape if full else reduced, "float32", None)

    def binary(builtin: str, a: int, b: int, out: int) -> int:
        cls = f"{builtin.capitalize()}Options"
        writer.op(builtin, [a, b], [out], cls, writer.options(f"{cls}T"))
        return out

    mean = temp("mean", False)
    writer.op("MEAN", [x, axes], [mean], "ReducerOptions", mean_options)
    centered = binary("SUB", x, mean, temp("centered"))
    squares = binary("MUL", centered, centered, temp("squares"))
    var = temp("var", False)
    writer.op("MEAN", [squares, axes], [var], "ReducerOptions", mean_options)
    epsilon = writer.const(f"{op.name}/epsilon", np.array([op.attrs.epsilon], np.float32))
    shifted = binary("ADD", var, epsilon, temp("var_eps", False))
    inv = temp("inv_std", False)
    writer.op("RSQRT", [shifted], [inv])
    normed = binary("MUL", centered, inv, temp("normalized"))
    scaled = binary("MUL", normed, gamma, temp("scaled"))
    binary("ADD", scaled, beta, writer.tensor(op.outputs[0]))


@tflite_op("silu")
def emit_silu(writer: _Writer, op: LoweredOp) -> None:
    """x * LOGISTIC(x) in float; in int8 GATHER(table, CAST(x) + 128) with the lowering's table."""
    X, Y = writer.graph.tensors[op.inputs[0]], writer.graph.tensors[op.outputs[0]]
    x, y = writer.tensor(op.inputs[0]), writer.tensor(op.outputs[0])
    shape = nhwc_shape(X.shape)
    if X.dtype != "int8":
        sigmoid = writer.temp(f"{op.name}/sigmoid", shape, "float32", None)
        writer.op("LOGISTIC", [x], [sigmoid])
        writer.op("MUL", [x, sigmoid], [y], "MulOptions", writer.options("MulOptionsT"))
        return
    wide = writer.temp(f"{op.name}/int32", shape, "int32", None)
    writer.op("CAST", [x], [wide])
    index = writer.temp(f"{op.name}/index", shape, "int32", None)
    offset = writer.const(f"{op.name}/offset", np.full([1] * len(shape), 128, np.int32))
    writer.op("ADD", [wide, offset], [index], "AddOptions", writer.options("AddOptionsT"))
    table = writer.const(f"{op.name}/table", np.asarray(op.attrs.lut, np.int8), Y.quant)
    writer.op("GATHER", [table, index], [y], "GatherOptions", writer.options("GatherOptionsT", axis=0))


@tflite_op("embedding")
def emit_embedding(writer: _Writer, op: LoweredOp) -> None:
    """GATHER(table, clamp(index + 1, 0, rows - 1)) over the int32 indices (module docstring)."""
    X, Y = writer.graph.tensors[op.inputs[0]], writer.graph.tensors[op.outputs[0]]
    table = np.asarray(op.attrs.table)
    shape = list(X.shape)
    ones = [1] * len(shape)

    def int32(name: str, value: int) -> int:
        return writer.const(f"{op.name}/{name}", np.full(ones, value, np.int32))

    shifted = writer.temp(f"{op.name}/shifted", shape, "int32", None)
    writer.op("ADD", [writer.tensor(X.name), int32("one", 1)], [shifted], "AddOptions", writer.options("AddOptionsT"))
    floor = writer.temp(f"{op.name}/floor", shape, "int32", None)
    writer.op("MAXIMUM", [shifted, int32("zero", 0)], [floor], "MaximumMinimumOptions",
              writer.options("MaximumMinimumOptionsT"))
    rows = writer.temp(f"{op.name}/rows", shape, "int32", None)
    writer.op("MINIMUM", [floor, int32("last", table.shape[0] - 1)], [rows], "MaximumMinimumOptions",
              writer.options("MaximumMinimumOptionsT"))
    gathered = writer.temp(f"{op.name}/gathered", [*shape, table.shape[1]], Y.dtype, Y.quant)
    source = writer.const(f"{op.name}/table", table, Y.quant if Y.dtype == "int8" else None)
    writer.op("GATHER", [source, rows], [gathered], "GatherOptions", writer.options("GatherOptionsT", axis=0))
    writer.op("RESHAPE", [gathered, writer.const(f"{op.name}/shape", np.asarray(Y.shape, np.int32))],
              [writer.tensor(Y.name)])

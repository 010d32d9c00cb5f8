"""TFLite emitters of attention's kinds: batch_matmul (BATCH_MATMUL) and softmax (SOFTMAX, any axis
not stored innermost between TRANSPOSEs, in float where int8 SOFTMAX's fixed output scale is not the
model's)."""
from __future__ import annotations

import numpy as np

from fwedge.lowered.graph import LoweredOp
from fwedge.targets.tflite_runner import NCHW_TO_NHWC, NHWC_TO_NCHW
from fwedge.targets.tflite_writer import (
    FIXED_OUTPUT_QUANT, _Writer, nhwc_axis, nhwc_shape, tflite_op, transpose_into,
)


@tflite_op("batch_matmul")
def emit_batch_matmul(writer: _Writer, op: LoweredOp) -> None:
    """BATCH_MATMUL; a 4-D pair ([1, heads, M, K], stored NHWC) is transposed to the logical order
    around it, where the heads are the batch."""
    A, B = (writer.graph.tensors[name] for name in op.inputs)
    Y = writer.graph.tensors[op.outputs[0]]
    a, b, y = writer.tensor(A.name), writer.tensor(B.name), writer.tensor(Y.name)
    options = writer.options("BatchMatMulOptionsT", adjX=False, adjY=False)
    if len(A.shape) != 4:
        writer.op("BATCH_MATMUL", [a, b], [y], "BatchMatMulOptions", options)
        return
    a = transpose_into(writer, op, a, NHWC_TO_NCHW, list(A.shape), A.dtype, A.quant)
    b = transpose_into(writer, op, b, NHWC_TO_NCHW, list(B.shape), B.dtype, B.quant)
    logical = writer.temp(f"{op.name}/nchw", list(Y.shape), Y.dtype, Y.quant)
    writer.op("BATCH_MATMUL", [a, b], [logical], "BatchMatMulOptions", options)
    writer.op("TRANSPOSE", [logical, writer.const(f"{op.name}/perm", np.array(NCHW_TO_NHWC, np.int32))], [y],
              "TransposeOptions", writer.options("TransposeOptionsT"))


def _softmax_float_island(writer: _Writer, op: LoweredOp) -> bool:
    """TFLite's int8 SOFTMAX writes scale 1/256, zero point -128 only. Requantizing that to a finer
    output scale (attention rows whose largest probability is well below 1) rounds twice and
    lands steps from onnxruntime, so such a softmax runs in float between DEQUANTIZE and QUANTIZE
    (reported in the manifest's extra.float_ops and extra.float_islands)."""
    Y = writer.graph.tensors[op.outputs[0]]
    if Y.dtype != "int8" or Y.quant.same_as(FIXED_OUTPUT_QUANT):
        return False
    reason = (f"float island: int8 SOFTMAX writes scale 1/256, zero point -128; the model's output has scale "
              f"{Y.quant.scale[0]:.6g}, zero point {Y.quant.zero_point[0]}: softmax runs in float")
    writer.float_islands.append((op.name, reason))
    return True


def innermost_perm(axis: int, rank: int) -> list[int] | None:
    """The TRANSPOSE perm that brings a logical axis innermost in TFLite's order (NHWC for rank 4):
    it swaps that axis with the last, so it is its own inverse. None where the axis is innermost
    already (a 4-D tensor's channels, any other tensor's last axis)."""
    stored = nhwc_axis(axis, rank)
    if stored == rank - 1:
        return None
    perm = list(range(rank))
    perm[stored], perm[-1] = perm[-1], perm[stored]
    return perm


@tflite_op("softmax")
def emit_softmax(writer: _Writer, op: LoweredOp) -> None:
    """SOFTMAX over TFLite's innermost axis; any other axis (a 4-D tensor's H or W: a keypoint
    head's spatial softmax, attention's [1, heads, T, T]; the time axis of [1, T, K]) between two
    TRANSPOSEs that swap it with the innermost one (int8 TRANSPOSE moves bytes, so it is exact).
    In float where the output scale is not SOFTMAX's (_softmax_float_island)."""
    X, Y = (writer.graph.tensors[name] for name in (op.inputs[0], op.outputs[0]))
    x, y = writer.tensor(X.name), writer.tensor(Y.name)
    island = _softmax_float_island(writer, op)
    in_dtype, in_quant, out_quant = (X.dtype, X.quant, Y.quant) if not island else ("float32", None, None)
    out = y
    if island:
        x = writer.temp(f"{op.name}/float_in", nhwc_shape(X.shape), "float32", None)
        writer.op("DEQUANTIZE", [writer.tensor(X.name)], [x])
        out = writer.temp(f"{op.name}/float_out", nhwc_shape(Y.shape), "float32", None)
    perm = innermost_perm(op.attrs.axis, len(X.shape))
    source, target = x, out
    if perm is not None:
        swapped = [nhwc_shape(X.shape)[i] for i in perm]
        source = transpose_into(writer, op, x, perm, swapped, in_dtype, in_quant)
        target = writer.temp(f"{op.name}/innermost", swapped, in_dtype, out_quant)
    writer.op("SOFTMAX", [source], [target], "SoftmaxOptions",
              writer.options("SoftmaxOptionsT", beta=float(op.attrs.beta)))
    if perm is not None:
        writer.op("TRANSPOSE", [target, writer.const(f"{op.name}/perm_back", np.array(perm, np.int32))], [out],
                  "TransposeOptions", writer.options("TransposeOptionsT"))
    if island:
        writer.op("QUANTIZE", [out], [y])

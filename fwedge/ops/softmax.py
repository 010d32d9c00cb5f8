"""Op card: Softmax (softmax), int8 through an exp table and Q30 probabilities.

Along any axis of a tensor of any rank: YOLOv8's DFL head over the channels of a 4-D tensor (its
16 distance bins), attention over the last axis, keypoint heads over H or W (spatial softmax),
sequence models over the time axis of [1, T, K]. The targets read the axis where they store it:
C walks it with outer/depth/inner strides of its storage (NHWC for 4-D), TFLite transposes it
innermost around SOFTMAX, ncnn names it in its Softmax layer. Not along the batch axis: a bundle
runs a batch one sample at a time (refused at check time, naming the node).
Measured on the op matrix's seven Softmax cases (ranks 2 to 5, every axis stored off the innermost
somewhere): fp32 within 1.2e-7 of onnxruntime on C, TFLite and ncnn, int8 0 steps off its QDQ run,
C bytes the same on all four architectures (pytest tests/test_targets_matrix.py tests/test_tflite.py
tests/test_c_target.py tests/test_c_aarch64.py -k softmax).
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, note_float, requant
from fwedge.lowered.arith import requantize, zp
from fwedge.lowered.graph import LoweredOp, SoftmaxAttrs
from fwedge.lowered.view import input_rank
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

SOFTMAX_PROB_BITS = 30


SOFTMAX_EXP_BITS = 24


def softmax_axis(node: onnx.NodeProto, rank: int, opset: int) -> int:
    """The non-negative axis of a Softmax (opset 13 defaults to -1, earlier ones to 1)."""
    return int(attribute(node, "axis", -1 if opset >= 13 else 1)) % max(rank, 1)


def _lower_softmax(builder: Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.input[0]))
    axis = softmax_axis(node, rank, builder.view.opset)
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        (x_q,) = operands
        y_name, y_quant = out
        d = np.arange(256, dtype=np.float64)
        table = np.round(np.exp(-np.float64(np.float32(x_q.quant.scale[0])) * d) * (1 << SOFTMAX_EXP_BITS))
        real = 2.0 ** -SOFTMAX_PROB_BITS / np.float64(y_quant.scale[0])
        attrs = SoftmaxAttrs(axis, 1.0, table.astype(np.int32), requant([real], "none", y_quant))
        builder.emit("softmax", node.name, [x_q.name], [y_name], attrs)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("softmax", node.name, [x], [float_output(builder, node.output[0])], SoftmaxAttrs(axis))


def run_softmax(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    attrs = op.attrs
    x = np.moveaxis(values[X.name], attrs.axis, -1)
    if Y.dtype == "int8":
        x = x.astype(np.int64)
        e = attrs.exp_table.astype(np.int64)[x.max(axis=-1, keepdims=True) - x]
        total = e.sum(axis=-1, keepdims=True)
        p = ((e << 30) + total // 2) // total
        return np.moveaxis(requantize(p, attrs.requant, zp(Y), axis=None), -1, attrs.axis)
    x = x.astype(np.float64) * attrs.beta
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.moveaxis(e / e.sum(axis=-1, keepdims=True), -1, attrs.axis).astype(np.float32)


def _check_softmax(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    if rank == 0:
        return "Softmax of a scalar or of an input whose shape is unknown: needs its rank to find the axis"
    if softmax_axis(node, rank, view.opset) == 0:
        # A bundle runs a batch one sample at a time: over its batch of one, every output would be 1.0.
        return ("Softmax along the batch axis (axis 0): a bundle runs one sample at a time, so it would "
                "see a batch of one")
    return None


register_kind("softmax", run_softmax)
# fwedge's quantizer puts no pair after a Softmax: its QDQ models compute it in float, and the
# kept-float record says so. A target's int8 Softmax (C, TFLite) is for models that quantize it
# (another quantizer's Q/DQ pairs around it).
_STAYS_FLOAT = ("Softmax is left float by fwedge's quantizer (no pair on its output): it runs in float "
                "between its producer and the next quantize")
register_op("Softmax", OpInfo(stays_float=_STAYS_FLOAT), kinds=("softmax",), lower=_lower_softmax,
            check=_check_softmax)

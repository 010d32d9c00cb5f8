"""Op card: QuantizeLinear (quantize: float->int8, or an int8->int8 requantize) and
DequantizeLinear (dequantize). Most Q/DQ nodes are absorbed by the ops around them; these
lower the ones that are left.
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.errors import ModelError
from fwedge.lowered.build import Builder, emit_requantize, quant_params
from fwedge.lowered.arith import requantize, zp
from fwedge.lowered.graph import INT8_MAX, INT8_MIN, LoweredOp, LoweredTensor, QuantizeAttrs, ReshapeAttrs
from fwedge.lowered.view import dq_params
from fwedge.ops.base import register_kind, register_op

def _lower_quantize(builder: Builder, node: onnx.NodeProto) -> None:
    """A QuantizeLinear not absorbed by its producer: float->int8, or int8->int8 after a DQ."""
    scale, zp, axis = dq_params(builder.view, node)
    quant = quant_params(scale, zp)
    y = builder.add_tensor(LoweredTensor(node.output[0], builder.shape(node.output[0]), "int8", quant))
    source = builder.int8_input(node.input[0])
    if source is not None and not source.is_constant:
        if source.quant.same_as(quant):
            builder.emit("reshape", node.name, [source.name], [y], ReshapeAttrs(source.shape))
        else:
            emit_requantize(builder, node.name, source, y, quant)
        return
    x = builder.float_input(node.input[0])
    builder.emit("quantize", node.name, [x], [y], QuantizeAttrs())


def _lower_dequantize(builder: Builder, node: onnx.NodeProto) -> None:
    """An activation DequantizeLinear: remember the int8 source; a dequantize op comes when needed."""
    source = builder.tensors.get(builder.alias.get(node.input[0], node.input[0]))
    if source is None or source.dtype != "int8":
        raise ModelError(f"DequantizeLinear '{node.name}': input '{node.input[0]}' is not an int8 tensor")
    scale, zp, axis = dq_params(builder.view, node)
    if not source.quant.same_as(quant_params(scale, zp)):
        raise ModelError(f"DequantizeLinear '{node.name}': scale/zero point differ from its QuantizeLinear")
    builder.dq_act[node.output[0]] = source.name
    builder.onnx_names[node.output[0]] = source.name


def run_quantize(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    if X.dtype == "int8":
        return requantize(x.astype(np.int64) - zp(X), op.attrs.requant, zp(Y), axis=None)
    # onnxruntime QuantizeLinear: float32 division, round half to even, add zero point, saturate.
    q = np.rint(x.astype(np.float32) / np.float32(Y.quant.scale[0])) + zp(Y)
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def run_dequantize(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    x = values[X.name]
    return ((x.astype(np.int32) - zp(X)).astype(np.float32) * np.float32(X.quant.scale[0])).astype(np.float32)


def _check_qdq(view, node: onnx.NodeProto) -> str | None:
    if view.const(node.input[1]) is None:
        return "non-constant scale"
    _, zero_point, _ = dq_params(view, node)
    if zero_point.dtype not in (np.int8, np.int32):
        return f"zero point dtype {zero_point.dtype}, only int8 activations/weights and int32 biases"
    return None


register_kind("quantize", run_quantize)
register_kind("dequantize", run_dequantize)
register_op("QuantizeLinear", None, kinds=("quantize",), lower=_lower_quantize, check=_check_qdq)
register_op("DequantizeLinear", None, kinds=("dequantize",), lower=_lower_dequantize, check=_check_qdq)

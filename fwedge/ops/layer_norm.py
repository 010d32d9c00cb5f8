"""Op card: LayerNormalization (opset 17) over the last axis (layer_norm), in float.

y = (x - mean) / sqrt(var + epsilon) * gamma + beta, mean and var over the last axis, gamma and
beta constants of that axis' length. There is no int8 form: in an int8 model the node runs in
float between the dequantized input and the quantized output: a reported float island (note_float
in the lowering; OpInfo.float_island makes the quantizer list it in the model's kept-float record,
which every manifest copies as extra.kept_float).
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.lowered.build import Builder, float_output, note_float
from fwedge.lowered.graph import LayerNormAttrs, LoweredOp, LoweredTensor
from fwedge.lowered.view import input_rank, is_const_dq
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op


def _constant(builder: Builder, node: onnx.NodeProto, index: int, length: int, default: float) -> str:
    """gamma (index 1) or beta (index 2) as a float constant of `length`, 0 / 1 when absent."""
    name = node.input[index] if len(node.input) > index and node.input[index] else ""
    if name:
        return builder.float_input(name)
    data = np.full(length, default, np.float32)
    role = "gamma" if index == 1 else "beta"
    return builder.add_tensor(LoweredTensor(builder.fresh(f"{node.name}_{role}"), (length,), "float32", data=data))


def _lower_layer_norm(builder: Builder, node: onnx.NodeProto) -> None:
    note_float(builder, node)
    length = builder.shape(node.input[0])[-1]
    x = builder.float_input(node.input[0])
    inputs = [x, _constant(builder, node, 1, length, 1.0), _constant(builder, node, 2, length, 0.0)]
    attrs = LayerNormAttrs(float(attribute(node, "epsilon", 1e-5)))
    builder.emit("layer_norm", node.name, inputs, [float_output(builder, node.output[0])], attrs)


def run_layer_norm(op: LoweredOp, values, tensors):
    """float32 arithmetic in the C kernel's order: mean, then the mean of squared deviations."""
    x, gamma, beta = (values[tensors[name].name].astype(np.float32) for name in op.inputs)
    mean = (x.astype(np.float64).sum(axis=-1, keepdims=True) / x.shape[-1]).astype(np.float32)
    d = x - mean
    var = ((d.astype(np.float64) ** 2).sum(axis=-1, keepdims=True) / x.shape[-1]).astype(np.float32)
    inv = np.float32(1.0) / np.sqrt(var + np.float32(op.attrs.epsilon))
    return (d * inv * gamma + beta).astype(np.float32)


def _check_layer_norm(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    axis = int(attribute(node, "axis", -1)) % max(rank, 1)
    if axis != rank - 1:
        return f"LayerNormalization over axis {axis} of a rank-{rank} tensor: only the last axis"
    if rank not in (2, 3):
        return f"LayerNormalization of a rank-{rank} tensor: only rank 2 and 3 ([N, C], [N, T, C])"
    for index in (1, 2):
        name = node.input[index] if len(node.input) > index else ""
        # onnxruntime's quantizer writes gamma as an int8 constant behind a DequantizeLinear.
        if name and view.const(name) is None and not is_const_dq(view, name):
            return "LayerNormalization with a non-constant scale or bias"
    if len(node.output) > 1 and any(node.output[1:]):
        return "LayerNormalization with its Mean or InvStdDev output used"
    return None


register_kind("layer_norm", run_layer_norm)
_FLOAT_ISLAND = ("float island: LayerNormalization has no int8 kernel (mean, variance and rsqrt over a row "
                 "need float); it runs in float between the dequantized input and the quantized output")
register_op("LayerNormalization", OpInfo(float_island=_FLOAT_ISLAND), kinds=("layer_norm",), lower=_lower_layer_norm, check=_check_layer_norm)

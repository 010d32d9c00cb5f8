"""Op card: data movement. Reshape, Flatten, Squeeze, Unsqueeze (reshape), Pad (pad),
Concat (concat), Transpose (transpose: any permutation that keeps the batch first, up to 4-D),
Identity and Dropout (no op: an alias). Resize, and Slice/Split/Gather, have their own cards
(resize.py, take.py).

In int8 the output keeps the input's scale and zero point; a requantize follows when the
model's QuantizeLinear asks for other parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.lowered.build import (
    Builder, dequantize_array, emit_requantize, float_output, int8_operands, int8_output, lower_data_movement,
    note_float, output_quantizer, quant_params, refuse, same_quant_chain,
)
from fwedge.lowered.graph import ConcatAttrs, LoweredOp, LoweredTensor, PadAttrs, ReshapeAttrs
from fwedge.lowered.arith import zp
from fwedge.lowered.view import dq_params, weight_value
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

def _lower_reshape(builder: Builder, node: onnx.NodeProto) -> None:
    source = builder.tensors.get(builder.alias.get(node.input[0], node.input[0]))
    if source is not None and source.dtype == "int32":
        # int32 indices (an embedding's): the same elements in the same order, under a new name.
        builder.alias[node.output[0]] = source.name
        return
    attrs = ReshapeAttrs(builder.shape(node.output[0]))
    lower_data_movement(builder, node, "reshape", attrs)


def _lower_alias(builder: Builder, node: onnx.NodeProto) -> None:
    source = node.input[0]
    if source in builder.dq_act:
        builder.dq_act[node.output[0]] = builder.dq_act[source]
        builder.view.producers[node.output[0]] = builder.view.producers[source]
        return
    builder.alias[node.output[0]] = builder.alias.get(source, source)


def _lower_pad(builder: Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        pads = [int(p) for p in builder.view.const(node.input[1])]
    else:
        pads = list(attribute(node, "pads", [0] * 2 * rank))
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        constant = weight_value(builder.view, node.input[2])
        if node.input[2] in builder.dq_const:
            data, scale, zp, axis = builder.dq_const[node.input[2]]
            constant = dequantize_array(data, scale, zp, axis)
        value = float(np.asarray(constant).reshape(-1)[0]) if constant is not None and np.size(constant) else 0.0
    else:
        value = float(attribute(node, "value", 0.0))
    attrs = PadAttrs(tuple(pads[:rank]), tuple(pads[rank:]), value)
    operands = int8_operands(builder, node, (0,))
    if operands is not None and value != 0.0 and output_quantizer(builder, node.output[0]) is not None:
        operands = refuse(builder, node, f"int8 pad with the non-zero constant {value}")
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        x_q = operands[0]
        same_quant_chain(builder, node, "pad", attrs, x_q, out)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("pad", node.name, [x], [float_output(builder, node.output[0])], attrs)


def _lower_concat(builder: Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.output[0]))
    attrs = ConcatAttrs(int(attribute(node, "axis")) % rank)
    operands = int8_operands(builder, node, range(len(node.input)))
    quantizer = output_quantizer(builder, node.output[0]) if operands is not None else None
    if quantizer is not None:
        y_quant = quant_params(*dq_params(builder.view, quantizer)[:2])
        if any(x_q.is_constant and not x_q.quant.same_as(y_quant) for x_q in operands):
            operands = refuse(builder, node, "a constant input with its own scale")
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        y_name, y_quant = out
        inputs = []
        for index, x_q in enumerate(operands):
            if x_q.quant.same_as(y_quant):
                inputs.append(x_q.name)
                continue
            name = builder.fresh(f"{x_q.name}_to_{node.name}")
            builder.add_tensor(LoweredTensor(name, x_q.shape, "int8", y_quant))
            emit_requantize(builder, f"{node.name}_requantize_{index}", x_q, name, y_quant)
            inputs.append(name)
        builder.emit("concat", node.name, inputs, [y_name], attrs)
        return
    note_float(builder, node)
    inputs = [builder.float_input(name) for name in node.input]
    builder.emit("concat", node.name, inputs, [float_output(builder, node.output[0])], attrs)


def run_concat(op: LoweredOp, values, tensors):
    batch = max(values[name].shape[0] for name in op.inputs)
    parts = [np.broadcast_to(values[name], (batch,) + values[name].shape[1:]) for name in op.inputs]
    return np.concatenate(parts, axis=op.attrs.axis)


def run_reshape(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    return x.reshape((x.shape[0],) + tuple(op.attrs.shape[1:]))


def run_pad(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    x = values[X.name]
    value = zp(X) if X.dtype == "int8" else op.attrs.value
    widths = list(zip(op.attrs.begin, op.attrs.end))
    return np.pad(x, widths, constant_values=value)


def _check_pad(view, node: onnx.NodeProto) -> str | None:
    mode = attribute(node, "mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        return f"Pad mode {mode!r}"
    if len(node.input) > 1 and view.const(node.input[1]) is None:
        return "non-constant pads"
    pads = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "pads", [])
    if pads is not None and min((int(v) for v in np.asarray(pads).reshape(-1)), default=0) < 0:
        return "negative pads (a crop)"
    if len(node.input) > 3 and node.input[3]:
        return "Pad axes input"
    return None


@dataclass(frozen=True)
class TransposeAttrs:
    """y = x.transpose(perm) in logical (NCHW) axes; perm[0] == 0."""

    perm: tuple[int, ...]


def transpose_perm(node: onnx.NodeProto, rank: int) -> list[int]:
    return [int(a) for a in attribute(node, "perm", list(range(rank))[::-1])]


def _check_transpose(view, node: onnx.NodeProto) -> str | None:
    rank = len(view.shapes.get(node.input[0]) or [])
    perm = transpose_perm(node, rank)
    if not 2 <= rank <= 4 or sorted(perm) != list(range(rank)) or perm[0] != 0:
        return f"perm {perm[:8]} of a rank-{rank} tensor: a permutation of 2-4 axes that keeps the batch first"
    return None


def _lower_transpose(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = TransposeAttrs(tuple(transpose_perm(node, len(builder.shape(node.input[0])))))
    lower_data_movement(builder, node, "transpose", attrs)


def stored_permutation(perm) -> list[int]:
    """The permutation of the stored axes, as C and TFLite keep tensors (NHWC for 4-D): for each
    stored output axis, the stored input axis it reads."""
    order = [0, 2, 3, 1] if len(perm) == 4 else list(range(len(perm)))
    return [order.index(perm[axis]) for axis in order]


def run_transpose(op: LoweredOp, values, tensors):
    return np.ascontiguousarray(values[op.inputs[0]].transpose(op.attrs.perm))


register_kind("transpose", run_transpose)
register_kind("concat", run_concat)
register_kind("reshape", run_reshape)
register_kind("pad", run_pad)

_MOVE = OpInfo(quantize_output=False, shares_input_scale=True)
_PASS = OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True)
for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    register_op(_op, _MOVE, kinds=("reshape",), lower=_lower_reshape, static_output=True)
register_op("Transpose", _MOVE, kinds=("transpose",), lower=_lower_transpose, check=_check_transpose,
            static_output=True)
register_op("Identity", _PASS, lower=_lower_alias)
register_op("Dropout", _PASS, lower=_lower_alias)
register_op("Pad", _PASS, kinds=("pad",), lower=_lower_pad, check=_check_pad)
register_op("Concat", OpInfo(quantizable=True), kinds=("concat",), lower=_lower_concat, static_output=True)

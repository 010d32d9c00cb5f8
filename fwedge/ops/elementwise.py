"""Op card: element-wise arithmetic of two inputs. Add and Sub (add), Mul (mul), Div (mul or div).

Sub and Div take a constant second operand, which the lowering negates or inverts. In float a Div
becomes a mul by the reciprocal only when every divisor is a power of two (then x * (1/d) and x / d
are the same IEEE value); any other divisor stays a true division (the float `div` kind), as
onnxruntime computes it. In int8 the reciprocal folds into the requantization (a mul).
"""
from __future__ import annotations

import numpy as np
import onnx

from fwedge.lowered.build import (
    Builder, activation_range, broadcast_constant, dequantize_array, float_output,
    fused_activation, int8_operands, int8_output, note_float, refuse, requant, requantize_constant,
)
from fwedge.lowered.arith import multiply_by_quantized_multiplier, activate, requantize, zp
from fwedge.lowered.graph import AddQuant, ElementwiseAttrs, LoweredOp, LoweredTensor, quantize_multiplier
from fwedge.lowered.view import is_const_dq
from fwedge.ops.base import OpInfo, register_kind, register_op

ADD_LEFT_SHIFT = 20


def _lower_elementwise(builder: Builder, node: onnx.NodeProto) -> None:
    A, B = node.input[0], node.input[1]
    kind = "add" if node.op_type in ("Add", "Sub") else "mul"
    activation, act_node = fused_activation(builder, node)
    last = act_node or node
    if act_node is not None:
        builder.done.add(id(act_node))
    rank = len(builder.shape(last.output[0]))
    operands = int8_operands(builder, node, (0, 1)) or _int8_by_float_scalar(builder, node)
    if operands is not None and node.op_type in ("Sub", "Div") and not operands[1].is_constant:
        operands = refuse(builder, node, f"int8 {node.op_type} of two activations")
    out = int8_output(builder, last) if operands is not None else None
    if out is not None:
        y_name, y_quant = out
        a, b = operands
        if node.op_type in ("Sub", "Div"):
            value = dequantize_array(b.data.astype(np.int64), np.float32(b.quant.scale), np.int64(b.quant.zero_point), None)
            value = -value if node.op_type == "Sub" else 1.0 / value.astype(np.float64)
            b = requantize_constant(builder, B, value.astype(np.float32))
        a = broadcast_constant(builder, a, rank) if a.is_constant else a
        b = broadcast_constant(builder, b, rank) if b.is_constant else b
        s_a, s_b, s_y = (np.float64(q.scale[0]) for q in (a.quant, b.quant, y_quant))
        low, high = activation_range(activation, y_quant)
        if kind == "add":
            twice_max = 2.0 * max(s_a, s_b)
            m1, sh1 = quantize_multiplier(s_a / twice_max)
            m2, sh2 = quantize_multiplier(s_b / twice_max)
            mo, sho = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s_y))
            attrs = ElementwiseAttrs(activation, add=AddQuant(ADD_LEFT_SHIFT, m1, sh1, m2, sh2, mo, sho, low, high))
        else:
            attrs = ElementwiseAttrs(activation, requant=requant([s_a * s_b / s_y], activation, y_quant))
        builder.emit(kind, node.name, [a.name, b.name], [y_name], attrs)
        return
    note_float(builder, node)
    a = builder.float_input(A)
    b = builder.float_input(B)
    if node.op_type in ("Sub", "Div") and builder.tensors[b].is_constant:
        value = builder.tensors[b].data.astype(np.float64)
        if node.op_type == "Div" and not _powers_of_two(value):
            kind = "div"  # 1/d is inexact: x * (1/d) would differ from x / d by an ULP
        else:
            value = -value if node.op_type == "Sub" else 1.0 / value
        b = builder.add_tensor(LoweredTensor(builder.fresh(B), tuple(value.shape), "float32",
                                             data=value.astype(np.float32)))
    elif node.op_type == "Sub":  # a - b of two activations: a + (-1) * b
        minus = builder.add_tensor(LoweredTensor(builder.fresh(f"{node.name}_minus_one"), (1,) * rank, "float32",
                                                 data=np.full((1,) * rank, -1.0, np.float32)))
        negated = builder.add_tensor(LoweredTensor(builder.fresh(f"{B}_negated"), builder.shape(B), "float32"))
        minus = broadcast_constant(builder, builder.tensors[minus], rank).name
        builder.emit("mul", f"{node.name}_negate", [b, minus], [negated], ElementwiseAttrs("none"))
        b = negated
    a_t, b_t = builder.tensors[a], builder.tensors[b]
    a = broadcast_constant(builder, a_t, rank).name if a_t.is_constant else a
    b = broadcast_constant(builder, b_t, rank).name if b_t.is_constant else b
    y = float_output(builder, last.output[0])
    builder.emit(kind, node.name, [a, b], [y], ElementwiseAttrs(activation))


def _powers_of_two(value: np.ndarray) -> bool:
    """Whether every element is +-2**k with 2**-k a normal float32 (an exact reciprocal)."""
    mantissa, exponent = np.frexp(value)
    return bool(np.all(np.abs(mantissa) == 0.5) and np.all(np.abs(exponent - 1) <= 126))


def _int8_by_float_scalar(builder: Builder, node: onnx.NodeProto) -> list[LoweredTensor] | None:
    """An int8 activation and a float scalar constant (a quantizer that leaves the constant of a
    Sub or Div unquantized): the scalar as an int8 constant of scale |v| / 127, so that it is +-127
    steps and exact to float32 rounding; None for anything else."""
    a = builder.int8_input(node.input[0])
    value = builder.view.const(node.input[1])
    if (node.op_type not in ("Sub", "Div") or a is None or a.dtype != "int8" or a.quant.axis is not None
            or value is None or value.size != 1 or not np.isfinite(value).all() or float(value.reshape(-1)[0]) == 0.0):
        return None
    return [a, requantize_constant(builder, node.input[1], value.astype(np.float32))]


def run_elementwise(op: LoweredOp, values, tensors):
    A, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    a, b = values[A.name], values[B.name]
    attrs = op.attrs
    if Y.dtype == "int8":
        a = a.astype(np.int64) - zp(A)
        b = b.astype(np.int64) - zp(B)
        if op.kind == "add":
            p = attrs.add
            a = multiply_by_quantized_multiplier(a << p.left_shift, p.input1_multiplier, p.input1_shift)
            b = multiply_by_quantized_multiplier(b << p.left_shift, p.input2_multiplier, p.input2_shift)
            y = multiply_by_quantized_multiplier(a + b, p.output_multiplier, p.output_shift) + zp(Y)
            return np.clip(y, p.act_min, p.act_max).astype(np.int8)
        return requantize(a * b, attrs.requant, zp(Y), axis=None)
    y = a + b if op.kind == "add" else a * b if op.kind == "mul" else a / b
    return activate(y, attrs.activation).astype(np.float32)


def _check_constant_operand(view, node: onnx.NodeProto) -> str | None:
    """Div needs a constant divisor; Sub takes two activations in float (int8 refuses them)."""
    if node.op_type == "Div" and view.const(node.input[1]) is None and not is_const_dq(view, node.input[1]):
        return "Div with a non-constant divisor"
    return None


register_kind("add", run_elementwise)
register_kind("mul", run_elementwise)
register_kind("div", run_elementwise)

_ELEMENTWISE = OpInfo(channel_passthrough=True, elementwise=True)
_ELEMENTWISE_INT8 = OpInfo(channel_passthrough=True, elementwise=True, quantizable=True)
register_op("Add", _ELEMENTWISE_INT8, kinds=("add",), lower=_lower_elementwise, static_output=True,
            fuses_activation=True)
register_op("Sub", _ELEMENTWISE, kinds=("add",), lower=_lower_elementwise, static_output=True,
            check=_check_constant_operand)
register_op("Mul", _ELEMENTWISE_INT8, kinds=("mul",), lower=_lower_elementwise, static_output=True,
            fuses_activation=True)
register_op("Div", _ELEMENTWISE, kinds=("mul", "div"), lower=_lower_elementwise, static_output=True,
            check=_check_constant_operand)

"""The lowering toolkit: the graph builder and the helpers every op card's lowering uses.

The op cards (fwedge/ops/) lower ONNX nodes with these; fwedge/lowered/lower.py drives them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from fwedge.errors import ModelError
from fwedge.lowered.graph import (
    INT8_MAX, INT8_MIN, LoweredOp, LoweredTensor, QuantizeAttrs, QuantParams, Requant,
    requant_arrays, same_padding,
)
from fwedge.lowered.view import QdqView, activation_name, clip_bounds, dq_params
from fwedge.ops.base import attribute, fuses_into

log = logging.getLogger(__name__)


@dataclass
class Builder:
    view: QdqView
    ops: list[LoweredOp] = field(default_factory=list)
    tensors: dict[str, LoweredTensor] = field(default_factory=dict)
    # float ONNX name -> lowered name carrying the same value (aliases, fused activations)
    alias: dict[str, str] = field(default_factory=dict)
    # DequantizeLinear output of an activation -> int8 tensor name
    dq_act: dict[str, str] = field(default_factory=dict)
    # DequantizeLinear output of a constant -> (int8/int32 data, scale, zero point, axis)
    dq_const: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int | None]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    float_ops: list[str] = field(default_factory=list)
    onnx_names: dict[str, str] = field(default_factory=dict)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    counter: int = 0

    # -- tensors -------------------------------------------------------------------------------

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.view.shapes.get(name)
        if shape is None:
            raise ModelError(f"tensor '{name}': no inferred shape; lowering needs static shapes")
        if not all(isinstance(d, int) for d in shape):
            # A dim shape inference could not fix (onnx names it 'unk__N'), e.g. one that
            # depends on the input's values: refused on one line, not int('unk__1').
            raise ModelError(f"tensor '{name}': shape {list(shape)} is not static; lowering needs static shapes")
        return tuple(shape)

    def add_tensor(self, tensor: LoweredTensor) -> str:
        existing = self.tensors.get(tensor.name)
        if existing is None:
            self.tensors[tensor.name] = tensor
        return tensor.name

    def fresh(self, base: str) -> str:
        self.counter += 1
        name = f"{base}__{self.counter}"
        while name in self.tensors or name in self.view.shapes:
            self.counter += 1
            name = f"{base}__{self.counter}"
        return name

    def emit(self, kind: str, name: str, inputs, outputs, attrs=None) -> LoweredOp:
        op = LoweredOp(kind, name, tuple(inputs), tuple(outputs), attrs)
        self.ops.append(op)
        return op

    def float_input(self, name: str) -> str:
        """The lowered float32 tensor carrying ONNX value `name`, emitting a dequantize if needed."""
        name = self.alias.get(name, name)
        if name in self.tensors and self.tensors[name].dtype == "float32":
            return name
        if name in self.dq_act:
            source = self.tensors[self.dq_act[name]]
            self.add_tensor(LoweredTensor(name, source.shape, "float32"))
            node = self.view.producers[name]
            self.emit("dequantize", node.name or name, [source.name], [name], QuantizeAttrs())
            self.alias[name] = name
            return name
        if name in self.dq_const:
            data, scale, zp, axis = self.dq_const[name]
            value = dequantize_array(data, scale, zp, axis)
            return self.add_tensor(LoweredTensor(name, tuple(value.shape), "float32", data=value))
        value = self.view.const(name)
        if value is not None:
            return self.add_tensor(LoweredTensor(name, tuple(value.shape), "float32",
                                                 data=value.astype(np.float32)))
        raise ModelError(f"tensor '{name}' has no producer in the lowered graph")

    def int8_input(self, name: str) -> LoweredTensor | None:
        """The int8 tensor behind a DequantizeLinear output, or None if `name` is float."""
        name = self.alias.get(name, name)
        if name in self.dq_act:
            return self.tensors[self.dq_act[name]]
        if name in self.dq_const:
            data, scale, zp, axis = self.dq_const[name]
            tensor = LoweredTensor(
                self.view.producers[name].input[0], tuple(data.shape), str(data.dtype),
                QuantParams(tuple(float(s) for s in scale), tuple(int(z) for z in zp), axis), data,
            )
            self.add_tensor(tensor)
            return self.tensors[tensor.name]
        return None


def dequantize_array(data, scale, zp, axis) -> np.ndarray:
    if axis is None:
        return ((data.astype(np.float64) - float(zp[0])) * float(scale[0])).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    return ((data.astype(np.float64) - zp.reshape(shape)) * scale.astype(np.float64).reshape(shape)).astype(np.float32)


def quant_params(scale, zp) -> QuantParams:
    return QuantParams((float(np.float32(scale[0])),), (int(zp[0]),))


def collect_dq(builder: Builder) -> None:
    """Classify DequantizeLinear nodes: constant weights/biases/operands, or activations."""
    view = builder.view
    for node in view.model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale, zp, axis = dq_params(view, node)
        data = view.const(node.input[0])
        if data is not None:
            builder.dq_const[node.output[0]] = (data, scale, zp.astype(np.int64), axis)
            builder.done.add(id(node))


def output_quantizer(builder: Builder, name: str) -> onnx.NodeProto | None:
    """The QuantizeLinear that is the only consumer of `name` (a float output), if any."""
    node = builder.view.single_consumer(name)
    if node is not None and node.op_type == "QuantizeLinear":
        return node
    return None


def fused_activation(builder: Builder, node: onnx.NodeProto) -> tuple[str, onnx.NodeProto | None]:
    """("relu"/"relu6"/"none", the activation node) when node's only consumer is Relu/Clip."""
    consumer = builder.view.single_consumer(node.output[0])
    if consumer is None or not fuses_into(node, consumer):
        return "none", None
    name = activation_name(clip_bounds(builder.view, consumer))
    if name is None:
        return "none", None
    return name, consumer


def int8_output(builder: Builder, last: onnx.NodeProto) -> tuple[str, QuantParams] | None:
    """If `last`'s output goes only into a QuantizeLinear, the int8 output (name, quant)."""
    q = output_quantizer(builder, last.output[0])
    if q is None:
        return None
    scale, zp, axis = dq_params(builder.view, q)
    if axis is not None or zp.dtype != np.int8:
        return None
    builder.done.add(id(q))
    builder.onnx_names[q.input[0]] = q.output[0]
    builder.onnx_names[last.output[0]] = q.output[0]
    quant = quant_params(scale, zp)
    builder.add_tensor(LoweredTensor(q.output[0], builder.shape(q.output[0]), "int8", quant))
    return q.output[0], quant


def activation_range(activation: str, quant: QuantParams) -> tuple[int, int]:
    """int8 clamp range of a fused activation in the output's quantization."""
    scale, zp = quant.scale[0], quant.zero_point[0]
    low, high = INT8_MIN, INT8_MAX
    if activation in ("relu", "relu6"):
        low = max(low, zp)
    if activation == "relu6":
        high = min(high, zp + int(np.round(6.0 / scale)))
    return low, high


def requant(reals, activation: str, quant: QuantParams) -> Requant:
    multiplier, shift = requant_arrays(reals)
    low, high = activation_range(activation, quant)
    return Requant(multiplier, shift, low, high)


def float_output(builder: Builder, name: str) -> str:
    builder.add_tensor(LoweredTensor(name, builder.shape(name), "float32"))
    return name


def int8_operands(builder: Builder, node: onnx.NodeProto, indices) -> list[LoweredTensor] | None:
    tensors = [builder.int8_input(node.input[i]) for i in indices]
    if any(t is None or t.dtype != "int8" or t.quant.axis is not None for t in tensors):
        return None
    return tensors


def refuse(builder: Builder, node: onnx.NodeProto, reason: str) -> None:
    """Record that an int8 node cannot be lowered in int8; the caller then lowers it in float.

    lower() raises one UnsupportedOpError listing every refusal unless float fallback is allowed.
    """
    builder.refused.append((node.name or node.output[0], node.op_type, reason))
    return None


def note_float(builder: Builder, node: onnx.NodeProto) -> None:
    if any(name in builder.dq_act or name in builder.dq_const for name in node.input):
        builder.float_ops.append(node.name)


def conv_geometry(builder: Builder, node: onnx.NodeProto, weight_shape) -> dict:
    in_shape = builder.shape(node.input[0])
    kernel = tuple(attribute(node, "kernel_shape", list(weight_shape[2:])))
    strides = tuple(attribute(node, "strides", [1, 1]))
    dilations = tuple(attribute(node, "dilations", [1, 1]))
    pads = list(attribute(node, "pads", [0, 0, 0, 0]))
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for axis in range(2):
            pads[axis], pads[axis + 2] = same_padding(in_shape[2 + axis], kernel[axis], strides[axis],
                                                      dilations[axis], auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    # ONNX pads are (top, left, bottom, right) for 2-D: x1_begin, x2_begin, x1_end, x2_end.
    return {"kernel": (int(kernel[0]), int(kernel[1])), "strides": (int(strides[0]), int(strides[1])),
            "pads": tuple(int(p) for p in pads), "dilations": (int(dilations[0]), int(dilations[1]))}


def broadcast_constant(builder: Builder, tensor: LoweredTensor, rank: int) -> LoweredTensor:
    """A constant operand reshaped to `rank` by prepending 1s (NumPy broadcasting)."""
    if len(tensor.shape) == rank:
        return tensor
    shape = (1,) * (rank - len(tensor.shape)) + tuple(tensor.shape)
    name = builder.fresh(tensor.name)
    return builder.tensors[builder.add_tensor(
        LoweredTensor(name, shape, tensor.dtype, tensor.quant, tensor.data.reshape(shape)))]


def requantize_constant(builder: Builder, base: str, value: np.ndarray) -> LoweredTensor:
    """A float constant as a fresh int8 per-tensor constant with scale max|v| / 127, zero point 0."""
    peak = float(np.max(np.abs(value))) or 1.0
    scale = np.float32(peak / 127.0)
    data = np.clip(np.round(value / np.float64(scale)), -127, 127).astype(np.int8)
    name = builder.fresh(base)
    return builder.tensors[builder.add_tensor(
        LoweredTensor(name, tuple(value.shape), "int8", QuantParams((float(scale),), (0,)), data))]


def same_quant_chain(builder: Builder, node: onnx.NodeProto, kind: str, attrs, x_q: LoweredTensor,
                      out: tuple[str, QuantParams]) -> None:
    """An int8 op whose output shares the input's quantization, then a requantize if Q differs."""
    y_name, y_quant = out
    if x_q.quant.same_as(y_quant):
        builder.emit(kind, node.name, [x_q.name], [y_name], attrs)
        return
    middle = builder.fresh(f"{node.output[0]}_int8")
    builder.add_tensor(LoweredTensor(middle, builder.shape(y_name), "int8", x_q.quant))
    builder.emit(kind, node.name, [x_q.name], [middle], attrs)
    emit_requantize(builder, f"{node.name}_requantize", builder.tensors[middle], y_name, y_quant)


def lower_data_movement(builder: Builder, node: onnx.NodeProto, kind: str, attrs) -> None:
    """Lower a one-input op that only moves data: int8 when its input and output are, keeping the
    input's quantization (same_quant_chain), else in float."""
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        same_quant_chain(builder, node, kind, attrs, operands[0], out)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit(kind, node.name, [x], [float_output(builder, node.output[0])], attrs)


def emit_requantize(builder: Builder, name: str, source: LoweredTensor, y_name: str, y_quant: QuantParams) -> None:
    reals = np.float64(source.quant.scale[0]) / np.float64(y_quant.scale[0])
    builder.emit("quantize", name, [source.name], [y_name], QuantizeAttrs(requant([reals], "none", y_quant)))


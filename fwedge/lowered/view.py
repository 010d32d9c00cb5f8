"""The shared QDQ view of an ONNX model: constants, shapes, producers, consumers, Q/DQ parameters.

One view serves the lowering, the support check and every pass that reads a QDQ model's
quantization parameters; it holds no state beyond what it was built from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import ModelError
from fwedge.ops.base import attribute


@dataclass
class QdqView:
    model: onnx.ModelProto
    consts: dict[str, np.ndarray]
    shapes: dict[str, list]
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    outputs: set[str]
    opset: int

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None


def qdq_view(model: onnx.ModelProto) -> QdqView:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    return QdqView(model, consts, ir.value_shapes(model), producers, ir.consumer_map(model),
                 {value.name for value in model.graph.output}, ir.opset_version(model))


def dq_params(view: QdqView, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(scale float32 array, zero point array, axis or None) of a Q/DQ node."""
    scale = view.const(node.input[1])
    if scale is None:
        raise ModelError(f"{node.op_type} '{node.name}': scale '{node.input[1]}' must be a constant")
    zp = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        # ONNX: QuantizeLinear without a zero point produces uint8; DequantizeLinear's zero
        # point has the dtype of its input.
        data = view.const(node.input[0]) if node.op_type == "DequantizeLinear" else None
        dtype = data.dtype if data is not None else (np.uint8 if node.op_type == "QuantizeLinear" else np.int8)
        zp = np.zeros(scale.shape, dtype=dtype)
    axis = attribute(node, "axis", 1) if scale.size > 1 else None
    return scale.astype(np.float32).reshape(-1), zp.reshape(-1), axis


def clip_bounds(view: QdqView, node: onnx.NodeProto) -> tuple[float, float] | None:
    """(min, max) of a Relu or of a Clip with constant bounds, else None."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    low = attribute(node, "min", None)
    high = attribute(node, "max", None)
    if len(node.input) > 1 and node.input[1]:
        value = view.const(node.input[1])
        if value is None:
            return None
        low = float(np.asarray(value).reshape(-1)[0])
    if len(node.input) > 2 and node.input[2]:
        value = view.const(node.input[2])
        if value is None:
            return None
        high = float(np.asarray(value).reshape(-1)[0])
    return (-math.inf if low is None else float(low), math.inf if high is None else float(high))


def activation_name(bounds: tuple[float, float] | None) -> str | None:
    if bounds == (0.0, math.inf):
        return "relu"
    if bounds == (0.0, 6.0):
        return "relu6"
    return None


def is_const_dq(view: QdqView, name: str) -> bool:
    node = view.producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in view.consts


def weight_value(view: QdqView, name: str) -> np.ndarray | None:
    """A weight's float value: a float constant, or a DequantizeLinear of a constant."""
    value = view.const(name)
    if value is not None:
        return value
    node = view.producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in view.consts:
        return view.consts[node.input[0]]
    return None



def input_rank(view: QdqView, node: onnx.NodeProto) -> int:
    """The rank of a node's first input (0 when it has none or its shape is unknown)."""
    return len(view.shapes.get(node.input[0], [])) if node.input else 0


def static_shape(view: QdqView, name: str) -> bool:
    """Whether a tensor's inferred shape is known and static."""
    shape = view.shapes.get(name)
    return shape is not None and all(isinstance(d, int) for d in shape)

"""Switch the activation Q/DQ pairs of a QDQ model between int8 and uint8 (zero point ± 128, same scale)."""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fwedge import ir
from fwedge.errors import ModelError

log = logging.getLogger(__name__)

# Why: onnxruntime's x86 CPU kernels for QDQ-fused QLinearConv/MatMulInteger have a fast path for
# uint8 activations x int8 weights (u8s8, VPMADDUBSW / VNNI) and a slow one for int8 activations.
# q_u8 = q_s8 + 128 with zero point zp_s8 + 128 dequantizes to exactly the same reals, and the
# saturation ranges map onto each other ([-128, 127] + 128 = [0, 255]), so the rewrite changes
# no value of the float model that the QDQ graph describes. Weights, biases and other constant
# DequantizeLinear nodes (their input is an initializer, not a QuantizeLinear) are not touched.

_ONNX_TYPE = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8}


def uint8_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every activation QuantizeLinear/DequantizeLinear pair from int8 to uint8.

    Each pair's zero point becomes zp + 128 (uint8) with the same scale; the dequantized values
    are identical. Node and tensor names are kept (a zero-point initializer that is also read by a
    node outside the activation pairs gets a new "<name>_uint8" copy instead of being changed).

    Args:
        model: a QDQ model (activation QuantizeLinear nodes whose outputs feed only
            DequantizeLinear nodes, as written by fwedge.quantization).

    Returns:
        A new model; the input is not modified. Pairs that are already uint8 are left as they are.

    Raises:
        ModelError: a QuantizeLinear output feeds something other than DequantizeLinear, or a
            zero point is not an initializer.
    """
    return _shift_activations(model, np.dtype(np.int8), np.dtype(np.uint8), 128)


def int8_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse of `uint8_activations`: uint8 activation pairs become int8 (zero point - 128).

    A QuantizeLinear without a zero point (ONNX default: uint8, zero point 0) gets an explicit
    int8 zero point -128.

    Args:
        model: a QDQ model.

    Returns:
        A new model with int8 activation pairs; the input is not modified.

    Raises:
        ModelError: as for `uint8_activations`.
    """
    return _shift_activations(model, np.dtype(np.uint8), np.dtype(np.int8), -128)


def activation_dtypes(model: onnx.ModelProto) -> set[str]:
    """The numpy dtype names ("int8", "uint8") of the activation QuantizeLinear outputs in `model`."""
    inits = {init.name: init for init in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            found.add(_zero_point(node, inits)[1].name)
    return found


def _zero_point(node: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.dtype]:
    """(zero point values, dtype) of a Q/DQ node; ONNX defaults when the input is absent."""
    if len(node.input) < 3 or not node.input[2]:
        # QuantizeLinear without a zero point outputs uint8; DequantizeLinear takes the input's type.
        return np.zeros((), np.int32), np.dtype(np.uint8)
    name = node.input[2]
    if name not in inits:
        raise ModelError(f"{node.op_type} '{node.name}': zero point '{name}' must be an initializer, "
                         f"got a computed tensor")
    values = numpy_helper.to_array(inits[name])
    return values.astype(np.int32), values.dtype


def _shift_activations(model: onnx.ModelProto, source: np.dtype, target: np.dtype, shift: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    readers = ir.consumer_map(out)
    graph_outputs = {value.name for value in graph.output}

    # Activation pairs: a QuantizeLinear of the source dtype and the DequantizeLinear nodes reading it.
    members: list[onnx.NodeProto] = []
    quantized: list[str] = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or _zero_point(q, inits)[1] != source:
            continue
        others = [r for r in readers.get(q.output[0], []) if r.op_type != "DequantizeLinear"]
        if others or q.output[0] in graph_outputs:
            what = (f"{others[0].op_type} '{others[0].name}'" if others else "a graph output")
            raise ModelError(f"QuantizeLinear '{q.name}': its output '{q.output[0]}' feeds {what}; expected only "
                             f"DequantizeLinear nodes (a QDQ model), cannot change its dtype")
        members.append(q)
        members.extend(readers.get(q.output[0], []))
        quantized.append(q.output[0])
    if not members:
        log.info("no %s activation Q/DQ pairs to rewrite", source.name)
        return out

    member_ids = {id(node) for node in members}
    copied: set[str] = set()  # zero points also read elsewhere: the pairs now read a copy
    new_inits: dict[str, onnx.TensorProto] = {}
    for node in members:
        values, dtype = _zero_point(node, inits)
        if node.op_type == "DequantizeLinear" and len(node.input) >= 3 and node.input[2] and dtype != source:
            raise ModelError(f"DequantizeLinear '{node.name}': zero point '{node.input[2]}' is {dtype.name}, "
                             f"its QuantizeLinear writes {source.name}")
        shifted = (values + shift).astype(target)
        old = node.input[2] if len(node.input) >= 3 and node.input[2] else ""
        if old and all(id(r) in member_ids for r in readers.get(old, [])):
            name = old  # only activation pairs read it: rewrite in place, name kept
        else:
            name = f"{old or node.name + '_zero_point'}_{target.name}"
            copied.add(old)
        if name in new_inits:
            existing = numpy_helper.to_array(new_inits[name])
            if not np.array_equal(existing, shifted):
                raise ModelError(f"{node.op_type} '{node.name}': zero point '{name}' rewritten twice with "
                                 f"different values {existing.tolist()} vs {shifted.tolist()}")
        new_inits[name] = numpy_helper.from_array(shifted, name)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        for attr in node.attribute:
            if attr.name == "output_dtype":  # opset 21 QuantizeLinear
                attr.i = _ONNX_TYPE[target]

    kept = [init for init in graph.initializer if init.name not in new_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept + list(new_inits.values()))
    # Drop copied zero points that nothing reads any more.
    used = ir.read_names(graph)
    for init in [init for init in graph.initializer if init.name in copied and init.name not in used]:
        graph.initializer.remove(init)
    quantized_set = set(quantized)
    for value in graph.value_info:
        if value.name in quantized_set and value.type.HasField("tensor_type"):
            value.type.tensor_type.elem_type = _ONNX_TYPE[target]
    log.info("rewrote %d activation Q/DQ pair(s) from %s to %s", len(quantized), source.name, target.name)
    return out


__all__ = ["activation_dtypes", "int8_activations", "uint8_activations"]

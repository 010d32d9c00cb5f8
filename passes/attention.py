"""Attention's reshapes as exporters write them, rewritten as ops of rank <= 4 that every target runs.

1. The QKV split through a rank-5 tensor (Paddle2ONNX's SVTR, timm's ViT): X [1, T, 3*H*d]
   -> Reshape [1, T, 3, H, d] -> Transpose [2, 0, 3, 1, 4] -> [3, 1, H, T, d], then for each part i
   a Slice [i, i+1) of axis 0 and a Squeeze of axis 0 (or one Gather of index i on axis 0), giving
   [1, H, T, d]. Part i is X's channels [i*H*d, (i+1)*H*d): each becomes Slice(X, axis 2) ->
   Reshape [0, T, H, d] -> Transpose [0, 2, 1, 3], the same values in the same order.
2. Softmax over a flattened row: Flatten(axis = r - 1) of a rank-r tensor -> Softmax(last axis) ->
   Reshape back to the rank-r shape is one Softmax over the last axis of the rank-r tensor.

Each rewrite keeps the name of the tensor it replaces (the Squeeze's or Gather's output, the
final Reshape's), so the QuantTable and the reports find it; new nodes and tensors take names
derived from it. Needs static shapes (ir.set_input_shapes) and folded constants (simplify).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir
from fwedge.op_info import attribute

log = logging.getLogger(__name__)

QKV_PERM = [2, 0, 3, 1, 4]


def _users(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _axes(node: onnx.NodeProto, constants: dict, index: int) -> list[int] | None:
    """A Squeeze's (or Slice's) axes: the attribute (opset < 13) or the constant input `index`."""
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > index and node.input[index]:
        axes = constants.get(node.input[index])
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _part_index(node: onnx.NodeProto, users: dict, constants: dict) -> tuple[int, str, list] | None:
    """(part i, output name, nodes replaced) for a Slice [i, i+1) + Squeeze or a Gather i of axis 0."""
    if node.op_type == "Gather" and int(attribute(node, "axis", 0)) == 0:
        index = constants.get(node.input[1])
        return (int(index), node.output[0], [node]) if index is not None and index.ndim == 0 else None
    if node.op_type != "Slice" or len(node.input) < 3:
        return None
    starts, ends = (constants.get(name) for name in node.input[1:3])
    steps = constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    axes = _axes(node, constants, 3) or [0]
    if starts is None or ends is None or steps is None or axes != [0] or int(np.asarray(steps).reshape(-1)[0]) != 1:
        return None
    start, end = int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
    readers = users.get(node.output[0], [])
    if start < 0 or end != start + 1 or len(readers) != 1 or readers[0].op_type != "Squeeze":
        return None
    squeeze = readers[0]
    return (start, squeeze.output[0], [node, squeeze]) if _axes(squeeze, constants, 1) == [0] else None


def _qkv_split(transpose: onnx.NodeProto, producers: dict, users: dict, constants: dict, shapes: dict):
    """(X, [T, H, d], parts [(i, output, nodes)], nodes to drop) of pattern 1 at `transpose`, or None."""
    reshape = producers.get(transpose.input[0])
    if (transpose.op_type != "Transpose" or list(attribute(transpose, "perm", [])) != QKV_PERM or reshape is None
            or reshape.op_type != "Reshape" or len(users.get(reshape.output[0], [])) != 1):
        return None
    x_shape, five = shapes.get(reshape.input[0]), shapes.get(reshape.output[0])
    if not x_shape or not five or len(x_shape) != 3 or len(five) != 5 or any(not isinstance(d, int) for d in five):
        return None
    _, tokens, count, heads, depth = five
    if x_shape[1:] != [tokens, count * heads * depth]:
        return None
    parts = [_part_index(node, users, constants) for node in users.get(transpose.output[0], [])]
    if not parts or any(part is None or not 0 <= part[0] < count for part in parts):
        return None
    return reshape.input[0], [tokens, heads, depth], parts, [reshape, transpose]


def _flat_softmax(flatten: onnx.NodeProto, users: dict, shapes: dict, outputs: set):
    """(input, output, nodes) of pattern 2 starting at `flatten`, or None."""
    shape = shapes.get(flatten.input[0]) or []
    if flatten.op_type != "Flatten" or len(shape) < 3 or int(attribute(flatten, "axis", 1)) % len(shape) != len(shape) - 1:
        return None
    softmax = users.get(flatten.output[0], [None])
    if len(softmax) != 1 or softmax[0] is None or softmax[0].op_type != "Softmax" or flatten.output[0] in outputs:
        return None
    softmax = softmax[0]
    if int(attribute(softmax, "axis", -1)) % 2 != 1 or softmax.output[0] in outputs:
        return None
    reshape = users.get(softmax.output[0], [])
    if len(reshape) != 1 or reshape[0].op_type != "Reshape" or shapes.get(reshape[0].output[0]) != shape:
        return None
    return flatten.input[0], reshape[0].output[0], [flatten, softmax, reshape[0]]


def _qkv_nodes(x: str, dims: list[int], part: int, output: str, inits: list) -> list[onnx.NodeProto]:
    """Slice of X's channels for `part`, Reshape to [0, T, H, d], Transpose to [1, H, T, d]."""
    tokens, heads, depth = dims
    width = heads * depth

    def constant(role: str, values) -> str:
        inits.append(numpy_helper.from_array(np.array(values, np.int64), f"{output}_{role}"))
        return inits[-1].name

    sliced, split = f"{output}_channels", f"{output}_heads"
    return [
        helper.make_node("Slice", [x, constant("starts", [part * width]), constant("ends", [(part + 1) * width]),
                                   constant("axes", [2])], [sliced], name=f"{output}_slice"),
        helper.make_node("Reshape", [sliced, constant("shape", [0, tokens, heads, depth])], [split],
                         name=f"{output}_reshape"),
        helper.make_node("Transpose", [split], [output], name=f"{output}_transpose", perm=[0, 2, 1, 3]),
    ]


def rewrite_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with the rank-5 QKV splits and the flattened Softmaxes (module docstring) rewritten.

    Returns:
        The rewritten copy; the input itself when nothing matched.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = ir.value_shapes(inferred)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    users = _users(model.graph)
    outputs = {value.name for value in model.graph.output}
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id(first node replaced) -> new nodes
    dropped: set[int] = set()
    inits: list[onnx.TensorProto] = []
    for node in model.graph.node:
        split = _qkv_split(node, producers, users, constants, shapes)
        if split is not None:
            x, dims, parts, drop = split
            for part, output, nodes in parts:
                replaced[id(nodes[0])] = _qkv_nodes(x, dims, part, output, inits)
                dropped.update(id(n) for n in nodes)
            dropped.update(id(n) for n in drop)
            continue
        flat = _flat_softmax(node, users, shapes, outputs)
        if flat is not None:
            source, output, nodes = flat
            replaced[id(node)] = [helper.make_node("Softmax", [source], [output], name=nodes[1].name, axis=-1)]
            dropped.update(id(n) for n in nodes)
    if not replaced:
        return model
    kept = []
    for node in model.graph.node:
        kept.extend(replaced.get(id(node), []))
        if id(node) not in dropped:
            kept.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(inits)
    del out.graph.value_info[:]
    log.info("attention: %d node(s) rewritten as %d", len(dropped), sum(len(v) for v in replaced.values()))
    return onnx.shape_inference.infer_shapes(out)

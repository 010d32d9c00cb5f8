"""Fuse the softmax jax2tf writes out into one Softmax node.

ReduceMax(x, axis) -> Max(-inf, .) -> Sub(x, .) -> Exp -> ReduceSum(axis) -> Div(exp, .), with
keepdims-restoring Reshapes between, is Softmax(x, axis) (opset 13 and later: over that one
axis). Quantized, the chain rounds each step of a value the next one exponentiates or divides;
as one node it is the op the targets have (fwedge/ops/softmax.py). The fused node takes the Div's
name and output.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir
from fwedge.op_info import attribute
from fwedge.passes.layer_norm import ChainWalk

log = logging.getLogger(__name__)

SOFTMAX_OPSET = 13


def _max_axis(node, rank: int) -> int | None:
    axes = attribute(node, "axes", None)
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0]) % rank


def _match(reduce_max, users: dict, constants: dict, shapes: dict, outputs: set):
    """(removed nodes, x, axis, output) of the written-out softmax from `reduce_max`, or None."""
    x = reduce_max.input[0]
    rank = len(shapes.get(x) or [])
    axis = _max_axis(reduce_max, rank) if rank else None
    walk = ChainWalk(users, constants, outputs)
    clamp = walk.only(reduce_max.output[0], "Max") if axis is not None else None
    bound = walk.scalar_operand(clamp) if clamp is not None else None
    sub = walk.only(clamp.output[0], "Sub") if bound == -np.inf else None
    if sub is None or sub.input[0] != x:
        return None
    exp = next(iter({id(r): r for r in users.get(sub.output[0], [])}.values()), None)
    if exp is None or exp.op_type != "Exp" or len(users.get(sub.output[0], [])) != 1 or exp.output[0] in outputs:
        return None
    readers = {r.op_type: r for r in users.get(exp.output[0], [])}
    total, div = readers.get("ReduceSum"), readers.get("Div")
    if len(users.get(exp.output[0], [])) != 2 or total is None or div is None or div.input[0] != exp.output[0]:
        return None
    axes = constants.get(total.input[1]) if len(total.input) > 1 else None
    if axes is None or [int(a) % rank for a in axes.reshape(-1)] != [axis]:
        return None
    if walk.only(total.output[0], "Div") is not div:
        return None
    return [reduce_max, clamp, sub, exp, total, div, *walk.passed], x, axis, div.output[0]


def fuse_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every written-out softmax (module docstring) as one Softmax node."""
    if not any(node.op_type == "ReduceMax" for node in model.graph.node) or ir.opset_version(model) < SOFTMAX_OPSET:
        return model
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    shapes = ir.value_shapes(onnx.shape_inference.infer_shapes(model))
    nodes = list(model.graph.node)
    users: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {value.name for value in model.graph.output}
    replaced: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for node in nodes:
        found = _match(node, users, constants, shapes, outputs) if node.op_type == "ReduceMax" else None
        if found is None:
            continue
        chain, x, axis, y = found
        drop.update(id(n) for n in chain)
        div = chain[5]
        replaced[id(div)] = helper.make_node("Softmax", [x], [y], name=div.name or y, axis=axis)
    if not replaced:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(replaced.get(id(n), n) for n in nodes if id(n) not in drop or id(n) in replaced)
    log.info("fused %d written-out softmax(es) into Softmax", len(replaced))
    return out

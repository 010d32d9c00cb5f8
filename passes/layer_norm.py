"""Fuse the LayerNorm chain exporters write into one LayerNormalization (opset 17).

ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) -> ReduceMean -> Add(epsilon) -> Sqrt -> Div(d, .)
[-> Mul(gamma) [-> Add(beta)]], both means over the last axis with keepdims, is
LayerNormalization(x, gamma, beta, axis=-1, epsilon): the lowering has one float kernel for it
(fwedge/ops/layer_norm.py) where the chain has ops no target lowers. A model below opset 17 has
its default opset raised to 17 for the new node (the ops the chain sits among have the same
meaning at 13 to 17 for inference). The fused node takes the first ReduceMean's name.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir
from fwedge.op_info import attribute

log = logging.getLogger(__name__)

LAYER_NORM_OPSET = 17


def _scalar(constants: dict, name: str) -> float | None:
    value = constants.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _last_axis_mean(node, constants: dict, rank: int) -> bool:
    if node is None or node.op_type != "ReduceMean" or not attribute(node, "keepdims", 1):
        return False
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1:
        axes = constants.get(node.input[1])
    return axes is not None and [int(a) % rank for a in np.asarray(axes).reshape(-1)] == [rank - 1]


def _match(mean, users, constants: dict, shapes: dict, outputs: set):
    """(removed nodes, x, gamma, beta, epsilon, output) of the chain from `mean`, or None."""
    rank = len(shapes.get(mean.input[0]) or [])
    if rank < 1 or not _last_axis_mean(mean, constants, rank):
        return None

    def only(name, op_type, extra=None):
        found = users.get(name, [])
        if name in outputs or len(found) != 1 or found[0].op_type != op_type:
            return None
        return found[0] if extra is None or extra(found[0]) else None

    x = mean.input[0]
    sub = only(mean.output[0], "Sub", lambda n: list(n.input) == [x, mean.output[0]])
    d = sub.output[0] if sub else None
    readers = users.get(d, []) if d else []
    if not sub or d in outputs or sorted(n.op_type for n in readers) != ["Div", "Pow"]:
        return None
    pow_, div = sorted(readers, key=lambda n: n.op_type != "Pow")
    if pow_.input[0] != d or _scalar(constants, pow_.input[1]) != 2.0 or div.input[0] != d:
        return None
    var = only(pow_.output[0], "ReduceMean")
    add = only(var.output[0], "Add") if var is not None and _last_axis_mean(var, constants, rank) else None
    epsilon = _scalar(constants, add.input[1]) if add is not None else None
    sqrt = only(add.output[0], "Sqrt") if epsilon is not None else None
    if sqrt is None or div.input[1] != sqrt.output[0] or len(users.get(sqrt.output[0], [])) != 1:
        return None
    chain, last, affine = [mean, sub, pow_, var, add, sqrt, div], div, {}
    for op_type, role in (("Mul", "gamma"), ("Add", "beta")):
        step = only(last.output[0], op_type)
        value = constants.get(step.input[1]) if step is not None else None
        if value is None or value.size != shapes[x][-1] or step.input[0] != last.output[0]:
            break
        affine[role], last = value.reshape(-1).astype(np.float32), step
        chain.append(step)
    return chain, x, affine, epsilon, last.output[0]


def fuse_layer_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every LayerNorm chain (module docstring) as one LayerNormalization node."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    if not any(node.op_type == "ReduceMean" for node in model.graph.node):
        return model
    shapes = ir.value_shapes(onnx.shape_inference.infer_shapes(model))
    nodes = list(model.graph.node)  # one list: the chain is matched by node identity
    users: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {value.name for value in model.graph.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replaced: dict[int, onnx.NodeProto] = {}
    drop: set[int] = set()
    for node in nodes:
        found = _match(node, users, constants, shapes, outputs) if node.op_type == "ReduceMean" else None
        if found is None or any(id(n) in drop for n in found[0]):
            continue
        chain, x, affine, epsilon, y = found
        depth = shapes[x][-1]
        base = node.name or node.output[0]
        gamma, beta = f"{base}_gamma", f"{base}_beta"
        out.graph.initializer.extend([
            numpy_helper.from_array(affine.get("gamma", np.ones(depth, np.float32)), gamma),
            numpy_helper.from_array(affine.get("beta", np.zeros(depth, np.float32)), beta)])
        drop.update(id(n) for n in chain)
        replaced[id(chain[-1])] = helper.make_node("LayerNormalization", [x, gamma, beta], [y], name=base,
                                                   axis=-1, epsilon=epsilon)
    if not replaced:
        return model
    del out.graph.node[:]
    out.graph.node.extend(replaced.get(id(n), n) for n in nodes if id(n) not in drop or id(n) in replaced)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < LAYER_NORM_OPSET:
            opset.version = LAYER_NORM_OPSET
    log.info("fused %d LayerNorm chain(s) into LayerNormalization", len(replaced))
    return out

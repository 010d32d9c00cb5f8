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


def _reduce_axis(node, constants: dict, rank: int) -> int | None:
    """The one axis a ReduceSum (axes as input, opset 13+) reduces, or None."""
    if node is None or node.op_type != "ReduceSum" or len(node.input) < 2:
        return None
    axes = constants.get(node.input[1])
    if axes is None or axes.size != 1:
        return None
    return int(axes.reshape(-1)[0]) % rank


class ChainWalk:
    """Single-reader steps through a graph, skipping the keepdims-restoring Reshapes between."""

    def __init__(self, users: dict, constants: dict, outputs: set):
        self.users, self.constants, self.outputs = users, constants, outputs
        self.passed: list = []  # the Reshapes stepped over

    def only(self, name: str, op_type: str):
        while True:
            found = list({id(n): n for n in self.users.get(name, [])}.values())
            if name in self.outputs or len(found) != 1:
                return None
            if found[0].op_type == "Reshape" and found[0].input[1] in self.constants:
                self.passed.append(found[0])
                name = found[0].output[0]
                continue
            return found[0] if found[0].op_type == op_type else None

    def scalar_operand(self, node, value: float | None = None) -> float | None:
        """The node's one scalar constant operand (equal to `value` if given), or None."""
        scalars = [_scalar(self.constants, name) for name in node.input if name in self.constants]
        if len(scalars) != 1 or scalars[0] is None:
            return None
        return scalars[0] if value is None or np.isclose(scalars[0], value, rtol=1e-6) else None

    def vector_operand(self, node, size: int) -> np.ndarray | None:
        values = [self.constants[name] for name in node.input if name in self.constants]
        return values[0].reshape(-1).astype(np.float32) if len(values) == 1 and values[0].size == size else None


def _match_variance(sum_x, users, constants: dict, shapes: dict, outputs: set):
    """(removed nodes, x, gamma, beta, epsilon, output, axis) of the variance-form chain jax2tf
    writes from `sum_x`, or None: mean = ReduceSum(x)/n, var = max(0, ReduceSum(x*x)/n - mean^2),
    y = (x - mean) * (Reciprocal(Sqrt(var + epsilon)) * gamma) + beta over one axis."""
    x = sum_x.input[0]
    rank = len(shapes.get(x) or [])
    axis = _reduce_axis(sum_x, constants, rank) if rank else None
    if axis is None or not isinstance(shapes[x][axis], int):
        return None
    n, walk = shapes[x][axis], ChainWalk(users, constants, outputs)
    readers = {id(r): r for r in users.get(x, [])}.values()
    square = next((r for r in readers if r.op_type == "Mul" and list(r.input) == [x, x]), None)
    centre = next((r for r in readers if r.op_type == "Sub" and r.input[0] == x), None)
    mean = walk.only(sum_x.output[0], "Mul")
    sum_square = walk.only(square.output[0], "ReduceSum") if square and centre else None
    if mean is None or sum_square is None or _reduce_axis(sum_square, constants, rank) != axis:
        return None
    mean_square = walk.only(sum_square.output[0], "Mul")
    mean_readers = list({id(r): r for r in users.get(mean.output[0], [])}.values())
    squared_mean = next((r for r in mean_readers if r.op_type == "Mul" and list(r.input) == [mean.output[0]] * 2), None)
    if (mean_square is None or squared_mean is None or len(mean_readers) != 2
            or walk.scalar_operand(mean, 1.0 / n) is None or walk.scalar_operand(mean_square, 1.0 / n) is None):
        return None
    variance = walk.only(squared_mean.output[0], "Sub")
    if variance is None or list(variance.input) != [mean_square.output[0], squared_mean.output[0]]:
        return None
    clamp = walk.only(variance.output[0], "Max")
    add = walk.only(clamp.output[0], "Add") if clamp is not None and walk.scalar_operand(clamp, 0.0) is not None else None
    epsilon = walk.scalar_operand(add) if add is not None else None
    sqrt = walk.only(add.output[0], "Sqrt") if epsilon is not None else None
    reciprocal = walk.only(sqrt.output[0], "Reciprocal") if sqrt is not None else None
    scale = walk.only(reciprocal.output[0], "Mul") if reciprocal is not None else None
    gamma = walk.vector_operand(scale, n) if scale is not None else None
    times = walk.only(scale.output[0], "Mul") if gamma is not None else None
    if times is None or sorted(times.input) != sorted([centre.output[0], scale.output[0]]):
        return None
    mean_path = ChainWalk(users, constants, outputs)
    [to_centre] = [r for r in mean_readers if r is not squared_mean]
    if to_centre.op_type == "Reshape" and to_centre.input[1] in constants:
        mean_path.passed.append(to_centre)
        to_centre = mean_path.only(to_centre.output[0], "Sub")
    if to_centre is not centre or walk.only(centre.output[0], "Mul") is not times:
        return None
    shift = walk.only(times.output[0], "Add")
    beta = walk.vector_operand(shift, n) if shift is not None else None
    chain = [sum_x, square, sum_square, mean, mean_square, squared_mean, variance, clamp, add, sqrt, reciprocal,
             scale, centre, times, *walk.passed, *mean_path.passed]
    if beta is not None:
        chain.append(shift)
    last = shift if beta is not None else times
    affine = {"gamma": gamma} if beta is None else {"gamma": gamma, "beta": beta}
    return chain, x, affine, epsilon, last.output[0], axis


def _layer_norm_nodes(base: str, x: str, y: str, gamma: str, beta: str, epsilon: float,
                      axis: int, rank: int) -> list[onnx.NodeProto]:
    """LayerNormalization over `axis`: over the last axis directly, over another one between two
    Transposes that swap it with the last (LayerNormalization normalizes over axis..end)."""
    if axis == rank - 1:
        return [helper.make_node("LayerNormalization", [x, gamma, beta], [y], name=base, axis=-1, epsilon=epsilon)]
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return [helper.make_node("Transpose", [x], [f"{base}_in"], name=f"{base}_in", perm=perm),
            helper.make_node("LayerNormalization", [f"{base}_in", gamma, beta], [f"{base}_out"], name=base,
                             axis=-1, epsilon=epsilon),
            helper.make_node("Transpose", [f"{base}_out"], [y], name=f"{base}_out", perm=perm)]


def fuse_layer_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every LayerNorm chain (module docstring) as one LayerNormalization node."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    if not any(node.op_type in ("ReduceMean", "ReduceSum") for node in model.graph.node):
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
    replaced: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for node in nodes:
        found = None
        if node.op_type == "ReduceMean":
            found = _match(node, users, constants, shapes, outputs)
            found = found and (*found, len(shapes[found[1]]) - 1)
        elif node.op_type == "ReduceSum":
            found = _match_variance(node, users, constants, shapes, outputs)
        if not found or any(id(n) in drop for n in found[0]):
            continue
        chain, x, affine, epsilon, y, axis = found
        depth, rank = shapes[x][axis], len(shapes[x])
        base = node.name or node.output[0]
        gamma, beta = f"{base}_gamma", f"{base}_beta"
        out.graph.initializer.extend([
            numpy_helper.from_array(affine.get("gamma", np.ones(depth, np.float32)), gamma),
            numpy_helper.from_array(affine.get("beta", np.zeros(depth, np.float32)), beta)])
        drop.update(id(n) for n in chain)
        last = next(n for n in reversed(nodes) if id(n) in {id(c) for c in chain})  # the chain's last in order
        replaced[id(last)] = _layer_norm_nodes(base, x, y, gamma, beta, epsilon, axis, rank)
    if not replaced:
        return model
    del out.graph.node[:]
    for n in nodes:
        if id(n) in replaced:
            out.graph.node.extend(replaced[id(n)])
        elif id(n) not in drop:
            out.graph.node.append(n)
    for opset in out.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < LAYER_NORM_OPSET:
            opset.version = LAYER_NORM_OPSET
    log.info("fused %d LayerNorm chain(s) into LayerNormalization", len(replaced))
    return out

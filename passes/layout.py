"""Layout pass: the NHWC<->NCHW Transposes of TF-converted models folded away or absorbed into the model's I/O.

tf2onnx keeps a Keras model's NHWC input and output and converts to NCHW with Transposes: one
after the input (perm 0,3,1,2), one before a Keras Flatten (perm 0,2,3,1), and pairs that cancel
around ops that do not care about the layout. Two passes take them out:

- `fold_transposes` keeps the model's inputs and outputs and what it computes:
  - a Transpose that follows a run of element-wise ops from a graph input moves up to the input
    (hoist), and one that precedes such a run to a graph output moves down to it (sink); the
    run's constant operands are transposed with it;
  - a Transpose and its inverse with an element-wise run between cancel;
  - a Transpose to NHWC whose only use is a flatten to [N, H*W*C] feeding a MatMul or Gemm by a
    constant goes, and the weight's rows are permuted from NHWC to NCHW order instead.
  The quantizer runs it before calibration, and every lowering-based target before lowering.
- `absorb_io_transposes` drops a Transpose between a graph input (or output) and the rest of the
  graph: the input becomes the NCHW tensor, and the model records in its metadata that the
  source model's tensor is NHWC. The targets that store 4-D tensors NHWC (TFLite, C) then take
  the source model's bytes as they are, with no copy, and their manifests say NHWC. Only the
  lowering runs it: the QDQ reference keeps the source model's inputs and outputs.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.op_info import attribute

log = logging.getLogger(__name__)

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
# Metadata key of the layout the source model's I/O tensors had before absorb_io_transposes:
# {"name": "NHWC"}. The lowering drops a key the model brought itself (fwedge writes it only).
LAYOUT_KEY = "fwedge.io_layout"

# Element-wise ops: a Transpose commutes with them. Binary ones qualify when the other operand
# is a constant, which is transposed along; QuantizeLinear/DequantizeLinear when per-tensor.
_UNARY = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu",
                    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Softplus", "Erf", "Floor", "Ceil",
                    "Round", "Identity", "QuantizeLinear", "DequantizeLinear"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"})


def _inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


class _Graph:
    """Use counts, producers and constants of one graph, kept current as the rules rewrite it."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.constants = {init.name: init for init in self.graph.initializer}
        self.outputs = {value.name for value in self.graph.output}
        self.inputs = [value.name for value in ir.graph_inputs(model)]  # model order: the rewrite is deterministic
        self.refresh()

    def refresh(self) -> None:
        self.producer = {name: node for node in self.graph.node for name in node.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def only_user(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when nothing else (no graph output) does."""
        users = self.users.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def transpose_perm(self, node: onnx.NodeProto | None) -> tuple[int, ...] | None:
        if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            return None
        perm = attribute(node, "perm", None)
        return tuple(int(i) for i in perm) if perm is not None and len(perm) == 4 else None

    def elementwise(self, node: onnx.NodeProto, data: str) -> bool:
        """`node` acts element by element on its input `data`, every other input a constant."""
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return False
        others = [name for name in node.input if name and name != data]
        if node.input[0] != data and node.op_type not in ("Add", "Mul", "Max", "Min"):
            return False  # Sub, Div, Pow and the unary ops take their data as input 0
        if any(name not in self.constants for name in others):
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return all(int(np.prod(self.constants[name].dims)) == 1 for name in others)
        return node.op_type in _UNARY or (node.op_type in _BINARY and len(others) == 1)

    def transpose_constants(self, run: list[onnx.NodeProto], perm: tuple[int, ...]) -> None:
        """Transpose every constant operand of `run` (broadcast to rank 4 first) by `perm`."""
        for node in run:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Clip"):
                continue  # per-tensor parameters and bounds: scalars
            for index, name in enumerate(node.input):
                init = self.constants.get(name)
                if init is None or int(np.prod(init.dims)) == 1 or len(init.dims) > 4:
                    continue
                value = numpy_helper.to_array(init)
                moved = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(perm)
                new_name = f"{name}__{''.join(map(str, perm))}"
                if new_name not in self.constants:
                    self.constants[new_name] = numpy_helper.from_array(np.ascontiguousarray(moved), new_name)
                    self.graph.initializer.append(self.constants[new_name])
                node.input[index] = new_name


def _run_from(g: _Graph, start: str) -> tuple[list[onnx.NodeProto], str]:
    """The element-wise single-use run that starts at tensor `start`, and the tensor it ends in."""
    run, current = [], start
    while True:
        node = g.only_user(current)
        if node is None or node.op_type == "Transpose" or not g.elementwise(node, current):
            return run, current
        run.append(node)
        current = node.output[0]


def _rename_input(g: _Graph, old: str, new: str) -> None:
    for node in g.users.get(old, []):
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _hoist(g: _Graph) -> bool:
    """X -> run -> Transpose(p) becomes X -> Transpose(p) -> run, for a graph input X."""
    for name in g.inputs:
        run, end = _run_from(g, name)
        transpose = g.only_user(end)
        perm = g.transpose_perm(transpose)
        if not run or perm is None:
            continue
        g.transpose_constants(run, perm)
        moved = transpose.output[0]
        _rename_input(g, moved, end)   # the run's end now carries the transposed value
        _rename_input(g, name, moved)  # and the run reads the input through the Transpose
        transpose.input[0] = name
        _reorder(g)
        return True
    return False


def _sink(g: _Graph) -> bool:
    """Transpose(p) -> run -> Y becomes run -> Transpose(p) -> Y, for a graph output Y."""
    for node in g.graph.node:
        perm = g.transpose_perm(node)
        if perm is None:
            continue
        run, end = _run_from(g, node.output[0])
        if not run or end not in g.outputs or end in g.users:
            continue
        g.transpose_constants(run, _inverse(perm))
        source = node.input[0]
        _rename_input(g, node.output[0], source)  # the run reads the untransposed value
        last = run[-1]
        last.output[0] = f"{end}__{''.join(map(str, _inverse(perm)))}"
        node.input[0], node.output[0] = last.output[0], end
        _reorder(g)
        return True
    return False


def _cancel(g: _Graph) -> bool:
    """Transpose(p) -> run -> Transpose(q) with q after p the identity: both go."""
    for node in g.graph.node:
        perm = g.transpose_perm(node)
        if perm is None or g.only_user(node.output[0]) is None:
            continue
        run, end = _run_from(g, node.output[0])
        second = g.only_user(end)
        other = g.transpose_perm(second)
        if other is None or tuple(perm[i] for i in other) != (0, 1, 2, 3):
            continue
        if second.output[0] in g.outputs and not run:
            continue  # a pair straight to a graph output: something must still produce it
        g.transpose_constants(run, _inverse(perm))
        _rename_input(g, node.output[0], node.input[0])
        if second.output[0] in g.outputs:
            run[-1].output[0] = second.output[0]
        else:
            _rename_input(g, second.output[0], end)
        g.graph.node.remove(node)
        g.graph.node.remove(second)
        g.refresh()
        return True
    return False


def _flatten_weight(g: _Graph) -> bool:
    """Transpose(0,2,3,1) -> flatten to [N, H*W*C] -> MatMul/Gemm by a constant: the weight's
    rows are permuted from NHWC to NCHW order and the Transpose goes."""
    if not any(g.transpose_perm(node) == TO_NHWC for node in g.graph.node):
        return False
    shapes = ir.value_shapes(onnx.shape_inference.infer_shapes(g.model))
    for node in g.graph.node:
        if g.transpose_perm(node) != TO_NHWC:
            continue
        shape = shapes.get(node.input[0])
        flatten = g.only_user(node.output[0])
        if flatten is None or not shape or any(not isinstance(d, int) for d in shape[1:]):
            continue
        _, channels, height, width = shape
        features = channels * height * width
        if flatten.op_type == "Flatten":
            flat = attribute(flatten, "axis", 1) == 1
        elif flatten.op_type == "Reshape" and flatten.input[1] in g.constants:
            target = numpy_helper.to_array(g.constants[flatten.input[1]]).tolist()
            flat = len(target) == 2 and target[1] in (features, -1) and target[0] in (-1, 0, 1, shape[0])
        else:
            flat = False
        dense = g.only_user(flatten.output[0]) if flat else None
        if dense is None or dense.input[0] != flatten.output[0] or dense.input[1] not in g.constants:
            continue
        weight = numpy_helper.to_array(g.constants[dense.input[1]])
        gemm = dense.op_type == "Gemm" and not attribute(dense, "transA", 0)
        if weight.ndim != 2 or not (dense.op_type == "MatMul" or gemm):
            continue
        if gemm and attribute(dense, "transB", 0) and weight.shape[1] == features:  # W [units, H*W*C]
            moved = weight.reshape(-1, height, width, channels).transpose(0, 3, 1, 2).reshape(weight.shape)
        elif not (gemm and attribute(dense, "transB", 0)) and weight.shape[0] == features:  # W [H*W*C, units]
            moved = weight.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(weight.shape)
        else:
            continue
        new_name = f"{dense.input[1]}__nchw"
        init = numpy_helper.from_array(np.ascontiguousarray(moved), new_name)
        g.graph.initializer.append(init)
        g.constants[new_name] = init
        dense.input[1] = new_name
        flatten.input[0] = node.input[0]
        g.graph.node.remove(node)
        g.refresh()
        return True
    return False


def _reorder(g: _Graph) -> None:
    """Topological order again after a rewrite moved a node's inputs upstream."""
    ordered, ready = [], set(g.constants) | set(g.inputs) | {""}
    pending = list(g.graph.node)
    while pending:
        progress = [node for node in pending if all(name in ready for name in node.input)]
        if not progress:
            raise AssertionError("layout pass: the rewritten graph has a cycle")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        done = {id(node) for node in progress}
        pending = [node for node in pending if id(node) not in done]
    del g.graph.node[:]
    g.graph.node.extend(ordered)
    g.refresh()


def fold_transposes(model: onnx.ModelProto, max_rewrites: int = 256) -> onnx.ModelProto:
    """A copy of `model` with its layout Transposes hoisted, sunk, cancelled or folded into weights.

    The inputs, outputs and results are unchanged (up to float rounding where a constant moved
    across a Transpose: none, transposing is exact). Names of the nodes and tensors that stay
    are kept.

    Args:
        model: a float or QDQ ONNX model.
        max_rewrites: bound on the rewrites, each of which removes or moves one Transpose.

    Returns:
        The rewritten copy (the input is not modified).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    rewrites = 0
    while rewrites < max_rewrites and (_cancel(g) or _flatten_weight(g) or _hoist(g) or _sink(g)):
        rewrites += 1
    if not rewrites:
        return out
    ir.drop_unused_initializers(out.graph)
    del out.graph.value_info[:]
    log.info("layout: %d Transpose rewrite(s)", rewrites)
    return onnx.shape_inference.infer_shapes(out)


def io_layouts(model: onnx.ModelProto) -> dict[str, str]:
    """The source layouts recorded by absorb_io_transposes: I/O name -> "NHWC"."""
    for prop in model.metadata_props:
        if prop.key == LAYOUT_KEY:
            return json.loads(prop.value)
    return {}


def absorb_io_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose NHWC graph inputs (outputs) that only feed (come from) a Transpose to (from)
    NCHW are NCHW tensors of the same name, the Transpose gone; metadata LAYOUT_KEY names them.

    A layout record the model brought along is dropped first: only this pass writes one.

    Returns:
        The rewritten copy (the input is not modified).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [prop for prop in out.metadata_props if prop.key != LAYOUT_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    g = _Graph(out)
    layouts: dict[str, str] = {}
    for value in ir.graph_inputs(out):
        users = g.users.get(value.name, [])
        if (value.name in g.outputs or not users or len(ir.shape_of(value)) != 4
                or any(g.transpose_perm(node) != TO_NCHW or node.output[0] in g.outputs for node in users)):
            continue
        for node in users:
            _rename_input(g, node.output[0], value.name)
            g.graph.node.remove(node)
        _set_shape(value, TO_NCHW)
        layouts[value.name] = "NHWC"
        g.refresh()
    for value in out.graph.output:
        node = g.producer.get(value.name)
        if g.transpose_perm(node) != TO_NHWC or value.name in g.inputs or len(g.users.get(node.input[0], [])) != 1:
            continue
        if node.input[0] in g.inputs or node.input[0] in g.outputs or node.input[0] in g.constants:
            continue
        g.producer[node.input[0]].output[list(g.producer[node.input[0]].output).index(node.input[0])] = value.name
        g.graph.node.remove(node)
        _set_shape(value, TO_NCHW)
        layouts[value.name] = "NHWC"
        g.refresh()
    if not layouts:
        return out
    out.metadata_props.append(onnx.StringStringEntryProto(key=LAYOUT_KEY, value=json.dumps(layouts)))
    del out.graph.value_info[:]
    log.info("layout: %s taken in the source model's NHWC layout", ", ".join(sorted(layouts)))
    return onnx.shape_inference.infer_shapes(out)


def _set_shape(value: onnx.ValueInfoProto, perm: tuple[int, ...]) -> None:
    dims = list(value.type.tensor_type.shape.dim)
    if len(dims) != 4:
        value.type.tensor_type.ClearField("shape")
        return
    copies = []
    for axis in perm:
        dim = onnx.TensorShapeProto.Dimension()
        dim.CopyFrom(dims[axis])
        copies.append(dim)
    del value.type.tensor_type.shape.dim[:]
    value.type.tensor_type.shape.dim.extend(copies)


__all__ = ["fold_transposes", "absorb_io_transposes", "io_layouts", "LAYOUT_KEY", "TO_NCHW", "TO_NHWC"]

"""Preparing a model for the ncnn writer: batch 1, constant shape subgraphs folded, QDQ pairs turned into a float view."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import ExportError
from fwedge.ir import opset_version
from fwedge.op_info import attribute
from fwedge.passes.conv_transpose import conv_transpose_as_depth_to_space
from fwedge.passes.attention import rewrite_attention
from fwedge.passes.layer_norm import fuse_layer_norm
from fwedge.passes.softmax import fuse_softmax
from fwedge.passes.layout import fold_transposes
from fwedge.targets.common import QDQ_OPS, require_static

log = logging.getLogger(__name__)

TARGET = "ncnn"
_ALIAS = ("Identity", "Dropout")
_FOLDABLE_LIMIT = 1 << 20  # elements: constant subgraphs larger than this are not folded


# --------------------------------------------------------------------------------------------
# Preparing the graph: batch 1, constant shape subgraphs folded, QDQ pairs turned into a float
# view that remembers the scales.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActQuant:
    """The Q/DQ pair on one edge: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class WeightQuant:
    """An int8 constant behind a DequantizeLinear: per-channel along `axis` (None: per tensor)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


@dataclass
class FloatView:
    """The QDQ model seen as its float graph: Q/DQ pairs become aliases that carry their scales."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    weights: dict[str, WeightQuant]
    alias: dict[str, tuple[str, ActQuant | None]]
    shapes: dict[str, list]
    inputs: list[str]
    outputs: list[str]
    rename: dict[str, str] = field(default_factory=dict)

    def root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name][0]
        return name

    def blob(self, name: str) -> str:
        root = self.root(name)
        return self.rename.get(root, root)

    def edge_quant(self, name: str) -> ActQuant | None:
        """The scale of the Q/DQ pair directly on this edge (the consumer's input), if any."""
        return self.alias[name][1] if name in self.alias else None

    def shape(self, name: str) -> list:
        for candidate in (name, self.root(name), self.blob(name)):
            if candidate in self.shapes:
                return self.shapes[candidate]
        raise ExportError(f"target {TARGET!r}: no inferred shape for tensor '{name}'")


def _const_value(tensor: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(tensor)


def _evaluate_node(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    graph = onnx.helper.make_graph(
        [node], "fold", [],
        [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name],
        [numpy_helper.from_array(values[name], name) for name in node.input if name],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {})


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fix the batch to 1, fold constant subgraphs (Shape chains, Constant arithmetic), infer shapes;
    a ConvTranspose with kernel == stride becomes a 1x1 Conv + DepthToSpace (passes/conv_transpose.py),
    a LayerNorm chain one LayerNormalization (passes/layer_norm.py).

    DequantizeLinear of a constant is left alone: it carries the int8 weights and their scales.

    Raises:
        ExportError: a non-batch dimension is dynamic.
    """
    require_static(model, TARGET)
    shapes = {value.name: [1] + ir.shape_of(value)[1:] for value in ir.graph_inputs(model) if ir.shape_of(value)}
    model = fuse_layer_norm(fold_transposes(ir.set_input_shapes(conv_transpose_as_depth_to_space(model), shapes)))
    # Folding a Shape chain makes the shapes behind it known, which can expose the next chain.
    for _ in range(8):
        folded = _fold_once(model)
        if folded is None:
            break
        model = folded
    # Chains whose constants only folding revealed (PP-OCRv4 rec's LayerNorms), and attention's
    # rank-5 QKV split and flattened Softmax (passes/attention.py).
    return fuse_softmax(fuse_layer_norm(rewrite_attention(model)))


def _fold_once(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """One constant-folding sweep; None when nothing folds."""
    opset = opset_version(model)
    values = {init.name: _const_value(init) for init in model.graph.initializer}
    known_shapes = ir.value_shapes(model)
    keep, folded = [], []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        foldable = node.op_type not in QDQ_OPS and node.domain in ("", "ai.onnx") and (
            all(name in values for name in inputs)
            or (node.op_type == "Shape" and all(isinstance(d, int) for d in known_shapes.get(node.input[0], [None])))
        )
        if foldable and node.op_type == "Shape":
            # A constant's own shape first: inferred shapes may hold symbolic dims ('unk__2').
            source = values[node.input[0]].shape if node.input[0] in values else known_shapes[node.input[0]]
            shape = np.array(source, dtype=np.int64)
            start, end = attribute(node, "start", 0), attribute(node, "end", None)
            values[node.output[0]] = shape[start:end]
            folded.append(node.output[0])
            continue
        if foldable and inputs and all(values[name].size <= _FOLDABLE_LIMIT for name in inputs):
            try:
                results = _evaluate_node(node, values, opset)
            except Exception as exc:  # the reference evaluator raises many types; keep the node
                log.debug("ncnn: cannot fold %s (%s): %s", node.name, node.op_type, exc)
            else:
                for name, value in zip(node.output, results):
                    values[name] = np.asarray(value)
                    folded.append(name)
                continue
        keep.append(node)
    if not folded:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    existing = {init.name for init in out.graph.initializer}
    used = {name for node in keep for name in node.input} | {o.name for o in out.graph.output}
    for name in folded:
        if name in used and name not in existing:
            out.graph.initializer.append(numpy_helper.from_array(values[name], name))
    del out.graph.value_info[:]
    log.info("ncnn: folded %d constant tensors", len(folded))
    return onnx.shape_inference.infer_shapes(out, data_prop=True)


def float_view(model: onnx.ModelProto) -> FloatView:
    """Parse a prepared (float or QDQ) model into its float view."""
    consts = {init.name: _const_value(init) for init in model.graph.initializer}
    weights: dict[str, WeightQuant] = {}
    alias: dict[str, tuple[str, ActQuant | None]] = {}
    quantized_from: dict[str, tuple[str, ActQuant]] = {}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts:
            scale = float(consts[node.input[1]].reshape(-1)[0])
            zero = int(consts[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0
            quantized_from[node.output[0]] = (node.input[0], ActQuant(scale, zero))
            continue
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            scale = consts[node.input[1]].astype(np.float32)
            zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, dtype=np.int64)
            if source in consts:
                q = consts[source]
                axis = attribute(node, "axis", 1) if scale.size > 1 else None
                shape = [1] * q.ndim
                if axis is not None:
                    shape[axis] = -1
                real = (q.astype(np.float64) - zero.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)
                consts[node.output[0]] = real.astype(np.float32)
                if q.dtype == np.int8:
                    weights[node.output[0]] = WeightQuant(q, scale.reshape(-1), zero.reshape(-1), axis)
                continue
            if source in quantized_from:
                origin, quant = quantized_from[source]
                alias[node.output[0]] = (origin, quant)
                continue
        if node.op_type in QDQ_OPS:
            nodes.append(node)  # a Q/DQ pattern the writer does not understand: reported unsupported
            continue
        if node.op_type in _ALIAS or (node.op_type == "Cast" and attribute(node, "to") == onnx.TensorProto.FLOAT):
            alias[node.output[0]] = (node.input[0], None)
            continue
        nodes.append(node)
    view = FloatView(
        model=model, nodes=nodes, consts=consts, weights=weights, alias=alias,
        shapes=ir.value_shapes(model), inputs=[v.name for v in ir.graph_inputs(model)],
        outputs=[v.name for v in model.graph.output],
    )
    for output in view.outputs:
        root = view.root(output)
        # An output behind a Q/DQ pair keeps its producer's name; the writer adds the pair's clamp.
        if root != output and root not in view.inputs and view.edge_quant(output) is None:
            view.rename[root] = output
    return view

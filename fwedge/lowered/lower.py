"""Lower a float or QDQ ONNX model to the typed integer graph of fwedge/lowered/graph.py.

The driver: prepare the model, run every node's support check (its op card's, plus the rules
common to all ops), then let each node's op card lower it through fwedge/lowered/build.py.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx

from fwedge import ir
from fwedge.errors import ModelError, UnsupportedOpError
from fwedge.lowered.build import Builder, collect_dq
from fwedge.lowered.graph import LoweredGraph, LoweredOp, LoweredTensor, ReshapeAttrs
from fwedge.lowered.view import QdqView, qdq_view, static_shape
from fwedge.ops.registry import KINDS, card
from fwedge.passes.attention import rewrite_attention
from fwedge.passes.conv_transpose import conv_transpose_as_depth_to_space
from fwedge.passes.fold_bn import fold_batchnorm
from fwedge.passes.layer_norm import fuse_layer_norm
from fwedge.passes.softmax import fuse_softmax
from fwedge.passes.layout import absorb_io_transposes, fold_transposes, io_layouts
from fwedge.passes.simplify import fuse_conv_bias, fuse_matmul_bias, simplify
from fwedge.shape_proposal import give_input_shape
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations

__all__ = ["lower", "unsupported_nodes", "prepare", "KINDS", "LoweredGraph", "LoweredOp", "LoweredTensor"]

log = logging.getLogger(__name__)

# Shape arithmetic that folds away once input shapes are static (Shape -> Slice -> Concat -> Reshape).
_SHAPE_ARITHMETIC = ("Constant", "Shape", "Cast", "Slice", "Gather", "Size", "ConstantOfShape", "Range")


def _lowerable(op_type: str) -> bool:
    """Whether an op type has a card that can lower it (BatchNormalization folds before)."""
    c = card(op_type)
    return c is not None and (c.lower is not None or c.check is not None)


# --------------------------------------------------------------------------------------------
# Preparation: static batch-1 shapes, constants folded, BN folded, dead shape arithmetic gone
# --------------------------------------------------------------------------------------------


def prepare(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A copy of `model` ready for lowering.

    Upgrades opset < 13, turns Constant nodes into initializers, fixes every graph input to a
    static batch-1 shape (dynamic non-batch dims must come from `input_shapes`), folds nodes whose
    inputs are all constant and Shape nodes of static tensors (the PP-OCR Shape->Slice->Concat->
    Reshape chain becomes a constant), rewrites attention's rank-5 QKV split and flattened Softmax as rank-4 ops (passes/attention.py),
    folds BatchNormalization into float producers, rewrites a ConvTranspose with kernel ==
    stride as a 1x1 Conv + DepthToSpace (passes/conv_transpose.py), takes out
    the layout Transposes of TF-converted models (passes/layout.py: an NHWC input or output
    becomes the NCHW tensor, recorded in the metadata), and removes nodes no graph output
    depends on.

    Raises:
        ModelError: an input keeps a dynamic dimension other than the batch.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ir.constants_to_initializers(out)
    if ir.opset_version(out) < ir.MIN_OPSET:
        out = onnx.version_converter.convert_version(out, ir.MIN_OPSET)
        ir.constants_to_initializers(out)
    out = _int8_activation_pairs(out)
    shapes = {}
    for value in ir.graph_inputs(out):
        shape = list((input_shapes or {}).get(value.name) or ir.shape_of(value))
        if shape and not isinstance(shape[0], int) or (shape and shape[0] != 1):
            shape[0] = 1
        if any(not isinstance(d, int) for d in shape):
            raise ModelError(
                f"input '{value.name}': dynamic dimensions {shape}; a bundle needs a static shape: "
                f"{give_input_shape(out, value)}; from Python, input_shapes={{'{value.name}': [...]}}"
            )
        shapes[value.name] = shape
    # Declared output shapes (often [-1, ...] from exporters) must not hide the inferred ones.
    for value in out.graph.output:
        value.type.tensor_type.ClearField("shape")
    out = ir.set_input_shapes(out, shapes)
    out = fuse_softmax(fuse_layer_norm(rewrite_attention(simplify(out))))
    out = absorb_io_transposes(fuse_conv_bias(fuse_matmul_bias(fold_transposes(out))))
    out = conv_transpose_as_depth_to_space(fold_batchnorm(out))
    out = _remove_dead(out)
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, data_prop=True)


def _int8_activation_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """uint8 activation Q/DQ pairs (e.g. `fwedge quantize --activation-dtype uint8`) as int8.

    zero point - 128 with the same scale dequantizes to the same reals. A model whose uint8
    QuantizeLinear feeds something other than DequantizeLinear is left as it is, so that the
    problem check names the node (zero point dtype uint8).
    """
    try:
        return int8_activations(model) if "uint8" in activation_dtypes(model) else model
    except ModelError as exc:
        log.debug("uint8 activations kept as they are: %s", exc)
        return model


def _remove_dead(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    live = {value.name for value in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(name in live for name in node.output):
            keep.append(node)
            live.update(name for name in node.input if name)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = live
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


# --------------------------------------------------------------------------------------------
# Support check
# --------------------------------------------------------------------------------------------


def _node_problem(view: QdqView, node: onnx.NodeProto) -> str | None:
    """Why the lowering cannot take a node, or None: the common rules, then the op card's check."""
    if node.domain not in ("", "ai.onnx"):
        return f"domain {node.domain!r}"
    if not _lowerable(node.op_type):
        return "no lowering"
    c = card(node.op_type)
    if c.static_output and not static_shape(view, node.output[0]):
        return "output shape is not static"
    problem = c.check(view, node) if c.check is not None else None
    if problem is None and c.lower is None:
        return "no lowering"
    return problem


def unsupported_nodes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
                      ) -> list[tuple[str, str, int]]:
    """Every (node, op, opset) of `model` that the lowering cannot take.

    Args:
        model: a float or QDQ ONNX model.
        input_shapes: static shapes for inputs with dynamic non-batch dimensions.

    Returns:
        The list, empty when the whole model lowers. With dynamic input shapes and no
        `input_shapes`, only op types are checked (lower() itself then asks for static shapes).
    """
    try:
        prepared = prepare(model, input_shapes)
    except ModelError:
        # Dynamic shapes: only the op types can be judged until the shapes are fixed.
        # Shape arithmetic (Shape -> Slice -> Concat -> Reshape) folds away once shapes are static.
        opset = ir.opset_version(model)
        return [(node.name or node.output[0], node.op_type, opset) for node in model.graph.node
                if node.op_type not in _SHAPE_ARITHMETIC and not _lowerable(node.op_type)]
    return [(name, op, opset) for name, op, opset, _ in _problems(prepared)]


def _problems(model: onnx.ModelProto) -> list[tuple[str, str, int, str]]:
    view = qdq_view(model)
    found = []
    for node in model.graph.node:
        problem = _node_problem(view, node)
        if problem:
            found.append((node.name or node.output[0], node.op_type, view.opset, problem))
    return found


# --------------------------------------------------------------------------------------------
# Lowering
# --------------------------------------------------------------------------------------------


def lower(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
          target: str = "lowering", float_fallback: bool = False) -> LoweredGraph:
    """Lower a float or QDQ ONNX model to a LoweredGraph.

    Args:
        model: a float ONNX model, or a QDQ model in the standard onnxruntime layout (int8
            activations, int8 symmetric per-channel weights, int32 biases).
        input_shapes: static shapes for inputs with dynamic non-batch dimensions.
        target: the target name used in the UnsupportedOpError message.
        float_fallback: lower int8 nodes that have no int8 form (asymmetric weights, a non-zero
            int8 pad constant, ...) in float between dequantize/quantize ops, and list them in
            graph.float_fallback, instead of raising.

    Returns:
        The LoweredGraph (fwedge/lowered/graph.py documents the contract).

    Raises:
        UnsupportedOpError: one error listing every (node, op, opset) that cannot be lowered
            (int8 nodes without an int8 form included, unless float_fallback).
        ModelError: the model has dynamic shapes or malformed Q/DQ parameters.
    """
    prepared = prepare(model, input_shapes)
    problems = _problems(prepared)
    if problems:
        raise UnsupportedOpError(
            target, [(n, o, v) for n, o, v, _ in problems],
            detail="; ".join(f"{n!r}: {why}" for n, _, _, why in problems),
        )
    view = qdq_view(prepared)
    builder = Builder(view)
    for value in ir.graph_inputs(prepared):
        dtype = "int32" if ir.input_dtype(value) == np.int32 else "float32"  # int32: indices (embedding)
        builder.add_tensor(LoweredTensor(value.name, builder.shape(value.name), dtype))
    collect_dq(builder)
    for node in prepared.graph.node:
        if id(node) in builder.done:
            continue
        builder.done.add(id(node))
        card(node.op_type).lower(builder, node)
    if builder.refused and not float_fallback:
        raise UnsupportedOpError(
            target, [(name, op, view.opset) for name, op, _ in builder.refused],
            detail="; ".join(f"{name!r}: {why}" for name, _, why in builder.refused)
            + "; --allow-float-fallback keeps them in float",
        )
    if builder.refused:
        log.warning("%s: %d int8 node(s) kept in float: %s", target, len(builder.refused),
                    "; ".join(f"{name} ({why})" for name, _, why in builder.refused))
    outputs = []
    for value in prepared.graph.output:
        name = value.name
        lowered = builder.alias.get(name, name)
        if name in builder.dq_act and name not in builder.tensors:
            lowered = builder.float_input(name)
        if lowered != name:
            # A graph output must be produced under its own name: copy with a reshape.
            source = builder.tensors[lowered]
            builder.add_tensor(LoweredTensor(name, source.shape, source.dtype, source.quant))
            builder.emit("reshape", f"{name}_output", [lowered], [name], ReshapeAttrs(source.shape))
        outputs.append(name)
    graph = LoweredGraph(
        ops=builder.ops,
        tensors=_live_tensors(builder, outputs, [v.name for v in ir.graph_inputs(prepared)]),
        inputs=[value.name for value in ir.graph_inputs(prepared)],
        outputs=outputs,
        precision="int8" if any(_is_int8(builder, op) for op in builder.ops) else "fp32",
        float_ops=builder.float_ops if any(_is_int8(builder, op) for op in builder.ops) else [],
        onnx_names={name: lowered for name, lowered in builder.onnx_names.items() if lowered in builder.tensors},
        float_fallback=[(name, why) for name, _, why in builder.refused],
        io_layouts=io_layouts(prepared),
    )
    log.info("lowered %d ONNX nodes to %d ops (%s)", len(prepared.graph.node), len(graph.ops), graph.precision)
    return graph


def _is_int8(builder: Builder, op: LoweredOp) -> bool:
    return any(builder.tensors[name].dtype == "int8" for name in op.outputs)


def _live_tensors(builder: Builder, outputs, inputs) -> dict[str, LoweredTensor]:
    used = set(outputs) | set(inputs)
    for op in builder.ops:
        used.update(op.inputs)
        used.update(op.outputs)
    return {name: tensor for name, tensor in builder.tensors.items() if name in used}

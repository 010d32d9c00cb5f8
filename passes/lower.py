"""Lower a float or QDQ ONNX model to the typed integer graph of passes/lowered.py."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import ModelError, UnsupportedOpError
from fwedge.op_info import LOWERING, attribute
from fwedge.passes.lowered import (
    INT8_MAX, INT8_MIN, KINDS, AddQuant, ConcatAttrs, ConvAttrs, ElementwiseAttrs,
    FullyConnectedAttrs, GlobalPoolAttrs, LoweredGraph, LoweredOp, LoweredTensor, PadAttrs,
    PoolAttrs, QuantizeAttrs, QuantParams, Requant, ReshapeAttrs, SoftmaxAttrs, UnaryAttrs,
    quantize_multiplier, requant_arrays,
)

__all__ = ["lower", "unsupported_nodes", "prepare", "KINDS", "LoweredGraph", "LoweredOp", "LoweredTensor"]

log = logging.getLogger(__name__)

# TFLite's ADD keeps 20 bits of headroom when it rescales both inputs to twice the larger scale.
ADD_LEFT_SHIFT = 20
# Softmax probabilities are held in Q30 before the output requantization.
SOFTMAX_PROB_BITS = 30
# exp(-s * d) table entries are Q24.
SOFTMAX_EXP_BITS = 24

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_ALIASES = ("Identity", "Dropout")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_FUSABLE_PRODUCERS = ("Conv", "Gemm", "MatMul", "Add", "Mul")
_SHAPE_ARITHMETIC = ("Constant", "Shape", "Cast", "Slice", "Gather", "Size", "ConstantOfShape", "Range")


def _lowerable(op_type: str) -> bool:
    return op_type in LOWERING


# --------------------------------------------------------------------------------------------
# Preparation: static batch-1 shapes, constants folded, BN folded, dead shape arithmetic gone
# --------------------------------------------------------------------------------------------


def prepare(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A copy of `model` ready for lowering.

    Upgrades opset < 13, turns Constant nodes into initializers, fixes every graph input to a
    static batch-1 shape (dynamic non-batch dims must come from `input_shapes`), folds nodes whose
    inputs are all constant and Shape nodes of static tensors (the PP-OCR Shape->Slice->Concat->
    Reshape chain becomes a constant), folds BatchNormalization into float producers, and
    removes nodes no graph output depends on.

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
                f"input '{value.name}': dynamic dimensions {shape}; lowering needs a static shape "
                f"(pass input_shapes={{'{value.name}': [1, C, H, W]}})"
            )
        shapes[value.name] = shape
    # Declared output shapes (often [-1, ...] from exporters) must not hide the inferred ones.
    for value in out.graph.output:
        value.type.tensor_type.ClearField("shape")
    out = ir.set_input_shapes(out, shapes)
    from fwedge.passes.fold_bn import fold_batchnorm
    from fwedge.passes.simplify import simplify

    out = simplify(out)

    out = fold_batchnorm(out)
    out = _remove_dead(out)
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out, data_prop=True)


def _int8_activation_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """uint8 activation Q/DQ pairs (e.g. `fwedge quantize --activation-dtype uint8`) as int8.

    zero point - 128 with the same scale dequantizes to the same reals. A model whose uint8
    QuantizeLinear feeds something other than DequantizeLinear is left as it is, so that the
    problem check names the node (zero point dtype uint8).
    """
    from fwedge.passes.activation_dtype import activation_dtypes, int8_activations

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
# Graph view
# --------------------------------------------------------------------------------------------


@dataclass
class _View:
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


def _view(model: onnx.ModelProto) -> _View:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    return _View(model, consts, ir.value_shapes(model), producers, ir.consumer_map(model),
                 {value.name for value in model.graph.output}, ir.opset_version(model))


def _dq_params(view: _View, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, int | None]:
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


def _clip_bounds(view: _View, node: onnx.NodeProto) -> tuple[float, float] | None:
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


def _activation_name(bounds: tuple[float, float] | None) -> str | None:
    if bounds == (0.0, math.inf):
        return "relu"
    if bounds == (0.0, 6.0):
        return "relu6"
    return None


# --------------------------------------------------------------------------------------------
# Support check
# --------------------------------------------------------------------------------------------


def _node_problem(view: _View, node: onnx.NodeProto) -> str | None:
    """Why the lowering cannot take a node, or None."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"domain {node.domain!r}"
    if not _lowerable(op):
        return "no lowering"
    if op == "BatchNormalization":
        return "BatchNormalization that cannot be folded into a float Conv/Gemm producer"
    rank = len(view.shapes.get(node.input[0], [])) if node.input else 0
    if op in _QDQ:
        if view.const(node.input[1]) is None:
            return "non-constant scale"
        _, zp, _ = _dq_params(view, node)
        if zp.dtype not in (np.int8, np.int32):
            return f"zero point dtype {zp.dtype}, only int8 activations/weights and int32 biases"
        return None
    if op == "Conv":
        if rank != 4:
            return f"rank-{rank} Conv, only 2-D"
        if attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return "auto_pad"
        if _weight_value(view, node.input[1]) is None:
            return f"weight {node.input[1]!r} is not a constant"
    if op in ("Gemm", "MatMul"):
        if _weight_value(view, node.input[1]) is None:
            return f"weight {node.input[1]!r} is not a constant"
        if rank != 2:
            return f"input of rank {rank}, only [1, K]"
        if op == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                             or attribute(node, "beta", 1.0) != 1.0):
            return "transA/alpha/beta"
    if op in ("MaxPool", "AveragePool"):
        if rank != 4:
            return f"rank-{rank} pool, only 2-D"
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            return "dilated pooling"
        if attribute(node, "storage_order", 0):
            return "storage_order"
        if len(node.output) > 1 and node.output[1]:
            return "MaxPool indices output"
    if op in ("GlobalAveragePool", "GlobalMaxPool") and rank != 4:
        return f"rank-{rank} global pool"
    if op == "GlobalMaxPool":
        return "no lowering"
    if op == "ReduceMean":
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            value = view.const(node.input[1])
            axes = None if value is None else value.tolist()
        if rank != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            return "ReduceMean other than over H, W of a 4-D tensor"
    if op == "Clip" and _clip_bounds(view, node) is None:
        return "Clip with non-constant bounds"
    if op == "Clip" and _activation_name(_clip_bounds(view, node)) is None:
        return f"Clip{_clip_bounds(view, node)}, only relu (0, inf) and relu6 (0, 6)"
    if op == "Softmax":
        axis = attribute(node, "axis", -1 if view.opset >= 13 else 1)
        if axis % max(rank, 1) != rank - 1:
            return "Softmax over a non-last axis"
    if op == "Pad":
        mode = attribute(node, "mode", "constant")
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode != "constant":
            return f"Pad mode {mode!r}"
        if len(node.input) > 1 and view.const(node.input[1]) is None:
            return "non-constant pads"
        if len(node.input) > 3 and node.input[3]:
            return "Pad axes input"
    if op in ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Add", "Mul", "Sub", "Div"):
        out_shape = view.shapes.get(node.output[0])
        if out_shape is None or any(not isinstance(d, int) for d in out_shape):
            return "output shape is not static"
    if op in ("Sub", "Div"):
        if view.const(node.input[1]) is None and not _is_const_dq(view, node.input[1]):
            return f"{op} with a non-constant second operand"
    return None


def _is_const_dq(view: _View, name: str) -> bool:
    node = view.producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in view.consts


def _weight_value(view: _View, name: str) -> np.ndarray | None:
    """A weight's float value: a float constant, or a DequantizeLinear of a constant."""
    value = view.const(name)
    if value is not None:
        return value
    node = view.producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in view.consts:
        return view.consts[node.input[0]]
    return None


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
    view = _view(model)
    found = []
    for node in model.graph.node:
        problem = _node_problem(view, node)
        if problem:
            found.append((node.name or node.output[0], node.op_type, view.opset, problem))
    return found


# --------------------------------------------------------------------------------------------
# Lowering
# --------------------------------------------------------------------------------------------


@dataclass
class _Builder:
    view: _View
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
        return tuple(int(d) for d in shape)

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
            value = _dequantize_array(data, scale, zp, axis)
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


def _dequantize_array(data, scale, zp, axis) -> np.ndarray:
    if axis is None:
        return ((data.astype(np.float64) - float(zp[0])) * float(scale[0])).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    return ((data.astype(np.float64) - zp.reshape(shape)) * scale.astype(np.float64).reshape(shape)).astype(np.float32)


def _quant(scale, zp) -> QuantParams:
    return QuantParams((float(np.float32(scale[0])),), (int(zp[0]),))


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
        The LoweredGraph (passes/lowered.py documents the contract).

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
    view = _view(prepared)
    builder = _Builder(view)
    for value in ir.graph_inputs(prepared):
        builder.add_tensor(LoweredTensor(value.name, builder.shape(value.name), "float32"))
    _collect_dq(builder)
    for node in prepared.graph.node:
        if id(node) in builder.done:
            continue
        builder.done.add(id(node))
        _LOWERERS[node.op_type](builder, node)
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
    )
    log.info("lowered %d ONNX nodes to %d ops (%s)", len(prepared.graph.node), len(graph.ops), graph.precision)
    return graph


def _is_int8(builder: _Builder, op: LoweredOp) -> bool:
    return any(builder.tensors[name].dtype == "int8" for name in op.outputs)


def _live_tensors(builder: _Builder, outputs, inputs) -> dict[str, LoweredTensor]:
    used = set(outputs) | set(inputs)
    for op in builder.ops:
        used.update(op.inputs)
        used.update(op.outputs)
    return {name: tensor for name, tensor in builder.tensors.items() if name in used}


def _collect_dq(builder: _Builder) -> None:
    """Classify DequantizeLinear nodes: constant weights/biases/operands, or activations."""
    view = builder.view
    for node in view.model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale, zp, axis = _dq_params(view, node)
        data = view.const(node.input[0])
        if data is not None:
            builder.dq_const[node.output[0]] = (data, scale, zp.astype(np.int64), axis)
            builder.done.add(id(node))


# -- helpers for int8 outputs ------------------------------------------------------------------


def _output_quantizer(builder: _Builder, name: str) -> onnx.NodeProto | None:
    """The QuantizeLinear that is the only consumer of `name` (a float output), if any."""
    node = builder.view.single_consumer(name)
    if node is not None and node.op_type == "QuantizeLinear":
        return node
    return None


def _fused_activation(builder: _Builder, node: onnx.NodeProto) -> tuple[str, onnx.NodeProto | None]:
    """("relu"/"relu6"/"none", the activation node) when node's only consumer is Relu/Clip."""
    if node.op_type not in _FUSABLE_PRODUCERS:
        return "none", None
    consumer = builder.view.single_consumer(node.output[0])
    if consumer is None:
        return "none", None
    name = _activation_name(_clip_bounds(builder.view, consumer))
    if name is None:
        return "none", None
    return name, consumer


def _int8_output(builder: _Builder, last: onnx.NodeProto) -> tuple[str, QuantParams] | None:
    """If `last`'s output goes only into a QuantizeLinear, the int8 output (name, quant)."""
    q = _output_quantizer(builder, last.output[0])
    if q is None:
        return None
    scale, zp, axis = _dq_params(builder.view, q)
    if axis is not None or zp.dtype != np.int8:
        return None
    builder.done.add(id(q))
    builder.onnx_names[q.input[0]] = q.output[0]
    builder.onnx_names[last.output[0]] = q.output[0]
    quant = _quant(scale, zp)
    builder.add_tensor(LoweredTensor(q.output[0], builder.shape(q.output[0]), "int8", quant))
    return q.output[0], quant


def _activation_range(activation: str, quant: QuantParams) -> tuple[int, int]:
    """int8 clamp range of a fused activation in the output's quantization."""
    scale, zp = quant.scale[0], quant.zero_point[0]
    low, high = INT8_MIN, INT8_MAX
    if activation in ("relu", "relu6"):
        low = max(low, zp)
    if activation == "relu6":
        high = min(high, zp + int(np.round(6.0 / scale)))
    return low, high


def _requant(reals, activation: str, quant: QuantParams) -> Requant:
    multiplier, shift = requant_arrays(reals)
    low, high = _activation_range(activation, quant)
    return Requant(multiplier, shift, low, high)


def _float_output(builder: _Builder, name: str) -> str:
    builder.add_tensor(LoweredTensor(name, builder.shape(name), "float32"))
    return name


def _int8_operands(builder: _Builder, node: onnx.NodeProto, indices) -> list[LoweredTensor] | None:
    tensors = [builder.int8_input(node.input[i]) for i in indices]
    if any(t is None or t.dtype != "int8" or t.quant.axis is not None for t in tensors):
        return None
    return tensors


def _refuse(builder: _Builder, node: onnx.NodeProto, reason: str) -> None:
    """Record that an int8 node cannot be lowered in int8; the caller then lowers it in float.

    lower() raises one UnsupportedOpError listing every refusal unless float fallback is allowed.
    """
    builder.refused.append((node.name or node.output[0], node.op_type, reason))
    return None


def _note_float(builder: _Builder, node: onnx.NodeProto) -> None:
    if any(name in builder.dq_act or name in builder.dq_const for name in node.input):
        builder.float_ops.append(node.name)


# -- op lowerers --------------------------------------------------------------------------------

_LOWERERS = {}


def _lowers(*op_types: str):
    def register(function):
        for op_type in op_types:
            _LOWERERS[op_type] = function
        return function

    return register


def _conv_geometry(builder: _Builder, node: onnx.NodeProto, weight_shape) -> dict:
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
            size = in_shape[2 + axis]
            out = -(-size // strides[axis])
            total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads[axis], pads[axis + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    # ONNX pads are (top, left, bottom, right) for 2-D: x1_begin, x2_begin, x1_end, x2_end.
    return {"kernel": (int(kernel[0]), int(kernel[1])), "strides": (int(strides[0]), int(strides[1])),
            "pads": tuple(int(p) for p in pads), "dilations": (int(dilations[0]), int(dilations[1]))}


@_lowers("Conv")
def _lower_conv(builder: _Builder, node: onnx.NodeProto) -> None:
    X, W = node.input[0], node.input[1]
    B = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    activation, act_node = _fused_activation(builder, node)
    last = act_node or node
    weight_shape = tuple(_weight_value(builder.view, W).shape)
    groups = int(attribute(node, "group", 1))
    in_channels, out_channels = builder.shape(X)[1], weight_shape[0]
    depthwise = groups == in_channels and groups > 1 and weight_shape[1] == 1
    geometry = _conv_geometry(builder, node, weight_shape)
    kind = "depthwise_conv2d" if depthwise else "conv2d"
    multiplier = out_channels // in_channels if depthwise else 1
    if act_node is not None:
        builder.done.add(id(act_node))
    x_q = builder.int8_input(X)
    w_q = builder.int8_input(W)
    quantizer = _output_quantizer(builder, last.output[0]) if x_q is not None and w_q is not None else None
    if quantizer is not None and not (x_q.dtype == "int8" and w_q.dtype == "int8"
                                      and all(z == 0 for z in w_q.quant.zero_point)):
        quantizer = _refuse(builder, node, "int8 conv needs int8 input and int8 weights with zero point 0")
    out = _int8_output(builder, last) if quantizer is not None else None
    if out is not None:
        y_name, y_quant = out
        s_x = np.float64(x_q.quant.scale[0])
        s_w = np.broadcast_to(np.asarray(w_q.quant.scale, dtype=np.float64), (out_channels,))
        bias = _int32_bias(builder, node, B, s_x * s_w, out_channels)
        reals = s_x * s_w / np.float64(y_quant.scale[0])
        attrs = ConvAttrs(**geometry, groups=groups, depth_multiplier=multiplier, activation=activation,
                          requant=_requant(reals, activation, y_quant))
        builder.emit(kind, node.name, [x_q.name, w_q.name, bias], [y_name], attrs)
        return
    _note_float(builder, node)
    x = builder.float_input(X)
    w = builder.float_input(W)
    b = _float_bias(builder, node, B, out_channels)
    y = _float_output(builder, last.output[0])
    attrs = ConvAttrs(**geometry, groups=groups, depth_multiplier=multiplier, activation=activation)
    builder.emit(kind, node.name, [x, w, b], [y], attrs)


def _int32_bias(builder: _Builder, node: onnx.NodeProto, B: str, bias_scale: np.ndarray, channels: int) -> str:
    """The int32 bias of an int8 conv/FC: the DQ'd int32 constant, or a float bias quantized here."""
    bias_quant = QuantParams(tuple(float(s) for s in bias_scale), (0,) * channels, 0)
    if B:
        b_q = builder.int8_input(B)
        if b_q is not None and b_q.dtype == "int32":
            expected = np.float32(bias_scale)
            if not np.allclose(np.float32(b_q.quant.scale), expected, rtol=1e-6):
                log.warning("%s '%s': bias scale differs from s_x * s_w; requantizing the bias",
                            node.op_type, node.name)
            else:
                return b_q.name
        value = _weight_value(builder.view, B)
        if b_q is not None:
            data, scale, zp, axis = builder.dq_const[builder.alias.get(B, B)]
            value = _dequantize_array(data, scale, zp, axis)
        data = np.clip(np.round(value.astype(np.float64) / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
    else:
        data = np.zeros(channels, dtype=np.int32)
    name = builder.fresh(f"{node.name}_bias")
    return builder.add_tensor(LoweredTensor(name, (channels,), "int32", bias_quant, data))


def _float_bias(builder: _Builder, node: onnx.NodeProto, B: str, channels: int) -> str:
    if B:
        return builder.float_input(B)
    name = builder.fresh(f"{node.name}_bias")
    return builder.add_tensor(LoweredTensor(name, (channels,), "float32", data=np.zeros(channels, np.float32)))


@_lowers("Gemm", "MatMul")
def _lower_fully_connected(builder: _Builder, node: onnx.NodeProto) -> None:
    X, W = node.input[0], node.input[1]
    B = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else ""
    # ONNX Gemm with transB=0 and MatMul hold W as [K, N]; the lowered FC wants [N, K].
    transpose = node.op_type == "MatMul" or not attribute(node, "transB", 0)
    activation, act_node = _fused_activation(builder, node)
    last = act_node or node
    if act_node is not None:
        builder.done.add(id(act_node))
    x_q = builder.int8_input(X)
    w_q = builder.int8_input(W)
    quantizer = _output_quantizer(builder, last.output[0]) if x_q is not None and w_q is not None else None
    out_features = _weight_value(builder.view, W).shape[1 if transpose else 0]
    if quantizer is not None:
        axis = w_q.quant.axis
        if axis is not None:
            axis = 1 - axis if transpose else axis
        if x_q.dtype != "int8" or w_q.dtype != "int8" or any(z != 0 for z in w_q.quant.zero_point):
            quantizer = _refuse(builder, node, "int8 FC needs int8 input and int8 weights with zero point 0")
        elif axis not in (None, 0):
            quantizer = _refuse(builder, node, "weight quantized per input feature, not per output feature")
    out = _int8_output(builder, last) if quantizer is not None else None
    if out is not None:
        y_name, y_quant = out
        data = w_q.data.T if transpose else w_q.data
        w_name = builder.fresh(f"{W}_nk") if transpose else w_q.name
        s_w = np.broadcast_to(np.asarray(w_q.quant.scale, dtype=np.float64), (out_features,))
        builder.add_tensor(LoweredTensor(
            w_name, tuple(data.shape), "int8",
            QuantParams(tuple(float(s) for s in s_w), (0,) * out_features, 0), np.ascontiguousarray(data)))
        s_x = np.float64(x_q.quant.scale[0])
        bias = _int32_bias(builder, node, B, s_x * s_w, out_features)
        reals = s_x * s_w / np.float64(y_quant.scale[0])
        attrs = FullyConnectedAttrs(activation, _requant(reals, activation, y_quant))
        builder.emit("fully_connected", node.name, [x_q.name, w_name, bias], [y_name], attrs)
        return
    _note_float(builder, node)
    x = builder.float_input(X)
    w = builder.float_input(W)
    if transpose:
        value = builder.tensors[w].data.T
        w = builder.add_tensor(LoweredTensor(builder.fresh(f"{W}_nk"), tuple(value.shape), "float32",
                                             data=np.ascontiguousarray(value)))
    b = _float_bias(builder, node, B, out_features)
    y = _float_output(builder, last.output[0])
    builder.emit("fully_connected", node.name, [x, w, b], [y], FullyConnectedAttrs(activation))


def _broadcast_constant(builder: _Builder, tensor: LoweredTensor, rank: int) -> LoweredTensor:
    """A constant operand reshaped to `rank` by prepending 1s (NumPy broadcasting)."""
    if len(tensor.shape) == rank:
        return tensor
    shape = (1,) * (rank - len(tensor.shape)) + tuple(tensor.shape)
    name = builder.fresh(tensor.name)
    return builder.tensors[builder.add_tensor(
        LoweredTensor(name, shape, tensor.dtype, tensor.quant, tensor.data.reshape(shape)))]


def _requantize_constant(builder: _Builder, base: str, value: np.ndarray) -> LoweredTensor:
    """A float constant as a fresh int8 per-tensor constant with scale max|v| / 127, zero point 0."""
    peak = float(np.max(np.abs(value))) or 1.0
    scale = np.float32(peak / 127.0)
    data = np.clip(np.round(value / np.float64(scale)), -127, 127).astype(np.int8)
    name = builder.fresh(base)
    return builder.tensors[builder.add_tensor(
        LoweredTensor(name, tuple(value.shape), "int8", QuantParams((float(scale),), (0,)), data))]


@_lowers("Add", "Mul", "Sub", "Div")
def _lower_elementwise(builder: _Builder, node: onnx.NodeProto) -> None:
    A, B = node.input[0], node.input[1]
    kind = "add" if node.op_type in ("Add", "Sub") else "mul"
    activation, act_node = _fused_activation(builder, node)
    last = act_node or node
    if act_node is not None:
        builder.done.add(id(act_node))
    rank = len(builder.shape(last.output[0]))
    operands = _int8_operands(builder, node, (0, 1))
    out = _int8_output(builder, last) if operands is not None else None
    if out is not None:
        y_name, y_quant = out
        a, b = operands
        if node.op_type in ("Sub", "Div"):
            value = _dequantize_array(b.data.astype(np.int64), np.float32(b.quant.scale), np.int64(b.quant.zero_point), None)
            value = -value if node.op_type == "Sub" else 1.0 / value.astype(np.float64)
            b = _requantize_constant(builder, B, value.astype(np.float32))
        a = _broadcast_constant(builder, a, rank) if a.is_constant else a
        b = _broadcast_constant(builder, b, rank) if b.is_constant else b
        s_a, s_b, s_y = (np.float64(q.scale[0]) for q in (a.quant, b.quant, y_quant))
        low, high = _activation_range(activation, y_quant)
        if kind == "add":
            twice_max = 2.0 * max(s_a, s_b)
            m1, sh1 = quantize_multiplier(s_a / twice_max)
            m2, sh2 = quantize_multiplier(s_b / twice_max)
            mo, sho = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s_y))
            attrs = ElementwiseAttrs(activation, add=AddQuant(ADD_LEFT_SHIFT, m1, sh1, m2, sh2, mo, sho, low, high))
        else:
            attrs = ElementwiseAttrs(activation, requant=_requant([s_a * s_b / s_y], activation, y_quant))
        builder.emit(kind, node.name, [a.name, b.name], [y_name], attrs)
        return
    _note_float(builder, node)
    a = builder.float_input(A)
    b = builder.float_input(B)
    if node.op_type in ("Sub", "Div"):
        value = builder.tensors[b].data.astype(np.float64)
        value = -value if node.op_type == "Sub" else 1.0 / value
        b = builder.add_tensor(LoweredTensor(builder.fresh(B), tuple(value.shape), "float32",
                                             data=value.astype(np.float32)))
    a_t, b_t = builder.tensors[a], builder.tensors[b]
    a = _broadcast_constant(builder, a_t, rank).name if a_t.is_constant else a
    b = _broadcast_constant(builder, b_t, rank).name if b_t.is_constant else b
    y = _float_output(builder, last.output[0])
    builder.emit(kind, node.name, [a, b], [y], ElementwiseAttrs(activation))


def _same_quant_chain(builder: _Builder, node: onnx.NodeProto, kind: str, attrs, x_q: LoweredTensor,
                      out: tuple[str, QuantParams]) -> None:
    """An int8 op whose output shares the input's quantization, then a requantize if Q differs."""
    y_name, y_quant = out
    if x_q.quant.same_as(y_quant):
        builder.emit(kind, node.name, [x_q.name], [y_name], attrs)
        return
    middle = builder.fresh(f"{node.output[0]}_int8")
    builder.add_tensor(LoweredTensor(middle, builder.shape(y_name), "int8", x_q.quant))
    builder.emit(kind, node.name, [x_q.name], [middle], attrs)
    _emit_requantize(builder, f"{node.name}_requantize", builder.tensors[middle], y_name, y_quant)


def _emit_requantize(builder: _Builder, name: str, source: LoweredTensor, y_name: str, y_quant: QuantParams) -> None:
    reals = np.float64(source.quant.scale[0]) / np.float64(y_quant.scale[0])
    builder.emit("quantize", name, [source.name], [y_name], QuantizeAttrs(_requant([reals], "none", y_quant)))


def _unary_int8(builder: _Builder, node: onnx.NodeProto, kind: str, attrs_kw: dict) -> bool:
    operands = _int8_operands(builder, node, (0,))
    out = _int8_output(builder, node) if operands is not None else None
    if out is None:
        return False
    (x_q,) = operands
    y_name, y_quant = out
    if kind in ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid"):
        levels = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64)
        x = ((levels - x_q.quant.zero_point[0]) * np.float32(x_q.quant.scale[0])).astype(np.float32)
        y = _FLOAT_UNARY[kind](x, **attrs_kw).astype(np.float32)
        q = np.clip(np.round(y / np.float32(y_quant.scale[0])) + y_quant.zero_point[0], INT8_MIN, INT8_MAX)
        builder.emit(kind, node.name, [x_q.name], [y_name], UnaryAttrs(**attrs_kw, lut=q.astype(np.int8)))
    return True


def _hardsigmoid(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0.0, 1.0)


_FLOAT_UNARY = {
    "relu": lambda x, **_: np.maximum(x, 0),
    "relu6": lambda x, **_: np.clip(x, 0, 6),
    "hardswish": lambda x, **_: x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1),
    "hardsigmoid": lambda x, alpha=0.2, beta=0.5: np.clip(np.float32(alpha) * x + np.float32(beta), 0, 1),
    "sigmoid": lambda x, **_: 1.0 / (1.0 + np.exp(-x.astype(np.float64))),
}


@_lowers("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid")
def _lower_unary(builder: _Builder, node: onnx.NodeProto) -> None:
    kind = {"HardSwish": "hardswish", "HardSigmoid": "hardsigmoid", "Sigmoid": "sigmoid"}.get(node.op_type)
    if kind is None:
        kind = _activation_name(_clip_bounds(builder.view, node))
    attrs_kw = {}
    if kind == "hardsigmoid":
        attrs_kw = {"alpha": float(attribute(node, "alpha", 0.2)), "beta": float(attribute(node, "beta", 0.5))}
    if _unary_int8(builder, node, kind, attrs_kw):
        return
    _note_float(builder, node)
    x = builder.float_input(node.input[0])
    y = _float_output(builder, node.output[0])
    builder.emit(kind, node.name, [x], [y], UnaryAttrs(**attrs_kw))


def _pool_geometry(builder: _Builder, node: onnx.NodeProto) -> dict:
    geometry = _conv_geometry(builder, node, (0, 0) + tuple(attribute(node, "kernel_shape")))
    if attribute(node, "ceil_mode", 0):
        # ceil_mode: extra end padding so that the floor formula gives the inferred output size.
        in_shape, out_shape = builder.shape(node.input[0]), builder.shape(node.output[0])
        pads = list(geometry["pads"])
        for axis in range(2):
            need = (out_shape[2 + axis] - 1) * geometry["strides"][axis] + geometry["kernel"][axis]
            have = in_shape[2 + axis] + pads[axis] + pads[axis + 2]
            pads[axis + 2] += max(need - have, 0)
        geometry["pads"] = tuple(pads)
    geometry.pop("dilations")
    return geometry


@_lowers("MaxPool", "AveragePool")
def _lower_pool(builder: _Builder, node: onnx.NodeProto) -> None:
    kind = "max_pool" if node.op_type == "MaxPool" else "avg_pool"
    attrs = PoolAttrs(**_pool_geometry(builder, node),
                      count_include_pad=bool(attribute(node, "count_include_pad", 0)))
    operands = _int8_operands(builder, node, (0,))
    out = _int8_output(builder, node) if operands is not None else None
    if out is not None and kind == "avg_pool":
        (x_q,), (y_name, y_quant) = operands, out
        area = attrs.kernel[0] * attrs.kernel[1]
        counts = np.arange(area + 1, dtype=np.float64)
        counts[0] = 1.0
        reals = np.float64(x_q.quant.scale[0]) / (np.float64(y_quant.scale[0]) * counts)
        attrs = PoolAttrs(attrs.kernel, attrs.strides, attrs.pads, attrs.count_include_pad,
                          _requant(reals, "none", y_quant))
        builder.emit(kind, node.name, [x_q.name], [y_name], attrs)
        return
    if out is not None:
        _same_quant_chain(builder, node, kind, attrs, operands[0], out)
        return
    _note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit(kind, node.name, [x], [_float_output(builder, node.output[0])], attrs)


@_lowers("GlobalAveragePool", "ReduceMean")
def _lower_global_pool(builder: _Builder, node: onnx.NodeProto) -> None:
    in_shape = builder.shape(node.input[0])
    out_shape = builder.shape(node.output[0])
    keep = len(out_shape) == 4
    operands = _int8_operands(builder, node, (0,))
    out = _int8_output(builder, node) if operands is not None else None
    pooled_shape = (1, in_shape[1], 1, 1)
    if out is not None:
        (x_q,) = operands
        y_name, y_quant = out
        target = y_name if keep else builder.fresh(f"{node.output[0]}_keepdims")
        if not keep:
            builder.add_tensor(LoweredTensor(target, pooled_shape, "int8", y_quant))
        real = np.float64(x_q.quant.scale[0]) / (np.float64(y_quant.scale[0]) * in_shape[2] * in_shape[3])
        builder.emit("global_avg_pool", node.name, [x_q.name], [target],
                     GlobalPoolAttrs(_requant([real], "none", y_quant)))
    else:
        _note_float(builder, node)
        x = builder.float_input(node.input[0])
        target = node.output[0] if keep else builder.fresh(f"{node.output[0]}_keepdims")
        builder.add_tensor(LoweredTensor(target, pooled_shape, "float32"))
        builder.emit("global_avg_pool", node.name, [x], [target], GlobalPoolAttrs())
        y_name = node.output[0]
        if not keep:
            _float_output(builder, y_name)
    if not keep:
        builder.emit("reshape", f"{node.name}_squeeze", [target], [y_name], ReshapeAttrs(out_shape))


@_lowers(*_RESHAPES)
def _lower_reshape(builder: _Builder, node: onnx.NodeProto) -> None:
    attrs = ReshapeAttrs(builder.shape(node.output[0]))
    operands = _int8_operands(builder, node, (0,))
    out = _int8_output(builder, node) if operands is not None else None
    if out is not None:
        _same_quant_chain(builder, node, "reshape", attrs, operands[0], out)
        return
    _note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("reshape", node.name, [x], [_float_output(builder, node.output[0])], attrs)


@_lowers(*_ALIASES)
def _lower_alias(builder: _Builder, node: onnx.NodeProto) -> None:
    source = node.input[0]
    if source in builder.dq_act:
        builder.dq_act[node.output[0]] = builder.dq_act[source]
        builder.view.producers[node.output[0]] = builder.view.producers[source]
        return
    builder.alias[node.output[0]] = builder.alias.get(source, source)


@_lowers("Pad")
def _lower_pad(builder: _Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        pads = [int(p) for p in builder.view.const(node.input[1])]
    else:
        pads = list(attribute(node, "pads", [0] * 2 * rank))
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        constant = _weight_value(builder.view, node.input[2])
        if node.input[2] in builder.dq_const:
            data, scale, zp, axis = builder.dq_const[node.input[2]]
            constant = _dequantize_array(data, scale, zp, axis)
        value = float(np.asarray(constant).reshape(-1)[0]) if constant is not None and np.size(constant) else 0.0
    else:
        value = float(attribute(node, "value", 0.0))
    attrs = PadAttrs(tuple(pads[:rank]), tuple(pads[rank:]), value)
    operands = _int8_operands(builder, node, (0,))
    if operands is not None and value != 0.0 and _output_quantizer(builder, node.output[0]) is not None:
        operands = _refuse(builder, node, f"int8 pad with the non-zero constant {value}")
    out = _int8_output(builder, node) if operands is not None else None
    if out is not None:
        x_q = operands[0]
        _same_quant_chain(builder, node, "pad", attrs, x_q, out)
        return
    _note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("pad", node.name, [x], [_float_output(builder, node.output[0])], attrs)


@_lowers("Concat")
def _lower_concat(builder: _Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.output[0]))
    attrs = ConcatAttrs(int(attribute(node, "axis")) % rank)
    operands = _int8_operands(builder, node, range(len(node.input)))
    quantizer = _output_quantizer(builder, node.output[0]) if operands is not None else None
    if quantizer is not None:
        y_quant = _quant(*_dq_params(builder.view, quantizer)[:2])
        if any(x_q.is_constant and not x_q.quant.same_as(y_quant) for x_q in operands):
            operands = _refuse(builder, node, "a constant input with its own scale")
    out = _int8_output(builder, node) if operands is not None else None
    if out is not None:
        y_name, y_quant = out
        inputs = []
        for index, x_q in enumerate(operands):
            if x_q.quant.same_as(y_quant):
                inputs.append(x_q.name)
                continue
            name = builder.fresh(f"{x_q.name}_to_{node.name}")
            builder.add_tensor(LoweredTensor(name, x_q.shape, "int8", y_quant))
            _emit_requantize(builder, f"{node.name}_requantize_{index}", x_q, name, y_quant)
            inputs.append(name)
        builder.emit("concat", node.name, inputs, [y_name], attrs)
        return
    _note_float(builder, node)
    inputs = [builder.float_input(name) for name in node.input]
    builder.emit("concat", node.name, inputs, [_float_output(builder, node.output[0])], attrs)


@_lowers("Softmax")
def _lower_softmax(builder: _Builder, node: onnx.NodeProto) -> None:
    rank = len(builder.shape(node.input[0]))
    operands = _int8_operands(builder, node, (0,))
    out = _int8_output(builder, node) if operands is not None else None
    if out is not None:
        (x_q,) = operands
        y_name, y_quant = out
        d = np.arange(256, dtype=np.float64)
        table = np.round(np.exp(-np.float64(np.float32(x_q.quant.scale[0])) * d) * (1 << SOFTMAX_EXP_BITS))
        real = 2.0 ** -SOFTMAX_PROB_BITS / np.float64(y_quant.scale[0])
        attrs = SoftmaxAttrs(rank - 1, 1.0, table.astype(np.int32), _requant([real], "none", y_quant))
        builder.emit("softmax", node.name, [x_q.name], [y_name], attrs)
        return
    _note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("softmax", node.name, [x], [_float_output(builder, node.output[0])], SoftmaxAttrs(rank - 1))


@_lowers("QuantizeLinear")
def _lower_quantize(builder: _Builder, node: onnx.NodeProto) -> None:
    """A QuantizeLinear not absorbed by its producer: float->int8, or int8->int8 after a DQ."""
    scale, zp, axis = _dq_params(builder.view, node)
    quant = _quant(scale, zp)
    y = builder.add_tensor(LoweredTensor(node.output[0], builder.shape(node.output[0]), "int8", quant))
    source = builder.int8_input(node.input[0])
    if source is not None and not source.is_constant:
        if source.quant.same_as(quant):
            builder.emit("reshape", node.name, [source.name], [y], ReshapeAttrs(source.shape))
        else:
            _emit_requantize(builder, node.name, source, y, quant)
        return
    x = builder.float_input(node.input[0])
    builder.emit("quantize", node.name, [x], [y], QuantizeAttrs())


@_lowers("DequantizeLinear")
def _lower_dequantize(builder: _Builder, node: onnx.NodeProto) -> None:
    """An activation DequantizeLinear: remember the int8 source; a dequantize op comes when needed."""
    source = builder.tensors.get(builder.alias.get(node.input[0], node.input[0]))
    if source is None or source.dtype != "int8":
        raise ModelError(f"DequantizeLinear '{node.name}': input '{node.input[0]}' is not an int8 tensor")
    scale, zp, axis = _dq_params(builder.view, node)
    if not source.quant.same_as(_quant(scale, zp)):
        raise ModelError(f"DequantizeLinear '{node.name}': scale/zero point differ from its QuantizeLinear")
    builder.dq_act[node.output[0]] = source.name
    builder.onnx_names[node.output[0]] = source.name

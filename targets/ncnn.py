"""NCNN target: fwedge's own .param/.bin writer (fp32, and int8 from the QDQ model's scales), run by the ncnn Python module.

Why a direct writer rather than the pnnx binary: the int8 model has to be written by fwedge anyway
(ncnn2int8 is not available, and pnnx has no way to take fwedge's scales), and one writer for
both precisions means the fp32 and int8 bundles share every non-quantized layer. The writer also
keeps ONNX tensor names as blob names, so `fwedge diff` can extract any intermediate blob and
compare it with the reference by name; pnnx renames blobs. pnnx stays useful as an independent
cross-check of the fp32 numerics (tests/test_targets_ncnn.py, marker pnnx).

Source of the int8 model: the QDQ ONNX model itself, not the lowered integer graph. ncnn's int8
layers are float-in/float-out: Convolution, ConvolutionDepthWise and InnerProduct quantize their
input with `bottom_blob_int8_scales`, multiply int8 weights (`weight_data_int8_scales` per output
channel, per group for ConvolutionDepthWise), accumulate in int32 and dequantize (+ float bias).
That is exactly a QDQ Conv: DQ(Q(x)) * DQ(W) + DQ(b), so the QDQ graph's scales map one to one;
the lowered graph's requantization multipliers have no place in ncnn's format. Every other op
runs in float between the int8 layers; where the QDQ model has a Q/DQ pair on its input, the
writer inserts a fake quantization (x / s, round half to even, clamp, × s: four cheap layers), so
it computes on the same values as onnxruntime, including the clamp that stands in for a Relu the
quantizer removed. Graph outputs behind a Q/DQ pair are fake-quantized the same way.

Zero points: ncnn int8 activations are symmetric (q = clamp(round(x * scale), -127, 127), no zero
point), fwedge's default activations are asymmetric. A layer whose input has zero point zp != 0
reads a shifted blob x + m·s (one BinaryOp; an explicit Padding with value m·s replaces the
convolution's zero padding) and its bias absorbs -m·s·ΣW, with m = zp (or zp + 1 when zp = -128,
so that a post-ReLU zero stays exact). Inside the quantization window this is exactly ORT's
QuantizeLinear; the one value ncnn's [-127, 127] clamp cannot hold is the window's top (zp =
-128) or bottom (otherwise) level, which saturates one step early. Symmetric QDQ models need no
shift and lose only the -128 level.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.bundle import Bundle, write_bundle
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.ir import opset_version
from fwedge.lowered.graph import same_padding
from fwedge.op_info import attribute
from fwedge.targets.base import ExportOptions, Target, target
from fwedge.targets.common import (
    QDQ_OPS, RunnerCache, check_feeds, has_qdq, io_specs, require_static, resolve_precision, runtime_threads,
)

log = logging.getLogger(__name__)

TARGET = "ncnn"
PARAM_FILE = "model.param"
BIN_FILE = "model.bin"
MAGIC = 7767517
INT8_TAG = 0x000D4B38  # ModelBin flag: the weight buffer holds int8 values
FLT_MAX = 3.4028234663852886e38

# ONNX op -> ncnn BinaryOp op_type (and the reversed op when the constant is the first operand).
_BINARY = {"Add": (0, 0), "Sub": (1, 7), "Mul": (2, 2), "Div": (3, 8)}
_UNARY = {"Relu": "ReLU", "LeakyRelu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH",
          "HardSigmoid": "HardSigmoid", "HardSwish": "HardSwish", "Clip": "Clip"}
_ALIAS = ("Identity", "Dropout")
# Every ONNX op this writer takes (Q/DQ pairs and aliases are folded into the float view first);
# tests/test_op_cards.py checks it against the op cards that lower.
WRITTEN_OPS = frozenset(_UNARY) | frozenset(_BINARY) | frozenset(_ALIAS) | frozenset(QDQ_OPS) | frozenset({
    "Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Softmax", "Pad",
})
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
    """Fix the batch to 1, fold constant subgraphs (Shape chains, Constant arithmetic), infer shapes.

    DequantizeLinear of a constant is left alone: it carries the int8 weights and their scales.

    Raises:
        ExportError: a non-batch dimension is dynamic.
    """
    require_static(model, TARGET)
    shapes = {value.name: [1] + ir.shape_of(value)[1:] for value in ir.graph_inputs(model)}
    model = ir.set_input_shapes(model, shapes)
    # Folding a Shape chain makes the shapes behind it known, which can expose the next chain.
    for _ in range(8):
        folded = _fold_once(model)
        if folded is None:
            return model
        model = folded
    return model


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
            shape = np.array(known_shapes[node.input[0]], dtype=np.int64)
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


# --------------------------------------------------------------------------------------------
# Support check
# --------------------------------------------------------------------------------------------


def _reason(node: onnx.NodeProto, view: FloatView) -> str | None:
    """Why the writer cannot take this node, or None."""
    op = node.op_type
    consts = view.consts
    if node.domain not in ("", "ai.onnx"):
        return "custom domain"
    if op not in WRITTEN_OPS:
        return "no ncnn writer for this op"
    if op == "Conv":
        if len(attribute(node, "kernel_shape", consts.get(node.input[1], np.zeros((1, 1, 1, 1))).shape[2:])) != 2:
            return "only 2-D convolution"
        if node.input[1] not in consts:
            return "weight must be a constant"
        return None
    if op == "Gemm":
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
            return "only Gemm with transA=0, alpha=beta=1"
        return None if node.input[1] in consts else "weight must be a constant"
    if op == "MatMul":
        weight = consts.get(node.input[1])
        return None if weight is not None and weight.ndim == 2 else "only MatMul by a constant 2-D matrix"
    if op in ("MaxPool", "AveragePool"):
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            return "pool dilation"
        return None if len(attribute(node, "kernel_shape", [])) == 2 else "only 2-D pools"
    if op in ("GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Flatten", "Reshape", "Squeeze",
              "Unsqueeze", "Concat", "Softmax") or op in _UNARY or op in _BINARY:
        return None
    if op == "ReduceMean":
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = consts.get(node.input[1])
        keep = attribute(node, "keepdims", 1)
        return None if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] and keep else "only ReduceMean over H,W with keepdims"
    if op == "Pad":
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge"):
            return f"pad mode {mode}"
        return None if len(node.input) > 1 and node.input[1] in consts else "pads must be constant"
    return "no ncnn writer for this op"


def _node_problems(view: FloatView, opset: int) -> list[tuple[str, str, int]]:
    """Nodes this writer has no translation for (the node table of _reason)."""
    missing = []
    for node in view.nodes:
        reason = _reason(node, view)
        if reason is not None:
            log.debug("ncnn: %s (%s): %s", node.name, node.op_type, reason)
            missing.append((node.name or node.output[0], node.op_type, opset))
    return missing


# --------------------------------------------------------------------------------------------
# Writing .param / .bin
# --------------------------------------------------------------------------------------------


def _format(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_format(v) for v in value]
        return ",".join([str(len(items))] + items)
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.9e}"
    return str(int(value))


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{self.type:<24}", f"{self.name:<32}", str(len(self.inputs)), str(len(self.outputs)),
                 *self.inputs, *self.outputs]
        for key, value in sorted(self.params.items()):
            if isinstance(value, (list, tuple, np.ndarray)):
                parts.append(f"{-23300 - key}={_format(value)}")
            else:
                parts.append(f"{key}={_format(value)}")
        return " ".join(parts)


class NcnnWriter:
    """Accumulates layers and weight buffers; `emit_<op>` methods translate one ONNX node each."""

    def __init__(self, view: FloatView, int8: bool):
        self.view = view
        self.int8 = int8
        self.layers: list[Layer] = []
        self.weights = bytearray()
        self.int8_layers: list[str] = []
        self.float_layers: dict[str, str] = {}
        self.shifted: dict[tuple[str, float], str] = {}
        self.fake_quantized: dict[tuple[str, float, int], str] = {}
        self.extra_shapes: dict[str, list] = {}

    # -- buffers -------------------------------------------------------------------------------

    def raw(self, array: np.ndarray) -> None:
        """A float32 buffer loaded with type 1 (no flag): biases, scales, BatchNorm, MemoryData."""
        self.weights += np.ascontiguousarray(array, dtype="<f4").tobytes()

    def weight_float(self, array: np.ndarray) -> None:
        """A weight buffer loaded with type 0: a zero flag, then float32 data."""
        self.weights += struct.pack("<I", 0)
        self.raw(array)

    def weight_int8(self, array: np.ndarray) -> None:
        """A weight buffer loaded with type 0: the int8 tag, int8 data, padded to 4 bytes."""
        data = np.ascontiguousarray(array, dtype=np.int8).tobytes()
        self.weights += struct.pack("<I", INT8_TAG) + data + b"\0" * (-len(data) % 4)

    def add(self, type_: str, name: str, inputs: list[str], outputs: list[str], params: dict | None = None) -> Layer:
        layer = Layer(type_, name, list(inputs), list(outputs), params or {})
        self.layers.append(layer)
        return layer

    def shape(self, name: str) -> list:
        if name in self.extra_shapes:
            return self.extra_shapes[name]
        return self.view.shape(name)

    # -- helpers -------------------------------------------------------------------------------

    def blob(self, name: str) -> str:
        return self.view.blob(name)

    def input(self, name: str) -> str:
        """The blob a float layer reads for ONNX input `name`.

        A Q/DQ pair on the edge means the consumer sees DQ(Q(x)): x rounded to the pair's grid
        and clamped to [(-128 - zp)·s, (127 - zp)·s] (onnxruntime's quantizer relies on the clamp
        when it drops a Relu/Clip in front of the pair). Float layers read that fake-quantized
        blob, so they compute on the same values as onnxruntime.
        """
        source = self.blob(name)
        quant = self.view.edge_quant(name)
        if quant is None:
            return source
        key = (source, quant.scale, quant.zero_point)
        if key not in self.fake_quantized:
            self.fake_quantized[key] = self.fake_quantize(source, quant, f"{source}_ncnn_fq{len(self.fake_quantized)}")
        return self.fake_quantized[key]

    def fake_quantize(self, source: str, quant: ActQuant, output: str) -> str:
        """x -> s · clamp(round_half_even(x / s), -128 - zp, 127 - zp), as DQ(Q(x)); returns `output`."""
        steps = [f"{output}_{i}" for i in range(3)]
        self.add("BinaryOp", steps[0], [source], [steps[0]], {0: 3, 1: 1, 2: quant.scale})
        self.add("UnaryOp", steps[1], [steps[0]], [steps[1]], {0: 18})  # nearbyintf: half to even
        self.add("Clip", steps[2], [steps[1]], [steps[2]],
                 {0: float(-128 - quant.zero_point), 1: float(127 - quant.zero_point)})
        self.add("BinaryOp", output, [steps[2]], [output], {0: 2, 1: 1, 2: quant.scale})
        return output

    def memory_data(self, array: np.ndarray, like_rank: int, name: str) -> str:
        """A MemoryData blob for a constant operand, broadcast-aligned to an operand of rank `like_rank`."""
        value = np.asarray(array, dtype=np.float32)
        value = value.reshape((1,) * (like_rank - value.ndim) + value.shape)
        if value.shape[0] != 1:
            raise ExportError(f"target {TARGET!r}: constant '{name}' has a batch dimension {value.shape[0]}")
        dims = list(value.shape[1:]) or [1]
        params = {0: dims[-1]}
        if len(dims) >= 2:
            params[1] = dims[-2]
        if len(dims) == 3:
            params[2] = dims[-3]
        if len(dims) == 4:
            params[11], params[2] = dims[-3], dims[-4]
        blob = f"{name}_ncnn_const"
        self.add("MemoryData", blob, [], [blob], params)
        self.raw(value)
        return blob

    def shifted_input(self, name: str, quant: ActQuant, pads: tuple[int, int, int, int], layer: str) -> tuple[str, int]:
        """The blob an int8 layer reads, and the integer shift m applied to it (see the module docstring)."""
        m = quant.zero_point + 1 if quant.zero_point == -128 else quant.zero_point
        source = self.blob(name)
        if m != 0:
            key = (source, m * quant.scale)
            if key not in self.shifted:
                shifted = f"{source}_ncnn_shift"
                self.add("BinaryOp", shifted, [source], [shifted], {0: 0, 1: 1, 2: float(np.float32(m * quant.scale))})
                self.shifted[key] = shifted
            source = self.shifted[key]
        if m != 0 and any(pads):
            # An explicit Padding with the shifted image of 0. (Convolution's pad_value is not
            # applied to int8 inputs packed 8 channels at a time on x86, see
            # tests/test_targets_export.py::test_ncnn_int8_shifted_padding_many_channels.)
            top, left, bottom, right = pads
            padded = f"{source}_ncnn_pad_{layer}"
            self.add("Padding", padded, [source], [padded],
                     {0: top, 1: bottom, 2: left, 3: right, 4: 0, 5: float(np.float32(m * quant.scale))})
            source = padded
        return source, m

    def int8_plan(self, node: onnx.NodeProto, weight_name: str, out_axis: int, groups: int = 1) -> tuple[ActQuant, WeightQuant] | None:
        """The (input quant, weight quant) pair when this layer can run int8 in ncnn, else None (float)."""
        if not self.int8:
            return None
        quant = self.view.edge_quant(node.input[0])
        weight = self.view.weights.get(weight_name)
        label = node.name or node.output[0]
        if quant is None or weight is None:
            self.float_layers[label] = "no Q/DQ on its input or weight"
            return None
        if np.any(weight.zero_point != 0):
            self.float_layers[label] = "weight zero point is not 0"
            return None
        if weight.axis is not None and weight.axis != out_axis:
            self.float_layers[label] = f"weight scales along axis {weight.axis}, not the output channels"
            return None
        if groups > 1:
            per_group = np.broadcast_to(weight.scale, (weight.q.shape[out_axis],)).reshape(groups, -1)
            if not np.all(per_group == per_group[:, :1]):
                self.float_layers[label] = "grouped conv with per-channel scales that differ inside a group"
                return None
        return quant, weight

    # -- emitters ------------------------------------------------------------------------------

    def emit_Conv(self, node: onnx.NodeProto) -> None:
        X, W, Y = node.input[0], node.input[1], node.output[0]
        B = node.input[2] if len(node.input) > 2 and node.input[2] else None
        weight = self.view.consts[W]
        M, C_per_group, kH, kW = weight.shape
        group = attribute(node, "group", 1)
        strides = attribute(node, "strides", [1, 1])
        dilations = attribute(node, "dilations", [1, 1])
        top, left, bottom, right = self.conv_pads(node, X, Y, [kH, kW], strides, dilations)
        bias = self.view.consts[B].astype(np.float32) if B else np.zeros(M, np.float32)
        layer_type = "Convolution" if group == 1 else "ConvolutionDepthWise"
        plan = self.int8_plan(node, W, 0, group)
        source = self.input(X) if plan is None else self.blob(X)
        params = {0: M, 1: kW, 11: kH, 2: dilations[1], 12: dilations[0], 3: strides[1], 13: strides[0],
                  4: left, 15: right, 14: top, 16: bottom, 5: 1, 6: int(weight.size)}
        if group != 1:
            params[7] = group
        if plan is not None:
            quant, wq = plan
            source, m = self.shifted_input(X, quant, (top, left, bottom, right), node.name or Y)
            if m != 0:
                for key in (4, 15, 14, 16):
                    params[key] = 0
            real_w = self.view.consts[W].astype(np.float64)
            bias = (bias.astype(np.float64) - m * quant.scale * real_w.reshape(M, -1).sum(axis=1)).astype(np.float32)
            params[8] = 1
            w_scales = np.broadcast_to(wq.scale, (M,)).astype(np.float64)
            if group != 1:
                w_scales = w_scales.reshape(group, -1)[:, 0]
            self.add(layer_type, node.name or Y, [source], [self.blob(Y)], params)
            self.weight_int8(wq.q)
            self.raw(bias)
            self.raw((1.0 / w_scales).astype(np.float32))
            self.raw(np.array([1.0 / quant.scale], np.float32))
            self.int8_layers.append(node.name or Y)
            return
        self.add(layer_type, node.name or Y, [source], [self.blob(Y)], params)
        self.weight_float(weight)
        self.raw(bias)

    def conv_pads(self, node, X, Y, kernel, strides, dilations) -> tuple[int, int, int, int]:
        auto_pad = attribute(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("NOTSET", ""):
            pads = attribute(node, "pads", [0, 0, 0, 0])
            return pads[0], pads[1], pads[2], pads[3]
        if auto_pad == "VALID":
            return 0, 0, 0, 0
        in_shape = self.shape(X)
        (top, bottom), (left, right) = (
            same_padding(in_shape[2 + axis], kernel[axis], strides[axis], dilations[axis], auto_pad == "SAME_UPPER")
            for axis in (0, 1))
        return top, left, bottom, right

    def fully_connected(self, node: onnx.NodeProto, weight_nk: np.ndarray, weight_name: str, out_axis: int,
                        bias: np.ndarray | None, transpose_q: bool) -> None:
        X, Y = node.input[0], node.output[0]
        N, K = weight_nk.shape
        in_shape = self.shape(X)
        if len(in_shape) != 2 or in_shape[0] != 1:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': input '{X}' must be [1, K], got {in_shape}")
        bias = np.zeros(N, np.float32) if bias is None else np.broadcast_to(bias.reshape(-1), (N,)).astype(np.float32)
        params = {0: N, 1: 1, 2: int(weight_nk.size)}
        plan = self.int8_plan(node, weight_name, out_axis)
        if plan is not None:
            quant, wq = plan
            source, m = self.shifted_input(X, quant, (0, 0, 0, 0), node.name or Y)
            bias = (bias.astype(np.float64) - m * quant.scale * weight_nk.astype(np.float64).sum(axis=1)).astype(np.float32)
            params[8] = 1
            q = wq.q.T if transpose_q else wq.q
            self.add("InnerProduct", node.name or Y, [source], [self.blob(Y)], params)
            self.weight_int8(q)
            self.raw(bias)
            self.raw((1.0 / np.broadcast_to(wq.scale, (N,)).astype(np.float64)).astype(np.float32))
            self.raw(np.array([1.0 / quant.scale], np.float32))
            self.int8_layers.append(node.name or Y)
            return
        self.add("InnerProduct", node.name or Y, [self.input(X)], [self.blob(Y)], params)
        self.weight_float(weight_nk)
        self.raw(bias)

    def emit_Gemm(self, node: onnx.NodeProto) -> None:
        weight = self.view.consts[node.input[1]]
        trans_b = attribute(node, "transB", 0)
        weight_nk = weight if trans_b else weight.T
        bias = self.view.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        self.fully_connected(node, weight_nk, node.input[1], 0 if trans_b else 1, bias, transpose_q=not trans_b)

    def emit_MatMul(self, node: onnx.NodeProto) -> None:
        weight = self.view.consts[node.input[1]]
        self.fully_connected(node, weight.T, node.input[1], 1, None, transpose_q=True)

    def emit_BatchNormalization(self, node: onnx.NodeProto) -> None:
        scale, bias, mean, var = (self.view.consts[name].astype(np.float32) for name in node.input[1:5])
        self.add("BatchNorm", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: int(scale.size), 1: float(attribute(node, "epsilon", 1e-5))})
        for array in (scale, mean, var, bias):
            self.raw(array)

    def emit_unary(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        params: dict = {}
        if op == "LeakyRelu":
            params = {0: float(attribute(node, "alpha", 0.01))}
        elif op == "HardSigmoid":
            params = {0: float(attribute(node, "alpha", 0.2)), 1: float(attribute(node, "beta", 0.5))}
        elif op == "HardSwish":
            params = {0: 1.0 / 6.0, 1: 0.5}
        elif op == "Clip":
            low, high = attribute(node, "min", -FLT_MAX), attribute(node, "max", FLT_MAX)
            if len(node.input) > 1 and node.input[1]:
                low = float(self.view.consts[node.input[1]].reshape(-1)[0])
            if len(node.input) > 2 and node.input[2]:
                high = float(self.view.consts[node.input[2]].reshape(-1)[0])
            params = {0: float(low), 1: float(high)}
        self.add(_UNARY[op], node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])], params)

    def emit_binary(self, node: onnx.NodeProto) -> None:
        A, B, Y = node.input[0], node.input[1], node.output[0]
        op, reversed_op = _BINARY[node.op_type]
        consts = self.view.consts
        name = node.name or Y
        if A in consts and B in consts:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{name}' has two constant inputs")
        if A in consts or B in consts:
            constant, other, op_type = (consts[A], B, reversed_op) if A in consts else (consts[B], A, op)
            if constant.size == 1:
                self.add("BinaryOp", name, [self.input(other)], [self.blob(Y)],
                         {0: op_type, 1: 1, 2: float(constant.reshape(-1)[0])})
                return
            rank = len(self.shape(other))
            memory = self.memory_data(constant, rank, name)
            inputs = [memory, self.input(other)] if A in consts else [self.input(other), memory]
            self.add("BinaryOp", name, inputs, [self.blob(Y)], {0: op})
            return
        self.add("BinaryOp", name, [self.input(A), self.input(B)], [self.blob(Y)], {0: op})

    def emit_pool(self, node: onnx.NodeProto) -> None:
        X, Y = node.input[0], node.output[0]
        kH, kW = attribute(node, "kernel_shape")
        sH, sW = attribute(node, "strides", [1, 1])
        top, left, bottom, right = self.conv_pads(node, X, Y, [kH, kW], [sH, sW], [1, 1])
        if attribute(node, "ceil_mode", 0):
            # ncnn's "full padding" is Caffe's ceil mode, which differs from ONNX's at the
            # border; accept ceil_mode only where it yields the floor-mode size.
            in_shape, out_shape = self.shape(X), self.shape(Y)
            floor = [(in_shape[2] + top + bottom - kH) // sH + 1, (in_shape[3] + left + right - kW) // sW + 1]
            if floor != list(out_shape[2:]):
                raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': ceil_mode with a partial last window")
        params = {0: 0 if node.op_type == "MaxPool" else 1, 1: kW, 11: kH, 2: sW, 12: sH,
                  3: left, 14: right, 13: top, 15: bottom, 5: 1}
        if node.op_type == "AveragePool":
            params[6] = attribute(node, "count_include_pad", 0)
        self.add("Pooling", node.name or Y, [self.input(X)], [self.blob(Y)], params)

    def emit_global_pool(self, node: onnx.NodeProto) -> None:
        X, Y = node.input[0], node.output[0]
        channels = self.shape(X)[1]
        flat = f"{self.blob(Y)}_ncnn_1d"
        kind = 0 if node.op_type == "GlobalMaxPool" else 1
        # ncnn's global pooling yields a 1-D blob; reshape it back to ONNX's [C, 1, 1].
        self.add("Pooling", node.name or Y, [self.input(X)], [flat], {0: kind, 4: 1})
        self.add("Reshape", f"{node.name or Y}_ncnn_reshape", [flat], [self.blob(Y)], {0: 1, 1: 1, 2: channels})

    def emit_Flatten(self, node: onnx.NodeProto) -> None:
        if attribute(node, "axis", 1) != 1:
            self.emit_reshape(node)
            return
        self.add("Flatten", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])])

    def emit_reshape(self, node: onnx.NodeProto) -> None:
        Y = node.output[0]
        shape = self.shape(Y)
        if len(shape) < 2 or shape[0] != 1 or any(not isinstance(d, int) for d in shape):
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': output shape {shape} must be static with batch 1")
        dims = shape[1:]
        params = {0: dims[-1]}
        if len(dims) >= 2:
            params[1] = dims[-2]
        if len(dims) == 3:
            params[2] = dims[-3]
        if len(dims) == 4:
            params[11], params[2] = dims[-3], dims[-4]
        if len(dims) > 4:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': rank {len(shape)} output")
        self.add("Reshape", node.name or Y, [self.input(node.input[0])], [self.blob(Y)], params)

    def ncnn_axis(self, axis: int, rank: int) -> int:
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise ExportError(f"target {TARGET!r}: an op along the batch axis cannot be expressed in ncnn")
        return axis - 1

    def emit_Concat(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.output[0]))
        self.add("Concat", node.name or node.output[0], [self.input(x) for x in node.input],
                 [self.blob(node.output[0])], {0: self.ncnn_axis(attribute(node, "axis"), rank)})

    def emit_Softmax(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.input[0]))
        default = -1 if opset_version(self.view.model) >= 13 else 1
        axis = attribute(node, "axis", default)
        if opset_version(self.view.model) < 13 and (axis + rank if axis < 0 else axis) != rank - 1:
            raise ExportError(f"target {TARGET!r}: Softmax '{node.name}' (opset < 13) must be along the last axis")
        self.add("Softmax", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: self.ncnn_axis(axis, rank), 1: 1})

    def emit_Pad(self, node: onnx.NodeProto) -> None:
        pads = [int(p) for p in self.view.consts[node.input[1]]]
        rank = len(pads) // 2
        if rank != 4 or pads[0] or pads[rank]:
            raise ExportError(f"target {TARGET!r}: Pad '{node.name}': only 4-D pads without batch padding, got {pads}")
        value = float(self.view.consts[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        self.add("Padding", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: pads[2], 1: pads[6], 2: pads[3], 3: pads[7], 4: {"constant": 0, "edge": 1, "reflect": 2}[mode],
                  5: value, 7: pads[1], 8: pads[5]})

    def emit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op in _UNARY:
            self.emit_unary(node)
        elif op in _BINARY:
            self.emit_binary(node)
        elif op in ("MaxPool", "AveragePool"):
            self.emit_pool(node)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
            self.emit_global_pool(node)
        elif op in ("Reshape", "Squeeze", "Unsqueeze"):
            self.emit_reshape(node)
        else:
            getattr(self, f"emit_{op}")(node)

    # -- finishing -------------------------------------------------------------------------------

    def input_layers(self) -> list[Layer]:
        layers = []
        for name in self.view.inputs:
            dims = self.shape(name)[1:]
            params = {0: dims[-1]}
            if len(dims) >= 2:
                params[1] = dims[-2]
            if len(dims) >= 3:
                params[2] = dims[-3]
            layers.append(Layer("Input", name, [], [name], params))
        return layers

    def param_text(self) -> str:
        layers = self.input_layers() + self.layers
        # ncnn wants one consumer per blob: a blob read by several layers goes through Split.
        consumers: dict[str, list[tuple[Layer, int]]] = {}
        for layer in layers:
            for index, blob in enumerate(layer.inputs):
                consumers.setdefault(blob, []).append((layer, index))
        final = []
        for layer in layers:
            final.append(layer)
            for blob in layer.outputs:
                users = consumers.get(blob, [])
                if len(users) > 1:
                    outputs = [f"{blob}_splitncnn_{i}" for i in range(len(users))]
                    for (user, index), split_blob in zip(users, outputs):
                        user.inputs[index] = split_blob
                    final.append(Layer("Split", f"splitncnn_{blob}", [blob], outputs))
        blobs = {blob for layer in final for blob in layer.outputs}
        lines = [str(MAGIC), f"{len(final)} {len(blobs)}"] + [layer.line() for layer in final]
        return "\n".join(lines) + "\n"


def write_ncnn(view: FloatView, int8: bool) -> tuple[str, bytes, NcnnWriter]:
    """Translate a float view into ncnn .param text and .bin bytes.

    Raises:
        ExportError: a node's attributes or shapes cannot be expressed (named in the message).
    """
    writer = NcnnWriter(view, int8)
    for node in view.nodes:
        writer.emit(node)
    for output in view.outputs:
        quant = view.edge_quant(output)
        if view.blob(output) != output and quant is not None:
            # The QDQ model's output is DQ(Q(y)): keep that on the graph output.
            writer.fake_quantize(view.blob(output), quant, output)
        elif view.blob(output) != output:
            raise ExportError(f"target {TARGET!r}: graph output '{output}' is a graph input or duplicate; not supported")
    return writer.param_text(), bytes(writer.weights), writer


def _writer_refusals(view: FloatView, int8: bool) -> list[tuple[onnx.NodeProto, str]]:
    """Every node whose translation raises, each translated on its own (write_ncnn stops at the first).

    Each emit_* reads shapes and blob names from the view, not from the layers written before,
    so one refused node does not make the next ones fail.
    """
    writer = NcnnWriter(view, int8)
    found = []
    for node in view.nodes:
        try:
            writer.emit(node)
        except ExportError as error:
            found.append((node, str(error).removeprefix(f"target {TARGET!r}: ")))
    return found


def write_checked(view: FloatView, int8: bool, opset: int) -> tuple[str, bytes, NcnnWriter]:
    """write_ncnn in memory, after checking every node: the check and the build are one step.

    Raises:
        UnsupportedOpError: every node with no translation, else every node whose translation
            refuses its attributes or shapes (all listed; nothing is written yet).
        ExportError: a failure that is not a node's (a graph output that is a graph input).
    """
    missing = _node_problems(view, opset)
    if missing:
        raise UnsupportedOpError(TARGET, missing)
    try:
        return write_ncnn(view, int8)
    except ExportError as error:
        refused = _writer_refusals(view, int8)
        if not refused:
            raise
        raise UnsupportedOpError(TARGET, [(node.name or node.output[0], node.op_type, opset) for node, _ in refused],
                                 detail="; ".join(f"{node.name or node.output[0]!r}: {why}" for node, why in refused)
                                 ) from error


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _net(bundle: Bundle):
    import ncnn

    net = ncnn.Net()
    net.opt.use_int8_inference = True
    # fp16/bf16 storage would round fp32 weights and activations on CPUs that have it, so parity
    # with onnxruntime would depend on the host; Winograd changes rounding beyond 1e-5.
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                 "use_bf16_packed", "use_winograd_convolution"):
        setattr(net.opt, flag, False)
    net.opt.num_threads = runtime_threads() or os.cpu_count() or 1
    if net.load_param(str(bundle.file(PARAM_FILE))) != 0 or net.load_model(str(bundle.file(BIN_FILE))) != 0:
        raise ExportError(f"bundle '{bundle.path}': ncnn cannot load {PARAM_FILE}/{BIN_FILE}")
    return net


_NETS = RunnerCache(_net)


def _extract(bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str]) -> list[list[np.ndarray]]:
    import ncnn

    net = _NETS.get(bundle)
    batch = len(next(iter(feeds.values())))
    results = []
    for index in range(batch):
        extractor = net.create_extractor()
        # ncnn.Mat wraps the numpy buffer without owning it (no refcount): keep every array alive
        # until the extraction is done, and clone it into ncnn-owned memory, because a layer that
        # works in place on the input (ReLU, BinaryOp with a scalar) crashes on a borrowed buffer.
        # Outputs are copied out of ncnn's memory.
        alive = []
        for spec in bundle.inputs:
            sample = np.ascontiguousarray(feeds[spec.name][index], dtype=np.float32)
            sample = sample.reshape(sample.shape if sample.ndim else (1,))
            alive.append(sample)
            extractor.input(spec.name, ncnn.Mat(sample).clone())
        row = []
        for name in names:
            code, mat = extractor.extract(name)
            if code != 0:
                raise ExportError(f"bundle '{bundle.path}': ncnn extract of blob '{name}' failed ({code})")
            row.append(np.array(mat, dtype=np.float32, copy=True))
        results.append(row)
        del alive
    return results


@target("ncnn")
class NcnnTarget(Target):
    """fwedge's own .param/.bin writer from the float or QDQ model, run by the ncnn Python module."""

    supports_intermediates = True

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Nodes this writer cannot express in ncnn (after folding constant shape subgraphs),
        found by writing the model in memory as export() does."""
        opset = opset_version(model)
        try:
            view = float_view(prepare(model))
        except ExportError:  # dynamic non-batch shapes: judged by the node table only
            return _node_problems(float_view(model), opset)
        try:
            write_checked(view, has_qdq(model), opset)
        except UnsupportedOpError as error:
            return error.nodes
        return []

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Write an ncnn bundle: fp32 from a float model, int8 from a QDQ model (fwedge's scales).

        Returns:
            The Bundle; extra records the int8 layers and the layers kept in float with the reason.

        Raises:
            UnsupportedOpError: nodes the writer cannot take (all listed, nothing written).
            ExportError: dynamic non-batch shapes, precision mismatch.
        """
        import ncnn

        options = options or ExportOptions()
        self.own_options(options)
        precision = resolve_precision(model, options.precision, TARGET)
        prepared = prepare(model)
        param, weights, writer = write_checked(float_view(prepared), precision == "int8", opset_version(model))
        notes = [f"kept in float: {name} ({why})" for name, why in writer.float_layers.items()]
        if precision == "int8" and not writer.int8_layers:
            notes.append("no Conv/Gemm/MatMul runs in int8; every layer computes in float between the Q/DQ clamps")
        for note in notes:
            log.warning("ncnn: %s", note)
        inputs, outputs = io_specs(prepared, batch=None)
        for spec in inputs + outputs:
            spec.shape[0] = -1

        def write_files(folder: Path) -> dict:
            (folder / PARAM_FILE).write_text(param)
            (folder / BIN_FILE).write_bytes(weights)
            return {"weights_bytes": len(weights)}

        return write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision,
            source_sha256=options.source_sha256, inputs=inputs, outputs=outputs,
            write_files=write_files, preprocess=options.preprocess,
            toolchain={"ncnn": ncnn.__version__},
            extra={"int8_layers": writer.int8_layers, "float_layers": writer.float_layers, "notes": notes,
                   "layers": len(writer.layers)},
        )

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run an ncnn bundle with the ncnn Python module, one sample at a time.

        Args:
            bundle: a loaded ncnn bundle.
            feeds: input name -> float32 NCHW batch.

        Returns:
            output name -> float32 array of the ONNX output shape (batch first).
        """
        self.require_exact(bundle, exact_int8)
        check_feeds(bundle, feeds)
        names = [spec.name for spec in bundle.outputs]
        rows = _extract(bundle, feeds, names)
        out = {}
        for position, spec in enumerate(bundle.outputs):
            tail = [d for d in spec.shape[1:]]
            out[spec.name] = np.stack([row[position].reshape(tail) for row in rows])
        return out

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Values of any blob named after an ONNX tensor (ncnn can extract every blob), for `fwedge diff`."""
        self.require_exact(bundle, exact_int8)
        blobs = set()
        for line in bundle.file(PARAM_FILE).read_text().splitlines()[2:]:
            fields = line.split()
            count_in, count_out = int(fields[2]), int(fields[3])
            blobs.update(fields[4 + count_in : 4 + count_in + count_out])
        wanted = [name for name in names if name in blobs]
        rows = _extract(bundle, feeds, wanted)
        return {name: np.stack([row[i] for row in rows]) for i, name in enumerate(wanted)}

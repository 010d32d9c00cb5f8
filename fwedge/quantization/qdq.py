"""QDQ writing: int8 per-channel weights, int8 activations, int32 biases, standard ONNX QDQ layout."""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir
from fwedge.calibration.table import WEIGHT_QMAX, QuantTable, TensorQuant, ZERO_RANGE_SCALE, params_from_range
from fwedge.errors import CalibrationError, ModelError
from fwedge.quantization.plan import QuantizeOptions, QuantPlan, plan_quantization, record_kept_float

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
QDQ_OPSET = 13

# How the layout looks (the standard onnxruntime QDQ layout, which every target consumes):
#
#   x ─Q─DQ─┐
#   W_quantized(int8) ─DQ(axis)─┤ Conv ─ Relu ─Q─DQ─ MaxPool ─Q─DQ─ ...
#   B_quantized(int32) ─DQ(axis 0)─┘
#
# * Q/DQ pairs are named "<tensor>_QuantizeLinear" / "<tensor>_DequantizeLinear" and produce
#   "<tensor>_quantized" / "<tensor>_dequantized"; original nodes keep their names.
# * A ReLU / Clip that is the only consumer of a quantized op's output is fused: no Q/DQ between
#   the op and the clamp, the pair goes after the clamp, with the clamp output's range.
# * Data-movement ops (OP_INFO.shares_input_scale: MaxPool, Reshape, Flatten, Pad, ...) get a
#   pair on their output with exactly the input's scale and zero point.
# * Concat follows the TFLite int8 spec: inputs and output share one scale and zero point. An
#   input that feeds only the Concat takes the output's parameters directly; an input that also
#   feeds other ops keeps its own pair and gets a second requantizing pair
#   "<tensor>_requant_<concat>" to the output's parameters on the Concat edge.
# * Residual Add (and Mul) inputs keep their own scales: int8 ADD in TFLite, ORT's QLinearAdd,
#   ncnn and the C runtime all rescale each input, so forcing one scale would only cost accuracy.
# * A graph output keeps its name: the producer writes "<output>_QuantizeLinear_Input" and the
#   DequantizeLinear writes the graph output.


# --------------------------------------------------------------------------------------------
# Weight quantization
# --------------------------------------------------------------------------------------------


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric weights in [-127, 127]: per channel along `axis`, or per tensor if axis < 0.

    Returns:
        (int8 values, float32 scales: 1-D per channel or a scalar). An all-zero channel gets
        scale ZERO_RANGE_SCALE / 127, not a division by zero.
    """
    weight = weight.astype(np.float32)
    if axis < 0:
        absmax = np.array(np.abs(weight).max(initial=0.0), dtype=np.float32)
    else:
        moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
        absmax = np.abs(moved).max(axis=1, initial=0.0)
    scale = np.where(absmax > 0, absmax / WEIGHT_QMAX, ZERO_RANGE_SCALE / WEIGHT_QMAX).astype(np.float32)
    return _round_weight(weight, scale, axis), scale


def _round_weight(weight: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    if axis < 0 or scale.ndim == 0:
        shaped = scale
    else:
        shape = [1] * weight.ndim
        shape[axis] = scale.size
        shaped = scale.reshape(shape)
    return np.clip(np.rint(weight / shaped), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)


# --------------------------------------------------------------------------------------------
# QDQ insertion
# --------------------------------------------------------------------------------------------


def activation_params(table: QuantTable, plan: QuantPlan, name: str, symmetric: bool) -> TensorQuant:
    """Parameters of an activation tensor: its table entry or that of the tensor it shares with.

    Raises:
        CalibrationError: the table has no entry for the tensor.
    """
    source = plan.resolve(name)
    if source not in table.tensors:
        raise CalibrationError(
            f"quant table has no range for tensor '{source}'"
            + (f" (needed by '{name}')" if source != name else "")
            + f"; it holds {len(table.tensors)} tensors, e.g. {list(table.tensors)[:5]}"
        )
    entry = table.tensors[source]
    if symmetric and entry.zero_point != 0:
        return params_from_range(*entry.range, symmetric=True)
    return entry


def dequantized_name(qdq_model: onnx.ModelProto, tensor: str) -> str:
    """The tensor in a QDQ model that carries the dequantized value of float tensor `tensor`."""
    outputs = {value.name for value in qdq_model.graph.output}
    if tensor in outputs:
        return tensor
    return f"{tensor}_dequantized"


class _QdqWriter:
    """One QDQ insertion: the copied model, the nodes and initializers to add, the inputs to rewire.

    The steps run in a fixed order (activations, Concat edges, weights, biases, constants, rewire,
    finish) because initializer and node order are part of the written model's bytes.
    """

    def __init__(self, model: onnx.ModelProto, table: QuantTable, options: QuantizeOptions, plan: QuantPlan):
        self.table, self.options, self.plan = table, options, plan
        self.out = onnx.ModelProto()
        self.out.CopyFrom(model)
        # The scales and zero points added below are initializers that are not graph inputs, which
        # IR < 4 forbids; the opset this needs came with IR 7.
        self.out.ir_version = max(self.out.ir_version, ir.MIN_IR_VERSION)
        graph = self.out.graph
        self.inits = ir.initializer_map(self.out)
        self.nodes_by_name = {node.name: node for node in graph.node}
        self.outputs = {value.name for value in graph.output}
        self.producer_of = {name: node for node in graph.node for name in node.output}
        self.new_inits: list[onnx.TensorProto] = []
        self.head: list[onnx.NodeProto] = []  # DQ of constants and Q/DQ of graph inputs
        self.after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # producer name -> nodes after it
        self.renames: dict[tuple[str, int], str] = {}  # (node name, input index) -> new input
        self.params_of: dict[str, TensorQuant] = {}
        self.dequantized: dict[str, str] = {}
        self.requant_edges: dict[tuple[str, str], str] = {}  # (concat name, tensor) -> requantized input
        self.weight_scales: dict[tuple[str, int], np.ndarray] = {}

    def scalar(self, name: str, value, dtype) -> str:
        self.new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def place(self, tensor: str, nodes: list[onnx.NodeProto]) -> None:
        """Put `nodes` right after the producer of `tensor` (at the head for graph inputs)."""
        producer = self.producer_of.get(tensor)
        (self.after[producer.name] if producer is not None else self.head).extend(nodes)

    def add_dequantized_constant(self, stem: str, values: np.ndarray, scale: np.ndarray, zero_dtype,
                                 attrs: dict) -> str:
        """Initializers "<stem>_quantized/_scale/_zero_point" and their DequantizeLinear at the head."""
        self.new_inits.append(numpy_helper.from_array(values, f"{stem}_quantized"))
        self.new_inits.append(numpy_helper.from_array(scale.astype(np.float32), f"{stem}_scale"))
        self.new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=zero_dtype), f"{stem}_zero_point"))
        self.head.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
            [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear", **attrs))
        return f"{stem}_dequantized"

    def activations(self) -> None:
        """A Q/DQ pair after every planned activation tensor."""
        for tensor in self.plan.activations:
            params = activation_params(self.table, self.plan, tensor, self.options.symmetric)
            self.params_of[tensor] = params
            scale = self.scalar(f"{tensor}_scale", params.scale, np.float32)
            zero = self.scalar(f"{tensor}_zero_point", params.zero_point, np.int8)
            source = tensor
            target = f"{tensor}_dequantized"
            producer = self.producer_of.get(tensor)
            if tensor in self.outputs:
                source = f"{tensor}_QuantizeLinear_Input"
                target = tensor
                for index, name in enumerate(producer.output):
                    if name == tensor:
                        producer.output[index] = source
            q = helper.make_node("QuantizeLinear", [source, scale, zero], [f"{tensor}_quantized"],
                                 name=f"{tensor}_QuantizeLinear")
            dq = helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale, zero], [target],
                                  name=f"{tensor}_DequantizeLinear")
            self.place(tensor, [q, dq])
            self.dequantized[tensor] = target

    def concat_edges(self) -> None:
        """A requantizing pair on each Concat edge whose input keeps its own parameters."""
        for edge in self.plan.requant:
            params = activation_params(self.table, self.plan, edge.concat_output, self.options.symmetric)
            stem = f"{edge.tensor}_requant_{edge.concat}"
            scale = self.scalar(f"{stem}_scale", params.scale, np.float32)
            zero = self.scalar(f"{stem}_zero_point", params.zero_point, np.int8)
            q = helper.make_node("QuantizeLinear", [self.dequantized[edge.tensor], scale, zero],
                                 [f"{stem}_quantized"], name=f"{stem}_QuantizeLinear")
            dq = helper.make_node("DequantizeLinear", [f"{stem}_quantized", scale, zero], [f"{stem}_dequantized"],
                                  name=f"{stem}_DequantizeLinear")
            self.place(edge.tensor, [q, dq])
            self.requant_edges[(edge.concat, edge.tensor)] = f"{stem}_dequantized"

    def widened_weight(self, node: onnx.NodeProto, weight: np.ndarray, axis: int, bias_slot) -> tuple:
        """(int8 weight, scale), the scales widened where the bias would overflow int32 (tiny weights, large bias)."""
        q_weight, w_scale = quantize_weight(weight, axis)
        if bias_slot is None:
            return q_weight, w_scale
        bias = numpy_helper.to_array(self.inits[node.input[bias_slot.input]]).astype(np.float64)
        s_in = self.params_of[bias_slot.activation].scale if bias_slot.activation in self.params_of else None
        if s_in is None:
            return q_weight, w_scale
        limit = np.abs(bias) / (s_in * INT32_MAX)
        if w_scale.ndim == 0:
            need = float(limit.max(initial=0.0))
            if need > w_scale:
                w_scale = np.asarray(need * 1.0001, dtype=np.float32)
                q_weight = _round_weight(weight, w_scale, axis)
        elif np.any(limit > w_scale):
            w_scale = np.maximum(w_scale, (limit * 1.0001).astype(np.float32))
            q_weight = _round_weight(weight, w_scale, axis)
        return q_weight, w_scale

    def weights(self) -> None:
        """Weights: int8 symmetric, per channel (a weight shared by several nodes gets one copy per node)."""
        done_weights: dict[str, str] = {}
        bias_of = {slot.node: slot for slot in self.plan.biases}
        for slot in self.plan.weights:
            node = self.nodes_by_name[slot.node]
            weight_name = node.input[slot.input]
            weight = numpy_helper.to_array(self.inits[weight_name])
            q_weight, w_scale = self.widened_weight(node, weight, slot.axis, bias_of.get(slot.node))
            self.weight_scales[(slot.node, slot.input)] = w_scale
            stem = weight_name if weight_name not in done_weights else f"{weight_name}_{slot.node}"
            attrs = {"axis": slot.axis} if w_scale.ndim == 1 else {}
            self.renames[(slot.node, slot.input)] = self.add_dequantized_constant(
                stem, q_weight, w_scale, np.int8, attrs)
            done_weights[weight_name] = stem

    def biases(self) -> None:
        """Biases: int32 with scale s_in * s_w, on the int8 nodes whose weight and input are quantized."""
        for slot in self.plan.biases:
            node = self.nodes_by_name[slot.node]
            if (slot.node, slot.weight_input) not in self.weight_scales or slot.activation not in self.params_of:
                continue
            bias_name = node.input[slot.input]
            bias = numpy_helper.to_array(self.inits[bias_name]).astype(np.float64)
            b_scale = (self.params_of[slot.activation].scale
                       * self.weight_scales[(slot.node, slot.weight_input)].astype(np.float64))
            if b_scale.ndim == 1 and b_scale.size != bias.size:
                continue
            q_bias = np.clip(np.rint(bias / b_scale), -INT32_MAX, INT32_MAX).astype(np.int32)
            # A bias shared with a node of another input activation has another scale: its own copy.
            shared = any(other.activation != slot.activation
                         and self.nodes_by_name[other.node].input[other.input] == bias_name
                         for other in self.plan.biases if other.node != slot.node)
            stem = f"{bias_name}_{slot.node}" if shared else bias_name
            attrs = {"axis": 0} if b_scale.ndim == 1 else {}
            self.renames[(slot.node, slot.input)] = self.add_dequantized_constant(
                stem, q_bias, b_scale, np.int32, attrs)

    def constants(self) -> None:
        """Constant operands of element-wise ops: int8 symmetric, per tensor."""
        for slot in self.plan.constants:
            const_name = self.nodes_by_name[slot.node].input[slot.input]
            values, c_scale = quantize_weight(numpy_helper.to_array(self.inits[const_name]), -1)
            self.renames[(slot.node, slot.input)] = self.add_dequantized_constant(
                f"{const_name}_{slot.node}", values, c_scale, np.int8, {})

    def rewire(self) -> None:
        """Every reader of a quantized activation reads its dequantized value, except the
        producer->clamp edges of fused activations (no pair there by construction)."""
        qdq_nodes = {id(n) for group in self.after.values() for n in group} | {id(n) for n in self.head}
        for node in self.out.graph.node:
            if id(node) in qdq_nodes:
                continue
            for index, name in enumerate(node.input):
                if (node.name, index) in self.renames:
                    node.input[index] = self.renames[(node.name, index)]
                elif (node.name, name) in self.requant_edges:
                    node.input[index] = self.requant_edges[(node.name, name)]
                elif name in self.dequantized and self.dequantized[name] != name:
                    node.input[index] = self.dequantized[name]

    def finish(self) -> onnx.ModelProto:
        """Order the nodes, drop unused float constants, set metadata, infer shapes and check."""
        graph = self.out.graph
        ordered = list(self.head)
        for node in graph.node:
            ordered.append(node)
            ordered.extend(self.after.get(node.name, []))
        del graph.node[:]
        graph.node.extend(ordered)
        used = ir.read_names(graph)
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept + self.new_inits)
        initializer_names = {init.name for init in graph.initializer}
        kept_inputs = [value for value in graph.input
                       if value.name not in self.inits or value.name in initializer_names]
        del graph.input[:]
        graph.input.extend(kept_inputs)
        del graph.value_info[:]
        ir.set_metadata(self.out, "fwedge.quant_method", self.options.method or self.table.method)
        record_kept_float(self.out, self.plan.kept_float)
        try:
            out = onnx.shape_inference.infer_shapes(self.out)
            onnx.checker.check_model(out)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ModelError(f"QDQ model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        return out


def quantize_model(
    model: onnx.ModelProto,
    table: QuantTable,
    options: QuantizeOptions | None = None,
    plan: QuantPlan | None = None,
) -> onnx.ModelProto:
    """Insert QuantizeLinear/DequantizeLinear pairs (opset 13) into a float model.

    Args:
        model: the prepared float model (BN folded, nodes named) the table was calibrated on.
        table: activation parameters by tensor name.
        options: per-channel / symmetric / excluded nodes.
        plan: a precomputed plan (default: plan_quantization(model, options)).

    Returns:
        The QDQ model; it passes onnx.checker and runs in onnxruntime. Metadata keeps the float
        model's entries (fwedge.preprocess among them) and adds fwedge.quant_method. Neither
        `model`, `table` nor `plan` is modified.

    Raises:
        ModelError: the model's opset is below 13 (per-channel DequantizeLinear needs 13).
        CalibrationError: the table lacks a tensor the plan needs.
    """
    options = options or QuantizeOptions()
    if ir.opset_version(model) < QDQ_OPSET:
        raise ModelError(
            f"QDQ insertion needs opset >= {QDQ_OPSET} (per-channel DequantizeLinear), "
            f"got {ir.opset_version(model)}; load the model with fwedge.ir.load to upgrade it"
        )
    plan = plan or plan_quantization(model, options)
    writer = _QdqWriter(model, table, options, plan)
    writer.activations()
    writer.concat_edges()
    writer.weights()
    writer.biases()
    writer.constants()
    writer.rewire()
    out = writer.finish()
    log.info(
        "inserted Q/DQ on %d activations, %d weights, %d biases; %d nodes in int8",
        len(plan.activations), len(plan.weights), len(plan.biases), len(plan.quantized_nodes),
    )
    return out

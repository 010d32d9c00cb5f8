"""QDQ insertion: int8 per-channel weights, int8 activations, int32 biases, standard ONNX QDQ layout."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fwedge import ir
from fwedge.calibration.table import WEIGHT_QMAX, QuantTable, TensorQuant, ZERO_RANGE_SCALE, params_from_range
from fwedge.errors import CalibrationError, ModelError
from fwedge.op_info import OP_INFO, attribute

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


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize.

    Attributes:
        per_channel: per-output-channel weight scales (else one scale per weight tensor).
        symmetric: symmetric activations (zero point 0); asymmetric by default.
        exclude_nodes: node names kept in float (no Q/DQ around them), e.g. by the accuracy budget.
        method: calibration method name, recorded in metadata "fwedge.quant_method".
    """

    per_channel: bool = True
    symmetric: bool = False
    exclude_nodes: frozenset[str] = frozenset()
    method: str = ""


@dataclass
class QuantPlan:
    """Which tensors and nodes quantization touches, derived from the graph alone.

    Attributes:
        calibrated: activation tensors that need their own calibrated range, topological order.
        shared: tensor -> tensor whose parameters it reuses (data-movement outputs, Concat inputs).
        requant: (tensor, concat node name, concat output) for Concat inputs that also feed
            other ops: a requantizing Q/DQ pair on that edge.
        quantized_nodes: names of nodes computed in int8 (fused clamps included).
        weights: (node name, input index, axis) of every weight quantized per channel.
        constants: (node name, input index) of constant operands quantized per tensor.
        biases: (node name, bias input index, activation input, weight input index).
        fused: producer output -> clamp output that takes its range.
    """

    calibrated: list[str] = field(default_factory=list)
    shared: dict[str, str] = field(default_factory=dict)
    requant: list[tuple[str, str, str]] = field(default_factory=list)
    quantized_nodes: list[str] = field(default_factory=list)
    weights: list[tuple[str, int, int]] = field(default_factory=list)
    constants: list[tuple[str, int]] = field(default_factory=list)
    biases: list[tuple[str, int, str, int]] = field(default_factory=list)
    fused: dict[str, str] = field(default_factory=dict)

    @property
    def activations(self) -> list[str]:
        """Every activation tensor that gets a Q/DQ pair (calibrated and shared)."""
        return self.calibrated + [name for name in self.shared if name not in self.calibrated]

    def resolve(self, name: str) -> str:
        """The tensor whose calibrated parameters `name` uses."""
        seen = set()
        while name in self.shared and name not in seen:
            seen.add(name)
            name = self.shared[name]
        return name


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every unnamed node named "<op>_<index>" (the table and reports key on names)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {node.name for node in out.graph.node if node.name}
    for index, node in enumerate(out.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    return out


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 tensors (types from shape inference when value_info lacks them)."""
    produced = {name for node in model.graph.node for name in node.output}
    known = {value.name for value in model.graph.value_info} | {value.name for value in model.graph.output}
    if produced - known:
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    names = set()
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(value.name)
    return names


def weight_axis(node: onnx.NodeProto) -> int | None:
    """The output-channel axis of a node's weight (OP_INFO, with Gemm transB taken into account)."""
    info = OP_INFO.get(node.op_type)
    if info is None or info.out_channel_axis is None:
        return None
    if node.op_type == "Gemm" and not attribute(node, "transB", 0):
        return 1
    return info.out_channel_axis


def _clip_is_constant(node: onnx.NodeProto, inits: dict) -> bool:
    bounds = [name for name in node.input[1:] if name]
    return all(name in inits for name in bounds)


def _reads_int8(node: onnx.NodeProto, options: QuantizeOptions) -> bool:
    """Whether `node` may consume an int8 value: a quantizable or data-movement op not excluded."""
    info = OP_INFO.get(node.op_type)
    if info is None or node.name in options.exclude_nodes:
        return False
    return info.quantizable or info.shares_input_scale


def plan_quantization(model: onnx.ModelProto, options: QuantizeOptions | None = None) -> QuantPlan:
    """Decide which tensors get Q/DQ pairs, from the graph and OP_INFO alone.

    A node is quantized when OP_INFO marks it `quantizable` and it is not excluded. Its float
    activation inputs and its output get pairs, its weight is quantized per channel and its bias
    to int32. Data-movement ops whose input is quantized pass the parameters through.

    Args:
        model: a float model (BN folded, nodes named, opset >= 13).
        options: exclusions and flags.

    Returns:
        The QuantPlan.

    Raises:
        CalibrationError: the model has no float tensor that quantization could touch.
    """
    options = options or QuantizeOptions()
    graph = model.graph
    inits = ir.initializer_map(model)
    floats = _float_tensors(model) | {
        name for name, init in inits.items() if init.data_type == TensorProto.FLOAT
    }
    consumers = ir.consumer_map(model)
    outputs = {value.name for value in graph.output}
    plan = QuantPlan()
    quantized: dict[str, None] = {}  # ordered set of tensors with pairs

    def mark(name: str) -> None:
        if name not in quantized:
            quantized[name] = None

    fused_nodes: set[str] = set()
    for node in graph.node:
        if node.name in options.exclude_nodes or node.name in fused_nodes:
            continue
        info = OP_INFO.get(node.op_type)
        if info is None:
            continue
        if info.shares_input_scale:
            data = node.input[0] if node.input else ""
            if data in quantized and node.output[0] in floats:
                plan.shared[node.output[0]] = data
                plan.quantized_nodes.append(node.name)
                mark(node.output[0])
            continue
        if not info.quantizable:
            continue
        if node.op_type == "Clip" and not _clip_is_constant(node, inits):
            continue
        activation_inputs = []
        for index, name in enumerate(node.input):
            if not name or name not in floats:
                continue
            if name in inits:
                if index == info.weight_input:
                    axis = weight_axis(node)
                    plan.weights.append((node.name, index, axis if options.per_channel else -1))
                elif index == info.bias_input:
                    continue
                elif node.op_type == "Clip":
                    continue  # clip bounds stay float: they are attributes of the clamp
                else:
                    plan.constants.append((node.name, index))
                continue
            activation_inputs.append(name)
        if not activation_inputs:
            continue
        for name in activation_inputs:
            mark(name)
        if info.bias_input is not None and len(node.input) > info.bias_input:
            bias = node.input[info.bias_input]
            if bias in inits and info.weight_input is not None and node.input[info.weight_input] in inits:
                plan.biases.append((node.name, info.bias_input, node.input[0], info.weight_input))
        plan.quantized_nodes.append(node.name)
        output = node.output[0]
        if output not in floats:
            continue
        # Fuse a ReLU/Clip that is the output's only consumer: its output takes the range.
        users = consumers.get(output, [])
        while (
            len(users) == 1
            and output not in outputs
            and OP_INFO.get(users[0].op_type) is not None
            and OP_INFO[users[0].op_type].clamps_range
            and users[0].name not in options.exclude_nodes
            and (users[0].op_type != "Clip" or _clip_is_constant(users[0], inits))
        ):
            clamp = users[0]
            plan.fused[output] = clamp.output[0]
            fused_nodes.add(clamp.name)
            plan.quantized_nodes.append(clamp.name)
            output = clamp.output[0]
            users = consumers.get(output, [])
        if output in outputs or any(_reads_int8(user, options) for user in users):
            mark(output)
        # else: every reader is a float op (e.g. the Div of a decomposed HardSwish) or a layer
        # kept in float: a pair here would only add a rounding step on a float path.
    # Concat: inputs and output share one scale (TFLite int8 CONCATENATION restriction).
    for node in graph.node:
        if node.op_type != "Concat" or node.name not in plan.quantized_nodes:
            continue
        out = node.output[0]
        for name in node.input:
            if name in plan.shared:
                # Already tied to another tensor's parameters (a data-movement output): requantize.
                plan.requant.append((name, node.name, out))
            elif name in quantized:
                only_concat = all(user is node for user in consumers.get(name, [])) and name not in outputs
                if only_concat:
                    plan.shared[name] = out  # takes the Concat output's parameters directly
                else:
                    plan.requant.append((name, node.name, out))
    if not quantized and not plan.weights:
        raise CalibrationError(
            "nothing to quantize: the model has no float tensor feeding an op that fwedge "
            f"quantizes (ops present: {sorted({node.op_type for node in graph.node})})"
        )
    plan.calibrated = [name for name in quantized if name not in plan.shared]
    for name in plan.shared:
        if name not in quantized:
            quantized[name] = None
    return plan


def candidate_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation that some exclusion set could give a Q/DQ pair (topological order).

    The inputs and outputs of quantizable and data-movement nodes; calibrating all of them lets
    the accuracy budget keep any layer in float without a second calibration run.
    """
    inits = ir.initializer_map(model)
    floats = _float_tensors(model)
    names: dict[str, None] = {}
    for value in ir.graph_inputs(model):
        if value.name in floats:
            names[value.name] = None
    for node in model.graph.node:
        info = OP_INFO.get(node.op_type)
        if info is None or not (info.quantizable or info.shares_input_scale):
            continue
        for name in list(node.input) + list(node.output):
            if name and name in floats and name not in inits:
                names[name] = None
    return list(names)


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
        model's entries (fwedge.preprocess among them) and adds fwedge.quant_method.

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
    out = onnx.ModelProto()
    out.CopyFrom(model)
    # The scales and zero points added below are initializers that are not graph inputs, which
    # IR < 4 forbids; the opset this needs came with IR 7.
    out.ir_version = max(out.ir_version, ir.MIN_IR_VERSION)
    graph = out.graph
    inits = ir.initializer_map(out)
    nodes_by_name = {node.name: node for node in graph.node}
    outputs = {value.name for value in graph.output}
    new_inits: list[onnx.TensorProto] = []
    head: list[onnx.NodeProto] = []  # DQ of constants and Q/DQ of graph inputs
    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # producer name -> nodes after it
    producer_of = {name: node for node in graph.node for name in node.output}
    renames: dict[tuple[str, int], str] = {}  # (node name, input index) -> new input

    def scalar(name: str, value, dtype) -> str:
        new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # Activations.
    all_activations = plan.activations
    params_of: dict[str, TensorQuant] = {}
    dequantized: dict[str, str] = {}
    for tensor in all_activations:
        params = activation_params(table, plan, tensor, options.symmetric)
        params_of[tensor] = params
        scale = scalar(f"{tensor}_scale", params.scale, np.float32)
        zero = scalar(f"{tensor}_zero_point", params.zero_point, np.int8)
        source = tensor
        target = f"{tensor}_dequantized"
        producer = producer_of.get(tensor)
        if tensor in outputs:
            source = f"{tensor}_QuantizeLinear_Input"
            target = tensor
            for index, name in enumerate(producer.output):
                if name == tensor:
                    producer.output[index] = source
        q = helper.make_node("QuantizeLinear", [source, scale, zero], [f"{tensor}_quantized"],
                             name=f"{tensor}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale, zero], [target],
                              name=f"{tensor}_DequantizeLinear")
        (after[producer.name] if producer is not None else head).extend([q, dq])
        dequantized[tensor] = target

    # Concat edges that need a requantizing pair.
    requant_edges: dict[tuple[str, str], str] = {}
    for tensor, concat_name, concat_out in plan.requant:
        params = activation_params(table, plan, concat_out, options.symmetric)
        stem = f"{tensor}_requant_{concat_name}"
        scale = scalar(f"{stem}_scale", params.scale, np.float32)
        zero = scalar(f"{stem}_zero_point", params.zero_point, np.int8)
        q = helper.make_node("QuantizeLinear", [dequantized[tensor], scale, zero], [f"{stem}_quantized"],
                             name=f"{stem}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{stem}_quantized", scale, zero], [f"{stem}_dequantized"],
                              name=f"{stem}_DequantizeLinear")
        producer = producer_of.get(tensor)
        (after[producer.name] if producer is not None else head).extend([q, dq])
        requant_edges[(concat_name, tensor)] = f"{stem}_dequantized"

    # Weights (per channel) and biases (int32, scale s_in * s_w).
    weight_scales: dict[tuple[str, int], np.ndarray] = {}
    done_weights: dict[str, str] = {}
    bias_of = {node_name: (bias_index, act, w_index) for node_name, bias_index, act, w_index in plan.biases}
    for node_name, index, axis in plan.weights:
        node = nodes_by_name[node_name]
        weight_name = node.input[index]
        weight = numpy_helper.to_array(inits[weight_name])
        q_weight, w_scale = quantize_weight(weight, axis)
        if node_name in bias_of:
            # Widen weight scales whose bias would overflow int32 (tiny weights, large bias).
            bias_index, act, _ = bias_of[node_name]
            bias = numpy_helper.to_array(inits[node.input[bias_index]]).astype(np.float64)
            s_in = params_of[act].scale if act in params_of else None
            if s_in is not None:
                limit = np.abs(bias) / (s_in * INT32_MAX)
                if w_scale.ndim == 0:
                    need = float(limit.max(initial=0.0))
                    if need > w_scale:
                        w_scale = np.asarray(need * 1.0001, dtype=np.float32)
                        q_weight = _round_weight(weight, w_scale, axis)
                elif np.any(limit > w_scale):
                    w_scale = np.maximum(w_scale, (limit * 1.0001).astype(np.float32))
                    q_weight = _round_weight(weight, w_scale, axis)
        weight_scales[(node_name, index)] = w_scale
        key = f"{weight_name}@{node_name}" if weight_name in done_weights else weight_name
        stem = weight_name if key == weight_name else f"{weight_name}_{node_name}"
        new_inits.append(numpy_helper.from_array(q_weight, f"{stem}_quantized"))
        new_inits.append(numpy_helper.from_array(w_scale.astype(np.float32), f"{stem}_scale"))
        new_inits.append(numpy_helper.from_array(np.zeros(w_scale.shape, dtype=np.int8), f"{stem}_zero_point"))
        attrs = {"axis": axis} if w_scale.ndim == 1 else {}
        head.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
            [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear", **attrs))
        renames[(node_name, index)] = f"{stem}_dequantized"
        done_weights[weight_name] = stem
    for node_name, bias_index, act, w_index in plan.biases:
        node = nodes_by_name[node_name]
        if (node_name, w_index) not in weight_scales or act not in params_of:
            continue
        bias_name = node.input[bias_index]
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64)
        b_scale = (params_of[act].scale * weight_scales[(node_name, w_index)].astype(np.float64))
        if b_scale.ndim == 1 and b_scale.size != bias.size:
            continue
        q_bias = np.clip(np.rint(bias / b_scale), -INT32_MAX, INT32_MAX).astype(np.int32)
        stem = f"{bias_name}_{node_name}" if any(
            other[2] != act and nodes_by_name[other[0]].input[other[1]] == bias_name
            for other in plan.biases if other[0] != node_name) else bias_name
        new_inits.append(numpy_helper.from_array(q_bias, f"{stem}_quantized"))
        new_inits.append(numpy_helper.from_array(b_scale.astype(np.float32), f"{stem}_scale"))
        new_inits.append(numpy_helper.from_array(np.zeros(b_scale.shape, dtype=np.int32), f"{stem}_zero_point"))
        attrs = {"axis": 0} if b_scale.ndim == 1 else {}
        head.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
            [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear", **attrs))
        renames[(node_name, bias_index)] = f"{stem}_dequantized"

    # Constant operands of element-wise ops: int8 symmetric, per tensor.
    for node_name, index in plan.constants:
        node = nodes_by_name[node_name]
        const_name = node.input[index]
        stem = f"{const_name}_{node_name}"
        values, c_scale = quantize_weight(numpy_helper.to_array(inits[const_name]), -1)
        new_inits.append(numpy_helper.from_array(values, f"{stem}_quantized"))
        new_inits.append(numpy_helper.from_array(c_scale.astype(np.float32), f"{stem}_scale"))
        new_inits.append(numpy_helper.from_array(np.zeros((), dtype=np.int8), f"{stem}_zero_point"))
        head.append(helper.make_node(
            "DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
            [f"{stem}_dequantized"], name=f"{stem}_DequantizeLinear"))
        renames[(node_name, index)] = f"{stem}_dequantized"

    # Rewire consumers: every reader of a quantized activation reads its dequantized value,
    # except the producer->clamp edges of fused activations (no pair there by construction).
    qdq_nodes = {id(n) for group in after.values() for n in group} | {id(n) for n in head}
    for node in graph.node:
        if id(node) in qdq_nodes:
            continue
        for index, name in enumerate(node.input):
            if (node.name, index) in renames:
                node.input[index] = renames[(node.name, index)]
            elif (node.name, name) in requant_edges:
                node.input[index] = requant_edges[(node.name, name)]
            elif name in dequantized and dequantized[name] != name:
                node.input[index] = dequantized[name]

    ordered = list(head)
    for node in graph.node:
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    initializer_names = {init.name for init in graph.initializer}
    kept_inputs = [value for value in graph.input if value.name not in inits or value.name in initializer_names]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.value_info[:]
    _set_metadata(out, "fwedge.quant_method", options.method or table.method)
    try:
        out = onnx.shape_inference.infer_shapes(out)
        onnx.checker.check_model(out)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"QDQ model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    log.info(
        "inserted Q/DQ on %d activations, %d weights, %d biases; %d nodes in int8",
        len(all_activations), len(plan.weights), len(plan.biases), len(plan.quantized_nodes),
    )
    return out


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value

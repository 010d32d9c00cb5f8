"""The quantization plan: which tensors, weights and layers get Q/DQ, from the graph and OP_INFO alone."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

import onnx
import numpy as np
from onnx import TensorProto, numpy_helper

from fwedge import ir
from fwedge.errors import CalibrationError, ModelError
from fwedge.op_info import OP_INFO, attribute
from fwedge.ops.registry import fuses_into, gelu_tanh_chain, silu_mul


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


# The slots are NamedTuples: read by field name, and still equal to the plain tuples that
# callers and tests compare them with.


class WeightSlot(NamedTuple):
    """A weight quantized to int8: input `input` of node `node`, scales along `axis` (-1: per tensor)."""

    node: str
    input: int
    axis: int


class ConstantSlot(NamedTuple):
    """A constant operand of an element-wise op, quantized to int8 per tensor."""

    node: str
    input: int


class BiasSlot(NamedTuple):
    """A bias quantized to int32 with scale s(activation) * s(weight at weight_input)."""

    node: str
    input: int
    activation: str
    weight_input: int


class RequantEdge(NamedTuple):
    """A Concat input that also feeds other ops: a requantizing pair to the Concat output's parameters."""

    tensor: str
    concat: str
    concat_output: str


@dataclass(frozen=True)
class LayerGroup:
    """One unit that can be kept in float: an int8 compute node and the clamps fused into it.

    Attributes:
        nodes: node names, the compute node first.
        ops: their op types, in the same order.
    """

    nodes: tuple[str, ...]
    ops: tuple[str, ...]

    @property
    def name(self) -> str:
        """The "+"-joined node names (how reports name the layer)."""
        return "+".join(self.nodes)

    @property
    def op(self) -> str:
        """The "+"-joined op types."""
        return "+".join(self.ops)


@dataclass(frozen=True)
class KeptFloat:
    """A layer kept in float (on request or by the accuracy budget), and why."""

    node: str
    op: str
    reason: str


# The QDQ model's record of its kept-float layers (JSON: [{"node", "op", "reason"}]); export
# copies it into every manifest (extra.kept_float).
KEPT_FLOAT_METADATA = "fwedge.kept_float"


def record_kept_float(model: onnx.ModelProto, kept_float: list[KeptFloat]) -> None:
    """Write `kept_float` into the QDQ model's metadata (nothing when the list is empty)."""
    if kept_float:
        ir.set_metadata(model, KEPT_FLOAT_METADATA, json.dumps(
            [{"node": unit.node, "op": unit.op, "reason": unit.reason} for unit in kept_float]))


def kept_float_from_metadata(model: onnx.ModelProto, where: str) -> list[dict] | None:
    """The kept-float record of a QDQ model (record_kept_float), or None when it has none.

    Raises:
        ModelError: the entry is not a JSON list of {"node", "op", "reason"} strings.
    """
    text = next((prop.value for prop in model.metadata_props if prop.key == KEPT_FLOAT_METADATA), None)
    if text is None:
        return None
    try:
        entries = json.loads(text)
    except ValueError:
        entries = None
    keys = {"node", "op", "reason"}
    if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and set(entry) == keys and all(isinstance(entry[key], str) for key in keys)
            for entry in entries):
        raise ModelError(f"'{where}': metadata {KEPT_FLOAT_METADATA!r} must be a JSON list of "
                         '{"node", "op", "reason"} strings')
    return entries


@dataclass(frozen=True)
class QuantPlan:
    """Which tensors and nodes quantization touches, derived from the graph alone.

    Attributes:
        calibrated: activation tensors that need their own calibrated range, topological order.
        shared: tensor -> tensor whose parameters it reuses (data-movement outputs, Concat inputs).
        requant: Concat inputs that also feed other ops: a requantizing Q/DQ pair on that edge.
        quantized_nodes: names of nodes computed in int8 (fused clamps included).
        weights: every weight quantized to int8 (per channel unless options.per_channel is off).
        constants: constant operands quantized per tensor.
        biases: biases quantized to int32.
        fused: producer output -> clamp output that takes its range.
        groups: the layers (compute node + fused clamps) that can be kept in float.
        kept_float: layers kept in float, and why (filled by quantize from requests and the budget).
    """

    calibrated: list[str] = field(default_factory=list)
    shared: dict[str, str] = field(default_factory=dict)
    requant: list[RequantEdge] = field(default_factory=list)
    quantized_nodes: list[str] = field(default_factory=list)
    weights: list[WeightSlot] = field(default_factory=list)
    constants: list[ConstantSlot] = field(default_factory=list)
    biases: list[BiasSlot] = field(default_factory=list)
    fused: dict[str, str] = field(default_factory=dict)
    groups: list[LayerGroup] = field(default_factory=list)
    kept_float: list[KeptFloat] = field(default_factory=list)

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


def float_tensors(model: onnx.ModelProto) -> set[str]:
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
    """Whether `node` may consume an int8 value: a quantizable or data-movement op, or a float
    island (it reads a dequantized int8 value, so its producer stays int8), not excluded."""
    info = OP_INFO.get(node.op_type)
    if info is None or node.name in options.exclude_nodes:
        return False
    return info.quantizable or info.shares_input_scale or bool(info.float_island)


class _Planner:
    """The state of one plan_quantization walk: graph facts, the plan so far, tensors with pairs."""

    def __init__(self, model: onnx.ModelProto, options: QuantizeOptions):
        self.model = model
        self.options = options
        self.inits = ir.initializer_map(model)
        self.floats = float_tensors(model) | {
            name for name, init in self.inits.items() if init.data_type == TensorProto.FLOAT
        }
        self.consumers = ir.consumer_map(model)
        self.outputs = {value.name for value in model.graph.output}
        self.quantized: dict[str, None] = {}  # ordered set of tensors with pairs
        self.fused_nodes: set[str] = set()
        self.shared: dict[str, str] = {}
        self.requant: list[RequantEdge] = []
        self.quantized_nodes: list[str] = []
        self.weights: list[WeightSlot] = []
        self.constants: list[ConstantSlot] = []
        self.biases: list[BiasSlot] = []
        self.fused: dict[str, str] = {}

    def mark(self, name: str) -> None:
        if name not in self.quantized:
            self.quantized[name] = None

    def visit(self, node: onnx.NodeProto) -> None:
        """Plan one node in topological order: data movement, or an int8 compute node."""
        if node.name in self.options.exclude_nodes or node.name in self.fused_nodes:
            return
        info = OP_INFO.get(node.op_type)
        if info is None or self.gelu(node):
            return
        if info.shares_input_scale:
            data = node.input[0] if node.input else ""
            outputs = [out for out in node.output if out in self.floats]  # Split has several
            if data in self.quantized and outputs and outputs[0] == node.output[0]:
                for out in outputs:
                    self.shared[out] = data
                    self.mark(out)
                self.quantized_nodes.append(node.name)
            return
        if not info.quantizable:
            return
        if node.op_type == "Clip" and not _clip_is_constant(node, self.inits):
            return
        activation_inputs = self.operands(node, info)
        if not activation_inputs:
            return
        for name in activation_inputs:
            self.mark(name)
        if info.bias_input is not None and len(node.input) > info.bias_input:
            bias = node.input[info.bias_input]
            if (bias in self.inits and info.weight_input is not None
                    and node.input[info.weight_input] in self.inits):
                self.biases.append(BiasSlot(node.name, info.bias_input, node.input[0], info.weight_input))
        self.quantized_nodes.append(node.name)
        if node.output[0] in self.floats:
            self.fuse_clamps(node)

    def scalar(self, name: str) -> float | None:
        init = self.inits.get(name)
        if init is None or int(np.prod(init.dims)) != 1:
            return None
        return float(numpy_helper.to_array(init).reshape(-1)[0])

    def gelu(self, node: onnx.NodeProto) -> bool:
        """Plan the tanh GELU chain that starts at `node` (base.gelu_tanh_chain) as one layer: x
        and the last Mul's output int8, the steps between float (no pair, constants as they are)."""
        found = gelu_tanh_chain(node, self.consumers, self.scalar, outputs=self.outputs)
        excluded = found is not None and any(n.name in self.options.exclude_nodes for n in found[1])
        if found is None or excluded or found[0] not in self.floats:
            return False
        x, chain = found
        self.mark(x)
        self.quantized_nodes.extend(n.name for n in chain)
        for step, following in zip(chain, chain[1:]):
            self.fused[step.output[0]] = following.output[0]
            self.fused_nodes.add(following.name)
        output = chain[-1].output[0]
        if output in self.outputs or any(_reads_int8(user, self.options) for user in self.consumers.get(output, [])):
            self.mark(output)
        return True

    def operands(self, node: onnx.NodeProto, info) -> list[str]:
        """Record the node's constant operands (weight, constants); return its float activation inputs."""
        activation_inputs = []
        for index, name in enumerate(node.input):
            if not name or name not in self.floats:
                continue
            if name in self.inits:
                if index == info.weight_input:
                    axis = weight_axis(node)
                    self.weights.append(WeightSlot(node.name, index, axis if self.options.per_channel else -1))
                elif index == info.bias_input:
                    continue
                elif node.op_type in ("Clip", "PRelu"):
                    continue  # clip bounds and PRelu slopes stay float: the int8 tables are built from them
                else:
                    self.constants.append(ConstantSlot(node.name, index))
                continue
            activation_inputs.append(name)
        return activation_inputs

    def fuse_clamps(self, node: onnx.NodeProto) -> None:
        """Fuse the ReLU/Clip that is the only consumer of `node`'s output, when the op cards say
        it folds into `node` (fwedge.ops.base.fuses_into: the lowering fuses exactly these), or the
        Mul of a SiLU (fwedge.ops.base.silu_mul: x * Sigmoid(x) is one layer, its one Q after the
        Mul), then mark the last output if int8 reads it."""
        output = node.output[0]
        users = self.consumers.get(output, [])
        follower = self.follower(node, users) if len(users) == 1 and output not in self.outputs else None
        if follower is not None:
            # One follower at most: a clamp takes no second clamp (fuses_into), as in the lowering.
            self.fused[output] = follower.output[0]
            self.fused_nodes.add(follower.name)
            self.quantized_nodes.append(follower.name)
            output = follower.output[0]
            users = self.consumers.get(output, [])
        if output in self.outputs or any(_reads_int8(user, self.options) for user in users):
            self.mark(output)
        # else: every reader is a float op (e.g. the Div of a decomposed HardSwish) or a layer
        # kept in float: a pair here would only add a rounding step on a float path.

    def follower(self, node: onnx.NodeProto, users: list[onnx.NodeProto]) -> onnx.NodeProto | None:
        """The one consumer that joins `node`'s layer (a fused clamp, a SiLU's Mul), or None."""
        user = users[0]
        if user.name in self.options.exclude_nodes:
            return None
        if silu_mul(node, users) is not None:
            return user
        if fuses_into(node, user) and (user.op_type != "Clip" or _clip_is_constant(user, self.inits)):
            return user
        return None

    def tie_concats(self) -> None:
        """Concat: inputs and output share one scale (TFLite int8 CONCATENATION restriction)."""
        for node in self.model.graph.node:
            if node.op_type != "Concat" or node.name not in self.quantized_nodes:
                continue
            out = node.output[0]
            if out not in self.quantized:
                # Every reader is float (a Split, a decode): the Concat joins dequantized inputs in
                # float, and no scale is shared. (Tying inputs to an output with no range was
                # YOLOv8's "no range for '/model.22/Concat_6_output_0'".)
                self.quantized_nodes.remove(node.name)
                continue
            for name in node.input:
                if name in self.shared:
                    # Already tied to another tensor's parameters (a data-movement output): requantize.
                    self.requant.append(RequantEdge(name, node.name, out))
                elif name in self.quantized:
                    only_concat = (all(user is node for user in self.consumers.get(name, []))
                                   and name not in self.outputs)
                    if only_concat:
                        self.shared[name] = out  # takes the Concat output's parameters directly
                    else:
                        self.requant.append(RequantEdge(name, node.name, out))

    def groups(self) -> list[LayerGroup]:
        """The layers the budget (or a request) can keep in float; data-movement nodes are no layer."""
        nodes: dict[str, onnx.NodeProto] = {}
        for node in self.model.graph.node:
            nodes.setdefault(node.name, node)  # the first node of a name, as a search from the top finds it
        by_output = {node.output[0]: node for node in self.model.graph.node if node.output}
        fused_nodes = set()
        groups = []
        for name in self.quantized_nodes:
            node = nodes[name]
            if name in fused_nodes or OP_INFO[node.op_type].shares_input_scale:
                continue
            members = [node]
            output = node.output[0]
            while output in self.fused:
                output = self.fused[output]
                clamp = by_output[output]
                members.append(clamp)
                fused_nodes.add(clamp.name)
            groups.append(LayerGroup(tuple(n.name for n in members), tuple(n.op_type for n in members)))
        return groups

    def plan(self) -> QuantPlan:
        calibrated = [name for name in self.quantized if name not in self.shared]
        return QuantPlan(
            calibrated=calibrated, shared=self.shared, requant=self.requant,
            quantized_nodes=self.quantized_nodes, weights=self.weights, constants=self.constants,
            biases=self.biases, fused=self.fused, groups=self.groups(),
        )


def plan_quantization(model: onnx.ModelProto, options: QuantizeOptions | None = None) -> QuantPlan:
    """Decide which tensors get Q/DQ pairs, from the graph and OP_INFO alone.

    A node is quantized when OP_INFO marks it `quantizable` and it is not excluded. Its float
    activation inputs and its output get pairs, its weight is quantized per channel and its bias
    to int32. Data-movement ops whose input is quantized pass the parameters through.

    Args:
        model: a float model (BN folded, nodes named, opset >= 13).
        options: exclusions and flags.

    Returns:
        The QuantPlan (kept_float empty: the plan knows the graph, not the reasons).

    Raises:
        CalibrationError: the model has no float tensor that quantization could touch.
    """
    planner = _Planner(model, options or QuantizeOptions())
    for node in model.graph.node:
        planner.visit(node)
    planner.tie_concats()
    if not planner.quantized and not planner.weights:
        raise CalibrationError(
            "nothing to quantize: the model has no float tensor feeding an op that fwedge "
            f"quantizes (ops present: {sorted({node.op_type for node in model.graph.node})})"
            + _inside_control_flow(model)
        )
    return planner.plan()


def _inside_control_flow(model: onnx.ModelProto) -> str:
    """'; ...' naming the control-flow nodes whose subgraphs hold quantizable ops, or ''."""
    found = []
    for node in model.graph.node:
        inner: dict[str, int] = {}
        stack = ir.subgraphs(node)
        while stack:
            for sub in stack.pop().node:
                info = OP_INFO.get(sub.op_type)
                if info is not None and info.quantizable:
                    inner[sub.op_type] = inner.get(sub.op_type, 0) + 1
                stack += ir.subgraphs(sub)
        if inner:
            ops = ", ".join(f"{count} {op}" for op, count in sorted(inner.items()))
            found.append(f"{node.op_type} '{node.name}' ({ops})")
    if not found:
        return ""
    return ("; the quantizable ops are inside control flow, whose subgraphs fwedge does not quantize: "
            + "; ".join(found[:5]))


# A Concat whose inputs' calibrated ranges differ more than this keeps float: one int8 scale
# for all of them would leave the narrowest input fewer than 256 / 16 = 16 codes. A detector head
# that joins pixel boxes (0..640) with sigmoid scores (0..1) in one tensor is the common case:
# a shared scale of 2.5 px per step quantizes every score to 0.
MIXED_RANGE_RATIO = 16.0


def tied_concat_inputs(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, list[str]]:
    """Concat node -> the inputs the plan gives its output's scale (shared or requantized),
    for every int8 Concat of two or more such inputs."""
    requant = {(edge.concat, edge.tensor) for edge in plan.requant}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Concat" or node.name not in plan.quantized_nodes:
            continue
        out = node.output[0]
        inputs = [name for name in dict.fromkeys(node.input)
                  if name and (plan.shared.get(name) == out or (node.name, name) in requant)]
        if len(inputs) > 1:
            found[node.name] = inputs
    return found


def mixed_range_concats(model: onnx.ModelProto, plan: QuantPlan, ranges: dict,
                        ratio: float = MIXED_RANGE_RATIO) -> list[KeptFloat]:
    """The Concats whose inputs' ranges (`ranges`: tensor -> TensorQuant with .range) differ more
    than `ratio` in width, each as a KeptFloat that says by how much. An input with no range of
    its own (a table calibrated before these were collected) leaves its Concat as planned."""
    kept = []
    outputs = {node.name: node.output[0] for node in model.graph.node if node.op_type == "Concat"}
    for name, inputs in tied_concat_inputs(model, plan).items():
        output = outputs[name]
        widths = {}
        for tensor in inputs:
            source = tensor
            if tensor not in ranges:  # a requantized input: the range of the tensor it shares
                source = plan.resolve(tensor)
                if source not in ranges or source == plan.resolve(output):
                    break
            low, high = ranges[source].range
            widths[tensor] = (float(low), float(high))
        else:
            spans = {tensor: high - low for tensor, (low, high) in widths.items() if high > low}
            if len(spans) < 2:
                continue
            wide, narrow = max(spans, key=spans.get), min(spans, key=spans.get)
            factor = spans[wide] / spans[narrow]
            if factor > ratio:
                codes = 255 / factor
                kept.append(KeptFloat(name, "Concat", (
                    f"input ranges differ {factor:.0f}x ('{wide}' [{widths[wide][0]:.4g}, {widths[wide][1]:.4g}], "
                    f"'{narrow}' [{widths[narrow][0]:.4g}, {widths[narrow][1]:.4g}]): one int8 scale would "
                    f"leave the narrow input {codes:.1f} codes")))
    return kept


# Element-wise arithmetic with a constant operand, after the last layer with weights: a
# detector's box decode (anchor offsets, stride scaling) or a regressor's output scaling. It
# costs nothing in float, and in int8 every step adds a rounding of a wide-range value.
_DECODE_OPS = ("Add", "Sub", "Mul", "Div")


def float_islands(model: onnx.ModelProto, excluded: frozenset = frozenset()) -> list[KeptFloat]:
    """The nodes whose op has no int8 form (OpInfo.float_island) or that the quantizer leaves
    float (OpInfo.stays_float): float inside an int8 model, with the card's reason, so that the
    kept-float record and every manifest name them."""
    kept = []
    for node in model.graph.node:
        info = OP_INFO.get(node.op_type)
        reason = info and (info.float_island or info.stays_float)
        if reason and node.name not in excluded:
            kept.append(KeptFloat(node.name, node.op_type, reason))
    return kept


def post_processing(model: onnx.ModelProto) -> list[KeptFloat]:
    """The decode arithmetic that stays float: Add/Sub/Mul/Div nodes with a constant operand
    from which no layer with constant weights (Conv, Gemm, MatMul, ...) can be reached."""
    inits = ir.initializer_map(model)
    consumers = ir.consumer_map(model)
    feeds_weights: set[str] = set()  # nodes with a path to a weighted layer (their own included)
    weighted_outputs: set[str] = set()
    for node in reversed(model.graph.node):
        info = OP_INFO.get(node.op_type)
        weighted = (info is not None and info.weight_input is not None and len(node.input) > info.weight_input
                    and node.input[info.weight_input] in inits)
        if weighted:
            weighted_outputs.update(node.output)
        if weighted or any(user.name in feeds_weights for out in node.output for user in consumers.get(out, [])):
            feeds_weights.add(node.name)
    if not feeds_weights:
        return []
    tail = [node for node in model.graph.node if node.name not in feeds_weights]
    # A layer's own bias or scale (MatMul then Add of a constant, as PP-OCR's classifier ends)
    # is part of that layer, not a decode: it stays int8 with it.
    kept = {node.name: "post-processing: arithmetic on a constant after the last layer with weights"
            for node in tail if node.op_type in _DECODE_OPS
            and any(name in inits for name in node.input) and not all(name in inits for name in node.input)
            and not any(name in weighted_outputs for name in node.input)}
    # What only feeds that arithmetic goes along (the Slice of the box distances, the Sub of
    # two corners, the Concat of centre and size): an int8 pair there would only round a value
    # that float code reads next.
    changed = bool(kept)
    while changed:
        changed = False
        for node in reversed(tail):
            info = OP_INFO.get(node.op_type)
            if node.name in kept or info is None or not (node.op_type in _DECODE_OPS or info.shares_input_scale
                                                          or node.op_type == "Concat"):
                continue
            users = [user for out in node.output for user in consumers.get(out, [])]
            if users and all(user.name in kept for user in users):
                kept[node.name] = "post-processing: read only by the float decode after it"
                changed = True
    return [KeptFloat(node.name, node.op_type, kept[node.name]) for node in tail if node.name in kept]


def candidate_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation that some exclusion set could give a Q/DQ pair (topological order).

    The inputs and outputs of quantizable and data-movement nodes; calibrating all of them lets
    the accuracy budget keep any layer in float without a second calibration run.
    """
    inits = ir.initializer_map(model)
    floats = float_tensors(model)
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


def layer_groups(model: onnx.ModelProto, options: QuantizeOptions | None = None) -> list[LayerGroup]:
    """The layers of `model` that can be kept in float (plan_quantization(model, options).groups)."""
    return plan_quantization(model, options).groups


def float_units(
    prepared: onnx.ModelProto, names: tuple[str, ...] | list[str] = (), float_stem: bool = False,
) -> list[KeptFloat]:
    """Layers to keep in float on request: named nodes and/or the stem, each with its fused clamps.

    A layer kept in float takes the ReLU/Clip fused into it along (they run in float too), so the
    next int8 layer quantizes the clamped tensor, as it would after any float layer.

    Args:
        prepared: the prepared float model (load_prepared: BN folded, nodes named).
        names: node names of compute layers (Conv, Gemm, MatMul, ...) to keep in float.
        float_stem: also keep every compute layer that reads a graph input directly. onnxruntime
            runs a 1..3-input-channel QLinearConv through a poorly shaped int8 GEMM and it costs
            several times its float Conv; the first layer is also the most precision-sensitive.

    Returns:
        One KeptFloat per layer ("+"-joined node names of the layer and its clamps).

    Raises:
        CalibrationError: a name that is no node of the model, or one int8 does not compute.
    """
    ops = {node.name: node.op_type for node in prepared.graph.node}
    groups = {group.nodes[0]: group for group in layer_groups(prepared)}
    unknown = [name for name in names if name not in ops]
    if unknown:
        raise CalibrationError(f"keep-float: no node named {unknown} in the model; nodes are e.g. "
                               f"{[name for name in groups][:5]}")
    not_layers = [f"{name} ({ops[name]})" for name in names if name not in groups]
    if not_layers:
        raise CalibrationError(f"keep-float: {not_layers} are not int8 compute layers (data-movement ops and "
                               f"fused clamps follow their layer); layers are e.g. {[name for name in groups][:5]}")
    wanted: dict[str, str] = {name: "requested (keep float)" for name in names}
    if float_stem:
        inputs = {value.name for value in ir.graph_inputs(prepared)}
        stem = [node.name for node in prepared.graph.node if node.name in groups and node.input
                and node.input[0] in inputs]
        if not stem:
            raise CalibrationError("float stem: no int8 compute layer reads a graph input directly")
        for name in stem:
            wanted.setdefault(name, "float stem: reads the model input")
    return [KeptFloat(node=groups[name].name, op=groups[name].op, reason=reason) for name, reason in wanted.items()]

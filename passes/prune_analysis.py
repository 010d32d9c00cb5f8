"""Channel dependency analysis for structured pruning: which channels are coupled, and which are blocked."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import PruneError
from fwedge.op_info import OP_INFO, attribute

# How the dependency analysis works (the idea of DepGraph, Fang et al., CVPR 2023, written for ONNX
# protos): every channel of every tensor gets an integer id. A layer that creates channels (Conv,
# Gemm, MatMul with a constant weight) gives its output fresh ids; channel-preserving ops
# (BN, activations, pools, depthwise Conv) pass the ids through; Add/Mul/... unite the ids of
# their inputs position by position in a union-find; Concat concatenates id arrays (offsets shift
# by construction); Flatten repeats each channel's id H*W times, so a following Gemm sees input
# features in blocks of H*W per channel. A connected component of ids is one "coupled channel":
# it is kept or removed everywhere at once. Every parameter slice that depends on a channel
# (Conv out/in weights, bias, BN vectors, broadcast constants, Gemm input features) is recorded
# against the ids along its axis. Consumers the analysis cannot follow (a Reshape to a hard-coded
# shape, an unknown op, a graph output) block the ids they see, with the reason.


@dataclass
class _ParamSlice:
    """Initializer `name` depends along `axis` on the channels `ids` (one id per index)."""

    name: str
    axis: int
    ids: np.ndarray
    role: str  # "out", "in", "bias", "bn_scale", "channel", "constant"


@dataclass
class ChannelGroup:
    """Layers whose output channels are coupled and pruned together (one DepGraph group).

    Attributes:
        name: the first source layer's node name.
        sources: node names of the layers creating these channels (several for residual chains).
        channels: number of coupled channels in the group.
        blocked_by: reasons why some channels cannot be removed (empty if all are prunable).
        blocked_channels: how many of the channels are blocked.
        kept: channels kept after pruning (equal to `channels` before a plan is applied).
    """

    name: str
    sources: list[str]
    channels: int
    blocked_by: list[str] = field(default_factory=list)
    blocked_channels: int = 0
    kept: int = 0
    components: list[int] = field(default_factory=list, repr=False)

    @property
    def prunable(self) -> bool:
        return self.blocked_channels < self.channels


@dataclass
class DependencyGraph:
    """Result of `analyze`: groups, the coupled-channel components and the parameter slices."""

    groups: list[ChannelGroup]
    parent: list[int] = field(repr=False)
    blocked: dict[int, list[str]] = field(repr=False)
    params: dict[tuple[str, int], _ParamSlice] = field(repr=False)
    depthwise: list[tuple[str, np.ndarray]] = field(repr=False)

    def find(self, index: int) -> int:
        root = index
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[index] != root:
            self.parent[index], index = root, self.parent[index]
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids), dtype=np.int64, count=len(ids))

    def is_blocked(self, component: int) -> bool:
        return component in self.blocked


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


class _Analyzer:
    """Walks the graph once in topological order and records ids, unions, blocks and slices."""

    def __init__(self, model: onnx.ModelProto, protect_first: bool, exclude: set[str]):
        self.model = model
        self.graph = model.graph
        self.inits = ir.initializer_map(model)
        self.shapes = ir.value_shapes(model)
        self.parent: list[int] = []
        self.owner: list[str] = []  # id -> the layer (or pseudo-layer) that created it
        self.blocked: dict[int, list[str]] = {}
        self.slots: dict[str, np.ndarray | None] = {}
        self.params: dict[tuple[str, int], _ParamSlice] = {}
        self.depthwise: list[tuple[str, np.ndarray]] = []
        self.sources: list[str] = []
        self.protect_first = protect_first
        self.exclude = exclude
        self.first_conv_seen = False

    # -- union-find --------------------------------------------------------------------------

    def find(self, index: int) -> int:
        root = index
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[index] != root:
            self.parent[index], index = root, self.parent[index]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def fresh(self, count: int, owner: str, blocked_reason: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.owner.extend([owner] * count)
        ids = np.arange(start, start + count, dtype=np.int64)
        if blocked_reason:
            self.block(ids, blocked_reason)
        return ids

    def block(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is None:
            return
        for index in ids.tolist():
            reasons = self.blocked.setdefault(index, [])
            if reason not in reasons:
                reasons.append(reason)

    # -- helpers -----------------------------------------------------------------------------

    def shape(self, name: str) -> list | None:
        return self.shapes.get(name)

    def channels_of(self, name: str) -> int | None:
        shape = self.shape(name)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return None
        return shape[1]

    def record(self, name: str, axis: int, ids: np.ndarray, role: str) -> None:
        """Parameter `name` is sliced along `axis` by `ids`; a second use of the same slice unites."""
        key = (name, axis)
        if key in self.params:
            previous = self.params[key]
            if len(previous.ids) != len(ids):
                raise PruneError(f"initializer '{name}': used along axis {axis} with "
                                 f"{len(previous.ids)} and {len(ids)} channels")
            self.union(previous.ids, ids)
            return
        self.params[key] = _ParamSlice(name, axis, ids, role)

    def source_ids(self, node: onnx.NodeProto, count: int) -> np.ndarray:
        """Fresh ids for a layer's output channels, blocked when the layer is protected."""
        name = node.name or node.output[0]
        reason = None
        if name in self.exclude:
            reason = f"{node.op_type} '{name}' is excluded by name"
        elif node.op_type == "Conv" and not self.first_conv_seen and self.protect_first:
            reason = f"first conv '{name}' is protected"
        if node.op_type == "Conv":
            self.first_conv_seen = True
        self.sources.append(name)
        return self.fresh(count, name, reason)

    def opaque(self, node: onnx.NodeProto, why: str) -> None:
        """The node cannot follow channel changes: block what it reads, give its outputs fixed ids."""
        reason = f"{node.op_type} '{node.name or node.output[0]}' {why}"
        for name in node.input:
            self.block(self.slots.get(name), reason)
        for name in node.output:
            count = self.channels_of(name)
            self.slots[name] = self.fresh(count, f"({reason})", reason) if count else None

    # -- the walk ----------------------------------------------------------------------------

    def run(self) -> DependencyGraph:
        for value in ir.graph_inputs(self.model):
            count = self.channels_of(value.name)
            reason = f"graph input '{value.name}'"
            self.slots[value.name] = self.fresh(count, f"({reason})", reason) if count else None
        for node in self.graph.node:
            rule = _RULES.get(node.op_type)
            info = OP_INFO.get(node.op_type)
            if rule is not None:
                rule(self, node)
            elif info is not None and info.elementwise:
                _elementwise(self, node)
            elif info is not None and info.channel_passthrough:
                _passthrough(self, node)
            else:
                self.opaque(node, "is not understood by channel pruning")
        for value in self.graph.output:
            self.block(self.slots.get(value.name), f"graph output '{value.name}'")
        return self.finish()

    def finish(self) -> DependencyGraph:
        # Blocks apply to whole components.
        blocked: dict[int, list[str]] = {}
        for index, reasons in self.blocked.items():
            root = self.find(index)
            merged = blocked.setdefault(root, [])
            merged.extend(reason for reason in reasons if reason not in merged)
        # Group layers that share any component (e.g. every conv feeding one residual chain).
        layer_parent = {name: name for name in self.sources}

        def layer_find(name: str) -> str:
            while layer_parent[name] != name:
                layer_parent[name] = layer_parent[layer_parent[name]]
                name = layer_parent[name]
            return name

        component_layer: dict[int, str] = {}
        for index, owner in enumerate(self.owner):
            if owner not in layer_parent:
                continue
            root = self.find(index)
            if root in component_layer:
                a, b = layer_find(component_layer[root]), layer_find(owner)
                if a != b:
                    layer_parent[b] = a
            else:
                component_layer[root] = owner
        groups: dict[str, ChannelGroup] = {}
        order = {name: i for i, name in enumerate(self.sources)}
        for root, owner in component_layer.items():
            head = layer_find(owner)
            group = groups.setdefault(head, ChannelGroup(name=head, sources=[], channels=0))
            group.components.append(root)
        for name in self.sources:
            head = layer_find(name)
            groups[head].sources.append(name)
        result = []
        for group in sorted(groups.values(), key=lambda g: min(order[s] for s in g.sources)):
            group.name = group.sources[0]
            group.components.sort()
            group.channels = group.kept = len(group.components)
            for root in group.components:
                if root in blocked:
                    group.blocked_channels += 1
                    group.blocked_by.extend(r for r in blocked[root] if r not in group.blocked_by)
            result.append(group)
        return DependencyGraph(result, self.parent, blocked, self.params, self.depthwise)


# Rules for ops that need more than the generic passthrough/elementwise handling: a dict filled
# by a decorator, keyed by op type.
_RULES: dict[str, Callable[[_Analyzer, onnx.NodeProto], None]] = {}


def _rule(*op_types: str):
    def register(function):
        for op_type in op_types:
            _RULES[op_type] = function
        return function

    return register


def _passthrough(an: _Analyzer, node: onnx.NodeProto) -> None:
    """Output channel c depends on input channel c only (BN, activations, pools, Identity)."""
    info = OP_INFO[node.op_type]
    ids = an.slots.get(node.input[0])
    shape_in, shape_out = an.shape(node.input[0]), an.shape(node.output[0])
    if ids is not None and (shape_out is None or len(shape_out) < 2 or shape_in is None
                            or len(shape_in) < 2 or shape_out[1] != shape_in[1]):
        an.opaque(node, "changes the channel axis")
        return
    for index in info.channel_inputs:
        if index < len(node.input) and node.input[index]:
            if node.input[index] not in an.inits:
                an.opaque(node, f"has a non-constant per-channel input '{node.input[index]}'")
                return
            if ids is not None:
                role = "bn_scale" if node.op_type == "BatchNormalization" and index == 1 else "channel"
                an.record(node.input[index], 0, ids, role)
    an.slots[node.output[0]] = ids
    for extra in node.output[1:]:
        count = an.channels_of(extra)
        an.slots[extra] = None if ids is None else an.fresh(count or 0, "(extra output)", "extra output")
        an.block(ids, f"{node.op_type} '{node.name}' has a second output")


def _elementwise(an: _Analyzer, node: onnx.NodeProto) -> None:
    """Add/Sub/Mul/Div: inputs carrying the channel axis are united position by position."""
    out_shape = an.shape(node.output[0])
    if out_shape is None or len(out_shape) < 2:
        an.opaque(node, "has an output of unknown rank")
        return
    rank = len(out_shape)
    carried: list[np.ndarray] = []
    constants: list[tuple[str, int]] = []
    for name in node.input:
        shape = an.shape(name)
        if shape is None:
            an.opaque(node, f"has an input '{name}' of unknown shape")
            return
        axis = 1 - (rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcasts over channels
        if name in an.inits:
            constants.append((name, axis))
        elif an.slots.get(name) is not None:
            carried.append(an.slots[name])
        else:
            an.opaque(node, f"adds channels of '{name}' whose origin is unknown")
            return
    if not carried:
        an.slots[node.output[0]] = None
        return
    for other in carried[1:]:
        if len(other) != len(carried[0]):
            an.opaque(node, "combines inputs of different channel counts")
            return
        an.union(carried[0], other)
    for name, axis in constants:
        an.record(name, axis, carried[0], "constant")
    an.slots[node.output[0]] = carried[0]


@_rule("Conv")
def _conv(an: _Analyzer, node: onnx.NodeProto) -> None:
    info = OP_INFO["Conv"]
    weight_name = node.input[info.weight_input]
    if weight_name not in an.inits:
        an.opaque(node, f"has a non-constant weight '{weight_name}'")
        return
    weight = an.inits[weight_name]
    out_channels, in_per_group = weight.dims[info.out_channel_axis], weight.dims[info.in_channel_axis]
    group = attribute(node, "group", 1)
    in_ids = an.slots.get(node.input[0])
    bias = node.input[info.bias_input] if len(node.input) > info.bias_input and node.input[info.bias_input] else None
    if group == 1:
        if in_ids is not None:
            an.record(weight_name, info.in_channel_axis, in_ids, "in")
        out_ids = an.source_ids(node, out_channels)
        an.record(weight_name, info.out_channel_axis, out_ids, "out")
    elif in_per_group == 1 and out_channels == group and in_ids is not None and len(in_ids) == group:
        # Depthwise: output channel c reads input channel c only; in and out channels are tied.
        out_ids = in_ids
        an.record(weight_name, info.out_channel_axis, out_ids, "out")
        an.depthwise.append((node.name or node.output[0], out_ids))
    else:
        an.opaque(node, f"is a grouped conv (group={group}) that is not depthwise")
        return
    if bias is not None:
        if bias not in an.inits:
            an.opaque(node, f"has a non-constant bias '{bias}'")
            return
        an.record(bias, 0, out_ids, "bias")
    an.slots[node.output[0]] = out_ids


@_rule("Gemm", "MatMul")
def _linear(an: _Analyzer, node: onnx.NodeProto) -> None:
    info = OP_INFO[node.op_type]
    weight_name = node.input[info.weight_input]
    a_shape = an.shape(node.input[0])
    if weight_name not in an.inits or a_shape is None or len(a_shape) != 2:
        an.opaque(node, "is not a 2-D input times a constant weight")
        return
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        an.opaque(node, "has transA=1")
        return
    weight = an.inits[weight_name]
    if node.op_type == "Gemm" and not attribute(node, "transB", 0):
        in_axis, out_axis = 0, 1  # Gemm weight [K, N]
    else:
        in_axis, out_axis = info.in_channel_axis, info.out_channel_axis
    in_ids = an.slots.get(node.input[0])
    if in_ids is not None:
        an.record(weight_name, in_axis, in_ids, "in")
    out_ids = an.source_ids(node, weight.dims[out_axis])
    an.record(weight_name, out_axis, out_ids, "out")
    if info.bias_input is not None and len(node.input) > info.bias_input and node.input[info.bias_input]:
        bias = node.input[info.bias_input]
        bias_shape = an.shape(bias)
        if bias not in an.inits:
            an.opaque(node, f"has a non-constant bias '{bias}'")
            return
        if bias_shape and bias_shape[-1] == len(out_ids) and len(out_ids) > 1:
            an.record(bias, len(bias_shape) - 1, out_ids, "bias")
    an.slots[node.output[0]] = out_ids


def _flatten_like(an: _Analyzer, node: onnx.NodeProto, ids: np.ndarray) -> None:
    """[N, C, H, W] -> [N, C*H*W]: each channel becomes a block of H*W features."""
    shape = an.shape(node.input[0])
    if shape is None or any(not isinstance(d, int) for d in shape[2:]):
        an.opaque(node, "flattens spatial dims of unknown size")
        return
    block = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    an.slots[node.output[0]] = np.repeat(ids, block)


@_rule("Flatten")
def _flatten(an: _Analyzer, node: onnx.NodeProto) -> None:
    ids = an.slots.get(node.input[0])
    if ids is None:
        an.slots[node.output[0]] = None
        return
    if attribute(node, "axis", 1) != 1:
        an.opaque(node, f"flattens from axis {attribute(node, 'axis', 1)}, not 1")
        return
    _flatten_like(an, node, ids)


@_rule("Reshape")
def _reshape(an: _Analyzer, node: onnx.NodeProto) -> None:
    ids = an.slots.get(node.input[0])
    if ids is None:
        an.slots[node.output[0]] = None
        return
    target = an.inits.get(node.input[1])
    if target is None:
        an.opaque(node, "has a computed target shape")
        return
    dims = numpy_helper.to_array(target).tolist()
    # [0, -1] / [-1? no] / [N, -1]: a flatten that adapts to the channel count.
    if len(dims) == 2 and dims[1] == -1 and dims[0] != -1:
        _flatten_like(an, node, ids)
        return
    an.opaque(node, f"reshapes to the hard-coded shape {dims}, which fixes the channel count")


@_rule("Squeeze", "Unsqueeze", "ReduceMean", "ReduceMax", "ReduceSum")
def _axes_op(an: _Analyzer, node: onnx.NodeProto) -> None:
    ids = an.slots.get(node.input[0])
    if ids is None:
        an.slots[node.output[0]] = None
        return
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] in an.inits:
        axes = numpy_helper.to_array(an.inits[node.input[1]]).tolist()
    if axes is None:
        an.opaque(node, "has unknown axes")
        return
    rank = len(an.shape(node.output[0] if node.op_type == "Unsqueeze" else node.input[0]) or [])
    axes = [a + rank if a < 0 else a for a in axes]
    if 0 in axes or 1 in axes:
        an.opaque(node, f"acts on the channel axis (axes {axes})")
        return
    an.slots[node.output[0]] = ids


@_rule("Concat")
def _concat(an: _Analyzer, node: onnx.NodeProto) -> None:
    out_shape = an.shape(node.output[0])
    rank = len(out_shape) if out_shape else 0
    axis = attribute(node, "axis", 0)
    axis = axis + rank if axis < 0 else axis
    parts = []
    for name in node.input:
        ids = an.slots.get(name)
        if ids is None:
            count = an.channels_of(name)
            if count is None:
                an.opaque(node, f"has an input '{name}' with unknown channels")
                return
            ids = an.fresh(count, f"(Concat input '{name}')", f"Concat '{node.name}' input '{name}' is a constant")
        parts.append(ids)
    if axis == 1:
        # Channel concat: offsets shift by construction, each input keeps its ids.
        an.slots[node.output[0]] = np.concatenate(parts)
        return
    for other in parts[1:]:
        if len(other) != len(parts[0]):
            an.opaque(node, "concatenates inputs of different channel counts")
            return
        an.union(parts[0], other)
    an.slots[node.output[0]] = parts[0]


@_rule("Pad")
def _pad(an: _Analyzer, node: onnx.NodeProto) -> None:
    ids = an.slots.get(node.input[0])
    pads = an.inits.get(node.input[1]) if len(node.input) > 1 else None
    if ids is not None:
        if pads is None or len(node.input) > 3 and node.input[3]:
            an.opaque(node, "has computed pads or axes")
            return
        values = numpy_helper.to_array(pads).tolist()
        rank = len(values) // 2
        if values[1] or values[rank + 1]:
            an.opaque(node, "pads the channel axis")
            return
    an.slots[node.output[0]] = ids


def analyze(model: onnx.ModelProto, protect_first: bool = True,
            exclude: tuple[str, ...] | list[str] = ()) -> DependencyGraph:
    """Find the channel dependency groups of a model.

    Args:
        model: a loaded model (shapes inferred, as `fwedge.ir.load` returns it).
        protect_first: keep the output channels of the first Conv.
        exclude: node names whose output channels must be kept.

    Returns:
        The DependencyGraph: groups with their prunable and blocked channels.

    Raises:
        PruneError: an excluded name is not a node of the model.
    """
    names = {node.name for node in model.graph.node} | {node.output[0] for node in model.graph.node}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise PruneError(f"--exclude: no node named {unknown} in the model")
    shaped = ir.with_batch_one(model)
    return _Analyzer(shaped, protect_first, set(exclude)).run()

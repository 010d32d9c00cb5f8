"""Cross-layer equalization: even out per-channel weight ranges across Conv/Gemm pairs (Nagel et al. 2019).

Data-Free Quantization (Nagel, van Baalen, Blankevoort, Welling, ICCV 2019), section 4.1: for
y = W2 f(W1 x + b1) with f positively homogeneous per channel (f(x / s) = f(x) / s for s > 0),
scaling output channel i of W1 and b1 by 1/s_i and input channel i of W2 by s_i leaves y
unchanged. With s_i = sqrt(r1_i / r2_i) (r = max |w| of the channel, the symmetric int8 weight
range) both channels end with the range sqrt(r1_i r2_i), so one per-tensor weight scale no
longer has to cover a few wide channels at the cost of the narrow ones.

f here is a chain of Relu, MaxPool, GlobalAveragePool / GlobalMaxPool and ReduceMean over spatial
axes (each commutes with a positive per-channel scale and keeps the channel axis), or nothing.
Clip(0, 6) (ReLU6) does not: Clip(x / s, 0, 6) = Clip(x, 0, 6 s) / s, and an ONNX Clip takes one
scalar bound, so a pair joined by a Clip is left alone. Only on request (`relu6_as_relu`,
`quantize --equalize --relu6-as-relu`) is a Clip(0, hi) inside a pair replaced
by Relu, which changes the float model wherever a value exceeded hi.

After f, at most one Flatten (axis 1) or Reshape to [N, C*H*W] of a static shape may lead into a
Gemm/MatMul: column c*H*W + k of the flattened input reads channel c, so the H*W rows of the
weight that read it are scaled by s_c and r2_c is their range. The second layer may be a grouped
Conv: channel i feeds group i // (C/g), input slot i % (C/g) of that group's filters, and only
those are scaled.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.op_info import attribute

log = logging.getLogger(__name__)

# Ops between the two layers that commute with a positive per-channel scale and keep the channel
# axis (a mean or max per channel, or elementwise); after a Flatten only Relu (elementwise) may follow.
HOMOGENEOUS = ("Relu", "MaxPool", "GlobalAveragePool", "GlobalMaxPool")
# One step's scale is clamped to [1/MAX_SCALE, MAX_SCALE]: a channel whose weights are all
# (nearly) zero on one side would otherwise be blown up or crushed to nothing.
MAX_SCALE = 16.0
# Passes over all pairs; the scales of a chain converge in a few (a pair shares its layers with
# its neighbours, so each pass undoes part of the last). Stop when every scale is within TOLERANCE of 1.
ITERATIONS = 20
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Pair:
    """Two layers to equalize: `first`'s output channels feed `second`'s input channels one to one.

    Attributes:
        first: node name of the Conv/Gemm whose output channels are scaled by 1/s.
        second: node name of the Conv/Gemm whose input channels are scaled by s.
        first_axis: output channel axis of first's weight.
        second_axis: input channel axis of second's weight.
        clips: node names of the Clip(0, hi) nodes between them (only with relu6_as_relu).
        second_groups: second's Conv group when grouped (1 < group, not one filter per channel):
            channel i is input slot i % (C/g) of the filters of group i // (C/g) only.
        second_span: consecutive entries of second_axis that read one channel (H*W of a Flatten).
    """

    first: str
    second: str
    first_axis: int
    second_axis: int
    clips: tuple[str, ...] = ()
    second_groups: int = 1
    second_span: int = 1


def _output_axis(node: onnx.NodeProto) -> int | None:
    """Output channel axis of a Conv/Gemm weight (None: not a layer this pass scales)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm" and not attribute(node, "transA", 0):
        return 0 if attribute(node, "transB", 0) else 1
    return None


def _second_layout(node: onnx.NodeProto, weight: np.ndarray, channels: int, span: int | None,
                   rank: int | None) -> tuple[int, int, int] | None:
    """(input channel axis, groups, span) of `weight` for a second layer reading `channels`
    channels (flattened `span` columns each when span is set; `rank`: its input's rank), or None."""
    if node.op_type in ("Gemm", "MatMul") and weight.ndim == 2 and not attribute(node, "transA", 0):
        if node.op_type == "MatMul" and rank != 2:
            return None  # a MatMul on [N, C, H, W] contracts W, not the channels
        axis = 1 if attribute(node, "transB", 0) else 0
        return (axis, 1, span or 1) if weight.shape[axis] == channels * (span or 1) else None
    if node.op_type != "Conv" or weight.ndim < 3 or span is not None:
        return None
    group = attribute(node, "group", 1)
    if group == 1 and weight.shape[1] == channels:
        return 1, 1, 1
    if group == channels and weight.shape[0] == channels and weight.shape[1] == 1:
        return 0, 1, 1  # depthwise, multiplier 1: input channel i is filter i
    if channels % group == 0 and weight.shape[1] * group == channels and weight.shape[0] % group == 0:
        return 1, group, 1
    return None


def _is_relu6(node: onnx.NodeProto, inits: dict) -> bool:
    """A Clip whose lower bound is 0 (opset 11+: a constant input; before: the min attribute)."""
    if node.op_type != "Clip":
        return False
    if len(node.input) < 2 or not node.input[1]:
        return attribute(node, "min", None) == 0
    low = inits.get(node.input[1])
    return low is not None and numpy_helper.to_array(low).size == 1 and float(numpy_helper.to_array(low)) == 0


def _readers(graph: onnx.GraphProto) -> Counter:
    counts: Counter = Counter(name for node in graph.node for name in node.input if name)
    counts.update(output.name for output in graph.output)
    return counts


def _first_layer_axis(node: onnx.NodeProto, inits: dict, readers: Counter, named: Counter) -> int | None:
    """Output channel axis of a layer whose weight and bias only it reads (None: not scalable)."""
    axis = _output_axis(node)
    if axis is None or not node.name or named[node.name] > 1 or len(node.input) < 2:
        return None
    for name in node.input[1:3]:
        if name and (name not in inits or readers[name] != 1):
            return None
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias and int(np.prod(inits[bias].dims)) != inits[node.input[1]].dims[axis]:
        return None  # a broadcast Gemm bias
    return axis


def _joins(node: onnx.NodeProto, inits: dict, named: Counter, relu6_as_relu: bool) -> bool:
    """Whether `node` may sit between the two layers (one output, positively homogeneous)."""
    if len([name for name in node.output if name]) != 1:
        return False
    if node.op_type in HOMOGENEOUS:
        return True
    return relu6_as_relu and bool(node.name) and named[node.name] == 1 and _is_relu6(node, inits)


def _spatial_mean(node: onnx.NodeProto, inits: dict, shapes: dict) -> bool:
    """A ReduceMean over spatial axes only (axes an attribute, or from opset 18 a constant input)."""
    if node.op_type != "ReduceMean" or len(node.output) != 1:
        return False
    rank = len(shapes.get(node.input[0]) or [])
    axes = attribute(node, "axes", None)
    if len(node.input) > 1 and node.input[1]:
        axes = numpy_helper.to_array(inits[node.input[1]]).tolist() if node.input[1] in inits else None
    if not rank or not axes:
        return False
    return all(2 <= (axis % rank) for axis in axes)


def _flatten_span(node: onnx.NodeProto, inits: dict, shapes: dict, channels: int) -> int | None:
    """H*W when `node` flattens a static [N, C, H, W] (any trailing dims) to [N, C*H*W]: a Flatten
    of axis 1, or a Reshape to a constant [0 | -1 | N, C*H*W | -1]; otherwise None."""
    shape = shapes.get(node.input[0]) if node.input else None
    if node.op_type not in ("Flatten", "Reshape") or not shape or len(shape) < 2 or shape[1] != channels:
        return None
    if not all(isinstance(dim, int) for dim in shape[1:]) or len(node.output) != 1:
        return None
    span = int(np.prod(shape[2:], dtype=np.int64))
    if node.op_type == "Flatten":
        return span if attribute(node, "axis", 1) in (1, 1 - len(shape)) else None
    if len(node.input) < 2 or node.input[1] not in inits or attribute(node, "allowzero", 0):
        return None
    target = numpy_helper.to_array(inits[node.input[1]]).tolist()
    if len(target) != 2:
        return None
    batch, columns = target
    if columns == channels * span and (batch in (0, -1) or batch == shape[0]):
        return span
    return span if columns == -1 and (batch == 0 or batch == shape[0]) else None


@dataclass
class _Path:
    """Where the ops after a first layer lead: the node reading `tensor`, the Clips passed, and
    the columns per channel after a Flatten (None: not flattened)."""

    second: onnx.NodeProto | None
    tensor: str
    clips: list[str]
    span: int | None


def _follow(node: onnx.NodeProto, channels: int, consumers: dict, inits: dict, shapes: dict, named: Counter,
            relu6_as_relu: bool) -> _Path:
    """Walk from `node`'s output through the ops that may sit between two layers."""
    path = _Path(consumers.get(node.output[0]), node.output[0], [], None)
    while path.second is not None:
        step = path.second
        span = _flatten_span(step, inits, shapes, channels) if path.span is None else None
        if span is not None:
            path.span = span
        elif not _joins(step, inits, named, relu6_as_relu) and not _spatial_mean(step, inits, shapes):
            break
        elif path.span is not None and step.op_type not in ("Relu", "Clip"):
            break  # after the Flatten only elementwise ops keep column c*H*W + k on channel c
        path.clips += [step.name] if step.op_type == "Clip" else []
        path.tensor, path.second = step.output[0], consumers.get(step.output[0])
    return path


def _shapes(model: onnx.ModelProto) -> dict:
    """Every value's shape, inferred (a hand-built or prepared graph may lack value_info)."""
    return ir.value_shapes(onnx.shape_inference.infer_shapes(model))


def find_pairs(model: onnx.ModelProto, relu6_as_relu: bool = False) -> list[Pair]:
    """The layer pairs of `model` that equalization may scale, in graph order.

    A pair is Conv/Gemm -> (Relu | MaxPool | GlobalAveragePool | spatial ReduceMean)* ->
    [Flatten | Reshape -> Relu*] -> Conv/Gemm/MatMul where every tensor in between has that one
    reader and is not a graph output, both weights (and the first's bias) are initializers no
    other node reads, and the second layer reads the channels one to one (group 1, depthwise with
    one filter per channel, or Gemm), per group (a grouped Conv), or H*W columns each after a
    Flatten of a static shape. With `relu6_as_relu`, Clip(0, hi) counts as a Relu (the pair
    records it).
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers = _readers(graph)
    consumers = {name: node for node in graph.node for name in node.input if name and readers[name] == 1}
    named = Counter(node.name for node in graph.node)
    shapes = _shapes(model)
    pairs = []
    for node in graph.node:
        axis = _first_layer_axis(node, inits, readers, named)
        if axis is None:
            continue
        channels = inits[node.input[1]].dims[axis]
        path = _follow(node, channels, consumers, inits, shapes, named, relu6_as_relu)
        second = path.second
        if second is None or second.input[0] != path.tensor or len(second.input) < 2 or named[second.name] > 1:
            continue
        weight_name = second.input[1]
        if weight_name not in inits or readers[weight_name] != 1 or weight_name == node.input[1]:
            continue
        layout = _second_layout(second, numpy_helper.to_array(inits[weight_name]), channels, path.span,
                                len(shapes.get(path.tensor) or []) or None)
        if layout is not None:
            pairs.append(Pair(node.name, second.name, axis, layout[0], tuple(path.clips), layout[1], layout[2]))
    return pairs


def _channel_range(weight: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per channel along `axis`."""
    return np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)


def _second_channels(pair: Pair, shape: tuple[int, ...]) -> np.ndarray:
    """For each entry of the second layer's weight (an index array that broadcasts to `shape`),
    the first layer's output channel it reads."""
    if pair.second_groups > 1:
        filters, slots = shape[0], shape[1]
        group_of_filter = np.arange(filters) // (filters // pair.second_groups)
        index = group_of_filter[:, None] * slots + np.arange(slots)[None, :]
        return index.reshape(index.shape + (1,) * (len(shape) - 2))
    index_shape = [1] * len(shape)
    index_shape[pair.second_axis] = shape[pair.second_axis]
    return (np.arange(shape[pair.second_axis]) // pair.second_span).reshape(index_shape)


def _broadcast(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def _step(pair: Pair, nodes: dict, arrays: dict) -> float:
    """Equalize one pair in `arrays` (name -> float64 weights); returns the largest |log s|."""
    first, second = nodes[pair.first], nodes[pair.second]
    w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
    r1, channel = _channel_range(w1, pair.first_axis), _second_channels(pair, w2.shape)
    r2 = np.zeros_like(r1)
    np.maximum.at(r2, np.broadcast_to(channel, w2.shape).ravel(), np.abs(w2).ravel())
    scale = np.ones_like(r1)
    live = (r1 > 0) & (r2 > 0)
    scale[live] = np.sqrt(r1[live] / r2[live])
    scale = np.clip(scale, 1 / MAX_SCALE, MAX_SCALE)
    arrays[first.input[1]] = w1 / _broadcast(scale, w1.ndim, pair.first_axis)
    if len(first.input) > 2 and first.input[2]:
        bias = arrays[first.input[2]]
        arrays[first.input[2]] = bias / scale.reshape(bias.shape)
    arrays[second.input[1]] = w2 * scale[channel]
    return float(np.abs(np.log(scale)).max(initial=0.0))


def _clips_as_relu(graph: onnx.GraphProto, names: set[str]) -> None:
    """Turn the named Clip nodes into Relu (their bounds dropped, unused constants removed)."""
    if not names:
        return
    for node in graph.node:
        if node.name in names:
            node.op_type = "Relu"
            del node.input[1:]
            del node.attribute[:]
    ir.drop_unused_initializers(graph)


def equalize(model: onnx.ModelProto, iterations: int = ITERATIONS,
             relu6_as_relu: bool = False) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every pair of find_pairs equalized, and the number of pairs.

    The pairs are swept in graph order until no scale moves more than TOLERANCE (or `iterations`
    sweeps): Nagel et al. iterate to convergence, as a layer between two pairs is rescaled by
    both. The float function is unchanged up to float32 rounding; node and tensor names, the op
    sequence and the initializers' names and dtypes are kept. Apply it after BN folding (a BN
    between the layers hides the pair) and before calibration (activation ranges move).

    Args:
        model: a float ONNX model.
        iterations: at most this many sweeps over the pairs (0: none, for a control run).
        relu6_as_relu: also pair layers joined by Clip(0, hi), replacing those Clips by Relu: the
            float model changes (values above hi are no longer clipped); off by default.

    Returns:
        (the equalized model, the number of pairs equalized); the input is not modified.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = find_pairs(out, relu6_as_relu)
    if not pairs:
        return out, 0
    graph = out.graph
    _clips_as_relu(graph, {clip for pair in pairs for clip in pair.clips})
    nodes = {node.name: node for node in graph.node}
    inits = {init.name: init for init in graph.initializer}
    bias_of = lambda node: [node.input[2]] if len(node.input) > 2 and node.input[2] else []  # noqa: E731
    names = {name for pair in pairs for name in (nodes[pair.first].input[1], nodes[pair.second].input[1],
                                                  *bias_of(nodes[pair.first]))}
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64) for name in names}
    sweeps, moved = 0, 0.0
    while sweeps < iterations:
        moved, sweeps = max(_step(pair, nodes, arrays) for pair in pairs), sweeps + 1
        if moved < TOLERANCE:
            break
    log.info("cross-layer equalization: %d pairs, %d sweeps, last largest |log s| %.2g", len(pairs), sweeps, moved)
    for name, array in arrays.items():
        dtype = numpy_helper.to_array(inits[name]).dtype
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(dtype), name))
    return out, len(pairs)

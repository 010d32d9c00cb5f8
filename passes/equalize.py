"""Cross-layer equalization: even out per-channel weight ranges across Conv/Gemm pairs (Nagel et al. 2019).

Data-Free Quantization (Nagel, van Baalen, Blankevoort, Welling, ICCV 2019), section 4.1: for
y = W2 f(W1 x + b1) with f positively homogeneous per channel (f(x / s) = f(x) / s for s > 0),
scaling output channel i of W1 and b1 by 1/s_i and input channel i of W2 by s_i leaves y
unchanged. With s_i = sqrt(r1_i / r2_i) (r = max |w| of the channel, the symmetric int8 weight
range) both channels end with the range sqrt(r1_i r2_i), so one per-tensor weight scale no
longer has to cover a few wide channels at the cost of the narrow ones.

f here is a chain of Relu and MaxPool (both commute with a positive per-channel scale), or
nothing. Clip(0, 6) (ReLU6) does not: Clip(x / s, 0, 6) = Clip(x, 0, 6 s) / s, and an ONNX Clip
takes one scalar bound, so a pair joined by a Clip is left alone. Only on request
(`relu6_as_relu`, `quantize --equalize --relu6-as-relu`) is a Clip(0, hi) inside a pair replaced
by Relu, which changes the float model wherever a value exceeded hi.
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

# Ops between the two layers that commute with a positive per-channel scale.
HOMOGENEOUS = ("Relu", "MaxPool")
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
    """

    first: str
    second: str
    first_axis: int
    second_axis: int
    clips: tuple[str, ...] = ()


def _output_axis(node: onnx.NodeProto) -> int | None:
    """Output channel axis of a Conv/Gemm weight (None: not a layer this pass scales)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm" and not attribute(node, "transA", 0):
        return 0 if attribute(node, "transB", 0) else 1
    return None


def _input_axis(node: onnx.NodeProto, weight: np.ndarray, channels: int) -> int | None:
    """Axis of `weight` that reads the input's channels one to one (None: grouped or not a layer)."""
    if node.op_type == "Gemm" and not attribute(node, "transA", 0):
        axis = 1 if attribute(node, "transB", 0) else 0
        return axis if weight.ndim == 2 and weight.shape[axis] == channels else None
    if node.op_type != "Conv" or weight.ndim < 3:
        return None
    group = attribute(node, "group", 1)
    if group == 1 and weight.shape[1] == channels:
        return 1
    if group == channels and weight.shape[0] == channels and weight.shape[1] == 1:
        return 0  # depthwise, multiplier 1: input channel i is filter i
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


def find_pairs(model: onnx.ModelProto, relu6_as_relu: bool = False) -> list[Pair]:
    """The layer pairs of `model` that equalization may scale, in graph order.

    A pair is Conv/Gemm -> (Relu | MaxPool)* -> Conv/Gemm where every tensor in between has that
    one reader and is not a graph output, both weights (and the first's bias) are initializers
    no other node reads, and the second layer reads the channels one to one (group 1, depthwise
    with one filter per channel, or Gemm). With `relu6_as_relu`, Clip(0, hi) counts as a Relu
    (the pair records it).
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers = _readers(graph)
    consumers = {name: node for node in graph.node for name in node.input if name and readers[name] == 1}
    named = Counter(node.name for node in graph.node)
    pairs = []
    for node in graph.node:
        axis = _first_layer_axis(node, inits, readers, named)
        if axis is None:
            continue
        channels = inits[node.input[1]].dims[axis]
        tensor, second, clips = node.output[0], consumers.get(node.output[0]), []
        while second is not None and _joins(second, inits, named, relu6_as_relu):
            clips += [second.name] if second.op_type == "Clip" else []
            tensor, second = second.output[0], consumers.get(second.output[0])
        if second is None or second.input[0] != tensor or len(second.input) < 2 or named[second.name] > 1:
            continue
        weight_name = second.input[1]
        if weight_name not in inits or readers[weight_name] != 1 or weight_name == node.input[1]:
            continue
        second_axis = _input_axis(second, numpy_helper.to_array(inits[weight_name]), channels)
        if second_axis is not None:
            pairs.append(Pair(node.name, second.name, axis, second_axis, tuple(clips)))
    return pairs


def _channel_range(weight: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per channel along `axis`."""
    return np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)


def _broadcast(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def _step(pair: Pair, nodes: dict, arrays: dict) -> float:
    """Equalize one pair in `arrays` (name -> float64 weights); returns the largest |log s|."""
    first, second = nodes[pair.first], nodes[pair.second]
    w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
    r1, r2 = _channel_range(w1, pair.first_axis), _channel_range(w2, pair.second_axis)
    scale = np.ones_like(r1)
    live = (r1 > 0) & (r2 > 0)
    scale[live] = np.sqrt(r1[live] / r2[live])
    scale = np.clip(scale, 1 / MAX_SCALE, MAX_SCALE)
    arrays[first.input[1]] = w1 / _broadcast(scale, w1.ndim, pair.first_axis)
    if len(first.input) > 2 and first.input[2]:
        bias = arrays[first.input[2]]
        arrays[first.input[2]] = bias / scale.reshape(bias.shape)
    arrays[second.input[1]] = w2 * _broadcast(scale, w2.ndim, pair.second_axis)
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

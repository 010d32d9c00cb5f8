"""Fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm (inference form)."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.op_info import OP_INFO, attribute

log = logging.getLogger(__name__)

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


def _consumers(graph: onnx.GraphProto) -> Counter:
    counts: Counter = Counter()
    for node in graph.node:
        for name in node.input:
            counts[name] += 1
    for output in graph.output:
        counts[output.name] += 1
    return counts


def _foldable_producer(bn: onnx.NodeProto, producers: dict, consumers: Counter, inits: dict) -> onnx.NodeProto | None:
    """The Conv/ConvTranspose/Gemm this BN folds into, or None when it cannot fold."""
    if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
        return None
    producer = producers.get(bn.input[0])
    if producer is None or producer.op_type not in _FOLDABLE or consumers[bn.input[0]] != 1:
        return None
    if any(name not in inits for name in bn.input[1:5]):
        return None
    if producer.input[OP_INFO[producer.op_type].weight_input] not in inits:
        return None
    if producer.op_type == "Gemm" and (
        attribute(producer, "transA", 0) or attribute(producer, "alpha", 1.0) != 1.0
        or attribute(producer, "beta", 1.0) != 1.0
    ):
        return None
    if producer.op_type == "ConvTranspose" and attribute(producer, "group", 1) != 1:
        return None
    return producer


def _fold_one(bn: onnx.NodeProto, producer: onnx.NodeProto, inits: dict, replaced: dict,
              new_inits: list) -> bool:
    """Scale the producer's weight and bias by the BN's affine map; False when shapes disagree."""
    info = OP_INFO[producer.op_type]
    weight_name = producer.input[info.weight_input]
    gamma, beta, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
    epsilon = attribute(bn, "epsilon", 1e-5)
    a = gamma / np.sqrt(var + epsilon)
    b = beta - a * mean
    weight = numpy_helper.to_array(replaced.get(weight_name, inits[weight_name])).astype(np.float64)
    axis = info.out_channel_axis
    if producer.op_type == "Gemm" and not attribute(producer, "transB", 0):
        axis = 1
    if weight.shape[axis] != a.size:
        return False
    shape = [1] * weight.ndim
    shape[axis] = a.size
    weight = weight * a.reshape(shape)
    bias_index = info.bias_input
    has_bias = len(producer.input) > bias_index and producer.input[bias_index] != ""
    bias = (
        numpy_helper.to_array(inits[producer.input[bias_index]]).astype(np.float64)
        if has_bias and producer.input[bias_index] in inits else None
    )
    if has_bias and bias is None:
        return False
    bias = a * (bias if bias is not None else 0.0) + b
    dtype = numpy_helper.to_array(inits[weight_name]).dtype
    replaced[weight_name] = numpy_helper.from_array(weight.astype(dtype), weight_name)
    bias_name = producer.input[bias_index] if has_bias else f"{producer.name or weight_name}_bias"
    new_bias = numpy_helper.from_array(bias.astype(dtype), bias_name)
    if has_bias:
        replaced[bias_name] = new_bias
    else:
        new_inits.append(new_bias)
        while len(producer.input) <= bias_index:
            producer.input.append("")
        producer.input[bias_index] = bias_name
    producer.output[0] = bn.output[0]
    return True


def _drop_folded(graph: onnx.GraphProto, removed: set[int], inits: dict, replaced: dict, new_inits: list,
                 producers: dict) -> None:
    """Remove the folded BNs and the initializers, inputs and value_info that went with them."""
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    used = ir.read_names(graph)
    initializers = [replaced.get(init.name, init) for init in graph.initializer if init.name in used] + new_inits
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # Inputs listed for old IR versions must not name initializers that are gone.
    live = {init.name for init in graph.initializer}
    all_inits = set(inits)
    kept_inputs = [value for value in graph.input if value.name not in all_inits or value.name in live]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    stale = {node_output for node_output in producers if node_output not in {o for n in graph.node for o in n.output}}
    kept_info = [value for value in graph.value_info if value.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every foldable BatchNormalization merged into its producer.

    BN computes y = gamma * (x - mean) / sqrt(var + eps) + beta, an affine map per channel
    c: y = a_c * x + b_c. Folding scales the producer's output-channel weights by a_c and sets
    its bias to a_c * bias + b_c. The producer takes over the BN's output name and keeps its own
    node name, so downstream tensor names are unchanged.

    A BN is folded only when its producer is a Conv/ConvTranspose (group 1 for ConvTranspose) or
    a Gemm (transA=0, alpha=1, beta=1) with constant weights, that producer's output feeds this
    BN and nothing else, and the BN's parameters are constants. Other BNs are left as they are.

    Returns:
        The new model (the input is not modified).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    consumers = _consumers(graph)
    removed: set[int] = set()
    replaced: dict[str, onnx.TensorProto] = {}
    new_inits: list[onnx.TensorProto] = []
    for bn in graph.node:
        producer = _foldable_producer(bn, producers, consumers, inits)
        if producer is not None and _fold_one(bn, producer, inits, replaced, new_inits):
            removed.add(id(bn))
    if not removed:
        return out
    _drop_folded(graph, removed, inits, replaced, new_inits, producers)
    log.info("folded %d BatchNormalization node(s)", len(removed))
    return out

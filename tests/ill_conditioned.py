"""An ill-conditioned, function-preserving variant of an example model: per-tensor int8 collapses on it.

EfficientNet-Lite0's int8 agrees with float on a third of the images or less because, after BN
folding, its depthwise weights' per-output-channel ranges differ by orders of magnitude, so one
per-tensor weight scale rounds most channels to zero. EfficientNet-Lite is not on PyPI; this
builds the same property into a real-data model by the inverse of cross-layer equalization:
output channel k of each depthwise Conv (weights and bias) is multiplied by s_k and input
channel k of the Conv after it by 1 / s_k, across the Relu between (Relu(s x) = s Relu(x) for
s > 0), so the float function is unchanged up to float32 rounding. s_k = 10^u, u ~ U(-decades,
decades), seeded.

mobilenet_v2_tiny's layers are joined by ReLU6, which does not commute with a scale, so the base
is its `--relu6-as-relu` float variant (passes/equalize.py with no sweeps: the Clips inside the
equalizable pairs become Relu, 92.35% top-1 against 92.37%); the variant is compared with that.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge.passes.equalize import equalize, find_pairs
from fwedge.quantization.prepare import load_prepared

DECADES = 2.0


def relu_base(path) -> onnx.ModelProto:
    """`path` BN-folded, with the ReLU6 inside every equalizable pair as Relu (not yet scaled)."""
    return equalize(load_prepared(str(path))[0], iterations=0, relu6_as_relu=True)[0]


def ill_conditioned(model: onnx.ModelProto, seed: int = 0, decades: float = DECADES) -> tuple[onnx.ModelProto, list[str]]:
    """(a copy of `model` with every depthwise -> Relu -> Conv pair scaled apart, the depthwise
    Convs' node names). `model` must be BN-folded and joined by Relu (relu_base)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    nodes = {node.name: node for node in out.graph.node}
    inits = {init.name: init for init in out.graph.initializer}
    scaled = []
    for pair in find_pairs(out):
        first, second = nodes[pair.first], nodes[pair.second]
        w1 = numpy_helper.to_array(inits[first.input[1]]).astype(np.float64)
        group = next((a.i for a in first.attribute if a.name == "group"), 1)
        if first.op_type != "Conv" or group == 1 or group != w1.shape[0] or pair.second_groups != 1 \
                or pair.second_span != 1 or pair.clips:
            continue
        s = 10.0 ** rng.uniform(-decades, decades, w1.shape[0])
        _set(inits[first.input[1]], w1 * s.reshape(-1, 1, 1, 1))
        bias = inits[first.input[2]]
        _set(bias, numpy_helper.to_array(bias).astype(np.float64) * s)
        w2 = numpy_helper.to_array(inits[second.input[1]]).astype(np.float64)
        shape = [1] * w2.ndim
        shape[pair.second_axis] = s.size
        _set(inits[second.input[1]], w2 / s.reshape(shape))
        scaled.append(first.name)
    return out, scaled


def _set(init: onnx.TensorProto, array: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))

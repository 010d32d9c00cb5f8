"""ConvTranspose whose kernel equals its stride, as a 1x1 Conv followed by DepthToSpace.

With kernel == stride, no padding, no dilation, one group and no output padding, every output
pixel (iy * k + ky, ix * k + kx) of channel co takes exactly one input pixel:

    y[co, iy*k + ky, ix*k + kx] = b[co] + sum_ci x[ci, iy, ix] * W[ci, co, ky, kx]

That is a 1x1 convolution to k*k*C_out channels, channel (ky*k + kx)*C_out + co holding W[:, co,
ky, kx] and bias b[co], then DepthToSpace(blocksize k, mode DCR), a pure rearrangement. It is
the upsampling of PP-OCR det's DB head (2x2 stride 2) and of U-Net decoders. Every target has
both (tflite CONV_2D + DEPTH_TO_SPACE, ncnn Convolution + PixelShuffle, the C runtime's conv
and fw_depth_to_space_nhwc), so the int8 ConvTranspose is an int8 conv whose per-channel
scales are per (co, ky, kx). The rewrite is exact in real arithmetic; in float32 only the
summation order may differ from a direct ConvTranspose.

Other ConvTransposes (overlapping kernels, pads, groups) are left as they are; the lowering then
names the node and why (fwedge/ops/conv.py).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir
from fwedge.ops.base import attribute
from fwedge.ops.conv import conv_transpose_problem


def conv_weight(weight: np.ndarray) -> np.ndarray:
    """The 1x1 Conv weight [k*k*C_out, C_in, 1, 1] of a ConvTranspose weight [C_in, C_out, k, k]:
    output channel (ky*k + kx)*C_out + co (DepthToSpace DCR order). Float or integer data."""
    c_in, c_out, k, _ = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(k * k * c_out, c_in, 1, 1))


def _tiled(array: np.ndarray, k: int, channel_shape: int) -> np.ndarray:
    """A per-output-channel array (scale, zero point or bias of C_out entries) for the k*k*C_out
    channels of the 1x1 Conv; a scalar (per-tensor) stays as it is."""
    return np.tile(array, k * k) if array.ndim == 1 and array.size == channel_shape else array


_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")


class _Rewriter:
    """Rewrites one graph's ConvTransposes. A weight or bias is a float initializer or the
    DequantizeLinear of an int8/int32 initializer (a QDQ model from another quantizer): its data
    is rearranged the same way and per-channel scales are tiled; the old DequantizeLinear goes
    when nothing else reads it."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = ir.initializer_map(model)
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.consumers = ir.consumer_map(model)
        self.outputs = {value.name for value in self.graph.output}
        self.moved: set[str] = set()  # outputs of the activations moved before a DepthToSpace
        self.dropped: set[str] = set()  # outputs of the DequantizeLinears replaced
        self.dequantizers: list[onnx.NodeProto] = []  # of the new weights and biases

    def source(self, name: str) -> tuple[np.ndarray, onnx.NodeProto | None] | None:
        """(the stored array, its DequantizeLinear or None) of a constant input, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name]), None
        dq = self.producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or any(i and i not in self.inits for i in dq.input):
            return None
        return numpy_helper.to_array(self.inits[dq.input[0]]), dq

    def constant(self, name: str, data: np.ndarray, found, k: int, c_out: int) -> str:
        """The new constant `name`: `data` as it is (float) or behind a new DequantizeLinear."""
        _, dq = found
        self.graph.initializer.append(numpy_helper.from_array(data, name if dq is None else f"{name}_quantized"))
        if dq is None:
            return name
        inputs = [f"{name}_quantized"]
        for index, suffix in ((1, "scale"), (2, "zero_point")):
            if len(dq.input) > index and dq.input[index]:
                value = _tiled(numpy_helper.to_array(self.inits[dq.input[index]]), k, c_out)
                self.graph.initializer.append(numpy_helper.from_array(value, f"{name}_{suffix}"))
                inputs.append(f"{name}_{suffix}")
        self.dequantizers.append(helper.make_node("DequantizeLinear", inputs, [name], name=f"{name}_dequantize",
                                                axis=0))
        self.dropped.add(dq.output[0])
        return name

    def rewrite(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The Conv and DepthToSpace nodes replacing `node`, or None to keep it."""
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            return None
        weight = self.source(node.input[1])
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        bias = self.source(bias_name) if bias_name else None
        if weight is None or (bias_name and bias is None):
            return None
        if conv_transpose_problem(node, weight[0]) is not None:
            return None
        c_in, c_out, k, _ = weight[0].shape
        dq = weight[1]
        if dq is not None and np.size(numpy_helper.to_array(self.inits[dq.input[1]])) > 1 and int(
                attribute(dq, "axis", 1)) != 1:
            return None  # scales along an axis other than C_out: no per-channel 1x1 Conv form
        conv_w = conv_weight(weight[0])
        base = node.name or node.output[0]
        inputs = [node.input[0], self.constant(f"{base}_conv_weight", conv_w, weight, k, c_out)]
        if bias is not None:
            inputs.append(self.constant(f"{base}_conv_bias", _tiled(bias[0], k, c_out), bias, k, c_out))
        middle = f"{node.output[0]}_space_to_depth"
        nodes = [helper.make_node("Conv", inputs, [middle], name=f"{base}_conv", kernel_shape=[1, 1])]
        output = node.output[0]
        activation = self.sole_activation(output)
        if activation is not None:
            # An element-wise activation commutes with a rearrangement: it moves before
            # DepthToSpace, next to the Conv, where quantization fuses it into the Conv's range.
            moved = onnx.NodeProto()
            moved.CopyFrom(activation)
            moved.input[0] = middle
            moved.output[0] = middle = f"{activation.output[0]}_space_to_depth"
            nodes.append(moved)
            self.moved.add(activation.output[0])
            output = activation.output[0]
        quantizer = self.output_quantizer(output)
        if quantizer is not None:
            # The quantized ConvTranspose output: the Conv's output gets the same Q/DQ pair, so the
            # Conv is int8 and DepthToSpace moves int8 values (exact: it only rearranges).
            nodes += [helper.make_node("QuantizeLinear", [middle, *quantizer.input[1:]], [f"{middle}_quantized"],
                                       name=f"{base}_conv_quantize"),
                      helper.make_node("DequantizeLinear", [f"{middle}_quantized", *quantizer.input[1:]],
                                       [f"{middle}_dequantized"], name=f"{base}_conv_dequantize")]
            middle = f"{middle}_dequantized"
        nodes.append(helper.make_node("DepthToSpace", [middle], [output], name=base, blocksize=int(k), mode="DCR"))
        return nodes

    def sole_activation(self, name: str) -> onnx.NodeProto | None:
        """The element-wise activation that is the only reader of `name` (and not a graph output)."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or readers[0].op_type not in _ACTIVATIONS or readers[0].input[0] != name:
            return None
        if name in self.outputs or any(i and i not in self.inits for i in readers[0].input[1:]):
            return None
        return readers[0]

    def output_quantizer(self, name: str) -> onnx.NodeProto | None:
        """The per-tensor QuantizeLinear with constant parameters that reads `name`, if it is the only reader."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            return None
        quantizer = readers[0]
        params = [i for i in quantizer.input[1:] if i]
        if not params or any(i not in self.inits or numpy_helper.to_array(self.inits[i]).size != 1 for i in params):
            return None
        return quantizer


def conv_transpose_as_depth_to_space(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every rewritable ConvTranspose as Conv(1x1) + DepthToSpace(DCR).

    The ConvTranspose's output keeps its name (now DepthToSpace's); the Conv's output is
    `<output>_space_to_depth`. The graph stays topologically sorted: new DequantizeLinear nodes
    of the weights go first.
    """
    if not any(node.op_type == "ConvTranspose" for node in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(out)
    body = []
    for node in out.graph.node:
        if node.output and node.output[0] in rewriter.moved:
            continue
        body.extend(rewriter.rewrite(node) or [node])
    readers = {name for node in body for name in node.input}
    kept = [node for node in body if not (node.output and node.output[0] in rewriter.dropped and node.output[0] not in readers)]
    nodes = rewriter.dequantizers + kept
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    ir.drop_unused_initializers(out.graph)
    return out

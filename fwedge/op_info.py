"""Per-op facts in one place: pruning, quantization, lowering and every target read OP_INFO."""
from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class OpInfo:
    """What fwedge needs to know about one ONNX op type.

    Attributes:
        weight_input: input index of the weight tensor, if the op has one.
        bias_input: input index of the bias tensor, if the op has one.
        out_channel_axis: axis of the weight that indexes output channels.
        in_channel_axis: axis of the weight that indexes input channels.
        channel_passthrough: output channel c depends on input channel c only (BN, activations,
            pools, element-wise ops): channel pruning passes straight through.
        elementwise: the op combines several same-shaped inputs element by element.
        activation: an activation that can be fused into the producer's output range.
        quantize_output: quantization gives the op's output its own activation scale. False for
            ops that only move data (reshape, pools with max) and share the input's scale.
        shares_input_scale: the output must keep the input's scale and zero point (data movement).
        quantizable: int8 compute exists in the targets: QDQ insertion quantizes the op's float
            activation inputs, its weight (per channel), its bias (int32) and its output.
        clamps_range: a clamp (ReLU, Clip with constant bounds) that fuses into the producer's
            quantization range: no Q/DQ between the producer and it.
        channel_inputs: inputs holding one value per channel (BN scale, B, mean, var): channel
            pruning slices them along with the data.
    """

    weight_input: int | None = None
    bias_input: int | None = None
    out_channel_axis: int | None = None
    in_channel_axis: int | None = None
    channel_passthrough: bool = False
    elementwise: bool = False
    activation: bool = False
    quantize_output: bool = True
    shares_input_scale: bool = False
    quantizable: bool = False
    clamps_range: bool = False
    channel_inputs: tuple[int, ...] = ()


_ACTIVATION = OpInfo(channel_passthrough=True, activation=True, quantizable=True)
_CLAMP = OpInfo(channel_passthrough=True, activation=True, quantizable=True, clamps_range=True)
_ELEMENTWISE = OpInfo(channel_passthrough=True, elementwise=True)
_ELEMENTWISE_INT8 = OpInfo(channel_passthrough=True, elementwise=True, quantizable=True)
_MOVE = OpInfo(quantize_output=False, shares_input_scale=True)
_POOL = OpInfo(channel_passthrough=True, quantizable=True)

OP_INFO: dict[str, OpInfo] = {
    # Layers with weights. Conv weight is [M, C/group, kH, kW]; Gemm (transB=1) is [N, K].
    "Conv": OpInfo(weight_input=1, bias_input=2, out_channel_axis=0, in_channel_axis=1, quantizable=True),
    "ConvTranspose": OpInfo(weight_input=1, bias_input=2, out_channel_axis=1, in_channel_axis=0, quantizable=True),
    "Gemm": OpInfo(weight_input=1, bias_input=2, out_channel_axis=0, in_channel_axis=1, quantizable=True),
    "MatMul": OpInfo(weight_input=1, out_channel_axis=1, in_channel_axis=0, quantizable=True),
    "BatchNormalization": OpInfo(channel_passthrough=True, channel_inputs=(1, 2, 3, 4)),
    # Activations (fusable into the producer's requantization range).
    "Relu": _CLAMP,
    "Clip": _CLAMP,
    "LeakyRelu": _ACTIVATION,
    "Sigmoid": _ACTIVATION,
    "HardSigmoid": _ACTIVATION,
    "HardSwish": _ACTIVATION,
    "Tanh": _ACTIVATION,
    # Element-wise arithmetic.
    "Add": _ELEMENTWISE_INT8,
    "Sub": _ELEMENTWISE,
    "Mul": _ELEMENTWISE_INT8,
    "Div": _ELEMENTWISE,
    # Pools.
    "MaxPool": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
    "AveragePool": _POOL,
    "GlobalAveragePool": _POOL,
    "GlobalMaxPool": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
    "ReduceMean": OpInfo(channel_passthrough=True),
    # Data movement: the output keeps the input's quantization parameters.
    "Reshape": _MOVE,
    "Flatten": _MOVE,
    "Transpose": _MOVE,
    "Squeeze": _MOVE,
    "Unsqueeze": _MOVE,
    "Identity": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
    "Dropout": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
    "Pad": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
    "Slice": _MOVE,
    "Concat": OpInfo(quantizable=True),
    "Softmax": OpInfo(),
    "Resize": OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
}


def op_info(op_type: str) -> OpInfo | None:
    """The OpInfo for an op type, or None if fwedge knows nothing of it."""
    return OP_INFO.get(op_type)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value, or `default` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def node_macs(node: onnx.NodeProto, shapes: dict[str, list]) -> int | None:
    """Multiply-accumulates of one node from inferred shapes, or None if shapes are unknown.

    Conv: output elements × (C_in / group) × kernel area. Gemm/MatMul: M × K × N.
    """

    def static(name: str) -> list[int] | None:
        shape = shapes.get(name)
        if shape is None or any(not isinstance(d, int) for d in shape):
            return None
        return shape

    if node.op_type in ("Conv", "ConvTranspose"):
        weight = static(node.input[1])
        output = static(node.output[0])
        if weight is None or output is None:
            return None
        kernel = 1
        for size in weight[2:]:
            kernel *= size
        out_elements = 1
        for size in output[1:]:
            out_elements *= size
        if node.op_type == "Conv":
            return out_elements * weight[1] * kernel
        inputs = static(node.input[0])
        if inputs is None:
            return None
        in_elements = 1
        for size in inputs[1:]:
            in_elements *= size
        return in_elements * weight[1] * kernel
    if node.op_type in ("Gemm", "MatMul"):
        a = static(node.input[0])
        output = static(node.output[0])
        if a is None or output is None:
            return None
        k = a[0] if node.op_type == "Gemm" and attribute(node, "transA", 0) else a[-1]
        rows = 1
        for size in output[1:-1] if len(output) > 2 else []:
            rows *= size
        return rows * k * output[-1]
    return None


# ONNX op -> the lowered-graph kinds it can become (passes/lower.py; passes/lowered.py KINDS).
# An op absent here does not lower (TFLite, NCNN and C take only lowered graphs). Clip lowers
# only with constant bounds (0, 6) or (0, inf); Sub/Div only with a constant second operand.
LOWERING: dict[str, tuple[str, ...]] = {
    "Conv": ("conv2d", "depthwise_conv2d"),
    "Gemm": ("fully_connected",),
    "MatMul": ("fully_connected",),
    "Add": ("add",),
    "Sub": ("add",),
    "Mul": ("mul",),
    "Div": ("mul",),
    "AveragePool": ("avg_pool",),
    "MaxPool": ("max_pool",),
    "GlobalAveragePool": ("global_avg_pool",),
    "ReduceMean": ("global_avg_pool",),
    "Concat": ("concat",),
    "Reshape": ("reshape",),
    "Flatten": ("reshape",),
    "Squeeze": ("reshape",),
    "Unsqueeze": ("reshape",),
    "Identity": (),
    "Dropout": (),
    "Pad": ("pad",),
    "Relu": ("relu",),
    "Clip": ("relu", "relu6"),
    "HardSwish": ("hardswish",),
    "HardSigmoid": ("hardsigmoid",),
    "Sigmoid": ("sigmoid",),
    "Softmax": ("softmax",),
    "BatchNormalization": (),  # folded into the producer by passes/fold_bn.py before lowering
    "QuantizeLinear": ("quantize",),
    "DequantizeLinear": ("dequantize",),
}

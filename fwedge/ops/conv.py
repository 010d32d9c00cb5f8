"""Op card: layers with weights. Conv (conv2d, depthwise_conv2d), Gemm and MatMul
(fully_connected), and the BatchNormalization that passes/fold_bn.py folds into them. A MatMul of
two activations (attention's Q.K^T and P.V) is a batch_matmul: A [1, .., M, K] x B [1, .., K, N]
with equal leading dims, int8 with each input's own scale and zero point.

ConvTranspose is known (its weight axes guide pruning and BN folding). With kernel == stride it
never reaches the lowering: quantization's prepare and the lowering's rewrite it as a 1x1 Conv
and DepthToSpace first (passes/conv_transpose.py). Any other ConvTranspose has no lowering; its
check says why it was not rewritten.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx

from fwedge.lowered.build import (
    Builder, conv_geometry, dequantize_array, float_output, fused_activation, int8_operands, int8_output,
    note_float, output_quantizer, refuse, requant,
)
from fwedge.lowered.arith import activate, channel, convolve, requantize, zp
from fwedge.lowered.graph import BatchMatmulAttrs, ConvAttrs, FullyConnectedAttrs, LoweredOp, LoweredTensor, QuantParams
from fwedge.lowered.view import input_rank, is_const_dq, weight_value
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

log = logging.getLogger(__name__)


def _lower_conv(builder: Builder, node: onnx.NodeProto) -> None:
    X, W = node.input[0], node.input[1]
    B = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    activation, act_node = fused_activation(builder, node)
    last = act_node or node
    weight_shape = tuple(weight_value(builder.view, W).shape)
    groups = int(attribute(node, "group", 1))
    in_channels, out_channels = builder.shape(X)[1], weight_shape[0]
    depthwise = groups == in_channels and groups > 1 and weight_shape[1] == 1
    geometry = conv_geometry(builder, node, weight_shape)
    kind = "depthwise_conv2d" if depthwise else "conv2d"
    multiplier = out_channels // in_channels if depthwise else 1
    if act_node is not None:
        builder.done.add(id(act_node))
    x_q = builder.int8_input(X)
    w_q = builder.int8_input(W)
    quantizer = output_quantizer(builder, last.output[0]) if x_q is not None and w_q is not None else None
    if quantizer is not None and not (x_q.dtype == "int8" and w_q.dtype == "int8"
                                      and all(z == 0 for z in w_q.quant.zero_point)):
        quantizer = refuse(builder, node, "int8 conv needs int8 input and int8 weights with zero point 0")
    out = int8_output(builder, last) if quantizer is not None else None
    if out is not None:
        y_name, y_quant = out
        s_x = np.float64(x_q.quant.scale[0])
        s_w = np.broadcast_to(np.asarray(w_q.quant.scale, dtype=np.float64), (out_channels,))
        bias = _int32_bias(builder, node, B, s_x * s_w, out_channels)
        reals = s_x * s_w / np.float64(y_quant.scale[0])
        attrs = ConvAttrs(**geometry, groups=groups, depth_multiplier=multiplier, activation=activation,
                          requant=requant(reals, activation, y_quant))
        builder.emit(kind, node.name, [x_q.name, w_q.name, bias], [y_name], attrs)
        return
    note_float(builder, node)
    x = builder.float_input(X)
    w = builder.float_input(W)
    b = _float_bias(builder, node, B, out_channels)
    y = float_output(builder, last.output[0])
    attrs = ConvAttrs(**geometry, groups=groups, depth_multiplier=multiplier, activation=activation)
    builder.emit(kind, node.name, [x, w, b], [y], attrs)


def _int32_bias(builder: Builder, node: onnx.NodeProto, B: str, bias_scale: np.ndarray, channels: int) -> str:
    """The int32 bias of an int8 conv/FC: the DQ'd int32 constant, or a float bias quantized here."""
    bias_quant = QuantParams(tuple(float(s) for s in bias_scale), (0,) * channels, 0)
    if B:
        b_q = builder.int8_input(B)
        if b_q is not None and b_q.dtype == "int32":
            expected = np.float32(bias_scale)
            if not np.allclose(np.float32(b_q.quant.scale), expected, rtol=1e-6):
                log.warning("%s '%s': bias scale differs from s_x * s_w; requantizing the bias",
                            node.op_type, node.name)
            else:
                return b_q.name
        value = weight_value(builder.view, B)
        if b_q is not None:
            data, scale, zp, axis = builder.dq_const[builder.alias.get(B, B)]
            value = dequantize_array(data, scale, zp, axis)
        data = np.clip(np.round(value.astype(np.float64) / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
    else:
        data = np.zeros(channels, dtype=np.int32)
    name = builder.fresh(f"{node.name}_bias")
    return builder.add_tensor(LoweredTensor(name, (channels,), "int32", bias_quant, data))


def _float_bias(builder: Builder, node: onnx.NodeProto, B: str, channels: int) -> str:
    if B:
        return builder.float_input(B)
    name = builder.fresh(f"{node.name}_bias")
    return builder.add_tensor(LoweredTensor(name, (channels,), "float32", data=np.zeros(channels, np.float32)))


def _lower_fully_connected(builder: Builder, node: onnx.NodeProto) -> None:
    X, W = node.input[0], node.input[1]
    B = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else ""
    # ONNX Gemm with transB=0 and MatMul hold W as [K, N]; the lowered FC wants [N, K].
    transpose = node.op_type == "MatMul" or not attribute(node, "transB", 0)
    activation, act_node = fused_activation(builder, node)
    last = act_node or node
    if act_node is not None:
        builder.done.add(id(act_node))
    x_q = builder.int8_input(X)
    w_q = builder.int8_input(W)
    quantizer = output_quantizer(builder, last.output[0]) if x_q is not None and w_q is not None else None
    out_features = weight_value(builder.view, W).shape[1 if transpose else 0]
    if quantizer is not None:
        axis = w_q.quant.axis
        if axis is not None:
            axis = 1 - axis if transpose else axis
        if x_q.dtype != "int8" or w_q.dtype != "int8" or any(z != 0 for z in w_q.quant.zero_point):
            quantizer = refuse(builder, node, "int8 FC needs int8 input and int8 weights with zero point 0")
        elif axis not in (None, 0):
            quantizer = refuse(builder, node, "weight quantized per input feature, not per output feature")
    out = int8_output(builder, last) if quantizer is not None else None
    if out is not None:
        y_name, y_quant = out
        data = w_q.data.T if transpose else w_q.data
        w_name = builder.fresh(f"{W}_nk") if transpose else w_q.name
        s_w = np.broadcast_to(np.asarray(w_q.quant.scale, dtype=np.float64), (out_features,))
        builder.add_tensor(LoweredTensor(
            w_name, tuple(data.shape), "int8",
            QuantParams(tuple(float(s) for s in s_w), (0,) * out_features, 0), np.ascontiguousarray(data)))
        s_x = np.float64(x_q.quant.scale[0])
        bias = _int32_bias(builder, node, B, s_x * s_w, out_features)
        reals = s_x * s_w / np.float64(y_quant.scale[0])
        attrs = FullyConnectedAttrs(activation, requant(reals, activation, y_quant))
        builder.emit("fully_connected", node.name, [x_q.name, w_name, bias], [y_name], attrs)
        return
    note_float(builder, node)
    x = builder.float_input(X)
    w = builder.float_input(W)
    if transpose:
        value = builder.tensors[w].data.T
        w = builder.add_tensor(LoweredTensor(builder.fresh(f"{W}_nk"), tuple(value.shape), "float32",
                                             data=np.ascontiguousarray(value)))
    b = _float_bias(builder, node, B, out_features)
    y = float_output(builder, last.output[0])
    builder.emit("fully_connected", node.name, [x, w, b], [y], FullyConnectedAttrs(activation))


def run_conv(op: LoweredOp, values, tensors):
    X, W, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    x, w, b = values[X.name], values[W.name], values[B.name]
    attrs = op.attrs
    if Y.dtype == "int8":
        acc = convolve(x.astype(np.float64) - zp(X), w.astype(np.float64), attrs)
        acc = np.rint(acc).astype(np.int64) + channel(b.astype(np.int64), 4)
        return requantize(acc, attrs.requant, zp(Y))
    y = convolve(x.astype(np.float64), w.astype(np.float64), attrs) + channel(b.astype(np.float64), 4)
    return activate(y, attrs.activation).astype(np.float32)


def run_fully_connected(op: LoweredOp, values, tensors):
    X, W, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    x, w, b = values[X.name], values[W.name], values[B.name]
    if Y.dtype == "int8":
        acc = (x.astype(np.float64) - zp(X)) @ w.astype(np.float64).T
        acc = np.rint(acc).astype(np.int64) + b.astype(np.int64)
        return requantize(acc, op.attrs.requant, zp(Y), axis=-1)
    y = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    return activate(y, op.attrs.activation).astype(np.float32)


def _check_conv(view, node: onnx.NodeProto) -> str | None:
    rank = input_rank(view, node)
    if rank != 4:
        return f"rank-{rank} Conv, only 2-D"
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad {auto_pad!r}"
    if weight_value(view, node.input[1]) is None:
        return f"weight {node.input[1]!r} is not a constant"
    return None


def _check_fully_connected(view, node: onnx.NodeProto) -> str | None:
    if weight_value(view, node.input[1]) is None:
        return f"weight {node.input[1]!r} is not a constant"
    rank = input_rank(view, node)
    if rank != 2 and not (rank == 3 and node.op_type == "MatMul"):
        return f"input of rank {rank}, only [1, K] (MatMul also [1, T, K])"
    if node.op_type == "MatMul" and np.ndim(weight_value(view, node.input[1])) != 2:
        return "MatMul by a constant weight that is not 2-D"
    if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                                   or attribute(node, "beta", 1.0) != 1.0):
        return "transA/alpha/beta"
    return None


def _lower_matmul(builder: Builder, node: onnx.NodeProto) -> None:
    """MatMul by a constant weight: fully_connected; MatMul of two activations: batch_matmul."""
    if weight_value(builder.view, node.input[1]) is not None:
        _lower_fully_connected(builder, node)
    else:
        _lower_batch_matmul(builder, node)


def _lower_batch_matmul(builder: Builder, node: onnx.NodeProto) -> None:
    activation, act_node = fused_activation(builder, node)
    last = act_node or node
    if act_node is not None:
        builder.done.add(id(act_node))
    operands = int8_operands(builder, node, (0, 1))
    out = int8_output(builder, last) if operands is not None else None
    if out is not None:
        y_name, y_quant = out
        a, b = operands
        real = np.float64(a.quant.scale[0]) * np.float64(b.quant.scale[0]) / np.float64(y_quant.scale[0])
        attrs = BatchMatmulAttrs(activation, requant([real], activation, y_quant))
        builder.emit("batch_matmul", node.name, [a.name, b.name], [y_name], attrs)
        return
    note_float(builder, node)
    a, b = builder.float_input(node.input[0]), builder.float_input(node.input[1])
    builder.emit("batch_matmul", node.name, [a, b], [float_output(builder, last.output[0])], BatchMatmulAttrs(activation))


def run_batch_matmul(op: LoweredOp, values, tensors):
    A, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    a, b = values[A.name], values[B.name]
    if Y.dtype == "int8":
        # int8 products summed in float64 are exact (|sum| < 2**53); then the int32 accumulator.
        acc = np.matmul(a.astype(np.float64) - zp(A), b.astype(np.float64) - zp(B))
        return requantize(np.rint(acc).astype(np.int64), op.attrs.requant, zp(Y), axis=None)
    return activate(np.matmul(a.astype(np.float64), b.astype(np.float64)), op.attrs.activation).astype(np.float32)


def _check_batch_matmul(view, node: onnx.NodeProto) -> str | None:
    a, b = (list(view.shapes.get(name) or []) for name in node.input[:2])
    if view.const(node.input[0]) is not None or is_const_dq(view, node.input[0]):
        return "MatMul of a constant by an activation: only an activation by a constant or by an activation"
    if len(a) != len(b) or len(a) not in (3, 4):
        return f"MatMul of shapes {a} and {b}: two activations of rank 3 or 4, the same rank"
    if any(not isinstance(d, int) for d in a + b) or a[:-2] != b[:-2] or a[-1] != b[-2] or a[0] != 1:
        return f"MatMul of shapes {a} and {b}: [1, .., M, K] x [1, .., K, N] with equal leading dims"
    return None


def _check_matmul(view, node: onnx.NodeProto) -> str | None:
    if weight_value(view, node.input[1]) is not None:
        return _check_fully_connected(view, node)
    return _check_batch_matmul(view, node)


def conv_transpose_problem(node: onnx.NodeProto, weight: np.ndarray | None) -> str | None:
    """Why this ConvTranspose cannot be a 1x1 Conv + DepthToSpace (passes/conv_transpose.py), or None."""
    if weight is None:
        return f"weight {node.input[1]!r} is not a constant"
    if weight.ndim != 4:
        return f"weight of rank {weight.ndim}, only 2-D ConvTranspose"
    kernel = [int(k) for k in attribute(node, "kernel_shape", list(weight.shape[2:]))]
    strides = [int(s) for s in attribute(node, "strides", [1, 1])]
    if kernel != list(weight.shape[2:]) or kernel[0] != kernel[1] or strides != kernel:
        return f"kernel_shape {kernel} and strides {strides}: only a square kernel equal to its stride"
    if any(int(p) for p in attribute(node, "pads", [0] * 4)) or any(
            int(p) for p in attribute(node, "output_padding", [0, 0])):
        return "pads or output_padding"
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode(errors="replace") if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad {auto_pad!r}"
    if any(int(d) != 1 for d in attribute(node, "dilations", [1, 1])):
        return "dilations other than 1"
    if int(attribute(node, "group", 1)) != 1:
        return "group other than 1"
    if attribute(node, "output_shape", None) is not None:
        return "output_shape attribute"
    return None


def _check_conv_transpose(view, node: onnx.NodeProto) -> str | None:
    reason = conv_transpose_problem(node, weight_value(view, node.input[1]))
    return f"{reason} (only a ConvTranspose rewritten as 1x1 Conv + DepthToSpace lowers)" if reason else (
        "a weight or bias that is neither a constant nor the DequantizeLinear of one")


def _check_batchnorm(view, node: onnx.NodeProto) -> str | None:
    return "BatchNormalization that cannot be folded into a float Conv/Gemm producer"


register_kind("conv2d", run_conv)
register_kind("depthwise_conv2d", run_conv)
register_kind("fully_connected", run_fully_connected)
register_kind("batch_matmul", run_batch_matmul)

# Conv weight is [M, C/group, kH, kW]; Gemm (transB=1) is [N, K]; MatMul is [K, N].
register_op("Conv", OpInfo(weight_input=1, bias_input=2, out_channel_axis=0, in_channel_axis=1, quantizable=True),
            kinds=("conv2d", "depthwise_conv2d"), lower=_lower_conv, check=_check_conv, fuses_activation=True)
register_op("ConvTranspose", OpInfo(weight_input=1, bias_input=2, out_channel_axis=1, in_channel_axis=0),
            check=_check_conv_transpose)
register_op("Gemm", OpInfo(weight_input=1, bias_input=2, out_channel_axis=0, in_channel_axis=1, quantizable=True),
            kinds=("fully_connected",), lower=_lower_fully_connected, check=_check_fully_connected,
            fuses_activation=True)
register_op("MatMul", OpInfo(weight_input=1, out_channel_axis=1, in_channel_axis=0, quantizable=True),
            kinds=("fully_connected", "batch_matmul"), lower=_lower_matmul, check=_check_matmul,
            fuses_activation=True)
register_op("BatchNormalization", OpInfo(channel_passthrough=True, channel_inputs=(1, 2, 3, 4)),
            check=_check_batchnorm)

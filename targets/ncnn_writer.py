"""The ncnn .param/.bin writer: one layer (or a few) per ONNX node of a FloatView, fp32 or int8."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import onnx

from fwedge.errors import ExportError
from fwedge.ir import opset_version
from fwedge.lowered.graph import same_padding
from fwedge.op_info import attribute
from fwedge.ops.registry import silu_mul
from fwedge.targets.ncnn_view import TARGET, ActQuant, FloatView, WeightQuant

MAGIC = 7767517
INT8_TAG = 0x000D4B38  # ModelBin flag: the weight buffer holds int8 values
FP16_TAG = 0x01306B47  # ModelBin flag: the weight buffer holds float16 values, padded to 4 bytes
FLT_MAX = 3.4028234663852886e38

# ONNX op -> ncnn BinaryOp op_type (and the reversed op when the constant is the first operand).
_BINARY = {"Add": (0, 0), "Sub": (1, 7), "Mul": (2, 2), "Div": (3, 8)}
_UNARY = {"Relu": "ReLU", "LeakyRelu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH",
          "HardSigmoid": "HardSigmoid", "HardSwish": "HardSwish", "Clip": "Clip", "Sqrt": "UnaryOp", "Pow": "UnaryOp"}
# UnaryOp op_type of the ONNX ops written as one (Pow only with the exponent 2: square).
_UNARY_OP_TYPES = {"Sqrt": 5, "Pow": 4}


# --------------------------------------------------------------------------------------------
# Writing .param / .bin
# --------------------------------------------------------------------------------------------


def _format(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_format(v) for v in value]
        return ",".join([str(len(items))] + items)
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.9e}"
    return str(int(value))


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{self.type:<24}", f"{self.name:<32}", str(len(self.inputs)), str(len(self.outputs)),
                 *self.inputs, *self.outputs]
        for key, value in sorted(self.params.items()):
            if isinstance(value, (list, tuple, np.ndarray)):
                parts.append(f"{-23300 - key}={_format(value)}")
            else:
                parts.append(f"{key}={_format(value)}")
        return " ".join(parts)


class NcnnWriter:
    """Accumulates layers and weight buffers; `emit_<op>` methods translate one ONNX node each."""

    def __init__(self, view: FloatView, int8: bool, fp16: bool = False):
        self.view = view
        self.int8 = int8
        self.fp16 = fp16
        self.layers: list[Layer] = []
        self.weights = bytearray()
        self.int8_layers: list[str] = []
        self.float_layers: dict[str, str] = {}
        self.shifted: dict[tuple[str, float], str] = {}
        self.fake_quantized: dict[tuple[str, float, int], str] = {}
        self.extra_shapes: dict[str, list] = {}
        self.absorbed: set[int] = set()  # nodes another node's layer already computes (a SiLU's Mul)

    # -- buffers -------------------------------------------------------------------------------

    def raw(self, array: np.ndarray) -> None:
        """A float32 buffer loaded with type 1 (no flag): biases, scales, BatchNorm, MemoryData."""
        self.weights += np.ascontiguousarray(array, dtype="<f4").tobytes()

    def weight_float(self, array: np.ndarray) -> None:
        """A weight buffer loaded with type 0: a zero flag, then float32 data; with fp16 the float16
        tag, then float16 data padded to 4 bytes (ncnn widens it to float32 at load)."""
        if not self.fp16:
            self.weights += struct.pack("<I", 0)
            self.raw(array)
            return
        data = np.ascontiguousarray(array, dtype=np.float32).astype("<f2").tobytes()
        self.weights += struct.pack("<I", FP16_TAG) + data + b"\0" * (-len(data) % 4)

    def weight_int8(self, array: np.ndarray) -> None:
        """A weight buffer loaded with type 0: the int8 tag, int8 data, padded to 4 bytes."""
        data = np.ascontiguousarray(array, dtype=np.int8).tobytes()
        self.weights += struct.pack("<I", INT8_TAG) + data + b"\0" * (-len(data) % 4)

    def add(self, type_: str, name: str, inputs: list[str], outputs: list[str], params: dict | None = None) -> Layer:
        layer = Layer(type_, name, list(inputs), list(outputs), params or {})
        self.layers.append(layer)
        return layer

    def shape(self, name: str) -> list:
        if name in self.extra_shapes:
            return self.extra_shapes[name]
        return self.view.shape(name)

    # -- helpers -------------------------------------------------------------------------------

    def blob(self, name: str) -> str:
        return self.view.blob(name)

    def input(self, name: str) -> str:
        """The blob a float layer reads for ONNX input `name`.

        A Q/DQ pair on the edge means the consumer sees DQ(Q(x)): x rounded to the pair's grid
        and clamped to [(-128 - zp)·s, (127 - zp)·s] (onnxruntime's quantizer relies on the clamp
        when it drops a Relu/Clip in front of the pair). Float layers read that fake-quantized
        blob, so they compute on the same values as onnxruntime.
        """
        source = self.blob(name)
        quant = self.view.edge_quant(name)
        if quant is None:
            return source
        key = (source, quant.scale, quant.zero_point)
        if key not in self.fake_quantized:
            self.fake_quantized[key] = self.fake_quantize(source, quant, f"{source}_ncnn_fq{len(self.fake_quantized)}")
        return self.fake_quantized[key]

    def fake_quantize(self, source: str, quant: ActQuant, output: str) -> str:
        """x -> s · clamp(round_half_even(x / s), -128 - zp, 127 - zp), as DQ(Q(x)); returns `output`."""
        steps = [f"{output}_{i}" for i in range(3)]
        self.add("BinaryOp", steps[0], [source], [steps[0]], {0: 3, 1: 1, 2: quant.scale})
        self.add("UnaryOp", steps[1], [steps[0]], [steps[1]], {0: 18})  # nearbyintf: half to even
        self.add("Clip", steps[2], [steps[1]], [steps[2]],
                 {0: float(-128 - quant.zero_point), 1: float(127 - quant.zero_point)})
        self.add("BinaryOp", output, [steps[2]], [output], {0: 2, 1: 1, 2: quant.scale})
        return output

    def memory_data(self, array: np.ndarray, like_rank: int, name: str) -> str:
        """A MemoryData blob for a constant operand, broadcast-aligned to an operand of rank `like_rank`."""
        value = np.asarray(array, dtype=np.float32)
        value = value.reshape((1,) * (like_rank - value.ndim) + value.shape)
        if value.shape[0] != 1:
            raise ExportError(f"target {TARGET!r}: constant '{name}' has a batch dimension {value.shape[0]}")
        dims = list(value.shape[1:]) or [1]
        params = {0: dims[-1]}
        if len(dims) >= 2:
            params[1] = dims[-2]
        if len(dims) == 3:
            params[2] = dims[-3]
        if len(dims) == 4:
            params[11], params[2] = dims[-3], dims[-4]
        blob = f"{name}_ncnn_const"
        self.add("MemoryData", blob, [], [blob], params)
        self.raw(value)
        return blob

    def shifted_input(self, name: str, quant: ActQuant, pads: tuple[int, int, int, int], layer: str) -> tuple[str, int]:
        """The blob an int8 layer reads, and the integer shift m applied to it (see the module docstring)."""
        m = quant.zero_point + 1 if quant.zero_point == -128 else quant.zero_point
        source = self.blob(name)
        if m != 0:
            key = (source, m * quant.scale)
            if key not in self.shifted:
                shifted = f"{source}_ncnn_shift"
                self.add("BinaryOp", shifted, [source], [shifted], {0: 0, 1: 1, 2: float(np.float32(m * quant.scale))})
                self.shifted[key] = shifted
            source = self.shifted[key]
        if m != 0 and any(pads):
            # An explicit Padding with the shifted image of 0. (Convolution's pad_value is not
            # applied to int8 inputs packed 8 channels at a time on x86, see
            # tests/test_targets_export.py::test_ncnn_int8_shifted_padding_many_channels.)
            top, left, bottom, right = pads
            padded = f"{source}_ncnn_pad_{layer}"
            self.add("Padding", padded, [source], [padded],
                     {0: top, 1: bottom, 2: left, 3: right, 4: 0, 5: float(np.float32(m * quant.scale))})
            source = padded
        return source, m

    def int8_plan(self, node: onnx.NodeProto, weight_name: str, out_axis: int, groups: int = 1) -> tuple[ActQuant, WeightQuant] | None:
        """The (input quant, weight quant) pair when this layer can run int8 in ncnn, else None (float)."""
        if not self.int8:
            return None
        quant = self.view.edge_quant(node.input[0])
        weight = self.view.weights.get(weight_name)
        label = node.name or node.output[0]
        if quant is None or weight is None:
            self.float_layers[label] = "no Q/DQ on its input or weight"
            return None
        if np.any(weight.zero_point != 0):
            self.float_layers[label] = "weight zero point is not 0"
            return None
        if weight.axis is not None and weight.axis != out_axis:
            self.float_layers[label] = f"weight scales along axis {weight.axis}, not the output channels"
            return None
        if groups > 1:
            per_group = np.broadcast_to(weight.scale, (weight.q.shape[out_axis],)).reshape(groups, -1)
            if not np.all(per_group == per_group[:, :1]):
                self.float_layers[label] = "grouped conv with per-channel scales that differ inside a group"
                return None
        return quant, weight

    # -- emitters ------------------------------------------------------------------------------

    def emit_Conv(self, node: onnx.NodeProto) -> None:
        X, W, Y = node.input[0], node.input[1], node.output[0]
        B = node.input[2] if len(node.input) > 2 and node.input[2] else None
        weight = self.view.consts[W]
        M, C_per_group, kH, kW = weight.shape
        group = attribute(node, "group", 1)
        strides = attribute(node, "strides", [1, 1])
        dilations = attribute(node, "dilations", [1, 1])
        top, left, bottom, right = self.conv_pads(node, X, Y, [kH, kW], strides, dilations)
        bias = self.view.consts[B].astype(np.float32) if B else np.zeros(M, np.float32)
        layer_type = "Convolution" if group == 1 else "ConvolutionDepthWise"
        plan = self.int8_plan(node, W, 0, group)
        source = self.input(X) if plan is None else self.blob(X)
        params = {0: M, 1: kW, 11: kH, 2: dilations[1], 12: dilations[0], 3: strides[1], 13: strides[0],
                  4: left, 15: right, 14: top, 16: bottom, 5: 1, 6: int(weight.size)}
        if group != 1:
            params[7] = group
        if plan is not None:
            quant, wq = plan
            source, m = self.shifted_input(X, quant, (top, left, bottom, right), node.name or Y)
            if m != 0:
                for key in (4, 15, 14, 16):
                    params[key] = 0
            real_w = self.view.consts[W].astype(np.float64)
            bias = (bias.astype(np.float64) - m * quant.scale * real_w.reshape(M, -1).sum(axis=1)).astype(np.float32)
            params[8] = 1
            w_scales = np.broadcast_to(wq.scale, (M,)).astype(np.float64)
            if group != 1:
                w_scales = w_scales.reshape(group, -1)[:, 0]
            self.add(layer_type, node.name or Y, [source], [self.blob(Y)], params)
            self.weight_int8(wq.q)
            self.raw(bias)
            self.raw((1.0 / w_scales).astype(np.float32))
            self.raw(np.array([1.0 / quant.scale], np.float32))
            self.int8_layers.append(node.name or Y)
            return
        self.add(layer_type, node.name or Y, [source], [self.blob(Y)], params)
        self.weight_float(weight)
        self.raw(bias)

    def conv_pads(self, node, X, Y, kernel, strides, dilations) -> tuple[int, int, int, int]:
        auto_pad = attribute(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("NOTSET", ""):
            pads = attribute(node, "pads", [0, 0, 0, 0])
            return pads[0], pads[1], pads[2], pads[3]
        if auto_pad == "VALID":
            return 0, 0, 0, 0
        in_shape = self.shape(X)
        (top, bottom), (left, right) = (
            same_padding(in_shape[2 + axis], kernel[axis], strides[axis], dilations[axis], auto_pad == "SAME_UPPER")
            for axis in (0, 1))
        return top, left, bottom, right

    def fully_connected(self, node: onnx.NodeProto, weight_nk: np.ndarray, weight_name: str, out_axis: int,
                        bias: np.ndarray | None, transpose_q: bool) -> None:
        X, Y = node.input[0], node.output[0]
        N, K = weight_nk.shape
        in_shape = self.shape(X)
        if len(in_shape) not in (2, 3) or in_shape[0] != 1:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': input '{X}' must be [1, K] or [1, T, K], "
                              f"got {in_shape}")
        bias = np.zeros(N, np.float32) if bias is None else np.broadcast_to(bias.reshape(-1), (N,)).astype(np.float32)
        params = {0: N, 1: 1, 2: int(weight_nk.size)}
        plan = self.int8_plan(node, weight_name, out_axis)
        if plan is not None:
            quant, wq = plan
            source, m = self.shifted_input(X, quant, (0, 0, 0, 0), node.name or Y)
            bias = (bias.astype(np.float64) - m * quant.scale * weight_nk.astype(np.float64).sum(axis=1)).astype(np.float32)
            params[8] = 1
            q = wq.q.T if transpose_q else wq.q
            self.add("InnerProduct", node.name or Y, [source], [self.blob(Y)], params)
            self.weight_int8(q)
            self.raw(bias)
            self.raw((1.0 / np.broadcast_to(wq.scale, (N,)).astype(np.float64)).astype(np.float32))
            self.raw(np.array([1.0 / quant.scale], np.float32))
            self.int8_layers.append(node.name or Y)
            return
        self.add("InnerProduct", node.name or Y, [self.input(X)], [self.blob(Y)], params)
        self.weight_float(weight_nk)
        self.raw(bias)

    def emit_Gemm(self, node: onnx.NodeProto) -> None:
        weight = self.view.consts[node.input[1]]
        trans_b = attribute(node, "transB", 0)
        weight_nk = weight if trans_b else weight.T
        bias = self.view.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        self.fully_connected(node, weight_nk, node.input[1], 0 if trans_b else 1, bias, transpose_q=not trans_b)

    def emit_MatMul(self, node: onnx.NodeProto) -> None:
        """By a constant: InnerProduct (a [T, K] blob: row by row). Of two activations: MatMul,
        in float on the fake-quantized inputs, as onnxruntime's DQ -> MatMul -> Q."""
        weight = self.view.consts.get(node.input[1])
        if weight is not None:
            self.fully_connected(node, weight.T, node.input[1], 1, None, transpose_q=True)
            return
        self.add("MatMul", node.name or node.output[0], [self.input(node.input[0]), self.input(node.input[1])],
                 [self.blob(node.output[0])], {0: 0})

    def emit_BatchNormalization(self, node: onnx.NodeProto) -> None:
        scale, bias, mean, var = (self.view.consts[name].astype(np.float32) for name in node.input[1:5])
        self.add("BatchNorm", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: int(scale.size), 1: float(attribute(node, "epsilon", 1e-5))})
        for array in (scale, mean, var, bias):
            self.raw(array)

    def emit_LayerNormalization(self, node: onnx.NodeProto) -> None:
        """ncnn LayerNorm over w (the last ONNX axis): affine_size, eps, affine; gamma, beta raw."""
        depth = int(self.view.shapes[node.input[0]][-1])
        inputs = list(node.input) + [""] * (3 - len(node.input))
        gamma = self.view.consts[inputs[1]] if inputs[1] else np.ones(depth, np.float32)
        beta = self.view.consts[inputs[2]] if inputs[2] else np.zeros(depth, np.float32)
        self.add("LayerNorm", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: depth, 1: float(attribute(node, "epsilon", 1e-5)), 2: 1})
        for array in (gamma, beta):
            self.raw(array.astype(np.float32).reshape(-1))

    def emit_unary(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        params: dict = {}
        if op == "LeakyRelu":
            params = {0: float(attribute(node, "alpha", 0.01))}
        elif op == "HardSigmoid":
            params = {0: float(attribute(node, "alpha", 0.2)), 1: float(attribute(node, "beta", 0.5))}
        elif op == "HardSwish":
            params = {0: 1.0 / 6.0, 1: 0.5}
        elif op in _UNARY_OP_TYPES:
            params = {0: _UNARY_OP_TYPES[op]}
        elif op == "Clip":
            low, high = attribute(node, "min", -FLT_MAX), attribute(node, "max", FLT_MAX)
            if len(node.input) > 1 and node.input[1]:
                low = float(self.view.consts[node.input[1]].reshape(-1)[0])
            if len(node.input) > 2 and node.input[2]:
                high = float(self.view.consts[node.input[2]].reshape(-1)[0])
            params = {0: float(low), 1: float(high)}
        self.add(_UNARY[op], node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])], params)

    def emit_PRelu(self, node: onnx.NodeProto) -> None:
        from fwedge.ops.prelu import slopes

        slope = slopes(self.view, node)  # the support check has refused what this cannot take
        self.add("PReLU", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: int(slope.size)})
        self.raw(slope)

    def emit_binary(self, node: onnx.NodeProto) -> None:
        A, B, Y = node.input[0], node.input[1], node.output[0]
        op, reversed_op = _BINARY[node.op_type]
        consts = self.view.consts
        name = node.name or Y
        if A in consts and B in consts:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{name}' has two constant inputs")
        if A in consts or B in consts:
            constant, other, op_type = (consts[A], B, reversed_op) if A in consts else (consts[B], A, op)
            if constant.size == 1:
                self.add("BinaryOp", name, [self.input(other)], [self.blob(Y)],
                         {0: op_type, 1: 1, 2: float(constant.reshape(-1)[0])})
                return
            rank = len(self.shape(other))
            memory = self.memory_data(constant, rank, name)
            inputs = [memory, self.input(other)] if A in consts else [self.input(other), memory]
            self.add("BinaryOp", name, inputs, [self.blob(Y)], {0: op})
            return
        self.add("BinaryOp", name, [self.input(A), self.input(B)], [self.blob(Y)], {0: op})

    def emit_pool(self, node: onnx.NodeProto) -> None:
        X, Y = node.input[0], node.output[0]
        kH, kW = attribute(node, "kernel_shape")
        sH, sW = attribute(node, "strides", [1, 1])
        top, left, bottom, right = self.conv_pads(node, X, Y, [kH, kW], [sH, sW], [1, 1])
        if attribute(node, "ceil_mode", 0):
            # ncnn's "full padding" is Caffe's ceil mode, which differs from ONNX's at the
            # border; accept ceil_mode only where it yields the floor-mode size.
            in_shape, out_shape = self.shape(X), self.shape(Y)
            floor = [(in_shape[2] + top + bottom - kH) // sH + 1, (in_shape[3] + left + right - kW) // sW + 1]
            if floor != list(out_shape[2:]):
                raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': ceil_mode with a partial last window")
        params = {0: 0 if node.op_type == "MaxPool" else 1, 1: kW, 11: kH, 2: sW, 12: sH,
                  3: left, 14: right, 13: top, 15: bottom, 5: 1}
        if node.op_type == "AveragePool":
            params[6] = attribute(node, "count_include_pad", 0)
        self.add("Pooling", node.name or Y, [self.input(X)], [self.blob(Y)], params)

    def emit_global_pool(self, node: onnx.NodeProto) -> None:
        X, Y = node.input[0], node.output[0]
        channels = self.shape(X)[1]
        flat = f"{self.blob(Y)}_ncnn_1d"
        kind = 0 if node.op_type == "GlobalMaxPool" else 1
        source = self.input(X)
        if len(self.shape(X)) == 3:
            # A rank-3 [N, C, L] is ncnn's 2-D blob (h = C, w = L), which Pooling reads as one
            # channel: make it C channels of 1 x L first. The output [N, C, 1] is then w = 1, h = C.
            source = f"{self.blob(Y)}_ncnn_3d"
            self.add("Reshape", f"{node.name or Y}_ncnn_3d", [self.input(X)], [source],
                     {0: self.shape(X)[2], 1: 1, 2: channels})
        # ncnn's global pooling yields a 1-D blob; reshape it back to ONNX's [C, 1, 1] ([C, 1]).
        self.add("Pooling", node.name or Y, [source], [flat], {0: kind, 4: 1})
        back = {0: 1, 1: channels} if len(self.shape(X)) == 3 else {0: 1, 1: 1, 2: channels}
        self.add("Reshape", f"{node.name or Y}_ncnn_reshape", [flat], [self.blob(Y)], back)

    def emit_Flatten(self, node: onnx.NodeProto) -> None:
        if attribute(node, "axis", 1) != 1:
            self.emit_reshape(node)
            return
        self.add("Flatten", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])])

    def emit_reshape(self, node: onnx.NodeProto) -> None:
        Y = node.output[0]
        shape = self.shape(Y)
        if len(shape) < 2 or shape[0] != 1 or any(not isinstance(d, int) for d in shape):
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': output shape {shape} must be static with batch 1")
        dims = shape[1:]
        params = {0: dims[-1]}
        if len(dims) >= 2:
            params[1] = dims[-2]
        if len(dims) == 3:
            params[2] = dims[-3]
        if len(dims) == 4:
            params[11], params[2] = dims[-3], dims[-4]
        if len(dims) > 4:
            raise ExportError(f"target {TARGET!r}: {node.op_type} '{node.name}': rank {len(shape)} output")
        self.add("Reshape", node.name or Y, [self.input(node.input[0])], [self.blob(Y)], params)

    def emit_Transpose(self, node: onnx.NodeProto) -> None:
        """Permute: ncnn's blob is the ONNX tensor without its batch axis (c, h, w; or h, w)."""
        rank = len(self.shape(node.input[0]))
        perm = [int(a) for a in attribute(node, "perm", list(range(rank))[::-1])]
        self.add("Permute", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: permute_order(perm)})

    def emit_Resize(self, node: onnx.NodeProto) -> None:
        """Interp to the output size: nearest (1), or bilinear (2) with align_corner (6) for
        ONNX's align_corners (the support check refused tables other than ncnn's own rules,
        ncnn_nearest and ncnn_bilinear)."""
        from fwedge.ops.resize import coordinate_mode, is_linear

        out_shape = self.shape(node.output[0])
        params = {0: 1, 3: int(out_shape[2]), 4: int(out_shape[3])}
        if is_linear(node):
            params.update({0: 2, 6: int(coordinate_mode(node) == "align_corners")})
        self.add("Interp", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])], params)

    def _tables(self, node: onnx.NodeProto, index: int) -> tuple[list[list[int]], list[int]]:
        """(per-axis source tables, the axes they change) of one output of a Slice/Split/Gather."""
        from fwedge.ops.take import changed_axes, take_tables

        tables = take_tables(self.view.consts, self.view.shapes, node, index)  # the support check passed
        return tables, changed_axes(tables, self.shape(node.input[0]))

    def _crop(self, name: str, source: str, output: str, axes: list[int], tables) -> None:
        rank = len(tables)
        self.add("Crop", name, [source], [output], {9: [tables[a][0] for a in axes], 10: [tables[a][-1] + 1 for a in axes],
                                                    11: [self.ncnn_axis(a, rank) for a in axes]})

    def emit_take(self, node: onnx.NodeProto) -> None:
        """Slice: one Crop over the changed axes (steps of 1). Gather: one Crop per contiguous run
        of its indices, and a Concat when there are several."""
        tables, axes = self._tables(node, 0)
        source, label, output = self.input(node.input[0]), node.name or node.output[0], self.blob(node.output[0])
        if node.op_type == "Slice" or len(axes) == 0:
            self._crop(label, source, output, axes or [1], tables)
            return
        axis, runs = axes[0], []
        for value in tables[axes[0]]:
            if runs and runs[-1][-1] + 1 == value:
                runs[-1].append(value)
            else:
                runs.append([value])
        if len(runs) == 1:
            self._crop(label, source, output, [axis], {**dict(enumerate(tables)), axis: runs[0]})
            return
        parts = [f"{output}_ncnn_run{i}" for i in range(len(runs))]
        for i, run in enumerate(runs):
            self._crop(f"{label}_run{i}", source, parts[i], [axis], {**dict(enumerate(tables)), axis: run})
        self.add("Concat", label, parts, [output], {0: self.ncnn_axis(axis, len(tables))})

    emit_Slice = emit_Gather = emit_take

    def emit_Split(self, node: onnx.NodeProto) -> None:
        """ncnn Slice: the outputs' sizes along the split axis."""
        sizes, axis = [], 1
        for index in range(len(node.output)):
            tables, axes = self._tables(node, index)
            axis = axes[0] if axes else axis
            sizes.append(len(tables[axis]))
        self.add("Slice", node.name or node.output[0], [self.input(node.input[0])],
                 [self.blob(name) for name in node.output], {0: sizes, 1: self.ncnn_axis(axis, len(tables))})

    def emit_DepthToSpace(self, node: onnx.NodeProto) -> None:
        """PixelShuffle: mode 1 reads channel (dy*b + dx)*C + c (ONNX DCR), mode 0 c*b*b + dy*b + dx (CRD)."""
        from fwedge.ops.depth_to_space import depth_to_space_mode

        mode = depth_to_space_mode(node)
        self.add("PixelShuffle", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: int(attribute(node, "blocksize")), 1: 1 if mode == "DCR" else 0})

    def ncnn_axis(self, axis: int, rank: int) -> int:
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise ExportError(f"target {TARGET!r}: an op along the batch axis cannot be expressed in ncnn")
        return axis - 1

    def emit_Concat(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.output[0]))
        self.add("Concat", node.name or node.output[0], [self.input(x) for x in node.input],
                 [self.blob(node.output[0])], {0: self.ncnn_axis(attribute(node, "axis"), rank)})

    def emit_Softmax(self, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.input[0]))
        default = -1 if opset_version(self.view.model) >= 13 else 1
        axis = attribute(node, "axis", default)
        if opset_version(self.view.model) < 13 and (axis + rank if axis < 0 else axis) != rank - 1:
            raise ExportError(f"target {TARGET!r}: Softmax '{node.name}' (opset < 13) must be along the last axis")
        self.add("Softmax", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: self.ncnn_axis(axis, rank), 1: 1})

    def emit_Pad(self, node: onnx.NodeProto) -> None:
        pads = [int(p) for p in self.view.consts[node.input[1]]]
        rank = len(pads) // 2
        if rank != 4 or pads[0] or pads[rank]:
            raise ExportError(f"target {TARGET!r}: Pad '{node.name}': only 4-D pads without batch padding, got {pads}")
        value = float(self.view.consts[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        self.add("Padding", node.name or node.output[0], [self.input(node.input[0])], [self.blob(node.output[0])],
                 {0: pads[2], 1: pads[6], 2: pads[3], 3: pads[7], 4: {"constant": 0, "edge": 1, "reflect": 2}[mode],
                  5: value, 7: pads[1], 8: pads[5]})

    def emit_swish(self, node: onnx.NodeProto) -> bool:
        """A Sigmoid whose Mul makes it a SiLU (fwedge.ops.base.silu_mul, the quantizer's and the
        lowering's rule) as one Swish layer, x / (1 + exp(-x)) in float; the Mul is absorbed.
        ncnn has no int8 Swish: in an int8 model it reads x's fake-quantized blob and the Mul's
        output pair rounds its result, as onnxruntime rounds the float silu."""
        view = self.view
        if node.output[0] in view.outputs:
            return False
        users = [other for other in view.nodes if node.output[0] in other.input]
        mul = silu_mul(node, users, lambda a, b: view.root(a) == view.root(b) and view.edge_quant(a) == view.edge_quant(b))
        if mul is None:
            return False
        self.absorbed.add(id(mul))
        self.add("Swish", node.name or node.output[0], [self.input(node.input[0])], [self.blob(mul.output[0])])
        return True

    def emit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if id(node) in self.absorbed or (op == "Sigmoid" and self.emit_swish(node)):
            return
        if op in _UNARY:
            self.emit_unary(node)
        elif op in _BINARY:
            self.emit_binary(node)
        elif op in ("MaxPool", "AveragePool"):
            self.emit_pool(node)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
            self.emit_global_pool(node)
        elif op in ("Reshape", "Squeeze", "Unsqueeze"):
            self.emit_reshape(node)
        else:
            getattr(self, f"emit_{op}")(node)

    # -- finishing -------------------------------------------------------------------------------

    def input_layers(self) -> list[Layer]:
        layers = []
        for name in self.view.inputs:
            dims = self.shape(name)[1:]
            params = {0: dims[-1]}
            if len(dims) >= 2:
                params[1] = dims[-2]
            if len(dims) >= 3:
                params[2] = dims[-3]
            layers.append(Layer("Input", name, [], [name], params))
        return layers

    def param_text(self) -> str:
        layers = self.input_layers() + self.layers
        # ncnn wants one consumer per blob: a blob read by several layers goes through Split.
        consumers: dict[str, list[tuple[Layer, int]]] = {}
        for layer in layers:
            for index, blob in enumerate(layer.inputs):
                consumers.setdefault(blob, []).append((layer, index))
        final = []
        for layer in layers:
            final.append(layer)
            for blob in layer.outputs:
                users = consumers.get(blob, [])
                if len(users) > 1:
                    outputs = [f"{blob}_splitncnn_{i}" for i in range(len(users))]
                    for (user, index), split_blob in zip(users, outputs):
                        user.inputs[index] = split_blob
                    final.append(Layer("Split", f"splitncnn_{blob}", [blob], outputs))
        blobs = {blob for layer in final for blob in layer.outputs}
        lines = [str(MAGIC), f"{len(final)} {len(blobs)}"] + [layer.line() for layer in final]
        return "\n".join(lines) + "\n"


# ncnn Permute's order_type: the input axes that become the output's (w, h, c), for a blob of
# two (h, w) or three (c, h, w) dimensions.
_PERMUTE_2D = {("w", "h"): 0, ("h", "w"): 1}
_PERMUTE_3D = {("w", "h", "c"): 0, ("h", "w", "c"): 1, ("w", "c", "h"): 2, ("c", "w", "h"): 3,
               ("h", "c", "w"): 4, ("c", "h", "w"): 5}


def ncnn_nearest(out_size: int, in_size: int) -> tuple[int, ...]:
    """ncnn Interp's nearest source index per output index: min((int)(x * (in / out)), in - 1), float32."""
    step = np.float32(in_size) / np.float32(out_size)
    return tuple(min(int(np.float32(x) * step), in_size - 1) for x in range(out_size))


def ncnn_bilinear(out_size: int, in_size: int, align_corner: bool) -> np.ndarray:
    """ncnn Interp's bilinear weights of one axis (linear_coeffs) as a dense [out, in] matrix:
    scale in / out or (in - 1) / (out - 1) in double, c = (x + 1/2) * scale - 1/2 or x * scale
    rounded to float, s = floor(c), f = c - s; s < 0 reads index 0 with f = 0, s >= in - 1
    reads in - 2 with f = 1; weights 1 - f on s and f on s + 1."""
    from fwedge.ops.resize import axis_matrix

    scale = (in_size - 1) / (out_size - 1) if align_corner else in_size / out_size
    low, weight_high = [], []
    for x in range(out_size):
        c = np.float32(x * scale) if align_corner else np.float32((x + 0.5) * scale - 0.5)
        first = int(np.floor(c))
        fraction = c - np.float32(first)
        if first < 0:
            first, fraction = 0, np.float32(0)
        if first >= in_size - 1:
            first, fraction = in_size - 2, np.float32(1)
        low.append(first)
        weight_high.append(float(fraction))
    weight_low = [float(np.float32(1) - np.float32(w)) for w in weight_high]
    return axis_matrix(low, [i + 1 for i in low], weight_low, weight_high, in_size)


def ncnn_bilinear_problem(node: onnx.NodeProto, in_shape, out_shape, tables) -> str | None:
    """Why ncnn's bilinear Interp cannot compute a linear Resize's weights (`tables`), or None.
    ncnn has half_pixel (align_corner 0) and align_corners (1); asymmetric, and pytorch_half_pixel
    onto a size of 1, interpolate elsewhere."""
    from fwedge.ops.resize import coordinate_mode, same_interpolation

    if min(in_shape[2], in_shape[3]) < 2:
        return "bilinear from an H or W of 1: ncnn's Interp reads index in - 2"
    align = coordinate_mode(node) == "align_corners"
    if align and min(out_shape[2], out_shape[3]) < 2:
        return "align_corners onto an H or W of 1: ncnn's Interp divides by out - 1"
    for axis, table in ((2, tables.rows), (3, tables.cols)):
        if not same_interpolation(table, ncnn_bilinear(out_shape[axis], in_shape[axis], align)):
            return (f"{coordinate_mode(node)} bilinear weights along axis {axis} differ from ncnn Interp's rule "
                    "(half_pixel or align_corners, from the sizes)")
    return None


def permute_order(perm: list[int]) -> int | None:
    """The Permute order_type for an ONNX Transpose `perm` that keeps the batch axis first, or
    None when ncnn's blob cannot express it (batch moved, rank other than 3 or 4)."""
    if len(perm) not in (3, 4) or perm[0] != 0 or sorted(perm) != list(range(len(perm))):
        return None
    names = "hw" if len(perm) == 3 else "chw"
    order = tuple(names[axis - 1] for axis in reversed(perm[1:]))  # output w first
    return (_PERMUTE_2D if len(perm) == 3 else _PERMUTE_3D)[order]


def write_ncnn(view: FloatView, int8: bool, fp16: bool = False) -> tuple[str, bytes, NcnnWriter]:
    """Translate a float view into ncnn .param text and .bin bytes (fp16: float16 weight buffers).

    Raises:
        ExportError: a node's attributes or shapes cannot be expressed (named in the message).
    """
    writer = NcnnWriter(view, int8, fp16)
    for node in view.nodes:
        writer.emit(node)
    for output in view.outputs:
        quant = view.edge_quant(output)
        if view.blob(output) != output and quant is not None:
            # The QDQ model's output is DQ(Q(y)): keep that on the graph output.
            writer.fake_quantize(view.blob(output), quant, output)
        elif view.blob(output) != output:
            raise ExportError(f"target {TARGET!r}: graph output '{output}' is a graph input or duplicate; not supported")
    return writer.param_text(), bytes(writer.weights), writer

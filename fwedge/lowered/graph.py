"""The lowered graph: a small typed op list with int8 weights, int32 biases and requantization pairs.

This is the single input of the TFLite and C writers (fwedge/lowered/lower.py builds it from an
ONNX model, fwedge/lowered/interp.py runs it with integer-exact semantics). The contract:

Graph
    LoweredGraph.ops is in execution order (a topological order); every op reads tensors
    produced earlier or graph inputs/constants. LoweredGraph.tensors maps every tensor name to a
    LoweredTensor. inputs/outputs name the graph inputs and outputs (ONNX names; float32 for a
    float-I/O model; a QDQ model's input is float32 followed by a `quantize` op, its output is
    the result of a `dequantize` op).

Tensors
    shape is the logical ONNX shape (NCHW for images), batch fixed to 1. dtype is "float32",
    "int8" or "int32" (biases only). quant is set for int8/int32 tensors: scale and zero_point
    are tuples (length 1 per-tensor, or length C per-channel along `axis`). Weights are int8
    symmetric per output channel (zero point 0, axis 0); biases are int32 with scale
    s_in * s_w[c] and zero point 0. Constants carry `data` (np.ndarray of the dtype and shape).

Layouts of constants (ONNX layouts; NHWC targets transpose them):
    conv2d weight            [M, C/groups, kH, kW]  (OIHW)
    depthwise_conv2d weight  [M, 1, kH, kW]         (groups == C_in, M = C_in * depth_multiplier)
    fully_connected weight   [N, K]                 (y = x @ W.T + b; input is [1, K] or [1, T, K])
    bias                     [M] or [N]             (always present, zeros when ONNX had none)
    add/mul constant operand broadcast to the other operand's rank (NCHW), e.g. [1, C, 1, 1]

Dim 0 of every activation tensor is the batch (1 in the graph; runners may feed N).

Integer arithmetic (TFLite reference kernels; see fwedge/lowered/interp.py):
    MBQM(x, m, s) = (x * m + 2**(30 - s)) >> (31 - s), computed in int64 (arithmetic shift):
                    TFLite's MultiplyByQuantizedMultiplier in its single-rounding form
                    (TFLITE_SINGLE_ROUNDING), one rounding, half up; (m, s) come from
                    quantize_multiplier(real) below. Not the gemmlowp double-rounding form
                    (SRDHM then RoundingDivideByPOT): that one drifts one step from onnxruntime
                    in ~0.1 % of outputs and the drift compounds over deep networks.
    conv2d / depthwise / fully_connected:
        acc[c] = bias[c] + sum((x_q - zp_x) * w_q)          (int32)
        y_q    = clamp(zp_y + MBQM(acc[c], m[c], s[c]), act_min, act_max)
        with m/s from real = s_x * s_w[c] / s_y, per output channel.
    batch_matmul (A [1, .., M, K], B [1, .., K, N], the same leading dims; both activations):
        acc = sum_k (a_q - zp_a) * (b_q - zp_b)             (int32)
        y_q = clamp(zp_y + MBQM(acc, m, s), act_min, act_max)  with real = s_a * s_b / s_y.
        Float: y = A @ B (then the fused activation).
    add (attrs.add): TFLite ADD with left_shift 20:
        a' = MBQM((a_q - zp_a) << left_shift, input1_multiplier, input1_shift), same for b
        y_q = clamp(zp_y + MBQM(a' + b', output_multiplier, output_shift), act_min, act_max)
    mul: y_q = clamp(zp_y + MBQM((a_q - zp_a) * (b_q - zp_b), m, s), act_min, act_max)
    global_avg_pool: y_q = clamp(zp_y + MBQM(sum_hw(x_q - zp_x), m, s)) with real =
        s_x / (s_y * H * W).
    avg_pool: acc = sum of (x_q - zp_x) over the window positions inside the input (padding
        contributes 0); count = those positions (all kH*kW with count_include_pad);
        y_q = clamp(zp_y + MBQM(acc, m[count], s[count]), -128, 127), where attrs.requant
        holds kH*kW + 1 pairs indexed by count, real = s_x / (s_y * count) (index 0 unused).
        One rounding, like onnxruntime's DQ -> AveragePool -> Q.
    max_pool, reshape, pad, concat, resize_nearest, depth_to_space: int8 in and out share scale and zero
        point (a `quantize` int8->int8 op is inserted on the inputs that differ). pad fills
        with zp_x; max_pool's padding never wins (-128 in int8, -inf in float);
        resize_nearest: y[n, c, i, j] = x[n, c, rows[i], cols[j]] (ResizeAttrs tables);
        resize_linear (LinearResizeAttrs: per output row i source rows lo_i, hi_i with float32
        weights a_i, b_i; per column j lo_j, hi_j, c_j, d_j): y = (c_j*a_i)*x[lo_i, lo_j] +
        (d_j*a_i)*x[lo_i, hi_j] + (c_j*b_i)*x[hi_i, lo_j] + (d_j*b_i)*x[hi_i, hi_j] in float32, summed
        left to right (onnxruntime's order); int8 is not data movement: the four inputs
        dequantized ((x_q - zp_x) * s_x), y as above, y_q = clamp(round_half_even(y / s_y) + zp_y);
        depth_to_space (block b, mode DCR): y[n, c, h*b + dy, w*b + dx] = x[n, (dy*b + dx)*C + c, h, w],
        (mode CRD): x[n, c*b*b + dy*b + dx, h, w].
    element-wise functions (relu, relu6, hardswish, ...: every kind of fwedge/ops/unary.py
        FUNCTIONS) (int8): y_q = lut[x_q + 128], an int8[256] table computed in Python (the
        function's float reference between the exact input and output scales, round half to
        even as onnxruntime's QuantizeLinear). silu is x * sigmoid(x), the ONNX pair
        Sigmoid -> Mul(x, sigmoid) as one op: its table maps x's quantization straight to the
        Mul's output quantization (float: the float32 product of x and its float32 sigmoid).
    prelu (int8, channel c on axis 1): y_q = luts[c, x_q + 128], one int8[256] table per channel
        computed as the functions' tables are, from x >= 0 ? x : slope[c] * x. Float:
        the same with the float32 slopes.
    softmax (int8, along attrs.axis, any axis of any rank): d = max(x_q) - x_q; e = exp_table[d] (int32[256], Q24 of
        exp(-s_x * d)); S = sum(e) (int64); p = (e * 2**30 + S // 2) // S (Q30 probability);
        y_q = clamp(zp_y + MBQM(p, m, s), -128, 127) with real = 2**-30 / s_y.
    quantize float->int8: y_q = clamp(round_half_even(x / s) + zp, -128, 127).
    quantize int8->int8 (requantize): y_q = clamp(zp_y + MBQM(x_q - zp_x, m, s)),
        real = s_x / s_y.
    dequantize: y = (x_q - zp) * s in float32.

Float ops (dtype float32 everywhere) use the same attrs; requant/lut fields are None and the
fused activation is applied in float (relu: max(x, 0), relu6: clip(x, 0, 6)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ACTIVATIONS = ("none", "relu", "relu6")

INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Affine quantization: real = (q - zero_point) * scale.

    Attributes:
        scale: one value per tensor, or one per channel along `axis`.
        zero_point: same length as scale.
        axis: the channel axis for per-channel parameters, None for per-tensor.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def same_as(self, other: "QuantParams | None") -> bool:
        """Same scale and zero point (float32-exact)."""
        return (
            other is not None
            and np.array_equal(np.float32(self.scale), np.float32(other.scale))
            and tuple(self.zero_point) == tuple(other.zero_point)
        )


@dataclass(frozen=True, eq=False)
class LoweredTensor:
    """A tensor of the lowered graph.

    Attributes:
        name: ONNX tensor name (int8 activations take the name of the ONNX QuantizeLinear
            output that produced them).
        shape: logical ONNX shape, batch 1.
        dtype: "float32", "int8" or "int32".
        quant: quantization parameters for integer tensors, None for float32.
        data: the value of a constant (weights, biases, constant operands), else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None
    data: np.ndarray | None = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Requant:
    """Output requantization and clamp of an int8 op (see the module docstring).

    Attributes:
        multiplier: int32 Q31 multipliers, one per output channel (or one).
        shift: int32 shifts, TFLite convention (> 0 shifts left, < 0 rounds right).
        act_min, act_max: the int8 clamp range after adding the output zero point; a fused
            relu/relu6 narrows it.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    act_min: int = INT8_MIN
    act_max: int = INT8_MAX


@dataclass(frozen=True, eq=False)
class AddQuant:
    """TFLite-style int8 ADD parameters (reference_integer_ops::Add)."""

    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int = INT8_MIN
    act_max: int = INT8_MAX


@dataclass(frozen=True, eq=False)
class ConvAttrs:
    """conv2d and depthwise_conv2d.

    Attributes:
        kernel: (kH, kW).
        strides: (sH, sW).
        pads: (top, left, bottom, right).
        dilations: (dH, dW).
        groups: ONNX group count (== C_in for depthwise_conv2d).
        depth_multiplier: M / C_in for depthwise, 1 otherwise.
        activation: fused "none", "relu" or "relu6".
        requant: int8 only.
    """

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    groups: int
    depth_multiplier: int = 1
    activation: str = "none"
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class FullyConnectedAttrs:
    """fully_connected: y[1, N] = x[1, K] @ W[N, K].T + b."""

    activation: str = "none"
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class BatchMatmulAttrs:
    """batch_matmul: Y[.., M, N] = A[.., M, K] @ B[.., K, N] over equal leading dims.

    Attributes:
        activation: fused "none", "relu" or "relu6".
        requant: int8 only: one (multiplier, shift) of s_a * s_b / s_y.
    """

    activation: str = "none"
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class ElementwiseAttrs:
    """add and mul, with NumPy broadcasting over same-rank operands.

    Attributes:
        activation: fused "none", "relu" or "relu6".
        add: int8 add parameters.
        requant: int8 mul output requantization (multiplier of s_a * s_b / s_y).
    """

    activation: str = "none"
    add: AddQuant | None = None
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class PoolAttrs:
    """avg_pool and max_pool (2-D, NCHW).

    Attributes:
        requant: int8 avg_pool only: kH*kW + 1 (multiplier, shift) pairs indexed by the count
            of summed positions.
    """

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    count_include_pad: bool = False
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class GlobalPoolAttrs:
    """global_avg_pool: mean over H and W, keeping dims ([1, C, 1, 1])."""

    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class ConcatAttrs:
    """concat along a non-negative logical axis."""

    axis: int


@dataclass(frozen=True, eq=False)
class ReshapeAttrs:
    """reshape (also ONNX Flatten/Squeeze/Unsqueeze): the logical NCHW-order new shape."""

    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class PadAttrs:
    """pad (constant mode): begin/end per logical axis; value in float (int8: the zero point)."""

    begin: tuple[int, ...]
    end: tuple[int, ...]
    value: float = 0.0


@dataclass(frozen=True, eq=False)
class UnaryAttrs:
    """The element-wise functions of fwedge/ops/unary.py (relu, relu6, hardswish, ...).

    Attributes:
        alpha, beta: hardsigmoid's max(0, min(1, alpha * x + beta)); alpha is also
            leaky_relu's slope below zero.
        lut: int8 only: int8[256], y_q = lut[x_q + 128].
    """

    alpha: float = 0.2
    beta: float = 0.5
    lut: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class PreluAttrs:
    """prelu: y = x >= 0 ? x : slope[c] * x, c indexing axis 1 (ONNX PRelu with a per-channel or
    single slope).

    Attributes:
        slope: float32[C], one slope per channel (C == 1: one for all).
        luts: int8 only: int8[C, 256], y_q = luts[c, x_q + 128].
    """

    slope: np.ndarray
    luts: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class LayerNormAttrs:
    """layer_norm over the last axis (float only): inputs x, gamma, beta."""

    epsilon: float


@dataclass(frozen=True, eq=False)
class SoftmaxAttrs:
    """softmax along `axis` (non-negative, a logical axis: any axis of any rank)."""

    axis: int
    beta: float = 1.0
    exp_table: np.ndarray | None = None
    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class QuantizeAttrs:
    """quantize (float->int8, or int8->int8 requantize with `requant`) and dequantize."""

    requant: Requant | None = None


@dataclass(frozen=True, eq=False)
class LoweredOp:
    """One op of the lowered graph.

    Attributes:
        kind: one of KINDS.
        name: the ONNX node name it came from (inserted ops get a derived name).
        inputs, outputs: tensor names. conv2d/depthwise_conv2d/fully_connected take
            (X, W, B); add/mul/batch_matmul take (A, B); concat takes all its inputs; others take (X,).
        attrs: the kind's attrs dataclass.
    """

    kind: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: object = None


@dataclass(eq=False)
class LoweredGraph:
    """The lowered graph (see the module docstring for the contract).

    Attributes:
        ops: ops in execution order.
        tensors: every tensor by name.
        inputs, outputs: graph input/output tensor names, in ONNX order.
        precision: "fp32" when every op is float, "int8" when any op is integer.
        float_ops: names of ONNX nodes kept in float inside an int8 graph (reported).
        onnx_names: ONNX tensor name -> lowered tensor carrying its value: the int8 tensor behind
            each activation DequantizeLinear output and each absorbed QuantizeLinear's float
            input (that one as quantized, i.e. saturated); for bisection (`fwedge diff`).
        float_fallback: (ONNX node, reason) of int8 nodes lowered in float because they have no
            int8 form (only with lower(..., float_fallback=True)).
        io_layouts: graph inputs and outputs whose tensor is NHWC in the source model ("NHWC"):
            the layout pass absorbed their Transpose, so the lowered tensor is the NCHW one and a
            target that stores it NHWC takes (gives) the source model's bytes as they are.
    """

    ops: list[LoweredOp]
    tensors: dict[str, LoweredTensor]
    inputs: list[str]
    outputs: list[str]
    precision: str = "fp32"
    float_ops: list[str] = field(default_factory=list)
    onnx_names: dict[str, str] = field(default_factory=dict)
    float_fallback: list[tuple[str, str]] = field(default_factory=list)
    io_layouts: dict[str, str] = field(default_factory=dict)

    def tensor(self, name: str) -> LoweredTensor:
        return self.tensors[name]

    def constants(self) -> list[LoweredTensor]:
        return [t for t in self.tensors.values() if t.is_constant]

    def producers(self) -> dict[str, LoweredOp]:
        return {name: op for op in self.ops for name in op.outputs}

    def consumers(self) -> dict[str, list[LoweredOp]]:
        users: dict[str, list[LoweredOp]] = {}
        for op in self.ops:
            for name in op.inputs:
                users.setdefault(name, []).append(op)
        return users


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1, upper: bool = True) -> tuple[int, int]:
    """SAME padding (before, after) of one spatial axis: the output has ceil(size / stride)
    positions. upper (ONNX SAME_UPPER, TFLite SAME) puts the odd pixel at the end, SAME_LOWER at
    the start. The lowering, the TFLite writer and the ncnn writer all pad with this."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = multiplier * 2**(shift - 31), multiplier in [2**30, 2**31).

    Args:
        real: a non-negative real multiplier.

    Returns:
        (multiplier, shift): an int32 Q31 multiplier and a TFLite-convention shift (> 0 left).
    """
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    # TfLiteRound: round half away from zero.
    q = int(math.floor(abs(fraction) * (1 << 31) + 0.5))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return q, shift


def requant_arrays(reals) -> tuple[np.ndarray, np.ndarray]:
    """quantize_multiplier over an array: (int32 multipliers, int32 shifts)."""
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(np.asarray(reals, dtype=np.float64))]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))

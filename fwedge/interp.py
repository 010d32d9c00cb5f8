"""NumPy reference interpreter of a LoweredGraph: integer-exact int8 semantics (TFLite reference)."""
from __future__ import annotations

import logging

import numpy as np

from fwedge.errors import DataError
from fwedge.passes.lowered import (
    INT8_MAX, INT8_MIN, LoweredGraph, LoweredOp, LoweredTensor, Requant,
)

log = logging.getLogger(__name__)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------
# gemmlowp / TFLite fixed-point primitives, on int64 arrays holding int32 values
# --------------------------------------------------------------------------------------------


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul: round(a * b / 2**31), saturating INT32_MIN²."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    # C integer division truncates toward zero.
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier_double_rounding(x, multiplier, shift) -> np.ndarray:
    """gemmlowp-style TFLite MultiplyByQuantizedMultiplier: SRDHM, then RoundingDivideByPOT.

    Rounds twice; with small accumulators and large right shifts the first rounding can land
    exactly on a half and the second push it one step away (e.g. 53.4992 -> 54). Kept for
    reference; the lowered graph uses the single-rounding form below.
    """
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = np.asarray(x, dtype=np.int64) * (np.int64(1) << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scaled, multiplier), right)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier, single-rounding form (TFLITE_SINGLE_ROUNDING=1).

    y = (x * multiplier + 2**(30 - shift)) >> (31 - shift) in int64: one rounding, half up.
    This is the semantics of the lowered graph: the C runtime computes exactly this. The
    double-rounding gemmlowp form drifts from onnxruntime's float requantization by one step in
    ~0.1 % of outputs, which compounds over deep networks.
    """
    total = 31 - np.asarray(shift, dtype=np.int64)
    product = np.asarray(x, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    return (product + (np.int64(1) << (total - 1))) >> total


def _channel(values: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    """Per-channel values shaped to broadcast along `axis` of a rank-`rank` array."""
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(values).reshape(shape)


def _requantize(acc: np.ndarray, requant: Requant, zero_point: int, axis: int | None = 1) -> np.ndarray:
    multiplier, shift = requant.multiplier, requant.shift
    if multiplier.size > 1:
        multiplier = _channel(multiplier, acc.ndim, axis)
        shift = _channel(shift, acc.ndim, axis)
    else:
        multiplier, shift = multiplier[0], shift[0]
    y = multiply_by_quantized_multiplier(acc, multiplier, shift) + zero_point
    return np.clip(y, requant.act_min, requant.act_max).astype(np.int8)


# --------------------------------------------------------------------------------------------
# Shared geometry
# --------------------------------------------------------------------------------------------


def _windows(x: np.ndarray, kernel, strides, dilations, pads, fill) -> np.ndarray:
    """Sliding windows [N, C, OH, OW, kH, kW] of x [N, C, H, W] padded with `fill`."""
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    n, c, h, w = padded.shape
    kh, kw = kernel
    dh, dw = dilations
    sh, sw = strides
    oh = (h - ((kh - 1) * dh + 1)) // sh + 1
    ow = (w - ((kw - 1) * dw + 1)) // sw + 1
    s = padded.strides
    return np.lib.stride_tricks.as_strided(
        padded, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False,
    )


def _convolve(x: np.ndarray, w: np.ndarray, attrs) -> np.ndarray:
    """Grouped 2-D convolution in float64 (exact for int8 products summed below 2**53)."""
    groups = attrs.groups
    m = w.shape[0]
    if groups == 1 and attrs.kernel == (1, 1) and attrs.strides == (1, 1) and not any(attrs.pads):
        # Pointwise: a channel matrix product, no windows needed.
        return np.tensordot(w.reshape(m, -1), x, axes=([1], [1])).transpose(1, 0, 2, 3)
    windows = _windows(x, attrs.kernel, attrs.strides, attrs.dilations, attrs.pads, 0.0)
    n, c, oh, ow, kh, kw = windows.shape
    if groups == c and w.shape[1] == 1:
        # Depthwise: one multiply-add per kernel tap over all channels at once.
        source = None if m == c else np.arange(m) // (m // c)
        out = np.zeros((n, m, oh, ow), dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                tap = windows[:, :, :, :, i, j]
                out += (tap if source is None else tap[:, source]) * w[:, 0, i, j].reshape(1, m, 1, 1)
        return out
    if groups == 1:
        # im2col and one BLAS matrix product.
        columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
        out = columns @ w.reshape(m, -1).T
        return out.reshape(n, oh, ow, m).transpose(0, 3, 1, 2)
    grouped = windows.reshape(n, groups, c // groups, oh, ow, kh, kw)
    weights = w.reshape(groups, m // groups, c // groups, kh, kw)
    out = np.einsum("ngcxyij,gmcij->ngmxy", grouped, weights, optimize=True)
    return out.reshape(n, m, oh, ow)


def _activate(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


# --------------------------------------------------------------------------------------------
# Kernels: one function per kind, float and int8 side by side
# --------------------------------------------------------------------------------------------

KERNELS = {}


def kernel(*kinds: str):
    def register(function):
        for kind in kinds:
            KERNELS[kind] = function
        return function

    return register


def _zp(tensor: LoweredTensor) -> int:
    return int(tensor.quant.zero_point[0])


@kernel("conv2d", "depthwise_conv2d")
def run_conv(op: LoweredOp, values, tensors):
    X, W, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    x, w, b = values[X.name], values[W.name], values[B.name]
    attrs = op.attrs
    if Y.dtype == "int8":
        acc = _convolve(x.astype(np.float64) - _zp(X), w.astype(np.float64), attrs)
        acc = np.rint(acc).astype(np.int64) + _channel(b.astype(np.int64), 4)
        return _requantize(acc, attrs.requant, _zp(Y))
    y = _convolve(x.astype(np.float64), w.astype(np.float64), attrs) + _channel(b.astype(np.float64), 4)
    return _activate(y, attrs.activation).astype(np.float32)


@kernel("fully_connected")
def run_fully_connected(op: LoweredOp, values, tensors):
    X, W, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    x, w, b = values[X.name], values[W.name], values[B.name]
    if Y.dtype == "int8":
        acc = (x.astype(np.float64) - _zp(X)) @ w.astype(np.float64).T
        acc = np.rint(acc).astype(np.int64) + b.astype(np.int64)
        return _requantize(acc, op.attrs.requant, _zp(Y), axis=1)
    y = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    return _activate(y, op.attrs.activation).astype(np.float32)


@kernel("add", "mul")
def run_elementwise(op: LoweredOp, values, tensors):
    A, B = (tensors[name] for name in op.inputs)
    Y = tensors[op.outputs[0]]
    a, b = values[A.name], values[B.name]
    attrs = op.attrs
    if Y.dtype == "int8":
        a = a.astype(np.int64) - _zp(A)
        b = b.astype(np.int64) - _zp(B)
        if op.kind == "add":
            p = attrs.add
            a = multiply_by_quantized_multiplier(a << p.left_shift, p.input1_multiplier, p.input1_shift)
            b = multiply_by_quantized_multiplier(b << p.left_shift, p.input2_multiplier, p.input2_shift)
            y = multiply_by_quantized_multiplier(a + b, p.output_multiplier, p.output_shift) + _zp(Y)
            return np.clip(y, p.act_min, p.act_max).astype(np.int8)
        return _requantize(a * b, attrs.requant, _zp(Y), axis=None)
    y = a + b if op.kind == "add" else a * b
    return _activate(y, attrs.activation).astype(np.float32)


def _pool_counts(shape, attrs) -> np.ndarray:
    """How many window positions fall inside the input, per output position [OH, OW]."""
    ones = np.ones((1, 1) + tuple(shape[2:]), dtype=np.int64)
    windows = _windows(ones, attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0)
    return windows.sum(axis=(4, 5))[0, 0]


@kernel("avg_pool")
def run_avg_pool(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    attrs = op.attrs
    area = attrs.kernel[0] * attrs.kernel[1]
    counts = np.full_like(_pool_counts(x.shape, attrs), area) if attrs.count_include_pad else _pool_counts(x.shape, attrs)
    if Y.dtype == "int8":
        acc = _windows(x.astype(np.int64) - _zp(X), attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0).sum(axis=(4, 5))
        requant = attrs.requant
        y = multiply_by_quantized_multiplier(acc, requant.multiplier[counts], requant.shift[counts]) + _zp(Y)
        return np.clip(y, requant.act_min, requant.act_max).astype(np.int8)
    acc = _windows(x.astype(np.float64), attrs.kernel, attrs.strides, (1, 1), attrs.pads, 0.0).sum(axis=(4, 5))
    return (acc / counts).astype(np.float32)


@kernel("max_pool")
def run_max_pool(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    attrs = op.attrs
    fill = INT8_MIN if x.dtype == np.int8 else -np.inf
    return _windows(x, attrs.kernel, attrs.strides, (1, 1), attrs.pads, fill).max(axis=(4, 5)).astype(x.dtype)


@kernel("global_avg_pool")
def run_global_avg_pool(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    if Y.dtype == "int8":
        acc = (x.astype(np.int64) - _zp(X)).sum(axis=(2, 3), keepdims=True)
        return _requantize(acc, op.attrs.requant, _zp(Y), axis=None)
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True).astype(np.float32)


@kernel("concat")
def run_concat(op: LoweredOp, values, tensors):
    batch = max(values[name].shape[0] for name in op.inputs)
    parts = [np.broadcast_to(values[name], (batch,) + values[name].shape[1:]) for name in op.inputs]
    return np.concatenate(parts, axis=op.attrs.axis)


@kernel("reshape")
def run_reshape(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    return x.reshape((x.shape[0],) + tuple(op.attrs.shape[1:]))


@kernel("pad")
def run_pad(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    x = values[X.name]
    value = _zp(X) if X.dtype == "int8" else op.attrs.value
    widths = list(zip(op.attrs.begin, op.attrs.end))
    return np.pad(x, widths, constant_values=value)


_FLOAT_UNARY = {
    "relu": lambda x, a: np.maximum(x, 0),
    "relu6": lambda x, a: np.clip(x, 0, 6),
    "hardswish": lambda x, a: x * np.clip(x / 6.0 + 0.5, 0, 1),
    "hardsigmoid": lambda x, a: np.clip(a.alpha * x + a.beta, 0, 1),
    "sigmoid": lambda x, a: 1.0 / (1.0 + np.exp(-x)),
}


@kernel("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid")
def run_unary(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    if x.dtype == np.int8:
        return op.attrs.lut[x.astype(np.int64) + 128]
    return _FLOAT_UNARY[op.kind](x.astype(np.float64), op.attrs).astype(np.float32)


@kernel("softmax")
def run_softmax(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    attrs = op.attrs
    if Y.dtype == "int8":
        x = x.astype(np.int64)
        e = attrs.exp_table.astype(np.int64)[x.max(axis=-1, keepdims=True) - x]
        total = e.sum(axis=-1, keepdims=True)
        p = ((e << 30) + total // 2) // total
        return _requantize(p, attrs.requant, _zp(Y), axis=None)
    x = x.astype(np.float64) * attrs.beta
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@kernel("quantize")
def run_quantize(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    Y = tensors[op.outputs[0]]
    x = values[X.name]
    if X.dtype == "int8":
        return _requantize(x.astype(np.int64) - _zp(X), op.attrs.requant, _zp(Y), axis=None)
    # onnxruntime QuantizeLinear: float32 division, round half to even, add zero point, saturate.
    q = np.rint(x.astype(np.float32) / np.float32(Y.quant.scale[0])) + _zp(Y)
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


@kernel("dequantize")
def run_dequantize(op: LoweredOp, values, tensors):
    X = tensors[op.inputs[0]]
    x = values[X.name]
    return ((x.astype(np.int32) - _zp(X)).astype(np.float32) * np.float32(X.quant.scale[0])).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Graph execution
# --------------------------------------------------------------------------------------------


def run_lowered(graph: LoweredGraph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run a LoweredGraph on a batch.

    Args:
        graph: the lowered graph.
        feeds: input name -> array of shape [N, ...] (logical NCHW layout, float32 for float
            inputs, int8 for int8 inputs); N may exceed the graph's batch of 1.
        keep_all: return every intermediate tensor too (for bisection), not just the outputs.

    Returns:
        Output name (or every tensor name) -> array with leading dimension N.

    Raises:
        DataError: a feed is missing or has the wrong shape.
    """
    values: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in feeds:
            raise DataError(f"lowered graph: no feed for input '{name}'")
        tensor = graph.tensors[name]
        array = np.asarray(feeds[name])
        if tuple(array.shape[1:]) != tuple(tensor.shape[1:]):
            raise DataError(
                f"input '{name}': expected shape [N, {', '.join(map(str, tensor.shape[1:]))}], "
                f"got {list(array.shape)}"
            )
        values[name] = array.astype(np.float32 if tensor.dtype == "float32" else np.int8)
    for tensor in graph.tensors.values():
        if tensor.is_constant:
            values[tensor.name] = tensor.data
    for op in graph.ops:
        values[op.outputs[0]] = KERNELS[op.kind](op, values, graph.tensors)
    if keep_all:
        return values
    return {name: values[name] for name in graph.outputs}

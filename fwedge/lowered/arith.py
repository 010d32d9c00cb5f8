"""Fixed-point primitives and shared geometry of the reference interpreter.

The op cards' interpreter kernels (fwedge/ops/) compute with these; fwedge/lowered/interp.py
runs a graph by dispatching each op to its kind's kernel.
"""
from __future__ import annotations

import numpy as np

from fwedge.lowered.graph import LoweredTensor, Requant


INT32_MIN = -(2**31)


INT32_MAX = 2**31 - 1


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


def channel(values: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    """Per-channel values shaped to broadcast along `axis` of a rank-`rank` array."""
    shape = [1] * rank
    shape[axis] = -1
    return np.asarray(values).reshape(shape)


def requantize(acc: np.ndarray, requant: Requant, zero_point: int, axis: int | None = 1) -> np.ndarray:
    multiplier, shift = requant.multiplier, requant.shift
    if multiplier.size > 1:
        multiplier = channel(multiplier, acc.ndim, axis)
        shift = channel(shift, acc.ndim, axis)
    else:
        multiplier, shift = multiplier[0], shift[0]
    y = multiply_by_quantized_multiplier(acc, multiplier, shift) + zero_point
    return np.clip(y, requant.act_min, requant.act_max).astype(np.int8)


def sliding_windows(x: np.ndarray, kernel, strides, dilations, pads, fill) -> np.ndarray:
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


def convolve(x: np.ndarray, w: np.ndarray, attrs) -> np.ndarray:
    """Grouped 2-D convolution in float64 (exact for int8 products summed below 2**53)."""
    groups = attrs.groups
    m = w.shape[0]
    if groups == 1 and attrs.kernel == (1, 1) and attrs.strides == (1, 1) and not any(attrs.pads):
        # Pointwise: a channel matrix product, no windows needed.
        return np.tensordot(w.reshape(m, -1), x, axes=([1], [1])).transpose(1, 0, 2, 3)
    windows = sliding_windows(x, attrs.kernel, attrs.strides, attrs.dilations, attrs.pads, 0.0)
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


def activate(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


def zp(tensor: LoweredTensor) -> int:
    return int(tensor.quant.zero_point[0])


"""C target, aarch64: the per-channel constants of the NEON int8 conv kernels, computed at export.

Before summing a layer, runtime_c/conv2d_s8_neon.h (conv2d_s8_neon) and runtime_c/depthwise_s8.c
(depthwise_tiles_neon) derive constants from the weights and the requantization: the bias less
the input zero point times each channel's weight sum (the kernels sum raw input bytes), the
SRSHL form of each shift, and two layer-wide flags. They depend on nothing but constants, yet
took about 4% of mobilenet_v2_tiny's instructions on every inference. Here they are computed
once, the same values by the same integer rules (int32 wrap-around included), and model.c hands
them to the kernels in a fw_conv_prepared struct (runtime_c/fwedge_rt.h documents each field).
A kernel that does not read them (every build but aarch64's NEON paths) computes its own.
"""

from __future__ import annotations

import numpy as np

# Output channels per block of packed int8 conv weights (FW_CONV_BLOCK in fwedge_rt.h; the
# packing in c_emitters.py uses it too) and the most channels whose constants the conv kernel
# holds for the whole layer (FW_REQUANT_TABLE, conv2d_s8.c): a wider layer's constants are
# computed a block at a time, and not prepared here.
CONV_BLOCK = 8
_REQUANT_TABLE = 256


def _wrap_int32(values: np.ndarray) -> np.ndarray:
    """int64 values reduced to int32 as C's two's-complement int32 arithmetic does."""
    return ((values.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def _high(multiplier: np.ndarray, shift: np.ndarray) -> bool:
    """Every channel takes the SQDMULH form of the requantization (shift <= -1, multiplier >= 0)."""
    return bool(np.all((shift <= -1) & (multiplier >= 0)))


def conv_constants(weights: np.ndarray, bias: np.ndarray | None, multiplier: np.ndarray, shift: np.ndarray,
                   input_zero_point: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, bool] | None:
    """(multiplier, SRSHL shift, bias less zp * weight sums, high, no weight -128) of a groups-1
    int8 conv over its channels rounded up to whole blocks, as conv2d_s8_neon computes them
    (neon_constants, neon_bias); None for a layer wider than the kernel's table.

    weights: OIHW int8; bias: int32 per output channel or None; multiplier, shift: int32 per
    output channel.
    """
    out_c = weights.shape[0]
    padded = -(-out_c // CONV_BLOCK) * CONV_BLOCK
    if padded > _REQUANT_TABLE:
        return None
    channel = np.minimum(np.arange(padded), out_c - 1)  # a channel past out_c repeats the last
    high = _high(multiplier, shift)
    shifts = shift.astype(np.int64)[channel]
    sums = np.zeros(padded, dtype=np.int64)
    sums[:out_c] = weights.reshape(out_c, -1).astype(np.int64).sum(axis=1)  # padded rows: no weights
    base = bias.astype(np.int64)[channel] if bias is not None else np.zeros(padded, dtype=np.int64)
    return (multiplier.astype(np.int32)[channel], (shifts if high else shifts - 31).astype(np.int32),
            _wrap_int32(base - int(input_zero_point) * sums), high, bool(np.all(weights != -128)))


def depthwise_constants(taps_by_channel: np.ndarray, bias: np.ndarray | None, multiplier: np.ndarray,
                        shift: np.ndarray, input_zero_point: int) -> tuple[np.ndarray, bool, bool]:
    """(bias less zp * each channel's tap sum, high, no weight -128) of a depthwise conv with
    channel multiplier 1, as depthwise_tiles_neon computes them.

    taps_by_channel: int8 [kh][kw][C]; bias: int32 per channel or None.
    """
    channels = taps_by_channel.shape[-1]
    sums = taps_by_channel.reshape(-1, channels).astype(np.int64).sum(axis=0)
    base = bias.astype(np.int64) if bias is not None else np.zeros(channels, dtype=np.int64)
    return (_wrap_int32(base - int(input_zero_point) * sums), _high(multiplier, shift),
            bool(np.all(taps_by_channel != -128)))

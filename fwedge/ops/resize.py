"""Op card: Resize, nearest (resize_nearest) and bilinear (resize_linear), the upsampling of FPN necks and YOLO heads.

Nearest resizing picks one source row per output row and one source column per output column.
The card computes both index tables from the ONNX rule once, at lowering (every
coordinate_transformation_mode but tf_crop_and_resize, every nearest_mode, scales or sizes), so
the kernel is a gather in every runtime, and each target checks that its own rule gives the same
tables (targets/tflite.py, targets/ncnn_writer.py). In int8 the output keeps the input's scale
and zero point.

Bilinear resizing (mode linear over H and W; asymmetric, half_pixel, pytorch_half_pixel,
align_corners) reads two source rows and two source columns per output pixel. Their indices and
weights are computed once too, by onnxruntime's float32 rule (SetupUpsampleBilinear), and the
kernels interpolate in onnxruntime's operation order; int8 dequantizes, interpolates in float32
and quantizes, as onnxruntime's exact QDQ run does. Cubic mode is refused with its reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.ir import max_tensor_bytes
from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, lower_data_movement, note_float
from fwedge.lowered.graph import LoweredOp
from fwedge.lowered.view import QdqView, input_rank
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
          "half_pixel_symmetric")
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_LINEAR_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")


@dataclass(frozen=True)
class ResizeAttrs:
    """Source row of each output row, source column of each output column (NCHW H and W)."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]


@dataclass(frozen=True)
class LinearAxis:
    """One axis of a bilinear Resize: output index i reads source indices low[i] and high[i]
    with the float32 weights weight_low[i] and weight_high[i] (onnxruntime's dy2 and dy1)."""

    low: tuple[int, ...]
    high: tuple[int, ...]
    weight_low: tuple[float, ...]
    weight_high: tuple[float, ...]


@dataclass(frozen=True)
class LinearResizeAttrs:
    """The row (H) and column (W) tables of a bilinear Resize of an NCHW tensor."""

    rows: LinearAxis
    cols: LinearAxis


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attribute(node, name, default)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _scale_inputs(consts: dict, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scales, sizes) constants of a Resize (opset 11+: X, roi, scales, sizes), either may be None."""
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return (None if scales is None or scales.size == 0 else scales.astype(np.float64),
            None if sizes is None or sizes.size == 0 else sizes.astype(np.int64))


def original_coordinate(step: int, out_size: int, in_size: int, scale: float, mode: str) -> np.float32:
    """The source coordinate of output index `step` along one axis by the ONNX Resize rule of
    `mode`, in float32 arithmetic in onnxruntime's operation order."""
    f32 = np.float32
    x, scale, size, out, half = f32(step), f32(scale), f32(in_size), f32(out_size), f32(0.5)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (x + half) / scale - half if mode == "half_pixel" or out_size > 1 else f32(0)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out_size > 1 else f32(0)
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    if mode == "half_pixel_symmetric":
        adjustment = out / (scale * size)
        return size / 2 * (1 - adjustment) + (x + half) / scale - half
    return x / scale  # asymmetric


def source_index(out_size: int, in_size: int, scale: float, mode: str, rounding: str) -> tuple[int, ...]:
    """The source index of every output index along one axis, by the ONNX Resize nearest rule
    in float32 arithmetic, as onnxruntime (the reference) computes it: a tie such as 2.5 must
    fall where onnxruntime puts it. A scale of 1 onto the same size is the identity there."""
    if out_size == in_size and np.float32(scale) == 1:
        return tuple(range(out_size))
    indices = []
    for step in range(out_size):
        original = float(original_coordinate(step, out_size, in_size, scale, mode))
        if rounding == "floor":
            index = math.floor(original)
        elif rounding == "ceil":
            index = math.ceil(original)
        elif original == math.floor(original) + 0.5:  # a tie
            index = math.floor(original) if rounding == "round_prefer_floor" else math.ceil(original)
        else:
            index = math.floor(original + 0.5)
        indices.append(min(max(index, 0), in_size - 1))
    return tuple(indices)


def linear_axis(out_size: int, in_size: int, scale: float, mode: str) -> LinearAxis:
    """The bilinear indices and weights of one axis as onnxruntime computes them (float32): the
    coordinate (the output index itself when the scale is 1) clamped to [0, in - 1], low its
    integer part, high = min(low + 1, in - 1), weights |c - high| and |c - low|, 1/2 each when
    low == high (the last source row, read twice)."""
    f32 = np.float32
    low, high, weight_low, weight_high = [], [], [], []
    for step in range(out_size):
        coordinate = f32(step) if f32(scale) == 1 else original_coordinate(step, out_size, in_size, scale, mode)
        coordinate = max(f32(0), min(f32(coordinate), f32(in_size - 1)))
        first = min(int(coordinate), in_size - 1)
        second = min(first + 1, in_size - 1)
        pair = (f32(0.5), f32(0.5)) if first == second else (abs(coordinate - f32(second)), abs(coordinate - f32(first)))
        low.append(first)
        high.append(second)
        weight_low.append(float(pair[0]))
        weight_high.append(float(pair[1]))
    return LinearAxis(tuple(low), tuple(high), tuple(weight_low), tuple(weight_high))


def axis_matrix(low, high, weight_low, weight_high, in_size: int) -> np.ndarray:
    """One axis of a bilinear rule as a dense [out, in] float64 matrix (the weights of each output
    index on the source indices), so that rules written differently (a low index twice with 1/2
    each, or a weight of 0 on an index) compare as the interpolation they compute."""
    matrix = np.zeros((len(low), in_size))
    for out_index, pair in enumerate(zip(low, high, weight_low, weight_high)):
        matrix[out_index, pair[0]] += pair[2]
        matrix[out_index, pair[1]] += pair[3]
    return matrix


def same_interpolation(axis: LinearAxis, other: np.ndarray) -> bool:
    """Whether another runtime's rule (its axis_matrix) gives the weights of `axis` up to float32
    rounding: four float32 ulps of the largest source coordinate, since a runtime computing
    (x + 1/2) * (in / out) instead of (x + 1/2) / (out / in) lands a few ulps away. Two real
    rules differ by far more (half_pixel and asymmetric by (1 - in / out) / 2 per weight)."""
    in_size = other.shape[1]
    ours = axis_matrix(axis.low, axis.high, axis.weight_low, axis.weight_high, in_size)
    bound = 4 * max(in_size, 1) * float(np.finfo(np.float32).eps)
    return ours.shape == other.shape and bool(np.all(np.abs(ours - other) <= bound))


def _mode_problem(node: onnx.NodeProto) -> str | None:
    """Why the mode, coordinate transformation or rounding of a Resize has no lowering, or None."""
    mode = _text(node, "mode", "nearest")
    transform = _text(node, "coordinate_transformation_mode", "half_pixel")
    if mode == "cubic":
        return "mode 'cubic': only nearest and linear (bicubic's 4x4 taps have no kernel)"
    if mode not in ("nearest", "linear"):
        return f"mode {mode!r}: only nearest and linear"
    if mode == "linear":
        if transform not in _LINEAR_MODES:
            return f"linear with coordinate_transformation_mode {transform!r}: only {', '.join(_LINEAR_MODES)}"
        return None
    if transform not in _MODES:
        return f"coordinate_transformation_mode {transform!r}"
    if _text(node, "nearest_mode", "round_prefer_floor") not in _ROUNDING:
        return f"nearest_mode {_text(node, 'nearest_mode', '')!r}"
    return None


def check_resize(view: QdqView, node: onnx.NodeProto) -> str | None:
    """Why a Resize cannot be lowered (or written for ncnn), or None; `view` needs consts and shapes."""
    if input_rank(view, node) != 4:
        return f"rank-{input_rank(view, node)} input, only 4-D (N, C, H, W)"
    problem = _mode_problem(node)
    if problem is not None:
        return problem
    if attribute(node, "axes", None) is not None or attribute(node, "antialias", 0):
        return "axes or antialias attributes"
    if _text(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return "keep_aspect_ratio_policy other than stretch"
    scales, sizes = _scale_inputs(view.consts, node)
    if scales is None and sizes is None:
        return "scales and sizes must be constants"
    factors = scales if scales is not None else sizes
    if factors.size != 4 or (scales is not None and not np.all(scales[2:] > 0)):
        return f"{'scales' if scales is not None else 'sizes'} {factors.tolist()}: four values, H and W > 0"
    if scales is not None and (scales[0] != 1 or scales[1] != 1):
        return "resizes the batch or channel axis"
    in_shape = view.shapes[node.input[0]]
    if sizes is not None and sizes[0] != in_shape[0]:
        # a model exported at a fixed batch N > 1 keeps N here after its input is fixed to batch 1
        return (f"sizes {sizes.tolist()} resize the batch axis of an input of batch {in_shape[0]} (a bundle "
                "runs one sample at a time: export the model with batch 1 or a dynamic batch)")
    if sizes is not None and sizes[1] != in_shape[1]:
        return "resizes the channel axis"
    # The tables hold one entry per output row and column: bound the output before making them.
    out = view.shapes.get(node.output[0]) or []
    if all(isinstance(d, int) for d in out) and 4 * int(np.prod(out, dtype=object)) > max_tensor_bytes():
        return f"output of shape {out} takes more than the {max_tensor_bytes():,} bytes of FWEDGE_MAX_TENSOR_BYTES"
    return None


def _axis_scales(consts: dict, node: onnx.NodeProto, in_shape, out_shape) -> tuple[float, float]:
    """The float32 scales of H and W: the scales input, or with sizes output / input size
    (float32, as onnxruntime has it)."""
    scales, _ = _scale_inputs(consts, node)
    return tuple(float(np.float32(scales[axis])) if scales is not None else float(
        np.float32(out_shape[axis]) / np.float32(in_shape[axis])) for axis in (2, 3))


def is_linear(node: onnx.NodeProto) -> bool:
    return _text(node, "mode", "nearest") == "linear"


def coordinate_mode(node: onnx.NodeProto) -> str:
    """The node's coordinate_transformation_mode (ONNX's default half_pixel)."""
    return _text(node, "coordinate_transformation_mode", "half_pixel")


def resize_tables(consts: dict, node: onnx.NodeProto, in_shape, out_shape) -> ResizeAttrs | LinearResizeAttrs:
    """The row and column tables of a Resize whose support check passed: source indices
    (nearest) or source indices and weights (linear).

    Args:
        consts: constant name -> array (the scales or sizes input is looked up there).
        node: the Resize node.
        in_shape, out_shape: its static NCHW input and output shapes.
    """
    transform = _text(node, "coordinate_transformation_mode", "half_pixel")
    scales = _axis_scales(consts, node, in_shape, out_shape)
    if is_linear(node):
        return LinearResizeAttrs(*(linear_axis(out_shape[axis], in_shape[axis], scale, transform)
                                   for axis, scale in zip((2, 3), scales)))
    rounding = _text(node, "nearest_mode", "round_prefer_floor")
    return ResizeAttrs(*(source_index(out_shape[axis], in_shape[axis], scale, transform, rounding)
                         for axis, scale in zip((2, 3), scales)))


def _lower_resize(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = resize_tables(builder.view.consts, node, builder.shape(node.input[0]), builder.shape(node.output[0]))
    if isinstance(attrs, ResizeAttrs):
        lower_data_movement(builder, node, "resize_nearest", attrs)
        return
    # Bilinear int8 keeps onnxruntime's DQ -> Resize -> Q as one op: the kernel reads both
    # quantizations, so an output scale other than the input's costs no second rounding.
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        builder.emit("resize_linear", node.name, [operands[0].name], [out[0]], attrs)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("resize_linear", node.name, [x], [float_output(builder, node.output[0])], attrs)


def run_resize_nearest(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    return x[:, :, list(op.attrs.rows)][:, :, :, list(op.attrs.cols)]


def bilinear_f32(x: np.ndarray, attrs: LinearResizeAttrs) -> np.ndarray:
    """Bilinear resize of a float32 NCHW array in onnxruntime's order: each weight product
    rounded to float32, then the four terms summed left to right (the C kernel's order too)."""
    rows, cols = attrs.rows, attrs.cols
    f32 = np.float32
    wy_low, wy_high = (np.asarray(w, f32)[:, None] for w in (rows.weight_low, rows.weight_high))
    wx_low, wx_high = (np.asarray(w, f32)[None, :] for w in (cols.weight_low, cols.weight_high))
    top, bottom = x[:, :, list(rows.low)], x[:, :, list(rows.high)]
    low, high = list(cols.low), list(cols.high)
    return ((wx_low * wy_low) * top[..., low] + (wx_high * wy_low) * top[..., high]
            + (wx_low * wy_high) * bottom[..., low] + (wx_high * wy_high) * bottom[..., high])


def run_resize_linear(op: LoweredOp, values, tensors):
    X, Y = tensors[op.inputs[0]], tensors[op.outputs[0]]
    x = values[op.inputs[0]]
    if X.dtype != "int8":
        return bilinear_f32(x.astype(np.float32), op.attrs)
    # onnxruntime's DequantizeLinear ((q - zp) * s), the float Resize, its QuantizeLinear
    # (v / s rounded half to even, plus zp, clamped), each in float32.
    real = (x.astype(np.int32) - X.quant.zero_point[0]).astype(np.float32) * np.float32(X.quant.scale[0])
    y = np.rint(bilinear_f32(real, op.attrs) / np.float32(Y.quant.scale[0])) + Y.quant.zero_point[0]
    return np.clip(y, -128, 127).astype(np.int8)


register_kind("resize_nearest", run_resize_nearest)
register_kind("resize_linear", run_resize_linear)
register_op("Resize", OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
            kinds=("resize_nearest", "resize_linear"), lower=_lower_resize, check=check_resize, static_output=True)

"""Op card: Resize in nearest mode (resize_nearest), the upsampling of FPN necks and YOLO heads.

Nearest resizing picks one source row per output row and one source column per output column.
The card computes both index tables from the ONNX rule once, at lowering (every
coordinate_transformation_mode but tf_crop_and_resize, every nearest_mode, scales or sizes), so
the kernel is a gather in every runtime, and each target checks that its own rule gives the same
tables (targets/tflite.py, targets/ncnn_writer.py). In int8 the output keeps the input's scale
and zero point. Linear and cubic modes are refused with that reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.ir import max_tensor_bytes
from fwedge.lowered.build import Builder, lower_data_movement
from fwedge.lowered.graph import LoweredOp
from fwedge.lowered.view import QdqView, input_rank
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
          "half_pixel_symmetric")
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@dataclass(frozen=True)
class ResizeAttrs:
    """Source row of each output row, source column of each output column (NCHW H and W)."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attribute(node, name, default)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _scale_inputs(consts: dict, node: onnx.NodeProto) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scales, sizes) constants of a Resize (opset 11+: X, roi, scales, sizes), either may be None."""
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return (None if scales is None or scales.size == 0 else scales.astype(np.float64),
            None if sizes is None or sizes.size == 0 else sizes.astype(np.int64))


def source_index(out_size: int, in_size: int, scale: float, mode: str, rounding: str) -> tuple[int, ...]:
    """The source index of every output index along one axis, by the ONNX Resize nearest rule
    in float32 arithmetic, as onnxruntime (the reference) computes it: a tie such as 2.5 must
    fall where onnxruntime puts it. A scale of 1 onto the same size is the identity there."""
    f32 = np.float32
    scale, size, out = f32(scale), f32(in_size), f32(out_size)
    if out_size == in_size and scale == 1:
        return tuple(range(out_size))
    half = f32(0.5)
    indices = []
    for step in range(out_size):
        x = f32(step)
        if mode in ("half_pixel", "pytorch_half_pixel"):
            original = (x + half) / scale - half if mode == "half_pixel" or out_size > 1 else f32(0)
        elif mode == "align_corners":
            original = x * (size - 1) / (out - 1) if out_size > 1 else f32(0)
        elif mode == "tf_half_pixel_for_nn":
            original = (x + half) / scale
        elif mode == "half_pixel_symmetric":
            adjustment = out / (scale * size)
            original = size / 2 * (1 - adjustment) + (x + half) / scale - half
        else:  # asymmetric
            original = x / scale
        original = float(f32(original))
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


def check_resize(view: QdqView, node: onnx.NodeProto) -> str | None:
    """Why a Resize cannot be lowered (or written for ncnn), or None; `view` needs consts and shapes."""
    if input_rank(view, node) != 4:
        return f"rank-{input_rank(view, node)} input, only 4-D (N, C, H, W)"
    mode = _text(node, "mode", "nearest")
    if mode != "nearest":
        return f"mode {mode!r}: only nearest"
    transform = _text(node, "coordinate_transformation_mode", "half_pixel")
    if transform not in _MODES:
        return f"coordinate_transformation_mode {transform!r}"
    if _text(node, "nearest_mode", "round_prefer_floor") not in _ROUNDING:
        return f"nearest_mode {_text(node, 'nearest_mode', '')!r}"
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
    if sizes is not None and sizes[1] != view.shapes[node.input[0]][1]:
        return "resizes the channel axis"
    # The tables hold one entry per output row and column: bound the output before making them.
    out = view.shapes.get(node.output[0]) or []
    if all(isinstance(d, int) for d in out) and 4 * int(np.prod(out, dtype=object)) > max_tensor_bytes():
        return f"output of shape {out} takes more than the {max_tensor_bytes():,} bytes of FWEDGE_MAX_TENSOR_BYTES"
    return None


def resize_tables(consts: dict, node: onnx.NodeProto, in_shape, out_shape) -> ResizeAttrs:
    """The row and column tables of a nearest Resize whose support check passed.

    Args:
        consts: constant name -> array (the scales or sizes input is looked up there).
        node: the Resize node.
        in_shape, out_shape: its static NCHW input and output shapes.
    """
    scales, _ = _scale_inputs(consts, node)
    transform = _text(node, "coordinate_transformation_mode", "half_pixel")
    rounding = _text(node, "nearest_mode", "round_prefer_floor")
    tables = []
    for axis in (2, 3):
        # With sizes, the scale is output / input size (float32, as onnxruntime has it).
        scale = float(np.float32(scales[axis])) if scales is not None else float(
            np.float32(out_shape[axis]) / np.float32(in_shape[axis]))
        tables.append(source_index(out_shape[axis], in_shape[axis], scale, transform, rounding))
    return ResizeAttrs(*tables)


def _lower_resize(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = resize_tables(builder.view.consts, node, builder.shape(node.input[0]), builder.shape(node.output[0]))
    lower_data_movement(builder, node, "resize_nearest", attrs)


def run_resize_nearest(op: LoweredOp, values, tensors):
    x = values[op.inputs[0]]
    return x[:, :, list(op.attrs.rows)][:, :, :, list(op.attrs.cols)]


register_kind("resize_nearest", run_resize_nearest)
register_op("Resize", OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
            kinds=("resize_nearest",), lower=_lower_resize, check=check_resize, static_output=True)

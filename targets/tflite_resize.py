"""TFLite emitters of the resize kinds: RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR, with the
(align_corners, half_pixel_centers) flags under which TFLite's own rule gives the op's tables.
"""
from __future__ import annotations

import numpy as np

from fwedge.lowered.graph import LoweredOp, LoweredTensor
from fwedge.ops.resize import axis_matrix, same_interpolation
from fwedge.targets.tflite_writer import _Writer, tflite_op


def _tflite_nearest(out_size: int, in_size: int, align_corners: bool, half_pixel_centers: bool) -> tuple[int, ...]:
    """RESIZE_NEAREST_NEIGHBOR's source index per output index (its reference kernel, float32)."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    indices = []
    for x in range(out_size):
        scaled = float((f32(x) + offset) * scale)
        value = int(np.floor(scaled)) if not align_corners else int(np.sign(scaled) * np.floor(abs(scaled) + 0.5))
        value = min(value, in_size - 1)
        indices.append(max(0, value) if half_pixel_centers else value)
    return tuple(indices)


def nearest_flags(in_shape, out_shape, attrs) -> tuple[bool, bool] | None:
    """The (align_corners, half_pixel_centers) under which TFLite picks the op's own tables."""
    for flags in ((False, False), (False, True), (True, False)):
        if (_tflite_nearest(out_shape[2], in_shape[2], *flags) == tuple(attrs.rows)
                and _tflite_nearest(out_shape[3], in_shape[3], *flags) == tuple(attrs.cols)):
            return flags
    return None


def _tflite_bilinear(out_size: int, in_size: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    """RESIZE_BILINEAR's weights of one axis as a dense [out, in] matrix (its reference kernel,
    float32: scale in / out or (in - 1) / (out - 1), c = (x + 1/2) * scale - 1/2 or x * scale,
    indices max(floor c, 0) and min(ceil c, in - 1), weights 1 - (c - floor c) and c - floor c)."""
    f32 = np.float32
    scale = f32(in_size - 1) / f32(out_size - 1) if align_corners and out_size > 1 else f32(in_size) / f32(out_size)
    low, high, weight_low, weight_high = [], [], [], []
    for x in range(out_size):
        c = (f32(x) + f32(0.5)) * scale - f32(0.5) if half_pixel_centers else f32(x) * scale
        floor = np.floor(c)
        low.append(max(int(floor), 0))
        high.append(min(int(np.ceil(c)), in_size - 1))
        weight_high.append(float(c - floor))
        weight_low.append(float(f32(1) - (c - floor)))
    return axis_matrix(low, high, weight_low, weight_high, in_size)


def _bilinear_flags(in_shape, out_shape, attrs) -> tuple[bool, bool] | None:
    """The (align_corners, half_pixel_centers) under which TFLite interpolates with the op's weights."""
    for flags in ((False, False), (False, True), (True, False)):
        if all(same_interpolation(axis, _tflite_bilinear(out_shape[k], in_shape[k], *flags))
               for k, axis in ((2, attrs.rows), (3, attrs.cols))):
            return flags
    return None


def bilinear_problem(X: LoweredTensor, Y: LoweredTensor, op: LoweredOp) -> str | None:
    """Why RESIZE_BILINEAR cannot compute a resize_linear op, or None."""
    if _bilinear_flags(X.shape, Y.shape, op.attrs) is None:
        return ("bilinear weights follow no TFLite rule (align_corners, half_pixel_centers): TFLite has "
                "asymmetric, half_pixel, align_corners, and pytorch_half_pixel only onto sizes above 1")
    if X.dtype == "int8" and not X.quant.same_as(Y.quant):
        return "int8 bilinear resize whose output scale or zero point is not its input's: RESIZE_BILINEAR keeps them"
    return None


# kind -> (builtin, its options, the (align_corners, half_pixel_centers) rule of the op's tables)
_RESIZES = {"resize_nearest": ("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions", nearest_flags),
            "resize_linear": ("RESIZE_BILINEAR", "ResizeBilinearOptions", _bilinear_flags)}


@tflite_op("resize_nearest", "resize_linear")
def emit_resize(writer: _Writer, op: LoweredOp) -> None:
    """RESIZE_NEAREST_NEIGHBOR or RESIZE_BILINEAR to the output size, with the flags under which
    TFLite's rule gives the op's tables (_op_problem checked that there are such flags)."""
    X, Y = writer.graph.tensors[op.inputs[0]], writer.graph.tensors[op.outputs[0]]
    builtin, options, rule = _RESIZES[op.kind]
    align_corners, half_pixel = rule(X.shape, Y.shape, op.attrs)
    size = writer.const(f"{op.name}/size", np.array(Y.shape[2:], dtype=np.int32))
    writer.op(builtin, [writer.tensor(op.inputs[0]), size], [writer.tensor(op.outputs[0])],
              options, writer.options(f"{options}T", alignCorners=align_corners, halfPixelCenters=half_pixel),
              int8_version=3 if half_pixel else None)

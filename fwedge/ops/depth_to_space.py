"""Op card: DepthToSpace (depth_to_space), the rearrangement behind sub-pixel upsampling and
behind ConvTranspose with kernel == stride (passes/conv_transpose.py rewrites it as a 1x1 Conv
and DepthToSpace, DCR).

    DCR: y[n, c, h*b + dy, w*b + dx] = x[n, (dy*b + dx)*C + c, h, w]
    CRD: y[n, c, h*b + dy, w*b + dx] = x[n, c*b*b + dy*b + dx, h, w]

Data movement only: in int8 the output keeps the input's scale and zero point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.lowered.build import Builder, lower_data_movement
from fwedge.lowered.graph import LoweredOp
from fwedge.lowered.view import QdqView, input_rank
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op

MAX_BLOCK = 64  # a larger block is no upsampling a real model does; it bounds the loops


@dataclass(frozen=True)
class DepthToSpaceAttrs:
    """Block size b and the channel order of the input ("DCR" or "CRD")."""

    block: int
    mode: str


def depth_to_space_mode(node: onnx.NodeProto) -> str:
    value = attribute(node, "mode", "DCR")
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def check_depth_to_space(view: QdqView, node: onnx.NodeProto) -> str | None:
    """Why a DepthToSpace cannot be lowered (or written for ncnn), or None."""
    if input_rank(view, node) != 4:
        return f"rank-{input_rank(view, node)} input, only 4-D (N, C, H, W)"
    block = attribute(node, "blocksize", None)
    if not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        return f"blocksize {block!r}: an integer from 1 to {MAX_BLOCK}"
    if depth_to_space_mode(node) not in ("DCR", "CRD"):
        return f"mode {depth_to_space_mode(node)!r}: DCR or CRD"
    channels = view.shapes[node.input[0]][1]
    if not isinstance(channels, int) or channels % (block * block):
        return f"{channels} input channels: a multiple of blocksize^2 = {block * block}"
    return None


def _lower_depth_to_space(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = DepthToSpaceAttrs(int(attribute(node, "blocksize")), depth_to_space_mode(node))
    lower_data_movement(builder, node, "depth_to_space", attrs)


def depth_to_space(x: np.ndarray, block: int, mode: str) -> np.ndarray:
    """The ONNX DepthToSpace of an NCHW array."""
    n, c, h, w = x.shape
    c_out = c // (block * block)
    if mode == "DCR":
        y = x.reshape(n, block, block, c_out, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c_out, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y.reshape(n, c_out, h * block, w * block))


def run_depth_to_space(op: LoweredOp, values, tensors):
    return depth_to_space(values[op.inputs[0]], op.attrs.block, op.attrs.mode)


register_kind("depth_to_space", run_depth_to_space)
register_op("DepthToSpace", OpInfo(quantize_output=False, shares_input_scale=True),
            kinds=("depth_to_space",), lower=_lower_depth_to_space, check=check_depth_to_space, static_output=True)

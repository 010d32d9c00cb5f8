"""C target, aarch64: padded int8 depthwise convolutions (and one-channel convolutions) read a
padded copy of their input.

The NEON depthwise kernel (runtime_c/depthwise_s8.c, depthwise_tiles_neon) works on tiles of four
output pixels. A tile whose every window lies inside the input addresses a tap as the window's
start plus the tap's offset, one offset shared by the four pixels. A tile that touches the border
first builds one pointer per tap and pixel, the taps outside pointing at a row of zero points.
On small feature maps nearly every tile touches the border: of the 13 tiles of a 7x7 output, only
one holds four inner pixels, and building the pointers cost more than the sums of some layers.
A conv of one input channel (conv2d_s8.c, one_channel_rows) likewise copies each border tile's
window byte by byte into a patch.

Here such a convolution becomes a `pad` op, which writes the input into a tensor with the border
filled with the input's zero point (one contiguous copy per input row: fw_pad_nhwc), and the
same convolution without padding on it. The sums are the same: a padding tap read the zero point
before too (x - zp = 0). Only the arena grows, by the padded tensor while it is live.
"""

from __future__ import annotations

from dataclasses import replace

from fwedge.lowered.graph import LoweredGraph, LoweredOp, LoweredTensor, PadAttrs

# The largest kernel (kH * kW) of the NEON tile path: a larger one is computed without tiles.
_NEON_TAPS = 49


def _fresh(tensors: dict[str, LoweredTensor], base: str) -> str:
    name, k = base, 1
    while name in tensors:
        name, k = f"{base}_{k}", k + 1
    return name


def _takes_padded_copy(graph: LoweredGraph, op: LoweredOp) -> bool:
    if op.kind not in ("depthwise_conv2d", "conv2d") or not any(op.attrs.pads) or min(op.attrs.pads) < 0:
        return False
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
    if x.dtype != "int8" or y.dtype != "int8" or len(x.shape) != 4:
        return False
    if op.kind == "conv2d":
        # one input channel, stride and dilation 1 along x (a first layer on a grey image): the
        # kernel reads four pixels' taps as words of a row, and builds a patch at the border
        return op.attrs.groups == 1 and x.shape[1] == 1 and op.attrs.strides[1] == 1 and op.attrs.dilations[1] == 1
    return op.attrs.depth_multiplier == 1 and op.attrs.kernel[0] * op.attrs.kernel[1] <= _NEON_TAPS


def pad_depthwise_inputs(graph: LoweredGraph) -> LoweredGraph:
    """The graph with each padded int8 depthwise convolution of the NEON tile path, and each
    padded one-channel conv, split into a pad of its input and the convolution with no padding
    (the module docstring says why)."""
    ops: list[LoweredOp] = []
    tensors = dict(graph.tensors)
    for op in graph.ops:
        if not _takes_padded_copy(graph, op):
            ops.append(op)
            continue
        x = graph.tensors[op.inputs[0]]
        top, left, bottom, right = op.attrs.pads
        n, c, h, w = x.shape
        name = _fresh(tensors, f"{x.name}_padded")
        tensors[name] = LoweredTensor(name, (n, c, h + top + bottom, w + left + right), "int8", x.quant)
        zero_point = float(x.quant.zero_point[0]) if x.quant is not None else 0.0
        attrs = PadAttrs((0, 0, top, left), (0, 0, bottom, right), zero_point)
        ops.append(LoweredOp("pad", f"{op.name}_pad", (x.name,), (name,), attrs))
        ops.append(replace(op, inputs=(name, *op.inputs[1:]), attrs=replace(op.attrs, pads=(0, 0, 0, 0))))
    return replace(graph, ops=ops, tensors=tensors)

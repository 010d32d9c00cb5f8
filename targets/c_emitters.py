"""The C emitters: one per lowered op kind (or family), each writing kernel calls through an _Emitter."""
from __future__ import annotations

import numpy as np

from fwedge.errors import ExportError
from fwedge.lowered.graph import LoweredOp, LoweredTensor
from fwedge.ops.registry import UNARY_KINDS
from fwedge.ops.shape import stored_permutation
from fwedge.ops.take import stored_tables
from fwedge.ops.registry import kind as kind_spec
from fwedge.targets.c_prepared import CONV_BLOCK, conv_constants, depthwise_constants
from fwedge.targets.c_emit_base import (
    _ITEM_BYTES,
    _NHWC,
    _Emitter,
    c_float,
    emitter,
    layout_trivial,
    nbytes,
    physical_shape,
)


def _suffix(dtype: str) -> str:
    return "s8" if dtype == "int8" else "f32"


def _zero_point(tensor: LoweredTensor) -> int:
    return int(tensor.quant.zero_point[0]) if tensor.quant is not None else 0


def _float_clamp(activation: str) -> tuple[str, str]:
    return {"none": ("-INFINITY", "INFINITY"), "relu": ("0.0f", "INFINITY"), "relu6": ("0.0f", "6.0f")}[activation]


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    return np.broadcast_to(values, (channels,)) if values.size == 1 else values




# Filter values per int32 lane of the tile GEMM (FW_CONV_K_GROUP): pairs (pmaddwd, portable C)
# and quads (VNNI vpdpbusd). model.c holds the weights in both layouts; the build compiles in one.
CONV_K_GROUPS = (2, 4)


def pack_conv_s8(w: np.ndarray, group: int = 2) -> np.ndarray:
    """int8 conv weights [M][C][kh][kw] (groups 1) in the layout fw_conv2d_s8 reads.

    Args:
        w: the ONNX OIHW weights.
        group: FW_CONV_K_GROUP of the build, 2 or 4.

    Returns:
        A flat int8 array [ceil(M / 8)][k / group][8][group] over the OHWI filter index
        k = (ky * kw + kx) * C + c, zero-padded to whole groups and a multiple of 8 output
        channels: `group` taps of eight output channels per 8 * group bytes
        (fw_pack_conv2d_s8_weights in runtime_c/conv2d_s8.c builds the same layout).
    """
    if group not in CONV_K_GROUPS:
        raise ExportError(f"C target: conv weight group {group}: expected one of {CONV_K_GROUPS}")
    m = w.shape[0]
    ohwi = w.transpose(0, 2, 3, 1).reshape(m, -1)
    k = ohwi.shape[1]
    blocks = -(-m // CONV_BLOCK)
    padded = np.zeros((blocks * CONV_BLOCK, -(-k // group) * group), dtype=w.dtype)
    padded[:m, :k] = ohwi
    # [block][j][group index][e] -> [block][group index][j][e]
    packed = padded.reshape(blocks, CONV_BLOCK, -1, group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed).reshape(-1)


@emitter("conv2d", "depthwise_conv2d")
def emit_conv(e: _Emitter, op: LoweredOp) -> None:
    X, W, B = (e.tensor(name) for name in op.inputs)
    Y = e.tensor(op.outputs[0])
    attrs = op.attrs
    _, c_in, in_h, in_w = X.shape
    _, c_out, out_h, out_w = Y.shape
    kh, kw = attrs.kernel
    depthwise = op.kind == "depthwise_conv2d"
    w = W.data
    if depthwise:
        weights = w.reshape(c_out, kh, kw).transpose(1, 2, 0)  # [kh][kw][M]
    elif Y.dtype == "int8" and attrs.groups == 1:
        # [M/8][k/G][8][G] for conv2d_s8.c's tile GEMM, G = FW_CONV_K_GROUP of the build
        weights = {group: pack_conv_s8(w, group) for group in (CONV_K_GROUPS if e.quads else (2,))}
    elif Y.dtype == "int8":
        weights = w.transpose(0, 2, 3, 1)  # OHWI [M][kh][kw][C/g]
    else:
        g = attrs.groups
        weights = w.reshape(g, c_out // g, c_in // g, kh, kw).transpose(0, 3, 4, 2, 1)  # [g][kh][kw][ic][oc]
    int8 = Y.dtype == "int8"
    float_min, float_max = _float_clamp(attrs.activation)
    fields = {
        "in_h": in_h, "in_w": in_w, "in_c": c_in, "out_h": out_h, "out_w": out_w, "out_c": c_out,
        "kernel_h": kh, "kernel_w": kw, "stride_h": attrs.strides[0], "stride_w": attrs.strides[1],
        "pad_top": attrs.pads[0], "pad_left": attrs.pads[1],
        "dilation_h": attrs.dilations[0], "dilation_w": attrs.dilations[1], "groups": attrs.groups,
        "input_zero_point": _zero_point(X), "output_zero_point": _zero_point(Y),
        "activation_min": attrs.requant.act_min if int8 else -128,
        "activation_max": attrs.requant.act_max if int8 else 127,
        "float_min": float_min, "float_max": float_max,
    }
    if int8:
        multiplier = e.array("multiplier", _per_channel(attrs.requant.multiplier, c_out), "int32")
        shift = e.array("shift", _per_channel(attrs.requant.shift, c_out), "int32")
    if int8 and e.prepare_neon:
        prepared = _neon_prepared(e, op, weights if depthwise else w, B.data, multiplier, shift)
        if prepared is not None:
            fields["prepared"] = f"&{prepared}"
    params = e.struct("fw_conv_params", fields)
    packed = isinstance(weights, dict)
    if packed:
        pairs, quads = e.conv_layouts("weights [M/8][kh*kw*C/G][8][G] packed", weights)
    else:
        layout = ("[kh][kw][M]" if depthwise else "[M][kh][kw][C/g]" if int8 else "[g][kh][kw][C/g][M/g]")
        weight_name = e.array(f"weights {layout}", weights, "conv_s8" if int8 and not depthwise else W.dtype)
    bias_name = e.constant(B.name)
    function = f"fw_{'depthwise_conv2d' if depthwise else 'conv2d'}_{_suffix(Y.dtype)}"
    e.kernels.add(f"{'depthwise' if depthwise else 'conv2d'}_{_suffix(Y.dtype)}.c")
    if int8:
        if packed:  # the layout the build reads, or both for the x86-64 dispatch (fwedge_rt.h)
            e.call(op, f"FW_CONV2D_S8(&{params}, {e.pointer(X.name)}, {pairs}, {quads}, {bias_name}, {multiplier}, "
                       f"{shift}, {e.pointer(Y.name)});")
        else:
            callee = f"FW_DISPATCH({function})" if depthwise else function
            e.call(op, f"{callee}(&{params}, {e.pointer(X.name)}, {weight_name}, {bias_name}, {multiplier}, "
                       f"{shift}, {e.pointer(Y.name)});")
    else:
        e.call(op, f"{function}(&{params}, {e.pointer(X.name)}, {weight_name}, {bias_name}, {e.pointer(Y.name)});")


def _neon_prepared(e: _Emitter, op: LoweredOp, weights: np.ndarray, bias: np.ndarray | None, multiplier_name: str,
                   shift_name: str) -> str | None:
    """The fw_conv_prepared struct of an int8 conv2d (groups 1; weights OIHW) or depthwise conv
    (channel multiplier 1; weights [kh][kw][C]) for the aarch64 NEON kernels, or None where they
    do not read one (targets/c_prepared.py). A conv's multipliers and shifts that are the op's
    own arrays (out_c a multiple of 8, every shift of the SQDMULH form) are those arrays."""
    attrs, X = op.attrs, e.tensor(op.inputs[0])
    c_out = e.tensor(op.outputs[0]).shape[1]
    multiplier = _per_channel(attrs.requant.multiplier, c_out).astype(np.int32)
    shift = _per_channel(attrs.requant.shift, c_out).astype(np.int32)
    if op.kind == "depthwise_conv2d":
        if attrs.depth_multiplier != 1:
            return None
        biases, high, no_min_weight = depthwise_constants(weights, bias, multiplier, shift, _zero_point(X))
        fields = {"multiplier": "NULL", "shift": "NULL"}
    elif attrs.groups == 1:
        constants = conv_constants(weights, bias, multiplier, shift, _zero_point(X))
        if constants is None:
            return None
        multipliers, shifts, biases, high, no_min_weight = constants
        same = len(multipliers) == c_out
        if not same:
            multiplier_name = e.array("NEON multipliers", multipliers, "int32", weights=False)
        if not (same and np.array_equal(shifts, shift)):
            shift_name = e.array("NEON SRSHL shifts", shifts, "int32", weights=False)
        fields = {"multiplier": multiplier_name, "shift": shift_name}
    else:
        return None
    fields["bias"] = e.array("NEON biases less zp * weight sums", biases, "int32", weights=False)
    fields.update(high=int(high), no_min_weight=int(no_min_weight))
    return e.struct("fw_conv_prepared", fields)


def fold_input_zero_point(x_zero_point: int, weights: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(bias - zp * sum of each feature's weights, 0): a fully connected layer's input zero point
    taken off at export, so its kernels sum raw x * w (sum (x - zp) * w = sum x * w - zp * sum w)
    with no subtraction per input. None when zp is 0 already, or where the folded bias plus the
    largest raw sum could leave int32 (the kernels' int32 sums would then differ)."""
    if x_zero_point == 0:
        return None
    w = weights.astype(np.int64).reshape(weights.shape[0], -1)
    folded = bias.astype(np.int64).reshape(-1) - x_zero_point * w.sum(axis=1)
    largest = 128 * np.abs(w).sum(axis=1) + np.abs(folded)
    if folded.shape[0] != w.shape[0] or int(largest.max(initial=0)) >= 2**31:
        return None
    return folded.astype(np.int32), 0


@emitter("fully_connected")
def emit_fully_connected(e: _Emitter, op: LoweredOp) -> None:
    X, W, B = (e.tensor(name) for name in op.inputs)
    Y = e.tensor(op.outputs[0])
    out_features, in_features = W.shape
    rows = X.size // in_features  # [1, T, K]: T rows, each through the same layer
    if X.size != rows * in_features or X.shape[-1] != in_features or not layout_trivial(X.shape):
        raise ExportError(f"C target: fully_connected {op.name!r}: input {X.name!r} {list(X.shape)} "
                          f"is not a [1, {in_features}] row or [1, T, {in_features}] rows")
    int8 = Y.dtype == "int8"
    float_min, float_max = _float_clamp(op.attrs.activation)
    folded = fold_input_zero_point(_zero_point(X), W.data, B.data) if int8 and B.data is not None else None
    params = e.struct("fw_fully_connected_params", {
        "in_features": in_features, "out_features": out_features,
        "input_zero_point": _zero_point(X) if folded is None else folded[1], "output_zero_point": _zero_point(Y),
        "activation_min": op.attrs.requant.act_min if int8 else -128,
        "activation_max": op.attrs.requant.act_max if int8 else 127,
        "float_min": float_min, "float_max": float_max,
    })
    e.kernels.add(f"fully_connected_{_suffix(Y.dtype)}.c")
    bias = e.constant(B.name) if folded is None else e.array("bias - input zero point * weight sums", folded[0], "int32")
    args = f"&{params}, {e.pointer(X.name)}, {e.constant(W.name)}, {bias}"
    if int8:
        multiplier = e.array("multiplier", _per_channel(op.attrs.requant.multiplier, out_features), "int32")
        shift = e.array("shift", _per_channel(op.attrs.requant.shift, out_features), "int32")
        args += f", {multiplier}, {shift}"
    callee = "FW_FULLY_CONNECTED_S8" if int8 else "fw_fully_connected_f32"  # fwedge_rt.h: dispatched on aarch64
    if rows == 1:
        e.call(op, f"{callee}({args}, {e.pointer(Y.name)});")
        return
    x, y = e.pointer(X.name), e.pointer(Y.name)
    args = args.replace(x, f"{x} + (size_t)row * {in_features}", 1)
    e.call(op, f"for (int row = 0; row < {rows}; ++row) {callee}({args}, {y} + (size_t)row * {out_features});")


def logical_strides(shape) -> list[int]:
    """The element stride of each logical axis in the stored layout (NHWC for 4-D tensors)."""
    stored = physical_shape(shape)
    stored_strides = [int(np.prod(stored[k + 1:], dtype=np.int64)) for k in range(len(stored))]
    if len(shape) != 4:
        return stored_strides
    strides = [0] * 4
    for position, axis in enumerate(_NHWC):
        strides[axis] = stored_strides[position]
    return strides


@emitter("batch_matmul")
def emit_batch_matmul(e: _Emitter, op: LoweredOp) -> None:
    """A [1, (heads,) M, K] x B [1, (heads,) K, N], each read in place through its stored strides."""
    A, B = (e.tensor(name) for name in op.inputs)
    Y = e.tensor(op.outputs[0])
    (a, b, y) = (logical_strides(T.shape) for T in (A, B, Y))
    batch = 1 if len(A.shape) == 4 else None  # the heads axis; rank 3 has one matrix
    heads = A.shape[1] if batch else 1
    int8 = Y.dtype == "int8"
    float_min, float_max = _float_clamp(op.attrs.activation)
    r = op.attrs.requant
    params = e.struct("fw_batch_matmul_params", {
        "batches": heads, "rows": A.shape[-2], "depth": A.shape[-1], "cols": B.shape[-1],
        "a_strides": "{%d, %d, %d}" % (a[batch] if batch else 0, a[-2], a[-1]),
        "b_strides": "{%d, %d, %d}" % (b[batch] if batch else 0, b[-2], b[-1]),
        "y_strides": "{%d, %d, %d}" % (y[batch] if batch else 0, y[-2], y[-1]),
        "a_zero_point": _zero_point(A), "b_zero_point": _zero_point(B), "output_zero_point": _zero_point(Y),
        "multiplier": int(r.multiplier[0]) if int8 else 0, "shift": int(r.shift[0]) if int8 else 0,
        "activation_min": r.act_min if int8 else -128, "activation_max": r.act_max if int8 else 127,
        "float_min": float_min, "float_max": float_max,
    })
    e.kernels.add(f"batch_matmul_{_suffix(Y.dtype)}.c")
    e.call(op, f"fw_batch_matmul_{_suffix(Y.dtype)}(&{params}, {e.pointer(A.name)}, {e.pointer(B.name)}, "
               f"{e.pointer(Y.name)});")


def broadcast_of(operand_shape, output_shape) -> tuple[int, int]:
    """(divisor, modulus) so that operand index = (i / divisor) % modulus over the flat output.

    Raises:
        ExportError: the broadcast is not one contiguous block of the stored output dims.
    """
    out = physical_shape(output_shape)
    shape = physical_shape(operand_shape) if len(operand_shape) == 4 else tuple(operand_shape)
    if len(shape) != len(out):
        raise ExportError(f"C target: operand shape {list(operand_shape)} does not have the rank of {list(output_shape)}")
    kept = [i for i, (a, b) in enumerate(zip(shape, out)) if b != 1 and a == b]
    broadcast = [i for i, (a, b) in enumerate(zip(shape, out)) if b != 1 and a == 1]
    if any(a not in (1, b) for a, b in zip(shape, out)):
        raise ExportError(f"C target: cannot broadcast {list(operand_shape)} to {list(output_shape)}")
    if kept and any(kept[0] < i < kept[-1] for i in broadcast):
        raise ExportError(f"C target: broadcast of {list(operand_shape)} to {list(output_shape)} is not "
                          "one contiguous block in NHWC order")
    if not kept:
        return 1, 1
    modulus = int(np.prod([out[i] for i in kept]))
    divisor = int(np.prod([out[i] for i in range(kept[-1] + 1, len(out))]))
    return divisor, modulus


@emitter("add", "mul", "div")
def emit_elementwise(e: _Emitter, op: LoweredOp) -> None:
    A, B = (e.tensor(name) for name in op.inputs)
    Y = e.tensor(op.outputs[0])
    (div1, mod1), (div2, mod2) = broadcast_of(A.shape, Y.shape), broadcast_of(B.shape, Y.shape)
    int8 = Y.dtype == "int8"
    float_min, float_max = _float_clamp(op.attrs.activation)
    fields = {
        "size": Y.size, "input1": f"{{{div1}, {mod1}}}", "input2": f"{{{div2}, {mod2}}}",
        "input1_zero_point": _zero_point(A), "input2_zero_point": _zero_point(B), "output_zero_point": _zero_point(Y),
        "float_min": float_min, "float_max": float_max,
    }
    if int8 and op.kind == "add":
        q = op.attrs.add
        fields.update({
            "left_shift": q.left_shift, "input1_multiplier": q.input1_multiplier, "input1_shift": q.input1_shift,
            "input2_multiplier": q.input2_multiplier, "input2_shift": q.input2_shift,
            "output_multiplier": q.output_multiplier, "output_shift": q.output_shift,
            "activation_min": q.act_min, "activation_max": q.act_max,
        })
    elif int8:
        r = op.attrs.requant
        fields.update({"output_multiplier": int(r.multiplier[0]), "output_shift": int(r.shift[0]),
                       "activation_min": r.act_min, "activation_max": r.act_max})
    params = e.struct("fw_elementwise_params", fields)
    e.kernels.add(f"elementwise_{_suffix(Y.dtype)}.c")
    function = f"fw_{op.kind}_{_suffix(Y.dtype)}"
    if int8:  # the x86-64 dispatch build picks the kernel variant (fwedge_rt.h)
        function = f"FW_DISPATCH({function})"
    e.call(op, f"{function}(&{params}, {e.pointer(A.name)}, {e.pointer(B.name)}, {e.pointer(Y.name)});")


def _pool_fields(X: LoweredTensor, Y: LoweredTensor, kernel, strides, pads) -> dict:
    _, channels, in_h, in_w = X.shape
    _, _, out_h, out_w = Y.shape
    return {
        "in_h": in_h, "in_w": in_w, "channels": channels, "out_h": out_h, "out_w": out_w,
        "kernel_h": kernel[0], "kernel_w": kernel[1], "stride_h": strides[0], "stride_w": strides[1],
        "pad_top": pads[0], "pad_left": pads[1], "dilation_h": 1, "dilation_w": 1,
        "input_zero_point": _zero_point(X), "output_zero_point": _zero_point(Y),
        "activation_min": -128, "activation_max": 127,
        "float_min": "-INFINITY", "float_max": "INFINITY",
    }


@emitter("max_pool", "avg_pool")
def emit_pool(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    attrs = op.attrs
    fields = _pool_fields(X, Y, attrs.kernel, attrs.strides, attrs.pads)
    fields["count_include_pad"] = int(attrs.count_include_pad)
    int8 = Y.dtype == "int8"
    if int8 and op.kind == "avg_pool":
        fields["activation_min"], fields["activation_max"] = attrs.requant.act_min, attrs.requant.act_max
    params = e.struct("fw_pool_params", fields)
    e.kernels.add(f"pool_{_suffix(Y.dtype)}.c")
    function = f"fw_{op.kind}_{_suffix(Y.dtype)}"
    if int8 and op.kind == "avg_pool":
        multipliers = e.array("multiplier by count", attrs.requant.multiplier, "int32")
        shifts = e.array("shift by count", attrs.requant.shift, "int32")
        e.call(op, f"{function}(&{params}, {e.pointer(X.name)}, {multipliers}, {shifts}, {e.pointer(Y.name)});")
    else:
        e.call(op, f"{function}(&{params}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("global_avg_pool")
def emit_global_avg_pool(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    fields = _pool_fields(X, Y, (1, 1), (1, 1), (0, 0))
    if Y.dtype == "int8":
        r = op.attrs.requant
        fields.update({"multiplier": int(r.multiplier[0]), "shift": int(r.shift[0]),
                       "activation_min": r.act_min, "activation_max": r.act_max})
    params = e.struct("fw_pool_params", fields)
    e.kernels.add(f"pool_{_suffix(Y.dtype)}.c")
    e.call(op, f"fw_global_avg_pool_{_suffix(Y.dtype)}(&{params}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("concat")
def emit_concat(e: _Emitter, op: LoweredOp) -> None:
    Y = e.tensor(op.outputs[0])
    axis = op.attrs.axis
    physical_axis = _NHWC.index(axis) if len(Y.shape) == 4 else axis
    out = physical_shape(Y.shape)
    outer = int(np.prod(out[:physical_axis]))
    inner = [int(np.prod(physical_shape(e.tensor(name).shape)[physical_axis:])) for name in op.inputs]
    for name in op.inputs:
        if e.tensor(name).shape[0] != 1:
            raise ExportError(f"C target: concat {op.name!r}: input {name!r} has batch {e.tensor(name).shape[0]}")
    sizes = e.fresh("s")
    e.declarations.append(f"static const int {sizes}[{len(inner)}] = {{{', '.join(map(str, inner))}}};\n")
    pointers = ", ".join(f"(const void *){e.pointer(name)}" for name in op.inputs)
    e.call(op, f"{{ const void *const parts[{len(inner)}] = {{{pointers}}}; "
               f"fw_concat({len(inner)}, {outer}, {sizes}, parts, {_ITEM_BYTES[Y.dtype]}, {e.pointer(Y.name)}); }}")


def _relayout(e: _Emitter, op: LoweredOp, source: str, X: LoweredTensor, Y: LoweredTensor) -> None:
    """Copy X to Y (same elements) changing the logical shape, in stored layouts."""
    item = _ITEM_BYTES[Y.dtype]
    x_trivial, y_trivial = layout_trivial(X.shape), layout_trivial(Y.shape)
    if x_trivial and y_trivial or tuple(X.shape) == tuple(Y.shape):
        e.call(op, f"memcpy({e.pointer(Y.name)}, {source}, {nbytes(Y)});")
    elif not x_trivial and y_trivial:
        _, c, h, w = X.shape  # NHWC [h*w][c] -> logical [c][h*w]
        e.call(op, f"fw_transpose2d({h * w}, {c}, {item}, {source}, {e.pointer(Y.name)});")
    elif x_trivial and not y_trivial:
        _, c, h, w = Y.shape  # logical [c][h*w] -> NHWC [h*w][c]
        e.call(op, f"fw_transpose2d({c}, {h * w}, {item}, {source}, {e.pointer(Y.name)});")
    else:
        raise ExportError(f"C target: reshape {op.name!r} from {list(X.shape)} to {list(Y.shape)} changes the "
                          "spatial layout of a multi-channel 4-D tensor; not supported")


@emitter("reshape")
def emit_reshape(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    _relayout(e, op, e.pointer(X.name), X, Y)


@emitter("pad")
def emit_pad(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    begin, end = op.attrs.begin, op.attrs.end
    if len(X.shape) != 4 or begin[0] or end[0]:
        raise ExportError(f"C target: pad {op.name!r}: only 4-D pads of C, H and W are supported, "
                          f"got begin {list(begin)} end {list(end)} on {list(X.shape)}")
    if min(begin) < 0 or min(end) < 0:
        raise ExportError(f"C target: pad {op.name!r}: negative pads (a crop) are not supported, "
                          f"got begin {list(begin)} end {list(end)}")
    _, c, h, w = X.shape
    _, oc, oh, ow = Y.shape
    if Y.dtype == "int8":
        value = e.fresh("v")
        e.declarations.append(f"static const int8_t {value} = {_zero_point(X)};\n")
    else:
        value = e.fresh("v")
        e.declarations.append(f"static const float {value} = {c_float(op.attrs.value)};\n")
    e.call(op, f"fw_pad_nhwc({h}, {w}, {c}, {oh}, {ow}, {oc}, {begin[2]}, {begin[3]}, {begin[1]}, &{value}, "
               f"{_ITEM_BYTES[Y.dtype]}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("resize_nearest")
def emit_resize_nearest(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    _, c, _, w = X.shape
    _, _, oh, ow = Y.shape
    rows = e.array("source rows", np.asarray(op.attrs.rows, dtype=np.int32), "int32")
    cols = e.array("source columns", np.asarray(op.attrs.cols, dtype=np.int32), "int32")
    e.call(op, f"fw_resize_nearest_nhwc({w}, {c}, {oh}, {ow}, {rows}, {cols}, {_ITEM_BYTES[Y.dtype]}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")


def _linear_tables(e: _Emitter, axis, role: str) -> tuple[str, str]:
    """One axis of a bilinear resize as two C arrays: index pairs (low, high) and weight pairs."""
    indices = np.stack([axis.low, axis.high], axis=1).astype(np.int32)
    weights = np.stack([axis.weight_low, axis.weight_high], axis=1).astype(np.float32)
    return e.array(f"source {role}", indices, "int32"), e.array(f"{role} weights", weights, "float32")


@emitter("resize_linear")
def emit_resize_linear(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    _, c, _, w = X.shape
    _, _, oh, ow = Y.shape
    rows, row_weights = _linear_tables(e, op.attrs.rows, "rows")
    cols, col_weights = _linear_tables(e, op.attrs.cols, "columns")
    tables = f"{w}, {c}, {oh}, {ow}, {rows}, {row_weights}, {cols}, {col_weights}"
    e.kernels.add("resize_linear.c")
    if Y.dtype == "int8":
        e.call(op, f"fw_resize_linear_s8_nhwc({tables}, {c_float(X.quant.scale[0])}, {_zero_point(X)}, "
                   f"{c_float(Y.quant.scale[0])}, {_zero_point(Y)}, {e.pointer(X.name)}, {e.pointer(Y.name)});")
        return
    e.call(op, f"fw_resize_linear_f32_nhwc({tables}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("transpose")
def emit_transpose(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    in_dims = physical_shape(X.shape)
    strides = [int(np.prod(in_dims[k + 1:])) for k in range(len(in_dims))]
    source = stored_permutation(op.attrs.perm)
    dims = [1] * (4 - len(in_dims)) + list(physical_shape(Y.shape))
    steps = [0] * (4 - len(in_dims)) + [strides[k] for k in source]
    d, s = e.fresh("d"), e.fresh("s")
    e.declarations.append(f"static const int {d}[4] = {{{', '.join(map(str, dims))}}};\n"
                          f"static const int {s}[4] = {{{', '.join(map(str, steps))}}};\n")
    e.kernels.add("rearrange.c")
    e.call(op, f"fw_permute4({d}, {s}, {_ITEM_BYTES[Y.dtype]}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("take")
def emit_take(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    if X.shape[0] != 1:
        raise ExportError(f"C target: take {op.name!r}: input batch {X.shape[0]}, only 1")
    tables, dims = stored_tables(X.shape, op.attrs.tables)
    pad = 4 - len(tables)  # the batch axis dropped (batch 1), padded in front to three axes
    tables, dims = [[0]] * pad + tables[1:], [1] * pad + dims[1:]
    names = [e.array(f"source table {axis}", np.asarray(t, dtype=np.int32), "int32") for axis, t in enumerate(tables)]
    inner = int(tables[2] == list(range(tables[2][0], tables[2][0] + len(tables[2]))))
    e.kernels.add("rearrange.c")
    e.call(op, f"fw_take3({dims[1]}, {dims[2]}, {len(tables[0])}, {len(tables[1])}, {len(tables[2])}, "
               f"{names[0]}, {names[1]}, {names[2]}, {inner}, {_ITEM_BYTES[Y.dtype]}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("embedding")
def emit_embedding(e: _Emitter, op: LoweredOp) -> None:
    """The one-hot embedding's row lookup (fwedge/ops/embedding.py) over the int32 indices."""
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    table = op.attrs.table
    if len(Y.shape) == 4 or X.dtype != "int32":
        raise ExportError(f"C target: embedding {op.name!r}: int32 indices and a rank-2 or rank-3 output only")
    name = e.array("embedding rows", table, Y.dtype)
    e.kernels.add("rearrange.c")
    e.call(op, f"fw_embedding({int(np.prod(X.shape))}, {table.shape[0]}, {table.shape[1]}, {_ITEM_BYTES[Y.dtype]}, "
               f"{e.pointer(X.name)}, {name}, {e.pointer(Y.name)});")


@emitter("depth_to_space")
def emit_depth_to_space(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    _, _, h, w = X.shape
    dcr = 1 if op.attrs.mode == "DCR" else 0
    e.kernels.add("rearrange.c")
    e.call(op, f"fw_depth_to_space_nhwc({h}, {w}, {Y.shape[1]}, {op.attrs.block}, {dcr}, {_ITEM_BYTES[Y.dtype]}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter(*UNARY_KINDS)
def emit_unary(e: _Emitter, op: LoweredOp) -> None:
    """Every element-wise function (fwedge/ops/unary.py): the table in int8, fw_<kind>_f32 in float."""
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    x, y = e.pointer(X.name), e.pointer(Y.name)
    if Y.dtype == "int8":
        table = e.array(f"{op.kind} table", np.asarray(op.attrs.lut, dtype=np.int8), "int8")
        e.kernels.add("lut_s8.c")
        e.call(op, f"fw_lut_s8({Y.size}, {table}, {x}, {y});")
        return
    e.kernels.add("activation_f32.c")
    if op.kind in ("relu", "relu6"):
        high = "INFINITY" if op.kind == "relu" else "6.0f"
        e.call(op, f"fw_clamp_f32_array({Y.size}, 0.0f, {high}, {x}, {y});")
        return
    params = "".join(f"{c_float(getattr(op.attrs, name))}, " for name in kind_spec(op.kind).unary.params)
    e.call(op, f"fw_{op.kind}_f32({Y.size}, {params}{x}, {y});")


@emitter("prelu")
def emit_prelu(e: _Emitter, op: LoweredOp) -> None:
    """PRelu on channels-last storage (4-D tensors are NHWC here): a table per channel in int8."""
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    channels = int(op.attrs.slope.size)
    pixels = Y.size // channels
    x, y = e.pointer(X.name), e.pointer(Y.name)
    if Y.dtype == "int8":
        tables = e.array("prelu tables", np.asarray(op.attrs.luts, dtype=np.int8), "int8")
        e.kernels.add("lut_s8.c")
        e.call(op, f"fw_lut_channels_s8({pixels}, {channels}, {tables}, {x}, {y});")
        return
    slope = e.array("prelu slope", np.asarray(op.attrs.slope, dtype=np.float32), "float32")
    e.kernels.add("activation_f32.c")
    e.call(op, f"fw_prelu_f32({pixels}, {channels}, {slope}, {x}, {y});")


def storage_rows(shape, axis: int) -> tuple[int, int, int]:
    """(outer, depth, inner) of a logical axis in the stored layout (NHWC for 4-D tensors): the
    axis's `depth` elements lie `inner` apart, in `outer` blocks of depth * inner elements."""
    stored = physical_shape(shape)
    position = _NHWC.index(axis) if len(shape) == 4 else axis
    outer = int(np.prod(stored[:position], dtype=np.int64))
    return outer, int(stored[position]), int(np.prod(stored[position + 1:], dtype=np.int64))


@emitter("softmax")
def emit_softmax(e: _Emitter, op: LoweredOp) -> None:
    """Softmax over any logical axis, read in place through its stored strides (storage_rows)."""
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    outer, depth, inner = storage_rows(X.shape, op.attrs.axis)
    if Y.dtype == "int8":
        if op.attrs.beta != 1.0:
            raise ExportError(f"C target: int8 softmax {op.name!r} with beta {op.attrs.beta}")
        table = e.array("exp table (Q24)", op.attrs.exp_table, "int32")
        r = op.attrs.requant
        e.kernels.add("softmax_s8.c")
        e.call(op, f"fw_softmax_s8({outer}, {depth}, {inner}, {table}, {int(r.multiplier[0])}, {int(r.shift[0])}, "
                   f"{_zero_point(Y)}, {e.pointer(X.name)}, {e.pointer(Y.name)});")
        return
    if op.attrs.beta != 1.0:
        raise ExportError(f"C target: softmax {op.name!r} with beta {op.attrs.beta}")
    e.kernels.add("activation_f32.c")
    e.call(op, f"fw_softmax_f32({outer}, {depth}, {inner}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("layer_norm")
def emit_layer_norm(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    depth = X.shape[-1]
    gamma, beta = (e.pointer(name) for name in op.inputs[1:])
    e.kernels.add("activation_f32.c")
    e.call(op, f"fw_layer_norm_f32({X.size // depth}, {depth}, {c_float(op.attrs.epsilon)}, {gamma}, {beta}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("quantize")
def emit_quantize(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    e.kernels.add("quantize.c")
    if X.dtype == "int8":
        r = op.attrs.requant
        e.call(op, f"fw_requantize_s8({Y.size}, {_zero_point(X)}, {_zero_point(Y)}, {int(r.multiplier[0])}, "
                   f"{int(r.shift[0])}, {e.pointer(X.name)}, {e.pointer(Y.name)});")
        return
    e.call(op, f"fw_quantize_f32_s8({Y.size}, {c_float(Y.quant.scale[0])}, {_zero_point(Y)}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")


@emitter("dequantize")
def emit_dequantize(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    e.kernels.add("quantize.c")
    e.call(op, f"fw_dequantize_s8_f32({Y.size}, {c_float(X.quant.scale[0])}, {_zero_point(X)}, "
               f"{e.pointer(X.name)}, {e.pointer(Y.name)});")

"""C code generation: a LoweredGraph becomes model.c/model.h calling the runtime_c kernels (NHWC)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from fwedge import __version__
from fwedge.errors import ExportError
from fwedge.lowered.graph import LoweredGraph, LoweredOp, LoweredTensor
from fwedge.ops.registry import UNARY_KINDS
from fwedge.ops.registry import kind as kind_spec
from fwedge.targets.memory_plan import Buffer, MemoryPlan, plan_memory

ALIGNMENT = 16
# "conv_s8": int8 conv weights, declared as fw_conv_weight (fwedge_rt.h: int16 in AVX2 builds,
# int8 otherwise), so one model.c serves both.
_C_TYPES = {"float32": "float", "int8": "int8_t", "int32": "int32_t", "conv_s8": "fw_conv_weight"}
_ITEM_BYTES = {"float32": 4, "int8": 1, "int32": 4, "conv_s8": 1}  # conv_s8: int8 values (AVX2 builds store int16)
# NCHW logical axis order of the NHWC physical storage of 4-D tensors.
_NHWC = (0, 2, 3, 1)
# Kernel source files that every bundle compiles (data movement, I/O layout changes).
ALWAYS_KERNELS = ("data.c",)
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def physical_shape(shape) -> tuple[int, ...]:
    """The stored shape: NHWC for 4-D tensors, the logical shape otherwise."""
    shape = tuple(int(d) for d in shape)
    return tuple(shape[axis] for axis in _NHWC) if len(shape) == 4 else shape


def to_physical(array: np.ndarray) -> np.ndarray:
    """A logical (NCHW) array in its stored layout (NHWC for 4-D)."""
    return np.ascontiguousarray(array.transpose(_NHWC)) if array.ndim == 4 else np.ascontiguousarray(array)


def layout_trivial(shape) -> bool:
    """True when NHWC and NCHW storage give the same byte order (not 4-D, H*W == 1, or C == 1)."""
    return len(shape) != 4 or shape[2] * shape[3] == 1 or shape[1] == 1


def nbytes(tensor: LoweredTensor) -> int:
    return tensor.size * _ITEM_BYTES[tensor.dtype]


# --------------------------------------------------------------------------------------------
# C literals
# --------------------------------------------------------------------------------------------


def c_float(value: float) -> str:
    """An exact C99 float literal (hex float), INFINITY for infinities."""
    value = float(np.float32(value))
    if math.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    if math.isnan(value):
        raise ExportError("C target: NaN in a constant")
    return f"{value.hex()}f"


def c_int(value: int) -> str:
    value = int(value)
    return "(-2147483647 - 1)" if value == -(2**31) else str(value)


def c_array(name: str, array: np.ndarray, dtype: str) -> str:
    """A `static const` C array definition of a flat array."""
    flat = np.asarray(array).reshape(-1)
    if dtype == "float32":
        items = [c_float(v) for v in flat.astype(np.float32)]
        per_line = 6
    else:
        items = [c_int(v) for v in flat.astype(np.int64)]
        per_line = 16
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)] or ["0"]
    body = ",\n    ".join(lines)
    return f"static const {_C_TYPES[dtype]} {name}[{max(len(items), 1)}] = {{\n    {body}\n}};\n"


def c_struct(type_name: str, name: str, fields: dict) -> str:
    """A `static const` struct with designated initializers."""
    body = ", ".join(f".{key} = {value}" for key, value in fields.items())
    return f"static const {type_name} {name} = {{{body}}};\n"


# Generated comments hold only text fwedge itself writes (op indices, kinds, layouts, shapes),
# never a tensor or node name: a name could end the comment ("*/"), start a preprocessor line (a
# newline) or, under -std=c99, hide a backslash or a '#' in a trigraph ("??/", "??="). The names
# stay in the bundle manifest (inputs, outputs, op_names) and in model.h as escaped data.
_COMMENT_TEXT = re.compile(r"[A-Za-z0-9 _\[\]()*/,.=+:;'-]*")


def c_comment(text: str) -> str:
    """`/* text */` for text the generator wrote.

    Raises:
        ExportError: the text holds anything that could end the comment or the line.
    """
    if not _COMMENT_TEXT.fullmatch(text) or "*/" in text or "/*" in text or "//" in text:
        raise ExportError(f"C target: refusing to write {text!r} into a C comment")
    return f"/* {text} */"


def c_comment_block(lines: list[str]) -> str:
    """A multi-line comment of generator-written lines (checked as c_comment checks them)."""
    for line in lines:
        c_comment(line)
    return "/*\n" + "".join(f" * {line}".rstrip() + "\n" for line in lines) + " */"


# Octal escapes take at most three digits, so three-digit escapes never run into the next one
# (a hex escape is greedy: "\x41" followed by "B" reads as one escape).
_LITERAL_PIECE = 32


def c_string(data: str | bytes) -> str:
    """A C string literal holding exactly `data`'s bytes (UTF-8 for text), every byte an octal
    escape: no user byte appears as itself, so no quote, backslash, trigraph, newline or comment
    marker can reach the compiler. Long data becomes adjacent literals on continuation lines.

    Raises:
        ExportError: text that is not valid Unicode (a lone surrogate).
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ExportError(f"C target: name {data[:80]!r} is not valid Unicode text") from exc
    data = bytes(data)
    pieces = ['"' + "".join(f"\\{byte:03o}" for byte in data[start:start + _LITERAL_PIECE]) + '"'
              for start in range(0, len(data), _LITERAL_PIECE)]
    return "\n        ".join(pieces) or '""'


def c_name_bytes(data: str | bytes) -> int:
    """The byte length of a name as c_string writes it (names may hold NUL bytes)."""
    return len(data.encode("utf-8") if isinstance(data, str) else bytes(data))


# --------------------------------------------------------------------------------------------
# Program
# --------------------------------------------------------------------------------------------


@dataclass
class CProgram:
    """Generated sources and the facts the bundle manifest reports.

    Attributes:
        model_c, model_h: generated source texts.
        kernels: runtime_c source files the model needs (only these are compiled in).
        plan: the arena memory plan.
        weights_bytes: bytes of constant arrays (weights, biases, tables).
        inputs, outputs: (name, logical shape, dtype) of the graph inputs and outputs, in the
            order of the harness files.
        ops: (kind, dtype) of every op, for reports.
        op_names: the name of every op, in model.c order (its comments say "op <index>").
    """

    model_c: str
    model_h: str
    kernels: list[str]
    plan: MemoryPlan
    weights_bytes: int
    inputs: list[tuple[str, tuple[int, ...], str]]
    outputs: list[tuple[str, tuple[int, ...], str]]
    ops: list[tuple[str, str]] = field(default_factory=list)
    op_names: list[str] = field(default_factory=list)


class _Emitter:
    """State of one generation: constant arrays, parameter structs and the call sequence."""

    def __init__(self, graph: LoweredGraph, plan: MemoryPlan, quads: bool = True):
        self.graph = graph
        self.plan = plan
        self.quads = quads
        self.declarations: list[str] = []
        self.body: list[str] = []
        self.kernels: set[str] = set(ALWAYS_KERNELS)
        self.constant_names: dict[str, str] = {}
        self.weights_bytes = 0
        self.counter = 0
        self.op_index = 0  # the op being emitted: comments name ops by index, never by name

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def tensor(self, name: str) -> LoweredTensor:
        return self.graph.tensors[name]

    def pointer(self, name: str) -> str:
        """A C expression pointing at a tensor: an arena slot or a constant array."""
        tensor = self.tensor(name)
        if tensor.is_constant:
            return self.constant(name)
        return f"FW_TENSOR({_C_TYPES[tensor.dtype]}, {self.plan.offsets[name]})"

    def constant(self, name: str) -> str:
        """Emit a graph constant (in its stored layout) once; returns its C name."""
        if name not in self.constant_names:
            tensor = self.graph.tensors[name]
            self.constant_names[name] = self.array("constant", to_physical(tensor.data), tensor.dtype)
        return self.constant_names[name]

    def array(self, role: str, data, dtype: str) -> str:
        """Emit a constant array (weights in kernel layout, requantization tables); `role` is the
        generator's own description of it (the comment names the op by its index)."""
        data = np.asarray(data)
        c_name = self.fresh("k")
        self.declarations.append(c_comment(f"op {self.op_index} {role} {list(data.shape)}") + "\n"
                                 + c_array(c_name, data, dtype))
        self.weights_bytes += int(data.size) * _ITEM_BYTES[dtype]
        return c_name

    def conv_layouts(self, role: str, layouts: dict[int, np.ndarray]) -> tuple[str, str]:
        """The packed int8 conv weights in the pair and the quad layout, each under #if: a build
        compiles in the one its kernels read (FW_CONV_K_GROUP), the x86-64 dispatch build both.
        Returns their C names (pairs, quads) for FW_CONV2D_S8. weights_bytes counts the pairs.
        Without self.quads (a non-x86 model.c, whose builds all read pairs) only the pairs."""
        pairs, quads = self.fresh("k"), self.fresh("k")
        if not self.quads:
            self.declarations.append(c_comment(f"op {self.op_index} {role}, G = 2") + "\n"
                                     + c_array(pairs, layouts[2], "conv_s8"))
        else:
            self.declarations.append(
                c_comment(f"op {self.op_index} {role}, G = 2 and G = 4") + "\n"
                "#if FW_CONV_K_GROUP == 2 || defined(FW_X86_DISPATCH)\n" + c_array(pairs, layouts[2], "conv_s8")
                + "#endif\n#if FW_CONV_K_GROUP == 4 || defined(FW_X86_DISPATCH)\n" + c_array(quads, layouts[4], "int8")
                + "#endif\n")
        self.weights_bytes += int(np.asarray(layouts[2]).size) * _ITEM_BYTES["conv_s8"]
        return pairs, quads

    def struct(self, type_name: str, fields: dict) -> str:
        name = self.fresh("p")
        self.declarations.append(c_struct(type_name, name, fields))
        return name

    def call(self, op: LoweredOp, line: str) -> None:
        self.body.append(f"    {c_comment(f'op {self.op_index}: {op.kind}')}\n    {line}\n")


EMITTERS = {}


def emitter(*kinds: str):
    """Register the C emitter of one or more lowered op kinds."""

    def register(function):
        for kind in kinds:
            EMITTERS[kind] = function
        return function

    return register


def _suffix(dtype: str) -> str:
    return "s8" if dtype == "int8" else "f32"


def _zero_point(tensor: LoweredTensor) -> int:
    return int(tensor.quant.zero_point[0]) if tensor.quant is not None else 0


def _float_clamp(activation: str) -> tuple[str, str]:
    return {"none": ("-INFINITY", "INFINITY"), "relu": ("0.0f", "INFINITY"), "relu6": ("0.0f", "6.0f")}[activation]


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    return np.broadcast_to(values, (channels,)) if values.size == 1 else values


# Output channels per block of packed int8 conv weights (FW_CONV_BLOCK in fwedge_rt.h).
CONV_BLOCK = 8


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
        multiplier = e.array("multiplier", _per_channel(attrs.requant.multiplier, c_out), "int32")
        shift = e.array("shift", _per_channel(attrs.requant.shift, c_out), "int32")
        if packed:  # the layout the build reads, or both for the x86-64 dispatch (fwedge_rt.h)
            e.call(op, f"FW_CONV2D_S8(&{params}, {e.pointer(X.name)}, {pairs}, {quads}, {bias_name}, {multiplier}, "
                       f"{shift}, {e.pointer(Y.name)});")
        else:
            callee = f"FW_DISPATCH({function})" if depthwise else function
            e.call(op, f"{callee}(&{params}, {e.pointer(X.name)}, {weight_name}, {bias_name}, {multiplier}, "
                       f"{shift}, {e.pointer(Y.name)});")
    else:
        e.call(op, f"{function}(&{params}, {e.pointer(X.name)}, {weight_name}, {bias_name}, {e.pointer(Y.name)});")


@emitter("fully_connected")
def emit_fully_connected(e: _Emitter, op: LoweredOp) -> None:
    X, W, B = (e.tensor(name) for name in op.inputs)
    Y = e.tensor(op.outputs[0])
    out_features, in_features = W.shape
    if X.size != in_features or not layout_trivial(X.shape):
        raise ExportError(f"C target: fully_connected {op.name!r}: input {X.name!r} {list(X.shape)} "
                          f"is not a [1, {in_features}] row")
    int8 = Y.dtype == "int8"
    float_min, float_max = _float_clamp(op.attrs.activation)
    params = e.struct("fw_fully_connected_params", {
        "in_features": in_features, "out_features": out_features,
        "input_zero_point": _zero_point(X), "output_zero_point": _zero_point(Y),
        "activation_min": op.attrs.requant.act_min if int8 else -128,
        "activation_max": op.attrs.requant.act_max if int8 else 127,
        "float_min": float_min, "float_max": float_max,
    })
    e.kernels.add(f"fully_connected_{_suffix(Y.dtype)}.c")
    args = f"&{params}, {e.pointer(X.name)}, {e.constant(W.name)}, {e.constant(B.name)}"
    if int8:
        multiplier = e.array("multiplier", _per_channel(op.attrs.requant.multiplier, out_features), "int32")
        shift = e.array("shift", _per_channel(op.attrs.requant.shift, out_features), "int32")
        args += f", {multiplier}, {shift}"
    e.call(op, f"fw_fully_connected_{_suffix(Y.dtype)}({args}, {e.pointer(Y.name)});")


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


@emitter("add", "mul")
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


@emitter("softmax")
def emit_softmax(e: _Emitter, op: LoweredOp) -> None:
    X, Y = e.tensor(op.inputs[0]), e.tensor(op.outputs[0])
    if op.attrs.axis != len(X.shape) - 1 or not layout_trivial(X.shape):
        raise ExportError(f"C target: softmax {op.name!r} over axis {op.attrs.axis} of {list(X.shape)}: "
                          "only the last axis of a non-image tensor is supported")
    depth = X.shape[-1]
    outer = X.size // depth
    if Y.dtype == "int8":
        if op.attrs.beta != 1.0:
            raise ExportError(f"C target: int8 softmax {op.name!r} with beta {op.attrs.beta}")
        table = e.array("exp table (Q24)", op.attrs.exp_table, "int32")
        r = op.attrs.requant
        e.kernels.add("softmax_s8.c")
        e.call(op, f"fw_softmax_s8({outer}, {depth}, {table}, {int(r.multiplier[0])}, {int(r.shift[0])}, "
                   f"{_zero_point(Y)}, {e.pointer(X.name)}, {e.pointer(Y.name)});")
        return
    if op.attrs.beta != 1.0:
        raise ExportError(f"C target: softmax {op.name!r} with beta {op.attrs.beta}")
    e.kernels.add("activation_f32.c")
    e.call(op, f"fw_softmax_f32({outer}, {depth}, {e.pointer(X.name)}, {e.pointer(Y.name)});")


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


# --------------------------------------------------------------------------------------------
# Whole program
# --------------------------------------------------------------------------------------------


def unsupported_ops(graph: LoweredGraph) -> list[LoweredOp]:
    """Lowered ops the C emitters do not cover (every KINDS entry has one; kept for safety)."""
    return [op for op in graph.ops if op.kind not in EMITTERS]


def lifetimes(graph: LoweredGraph) -> list[Buffer]:
    """Arena buffers of every non-constant tensor. Step 0 copies inputs in, step i+1 runs op i,
    and the last step copies outputs out."""
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = {name: 0 for name in graph.inputs}
    for index, op in enumerate(graph.ops, start=1):
        for name in op.inputs:
            if not graph.tensors[name].is_constant:
                last[name] = index
        for name in op.outputs:
            first.setdefault(name, index)
            last[name] = max(last.get(name, index), index)
    final = len(graph.ops) + 1
    for name in graph.outputs:
        last[name] = final
    return [Buffer(name, nbytes(graph.tensors[name]), first[name], last[name]) for name in first]


def generate(graph: LoweredGraph, source_sha256: str = "", quads: bool = True) -> CProgram:
    """Generate model.c and model.h for a lowered graph.

    Args:
        graph: the lowered graph (batch 1).
        source_sha256: recorded in the generated header comment.
        quads: also write the packed conv weights in the quad layout (x86 builds: VNNI kernels);
            without it model.c holds the pairs only and refuses a build that reads quads.

    Returns:
        The CProgram.

    Raises:
        ExportError: an op whose layout or attributes the C kernels cannot express.
    """
    missing = unsupported_ops(graph)
    if missing:
        raise ExportError("C target: no emitter for " + ", ".join(f"{op.name!r} ({op.kind})" for op in missing))
    for name in [*graph.inputs, *graph.outputs]:
        if not isinstance(name, str):  # protobuf hands over a name that is not UTF-8 as bytes
            raise ExportError(f"C target: graph input or output name {name[:80]!r} is not UTF-8 text")
    if not _SHA256.fullmatch(source_sha256 or "0" * 64):
        raise ExportError(f"C target: source sha256 {source_sha256[:80]!r} is not 64 hex digits")
    plan = plan_memory(lifetimes(graph), ALIGNMENT)
    e = _Emitter(graph, plan, quads)
    for index, name in enumerate(graph.inputs):
        X = graph.tensors[name]
        line = None
        if layout_trivial(X.shape):
            line = f"memcpy({e.pointer(name)}, inputs[{index}], {nbytes(X)});"
        else:
            _, c, h, w = X.shape
            line = f"fw_transpose2d({c}, {h * w}, {_ITEM_BYTES[X.dtype]}, inputs[{index}], {e.pointer(name)});"
        e.body.append(f"    {c_comment(f'input {index} {X.dtype}{list(X.shape)} (NCHW in, NHWC stored)')}\n    {line}\n")
    for e.op_index, op in enumerate(graph.ops):
        EMITTERS[op.kind](e, op)
    for index, name in enumerate(graph.outputs):
        Y = graph.tensors[name]
        if layout_trivial(Y.shape):
            line = f"memcpy(outputs[{index}], {e.pointer(name)}, {nbytes(Y)});"
        else:
            _, c, h, w = Y.shape
            line = f"fw_transpose2d({h * w}, {c}, {_ITEM_BYTES[Y.dtype]}, {e.pointer(name)}, outputs[{index}]);"
        e.body.append(f"    {c_comment(f'output {index} {Y.dtype}{list(Y.shape)} (NCHW out)')}\n    {line}\n")

    inputs = [(name, tuple(graph.tensors[name].shape), graph.tensors[name].dtype) for name in graph.inputs]
    outputs = [(name, tuple(graph.tensors[name].shape), graph.tensors[name].dtype) for name in graph.outputs]
    header = _model_h(inputs, outputs, plan, source_sha256)
    banner = "\n".join([
        c_comment(f"Generated by fwedge {__version__} from model sha256 {source_sha256 or 'unknown'}; do not edit."),
        c_comment(f"{len(graph.ops)} ops, {graph.precision}; arena {plan.arena_bytes} bytes "
                  f"(live-tensor lower bound {plan.lower_bound_bytes}); constants {e.weights_bytes} bytes."),
        c_comment("Activations are stored NHWC in one static arena; see fwedge_rt.h for the kernels."),
        c_comment("Comments name ops by index: the bundle manifest's op_names holds their names."),
    ]) + "\n"
    model_c = (
        banner
        + "#include <math.h>\n#include <stdint.h>\n#include <string.h>\n\n#include \"fwedge_rt.h\"\n#include \"model.h\"\n\n"
        + ("" if quads else "#if FW_CONV_K_GROUP != 2 || defined(FW_X86_DISPATCH)\n#error \"this model.c holds the "
                            "packed conv weights in the pair layout only: export the model for x86_64 for the VNNI "
                            "kernels\"\n#endif\n\n")
        + f"static union {{\n    uint8_t bytes[{max(plan.arena_bytes, 1)}];\n    int64_t align;\n}} fw_arena;\n\n"
        + "#define FW_TENSOR(type, offset) ((type *)(fw_arena.bytes + (offset)))\n\n"
        + "\n".join(e.declarations)
        + "\nvoid fwedge_run(const void *const inputs[], void *const outputs[])\n{\n"
        + "".join(e.body)
        + "}\n"
    )
    return CProgram(
        model_c=model_c, model_h=header, kernels=sorted(e.kernels), plan=plan, weights_bytes=e.weights_bytes,
        inputs=inputs, outputs=outputs,
        ops=[(op.kind, graph.tensors[op.outputs[0]].dtype) for op in graph.ops],
        op_names=[op.name for op in graph.ops],
    )


def _model_h(inputs, outputs, plan: MemoryPlan, source_sha256: str) -> str:
    def sizes(items):
        return ", ".join(str(int(np.prod(shape)) * _ITEM_BYTES[dtype]) for _, shape, dtype in items)

    def names(items):
        return ",\n    ".join(c_string(name) for name, _, _ in items)

    def name_bytes(items):
        return ", ".join(str(c_name_bytes(name)) for name, _, _ in items)

    def describe(items):
        return [f"  {index}: {dtype}{list(shape)}" for index, (_, shape, dtype) in enumerate(items)]

    total_in = sum(int(np.prod(s)) * _ITEM_BYTES[d] for _, s, d in inputs)
    total_out = sum(int(np.prod(s)) * _ITEM_BYTES[d] for _, s, d in outputs)
    doc = c_comment_block([
        f"Generated by fwedge {__version__} (model sha256 {source_sha256 or 'unknown'}); do not edit.",
        "",
        "fwedge_run(inputs, outputs) runs the model once on batch 1. Inputs and outputs are raw",
        "little-endian arrays in ONNX (NCHW) order; inputs[i] must hold fwedge_input_bytes[i] bytes:",
        *describe(inputs),
        "Outputs:",
        *describe(outputs),
        "All other memory is one static arena of FWEDGE_ARENA_BYTES bytes (not reentrant).",
        "Names: fwedge_input_names[i] holds fwedge_input_name_bytes[i] bytes (UTF-8, NUL bytes",
        "possible), likewise for outputs; the bundle manifest holds the same names.",
    ])
    return f"""{doc}
#ifndef FWEDGE_MODEL_H
#define FWEDGE_MODEL_H

#include <stdint.h>

#define FWEDGE_NUM_INPUTS {len(inputs)}
#define FWEDGE_NUM_OUTPUTS {len(outputs)}
#define FWEDGE_INPUT_BYTES {total_in}
#define FWEDGE_OUTPUT_BYTES {total_out}
#define FWEDGE_ARENA_BYTES {plan.arena_bytes}

static const uint32_t fwedge_input_bytes[FWEDGE_NUM_INPUTS] = {{{sizes(inputs)}}};
static const uint32_t fwedge_output_bytes[FWEDGE_NUM_OUTPUTS] = {{{sizes(outputs)}}};
static const char *const fwedge_input_names[FWEDGE_NUM_INPUTS] = {{
    {names(inputs)}}};
static const char *const fwedge_output_names[FWEDGE_NUM_OUTPUTS] = {{
    {names(outputs)}}};
static const uint32_t fwedge_input_name_bytes[FWEDGE_NUM_INPUTS] = {{{name_bytes(inputs)}}};
static const uint32_t fwedge_output_name_bytes[FWEDGE_NUM_OUTPUTS] = {{{name_bytes(outputs)}}};

void fwedge_run(const void *const inputs[], void *const outputs[]);

#endif /* FWEDGE_MODEL_H */
"""

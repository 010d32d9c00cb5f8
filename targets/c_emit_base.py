"""What every C emitter shares: tensor layout, C literals, the _Emitter state and the EMITTERS registry."""
from __future__ import annotations

import math
import re

import numpy as np

from fwedge.errors import ExportError
from fwedge.lowered.graph import LoweredGraph, LoweredOp, LoweredTensor
from fwedge.targets.memory_plan import MemoryPlan

# "conv_s8": int8 conv weights, declared as fw_conv_weight (fwedge_rt.h: int16 in AVX2 builds,
# int8 otherwise), so one model.c serves both.
_C_TYPES = {"float32": "float", "int8": "int8_t", "int32": "int32_t", "conv_s8": "fw_conv_weight"}
_ITEM_BYTES = {"float32": 4, "int8": 1, "int32": 4, "conv_s8": 1}  # conv_s8: int8 values (AVX2 builds store int16)
# NCHW logical axis order of the NHWC physical storage of 4-D tensors.
_NHWC = (0, 2, 3, 1)
# Kernel source files that every bundle compiles (data movement, I/O layout changes).
ALWAYS_KERNELS = ("data.c",)


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


# Each byte value as a three-digit octal escape: exactly four characters, and an octal escape
# ends after three digits, so no following character can extend it (a hex escape would).
_OCTAL = np.array([f"\\{value:03o}".encode() for value in range(256)], dtype="S4")
_LITERAL_LINE = 32  # bytes per line of a string literal


def _int8_literal(name: str, flat: np.ndarray) -> str:
    """An int8 array as a string literal: compilers read one string token far faster than one
    integer expression per element (a 4 MB array: 0.5 s against 11.6 s for clang -O2). The array
    has one byte more than the values, for the literal's terminating zero."""
    raw = _OCTAL[flat.astype(np.int8).view(np.uint8)].tobytes().decode("ascii")
    step = 4 * _LITERAL_LINE
    body = "\n".join(f'    "{raw[i:i + step]}"' for i in range(0, len(raw), step))
    return f"static const int8_t {name}[{flat.size + 1}] =\n{body};\n"


def c_array(name: str, array: np.ndarray, dtype: str) -> str:
    """A `static const` C array definition of a flat array."""
    flat = np.asarray(array).reshape(-1)
    if dtype == "int8" and flat.size:
        return _int8_literal(name, flat)
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
# Emitter state and registry
# --------------------------------------------------------------------------------------------


class _Emitter:
    """State of one generation: constant arrays, parameter structs and the call sequence."""

    def __init__(self, graph: LoweredGraph, plan: MemoryPlan, quads: bool = True, prepare_neon: bool = False):
        self.graph = graph
        self.plan = plan
        self.quads = quads
        self.prepare_neon = prepare_neon  # aarch64: the NEON kernels' constants (targets/c_prepared.py)
        self.conv_layout_bytes = {"pairs": 0, "quads": 0}
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

    def array(self, role: str, data, dtype: str, weights: bool = True) -> str:
        """Emit a constant array (weights in kernel layout, requantization tables); `role` is the
        generator's own description of it (the comment names the op by its index). weights=False:
        constants derived for one build's kernels (c_prepared.py), not counted in weights_bytes."""
        data = np.asarray(data)
        c_name = self.fresh("k")
        self.declarations.append(c_comment(f"op {self.op_index} {role} {list(data.shape)}") + "\n"
                                 + c_array(c_name, data, dtype))
        if weights:
            self.weights_bytes += int(data.size) * _ITEM_BYTES[dtype]
        return c_name

    def conv_layouts(self, role: str, layouts: dict[int, np.ndarray]) -> tuple[str, str]:
        """The packed int8 conv weights in the pair and the quad layout, each under #if: a build
        compiles in the one its kernels read (FW_CONV_K_GROUP: quads for x86 VNNI and aarch64
        NEON, pairs otherwise), the x86-64 dispatch build both. Returns their C names (pairs,
        quads) for FW_CONV2D_S8. weights_bytes counts the pairs, conv_layout_bytes each layout.
        Without self.quads (riscv64 and loongarch64, whose builds all read pairs) only the pairs."""
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
        self.conv_layout_bytes["pairs"] += int(np.asarray(layouts[2]).size) * _ITEM_BYTES["conv_s8"]
        if self.quads:
            self.conv_layout_bytes["quads"] += int(np.asarray(layouts[4]).size)
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

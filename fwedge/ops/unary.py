"""Op card: element-wise functions of one input (Relu, Clip, HardSwish, HardSigmoid, Sigmoid, SiLU, ...).

Every function here is one lowered kind. In int8 it becomes an int8[256] table computed from the
function's float reference between the exact input and output scales; in float the targets call
the function itself. The float reference is written once, in FUNCTIONS, and both the lowering
(the table) and the interpreter (the float kernel) evaluate it.

Adding a function: one FUNCTIONS entry (kind, reference, target spellings) and one
register_op call for its ONNX op. The C runtime then needs `fw_<kind>_f32(size, <params>, x, y)`
in runtime_c/activation_f32.c and fwedge_rt.h for float models (params in the order of
UnaryFunction.params); int8 models need nothing more. A function whose TFLite form needs options
or several builtins (hardsigmoid, leaky_relu) has tflite=None and its own emitter there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, note_float
from fwedge.lowered.graph import INT8_MAX, INT8_MIN, LoweredOp, UnaryAttrs
from fwedge.lowered.view import activation_name, clip_bounds, dq_params
from fwedge.ops.base import OpInfo, UnaryFunction, attribute, register_kind, register_op, silu_mul

_ACTIVATION = OpInfo(channel_passthrough=True, activation=True, quantizable=True)
_CLAMP = OpInfo(channel_passthrough=True, activation=True, quantizable=True, clamps_range=True)


@dataclass(frozen=True)
class TfliteSpelling:
    """How targets/tflite.py writes a function: one builtin, optionally into a fixed int8 range.

    Attributes:
        builtin: the BuiltinOperator name.
        int8_version: the operator version of its int8 kernel.
        fixed_output: (scale, zero point) the int8 kernel requires of its output; the writer
            then adds a QUANTIZE to the model's own output quantization.
    """

    builtin: str
    int8_version: int = 1
    fixed_output: tuple[float, int] | None = None


@dataclass(frozen=True)
class Function:
    """One element-wise function: its lowered kind, float reference and target spellings.

    Attributes:
        kind: the lowered kind.
        unary: the float reference (see fwedge.ops.base.UnaryFunction).
        tflite: the TFLite spelling, None when targets/tflite.py registers its own emitter.
    """

    kind: str
    unary: UnaryFunction
    tflite: TfliteSpelling | None


def _sqrt(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _silu(x: np.ndarray) -> np.ndarray:
    sigmoid = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)
    return x * sigmoid


FUNCTIONS = (
    Function("relu", UnaryFunction(lambda x: np.maximum(x, 0)), TfliteSpelling("RELU", 2)),
    Function("relu6", UnaryFunction(lambda x: np.clip(x, 0, 6)), TfliteSpelling("RELU6", 2)),
    Function("hardswish", UnaryFunction(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)), TfliteSpelling("HARD_SWISH", 1)),
    # Composed from MUL, ADD and MINIMUM by targets/tflite.py.
    Function("hardsigmoid", UnaryFunction(lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1),
                                          ("alpha", "beta")), None),
    # Evaluated in float64 whatever the input; the table rounds the result to float32 first.
    Function("sigmoid", UnaryFunction(lambda x: 1.0 / (1.0 + np.exp(-x.astype(np.float64)))),
             TfliteSpelling("LOGISTIC", 2, (1.0 / 256.0, -128))),
    # SiLU, x * Sigmoid(x) as the quantizer and the lowering pair the two nodes (base.silu_mul):
    # the float32 product of x and the float32 sigmoid, as onnxruntime's Sigmoid -> Mul computes
    # it (the table's 256 entries are those of ORT's exact QDQ run: tests/test_silu.py).
    Function("silu", UnaryFunction(_silu), None),
    # TFLite's int8 TANH requires the output scale 1/128 and zero point 0.
    Function("tanh", UnaryFunction(np.tanh), TfliteSpelling("TANH", 2, (1.0 / 128.0, 0))),
    # LEAKY_RELU carries alpha in its options: targets/tflite.py has its own emitter.
    Function("leaky_relu", UnaryFunction(lambda x, alpha: np.where(x >= 0, x, alpha * x), ("alpha",)), None),
    # Sqrt: IEEE sqrt is correctly rounded on every target, so float32 sqrt is the reference. A
    # negative input gives NaN, as onnxruntime does; the int8 table maps those levels to 0 (an
    # int8 input below zero is outside any range calibrated on a Sqrt's input).
    Function("sqrt", UnaryFunction(_sqrt), None),
    # Pow(x, 2), as LayerNorm chains write the variance: x * x in the input's precision (ORT's
    # Pow takes the same product for an exponent of 2).
    Function("square", UnaryFunction(lambda x: x * x), None),
)
BY_KIND = {function.kind: function for function in FUNCTIONS}


def evaluate(kind: str, x: np.ndarray, attrs: UnaryAttrs) -> np.ndarray:
    """The float reference of `kind` on x, with the parameters it reads from attrs."""
    unary = BY_KIND[kind].unary
    return unary.reference(x, *(getattr(attrs, name) for name in unary.params))


def lookup_table(kind: str, attrs: UnaryAttrs, x_quant, y_quant) -> np.ndarray:
    """int8[256] table of `kind`: y_q = table[x_q + 128] between the given quantizations.

    The function is evaluated on the 256 float32 input levels and rounded half to even, as
    onnxruntime's DequantizeLinear -> op -> QuantizeLinear does.
    """
    levels = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64)
    x = ((levels - x_quant.zero_point[0]) * np.float32(x_quant.scale[0])).astype(np.float32)
    y = evaluate(kind, x, attrs).astype(np.float32)
    y = np.where(np.isnan(y), np.float32(0.0), y)  # sqrt of a negative level (see FUNCTIONS)
    q = np.clip(np.round(y / np.float32(y_quant.scale[0])) + y_quant.zero_point[0], INT8_MIN, INT8_MAX)
    return q.astype(np.int8)


def run_unary(op: LoweredOp, values, tensors):
    """Interpreter kernel of every function: the table in int8, the reference in float64."""
    x = values[op.inputs[0]]
    if x.dtype == np.int8:
        return op.attrs.lut[x.astype(np.int64) + 128]
    return evaluate(op.kind, x.astype(np.float64), op.attrs).astype(np.float32)


def lower_unary(builder: Builder, node: onnx.NodeProto, kind: str, attrs: UnaryAttrs) -> None:
    """One function node: a table op when its input and output are int8, else the float op."""
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        (x_q,), (y_name, y_quant) = operands, out
        table = lookup_table(kind, attrs, x_q.quant, y_quant)
        builder.emit(kind, node.name, [x_q.name], [y_name], UnaryAttrs(attrs.alpha, attrs.beta, table))
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit(kind, node.name, [x], [float_output(builder, node.output[0])], attrs)


def same_dequantized(view, a: str, b: str) -> bool:
    """Whether two tensors carry one value: the same name, or DequantizeLinear outputs of the same
    int8 tensor with the same scale and zero point (a QDQ layout with one DQ per consumer)."""
    if a == b:
        return True
    first, second = view.producers.get(a), view.producers.get(b)
    return (first is not None and second is not None and first.op_type == second.op_type == "DequantizeLinear"
            and list(first.input) == list(second.input) and list(first.attribute) == list(second.attribute))


def silu_of(view, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Mul that makes Sigmoid `node` a SiLU in this graph (base.silu_mul), or None."""
    if node.output[0] in view.outputs:
        return None
    return silu_mul(node, view.consumers.get(node.output[0], []), lambda a, b: same_dequantized(view, a, b))


def _lower_sigmoid(builder: Builder, node: onnx.NodeProto) -> None:
    """A Sigmoid, or with the Mul of x * Sigmoid(x) one silu op: an int8 table from x's
    quantization to the Mul's output quantization (no rounding of the sigmoid between them)."""
    mul = silu_of(builder.view, node)
    if mul is None:
        lower_unary(builder, node, "sigmoid", UnaryAttrs())
        return
    builder.done.add(id(mul))
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, mul) if operands is not None else None
    if out is not None:
        (x_q,), (y_name, y_quant) = operands, out
        table = lookup_table("silu", UnaryAttrs(), x_q.quant, y_quant)
        builder.emit("silu", node.name, [x_q.name], [y_name], UnaryAttrs(lut=table))
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("silu", node.name, [x], [float_output(builder, mul.output[0])], UnaryAttrs())


def _lower_as(kind: str):
    """The lowering of an ONNX op that is exactly one function without parameters."""
    return lambda builder, node: lower_unary(builder, node, kind, UnaryAttrs())


def _lower_clamp(builder: Builder, node: onnx.NodeProto) -> None:
    lower_unary(builder, node, activation_name(clip_bounds(builder.view, node)), UnaryAttrs())


def _lower_hardsigmoid(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = UnaryAttrs(float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5)))
    lower_unary(builder, node, "hardsigmoid", attrs)


def _lower_leaky_relu(builder: Builder, node: onnx.NodeProto) -> None:
    lower_unary(builder, node, "leaky_relu", UnaryAttrs(alpha=float(attribute(node, "alpha", 0.01))))


def pow_exponent(view, node: onnx.NodeProto) -> float | None:
    """A Pow's constant scalar exponent: a float constant, or a DequantizeLinear of one (a QDQ
    model may quantize it: 127 * float32(2 / 127) is 2 within 1e-6, and x^2.000001 differs from
    x * x by far less than an output step), or None."""
    value = view.const(node.input[1])
    producer = view.producers.get(node.input[1])
    if value is None and producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in view.consts:
        scale, zero_point, _ = dq_params(view, producer)
        value = (view.consts[producer.input[0]].astype(np.float64) - zero_point.astype(np.float64)) * scale
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _check_pow(view, node: onnx.NodeProto) -> str | None:
    exponent = pow_exponent(view, node)
    if exponent is None or abs(exponent - 2.0) > 1e-5:
        return "Pow with an exponent other than the constant 2"
    return None


def _check_clip(view, node: onnx.NodeProto) -> str | None:
    bounds = clip_bounds(view, node)
    if bounds is None:
        return "Clip with non-constant bounds"
    if activation_name(bounds) is None:
        return f"Clip{bounds}, only relu (0, inf) and relu6 (0, 6)"
    return None


for _function in FUNCTIONS:
    register_kind(_function.kind, run_unary, _function.unary)

register_op("Relu", _CLAMP, kinds=("relu",), lower=_lower_clamp)
register_op("Clip", _CLAMP, kinds=("relu", "relu6"), lower=_lower_clamp, check=_check_clip)
register_op("HardSwish", _ACTIVATION, kinds=("hardswish",), lower=_lower_as("hardswish"))
register_op("HardSigmoid", _ACTIVATION, kinds=("hardsigmoid",), lower=_lower_hardsigmoid)
register_op("Sigmoid", _ACTIVATION, kinds=("sigmoid", "silu"), lower=_lower_sigmoid)
register_op("LeakyRelu", _ACTIVATION, kinds=("leaky_relu",), lower=_lower_leaky_relu)
register_op("Sqrt", _ACTIVATION, kinds=("sqrt",), lower=_lower_as("sqrt"))
register_op("Pow", _ACTIVATION, kinds=("square",), lower=_lower_as("square"), check=_check_pow)
register_op("Tanh", _ACTIVATION, kinds=("tanh",), lower=_lower_as("tanh"))

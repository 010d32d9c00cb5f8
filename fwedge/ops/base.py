"""The op-card registry: what fwedge knows about each ONNX op and each lowered kind.

An op card is a module in fwedge/ops/ (conv.py, unary.py, ...) that registers, in one place,
for every ONNX op of its family:

* its OpInfo (weight/bias inputs, channel axes: pruning, quantization and BN folding read it);
* the lowered kinds it can become, and whether a fused activation folds into it;
* its support check (attributes, ranks, shapes) and its lowering to a lowered kind;

and for every lowered kind it defines: the interpreter kernel (the kind's executable spec) and,
for element-wise functions, the float reference that both the interpreter and the lowering
use. The targets then register one emitter per lowered kind (targets/c_emitters.py,
targets/tflite.py) or one layer per ONNX op family (targets/ncnn.py), and
tests/test_op_cards.py checks that nothing is half-registered.

This module imports nothing of fwedge beyond the errors, so that every room can read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx


@dataclass(frozen=True)
class OpInfo:
    """What pruning, BN folding and quantization need to know about one ONNX op type.

    Attributes:
        weight_input: input index of the weight tensor, if the op has one.
        bias_input: input index of the bias tensor, if the op has one.
        out_channel_axis: axis of the weight that indexes output channels.
        in_channel_axis: axis of the weight that indexes input channels.
        channel_passthrough: output channel c depends on input channel c only (BN, activations,
            pools, element-wise ops): channel pruning passes straight through.
        elementwise: the op combines several same-shaped inputs element by element.
        activation: an activation that can be fused into the producer's output range.
        quantize_output: quantization gives the op's output its own activation scale. False for
            ops that only move data (reshape, pools with max) and share the input's scale.
        shares_input_scale: the output must keep the input's scale and zero point (data movement).
        quantizable: int8 compute exists in the targets: QDQ insertion quantizes the op's float
            activation inputs, its weight (per channel), its bias (int32) and its output.
        clamps_range: a clamp (ReLU, Clip with constant bounds) that fuses into the producer's
            quantization range: no Q/DQ between the producer and it.
        channel_inputs: inputs holding one value per channel (BN scale, B, mean, var): channel
            pruning slices them along with the data.
        float_island: why the op has no int8 form, when it has none on purpose: in an int8 model
            it runs in float between a dequantize and a quantize, and the quantizer records the
            node with this reason in the model's kept-float list (plan.float_islands).
        stays_float: why the quantizer leaves the op float, where its int8 form (if a target has
            one) is not what its QDQ models compute: it reads what its producer gives (float, or
            dequantized) and its output is float until the next layer's quantize. Recorded in the
            kept-float list like a float island, but the quantizer keeps no pair before it.
    """

    weight_input: int | None = None
    bias_input: int | None = None
    out_channel_axis: int | None = None
    in_channel_axis: int | None = None
    channel_passthrough: bool = False
    elementwise: bool = False
    activation: bool = False
    quantize_output: bool = True
    shares_input_scale: bool = False
    quantizable: bool = False
    clamps_range: bool = False
    channel_inputs: tuple[int, ...] = ()
    float_island: str = ""
    stays_float: str = ""


# check(view, node) -> why the lowering cannot take the node, or None.
Check = Callable[[object, onnx.NodeProto], "str | None"]
# lower(builder, node) -> None: emits lowered ops for the node (and a fused activation).
Lower = Callable[[object, onnx.NodeProto], None]
# run(op, values, tensors) -> the op's output array (fwedge/lowered/interp.py).
Kernel = Callable[[object, dict, dict], object]


@dataclass(frozen=True)
class OpCard:
    """Everything fwedge knows about one ONNX op type.

    Attributes:
        op_type: the ONNX op type.
        info: pruning/quantization facts; None for QuantizeLinear/DequantizeLinear, which
            quantization writes rather than plans.
        kinds: the lowered kinds the op can become; () with a `lower` means the op vanishes
            (Identity, Dropout), () without one means it does not lower.
        lower: the lowering, None when the op has none (fwedge then refuses the node).
        check: the support check of the lowering (attributes, ranks, shapes), run before lower.
        static_output: the lowering needs a static output shape.
        fuses_activation: a Relu/Clip that is the node's only consumer folds into its output
            range (no Q/DQ between them; the lowered op carries the activation).
    """

    op_type: str
    info: OpInfo | None
    kinds: tuple[str, ...] = ()
    lower: Lower | None = None
    check: Check | None = None
    static_output: bool = False
    fuses_activation: bool = False


@dataclass(frozen=True)
class UnaryFunction:
    """An element-wise function of one input, lowered to an int8[256] table in int8.

    Attributes:
        reference: the float function on a NumPy array, written so that its result has the
            input's dtype precision (float32 in, float32 arithmetic; float64 in, float64): the
            lowering evaluates it on the 256 float32 levels of the input's scale, the
            interpreter on float64 values.
        params: names of the UnaryAttrs fields the function reads (alpha, beta).
    """

    reference: Callable
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSpec:
    """One lowered kind (fwedge/lowered/graph.py documents each kind's semantics).

    Attributes:
        name: the kind, e.g. "conv2d".
        run: the interpreter kernel.
        unary: set for element-wise functions of one input (relu, sigmoid, tanh, ...).
    """

    name: str
    run: Kernel
    unary: UnaryFunction | None = None


@dataclass
class _Registry:
    cards: dict[str, OpCard] = field(default_factory=dict)
    kinds: dict[str, KindSpec] = field(default_factory=dict)


_REGISTRY = _Registry()


def register_op(op_type: str, info: OpInfo | None, *, kinds: tuple[str, ...] = (), lower: Lower | None = None,
                check: Check | None = None, static_output: bool = False,
                fuses_activation: bool = False) -> OpCard:
    """Register one ONNX op's card. An op registered twice is a programming error."""
    if op_type in _REGISTRY.cards:
        raise RuntimeError(f"op card {op_type!r} registered twice")
    card = OpCard(op_type, info, tuple(kinds), lower, check, static_output, fuses_activation)
    _REGISTRY.cards[op_type] = card
    return card


def register_kind(name: str, run: Kernel, unary: UnaryFunction | None = None) -> KindSpec:
    """Register one lowered kind with its interpreter kernel."""
    if name in _REGISTRY.kinds:
        raise RuntimeError(f"lowered kind {name!r} registered twice")
    spec = KindSpec(name, run, unary)
    _REGISTRY.kinds[name] = spec
    return spec


def card(op_type: str) -> OpCard | None:
    """The card of an ONNX op type, or None when fwedge knows nothing of it."""
    return _REGISTRY.cards.get(op_type)


def all_cards() -> dict[str, OpCard]:
    """Every registered card by ONNX op type (registration order)."""
    return dict(_REGISTRY.cards)


def kind(name: str) -> KindSpec | None:
    """The spec of a lowered kind, or None."""
    return _REGISTRY.kinds.get(name)


def all_kinds() -> dict[str, KindSpec]:
    """Every registered lowered kind (registration order)."""
    return dict(_REGISTRY.kinds)


def fuses_into(producer: onnx.NodeProto, consumer: onnx.NodeProto) -> bool:
    """The fusion rule's op-type half: a clamp consumer folds into a producer that takes one.

    Whether the consumer's bounds are constant is for the caller, which has the constants.
    """
    producer_card, consumer_card = card(producer.op_type), card(consumer.op_type)
    return (producer_card is not None and producer_card.fuses_activation
            and consumer_card is not None and consumer_card.info is not None
            and consumer_card.info.clamps_range)


def silu_mul(sigmoid: onnx.NodeProto, users: list[onnx.NodeProto], same_value=None) -> onnx.NodeProto | None:
    """The Mul that makes `sigmoid` one SiLU, x * Sigmoid(x) in either input order, or None.

    The quantizer gives the pair one layer (no Q/DQ between them) and the lowering one `silu`
    op, both by this rule.

    Args:
        sigmoid: any node; only a Sigmoid qualifies.
        users: every consumer of the Sigmoid's output (the caller knows whether that output is
            also a graph output, which disqualifies it).
        same_value: (name, name) -> whether two tensors carry the same value; default name
            equality (a QDQ model may give each consumer its own DequantizeLinear of one tensor).
    """
    if sigmoid.op_type != "Sigmoid" or len(users) != 1 or users[0].op_type != "Mul" or len(users[0].input) != 2:
        return None
    mul, y = users[0], sigmoid.output[0]
    if list(mul.input).count(y) != 1:
        return None
    other = mul.input[1] if mul.input[0] == y else mul.input[0]
    same = same_value or (lambda a, b: a == b)
    return mul if same(other, sigmoid.input[0]) else None


# The tanh GELU as jax2tf writes it (jax.nn.gelu(approximate=True), tf2onnx): x * (0.5 * (1 +
# tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x)))), each step one node, x read four times. Per
# step: (op type, which operand is the previous step's output or x, the constant if any).
GELU_CUBIC, GELU_SQRT_2_OVER_PI = 0.044715, 0.7978845608028654
_GELU_STEPS = (("Mul", "x", GELU_CUBIC), ("Mul", "x", None), ("Mul", "x", None), ("Add", "x", None),
               ("Mul", None, GELU_SQRT_2_OVER_PI), ("Tanh", None, None), ("Add", None, 1.0), ("Mul", None, 0.5),
               ("Mul", "x", None))


def _gelu_step(node, previous: str | None, x: str, step, scalar, same) -> bool:
    op_type, other, constant = step
    if node.op_type != op_type:
        return False
    inputs = list(node.input)
    if op_type == "Tanh":
        return inputs == [previous]
    if len(inputs) != 2:
        return False
    if previous is None:  # the first step: x times the constant
        operands = inputs
    elif previous not in inputs:
        return False
    else:
        operands = [name for name in inputs if name != previous] or [previous]
    if len(operands) == 2:
        known = [index for index, name in enumerate(operands) if scalar(name) is not None]
        if len(known) != 1:
            return False
        value, operand = scalar(operands[known[0]]), operands[1 - known[0]]
        return bool(np.isclose(value, constant, rtol=1e-6)) and same(operand, x)
    if other == "x":
        return same(operands[0], x)
    value = scalar(operands[0])
    return value is not None and bool(np.isclose(value, constant, rtol=1e-6))


def gelu_tanh_chain(first: onnx.NodeProto, consumers: dict, scalar, same=None,
                    outputs: frozenset | set = frozenset()) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the nine nodes) of the tanh GELU chain (_GELU_STEPS) that starts at `first`, or None.

    The quantizer gives the chain one layer (a Q/DQ pair on x and on the last Mul's output, none
    inside: the cube of x in int8 would round away the small values the tanh bends) and the
    lowering one `gelu` op, both by this rule.

    Args:
        first: any node; only Mul(x, 0.044715) qualifies.
        consumers: tensor name -> the nodes reading it.
        scalar: tensor name -> its value if a one-element constant, else None.
        same: (name, name) -> whether two tensors carry one value (default: name equality).
        outputs: the graph outputs (an intermediate output disqualifies the chain).
    """
    same = same or (lambda a, b: a == b)
    if first.op_type != "Mul" or len(first.input) != 2:
        return None
    x = first.input[1] if scalar(first.input[0]) is not None else first.input[0]
    chain, previous, node = [], None, first
    for index, step in enumerate(_GELU_STEPS):
        if node is None or not _gelu_step(node, previous, x, step, scalar, same):
            return None
        chain.append(node)
        previous = node.output[0]
        if index == len(_GELU_STEPS) - 1:
            break
        users = consumers.get(previous, [])
        if previous in outputs or len(users) != 1:
            return None
        node = users[0]
    return x, chain


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value, or `default` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default

"""Copy me: the shape of an op card (fwedge/ops/<family>.py). Not imported by the registry.

An op card registers, for each ONNX op of its family, what every room needs, in one place:

1. OpInfo: the weight/bias inputs and channel axes (pruning, BN folding), whether quantization
   gives the output its own scale (quantize_output) or keeps the input's (shares_input_scale),
   and `quantizable`: int8 compute exists, so QDQ insertion quantizes the op. An op marked
   quantizable must lower (tests/test_op_cards.py checks it).
2. The lowered kinds it can become, and `fuses_activation` if a Relu/Clip consumer folds
   into its output range.
3. The support check: attributes, ranks and shapes the lowering cannot take, as a short
   reason ("rank-3 Conv, only 2-D"); the driver adds the node, op and opset.
4. The lowering: emit lowered ops through fwedge/lowered/build.py. For int8, take the int8
   operands (int8_operands) and the int8 output (int8_output, which absorbs the output
   QuantizeLinear); when either is missing, lower in float (note_float, float_input,
   float_output). An int8 node with no int8 form calls refuse() and then lowers in float. An
   op that only moves data (one input, the input's scale kept) is one call:
   lower_data_movement(builder, node, kind, attrs).
5. For each new lowered kind: the interpreter kernel (its executable spec; int8 and float side
   by side, integer-exact), and its semantics in fwedge/lowered/graph.py's docstring.

Then, for a new kind, one emitter per target: `@emitter("kind")` in targets/c_emitters.py (and a
kernel in runtime_c/ if none fits), `@tflite_op("kind")` in targets/tflite.py (or tflite_float.py), and the ONNX op
in targets/ncnn.py's WRITTEN_OPS with its layer (targets/ncnn_writer.py). An ONNX op that
lowers to an existing kind needs none of these. Add an op-matrix case (tests/op_matrix.py);
tests/test_op_cards.py names whatever is missing. An element-wise function of one input is
simpler still: one entry in unary.py's FUNCTIONS.

Below, a card for a made-up op "Example" (y = x, in float and int8) that lowers to the
existing kind "reshape". Rename, fill in, and add the module to fwedge/ops/registry.py.
"""
from __future__ import annotations

import onnx

from fwedge.lowered.build import Builder, float_output, int8_operands, int8_output, note_float, same_quant_chain
from fwedge.lowered.graph import ReshapeAttrs
from fwedge.lowered.view import QdqView, input_rank
from fwedge.ops.base import OpInfo, register_op


def _check_example(view: QdqView, node: onnx.NodeProto) -> str | None:
    """Why the lowering cannot take the node, or None."""
    rank = input_rank(view, node)
    if rank > 4:
        return f"rank-{rank} input, at most 4-D"
    return None


def _lower_example(builder: Builder, node: onnx.NodeProto) -> None:
    attrs = ReshapeAttrs(builder.shape(node.output[0]))
    operands = int8_operands(builder, node, (0,))
    out = int8_output(builder, node) if operands is not None else None
    if out is not None:
        # int8 in and out: the output keeps the input's scale, then a requantize if Q differs.
        same_quant_chain(builder, node, "reshape", attrs, operands[0], out)
        return
    note_float(builder, node)
    x = builder.float_input(node.input[0])
    builder.emit("reshape", node.name, [x], [float_output(builder, node.output[0])], attrs)


def register() -> None:
    """The registration a real card runs at import (module level, not in a function)."""
    register_op("Example", OpInfo(channel_passthrough=True, quantize_output=False, shares_input_scale=True),
                kinds=("reshape",), lower=_lower_example, check=_check_example, static_output=True)

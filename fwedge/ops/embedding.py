"""Op card: the one-hot embedding TF-converted models write (embedding), Equal and its Cast.

Equal(idx[..., 1], arange(K)[1, ..., 1, K]) -> Cast(float) [-> Q -> DQ] -> MatMul(., W[K, D]) is
a row lookup: y[..., :] = W[idx] (magika's bytes, 0..256, against a [1, 1, 257] arange). The
lowering makes it one `embedding` op on the int32 index: a table of the K rows as the MatMul
computes them (each a float32 W row times the one-hot's dequantized 1, the other K - 1 products
exact zeros), in int8 rounded to the MatMul's output quantization, plus one "no match" row (the
one-hot of an index outside 0..K-1 is all zeros, so its product is the zero row). The table
holds K + 2 rows: no match, the K rows, no match; the kernel reads row clamp(idx + 1, 0, K + 1),
so every int32 index gives what the chain gives. Equal and Cast lower only as this chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fwedge.lowered.build import Builder, dequantize_array, float_output, int8_output, note_float
from fwedge.lowered.graph import INT8_MAX, INT8_MIN, LoweredOp
from fwedge.lowered.view import QdqView, dq_params, is_const_dq
from fwedge.ops.base import OpInfo, attribute, register_kind, register_op


@dataclass(frozen=True, eq=False)
class EmbeddingAttrs:
    """embedding: y[..., :] = table[clamp(idx + 1, 0, K + 1)], table [K + 2, D] (int8 or float32)."""

    table: np.ndarray


@dataclass(frozen=True)
class OneHot:
    """The nodes of one one-hot embedding chain, Equal first."""

    index: str
    count: int
    nodes: tuple  # Equal, Cast, [QuantizeLinear, DequantizeLinear,] MatMul
    weight: str


def _only(view: QdqView, name: str, op_type: str):
    users = view.consumers.get(name, [])
    if name in view.outputs or len(users) != 1 or users[0].op_type != op_type:
        return None
    return users[0]


def one_hot_chain(view: QdqView, equal: onnx.NodeProto) -> OneHot | str:
    """The chain from `equal` (module docstring), or why it is none."""
    arange = view.const(equal.input[1]) if len(equal.input) == 2 else None
    index_shape = view.shapes.get(equal.input[0]) or []
    if arange is None or arange.dtype.kind not in "iu" or arange.ndim < 1 or arange.size != arange.shape[-1]:
        return "Equal other than of an index with a constant [1, ..., K] arange (a one-hot)"
    count = int(arange.shape[-1])
    if not np.array_equal(arange.reshape(-1), np.arange(count)) or not index_shape or index_shape[-1] != 1:
        return f"Equal against a constant other than arange({count}) over a last axis of 1 (a one-hot)"
    cast = _only(view, equal.output[0], "Cast")
    if cast is None or attribute(cast, "to", 0) != onnx.TensorProto.FLOAT:
        return "Equal not read only by a Cast to float (a one-hot)"
    nodes = [equal, cast]
    reader = view.consumers.get(cast.output[0], [])
    if len(reader) == 1 and reader[0].op_type == "QuantizeLinear":
        dq = _only(view, reader[0].output[0], "DequantizeLinear")
        nodes += [reader[0], dq] if dq is not None else [reader[0]]
    matmul = _only(view, nodes[-1].output[0], "MatMul")
    if matmul is None or matmul.input[0] != nodes[-1].output[0]:
        return "one-hot not read only by a MatMul as its first input (an embedding)"
    weight = matmul.input[1]
    shape = view.shapes.get(weight) or []
    if (view.const(weight) is None and not is_const_dq(view, weight)) or list(shape)[:1] != [count] or len(shape) != 2:
        return f"one-hot MatMul without a constant [{count}, D] weight"
    return OneHot(equal.input[0], count, (*nodes, matmul), weight)


def _check_equal(view: QdqView, node: onnx.NodeProto) -> str | None:
    found = one_hot_chain(view, node)
    if isinstance(found, str):
        return found
    zero = _one_hot_levels(view, found)[1]
    return None if zero == 0.0 else f"one-hot's 0 dequantizes to {zero}, not 0: the MatMul is no row lookup"


def _check_cast(view: QdqView, node: onnx.NodeProto) -> str | None:
    producer = view.producers.get(node.input[0])
    if producer is None or producer.op_type != "Equal" or isinstance(one_hot_chain(view, producer), str):
        return "Cast other than the float one-hot of an embedding (Equal against an arange, then MatMul)"
    return None


def embedding_problem(view: QdqView, node: onnx.NodeProto) -> str | None:
    """The card's check of an Equal or a Cast, for writers that read the QDQ model themselves (ncnn)."""
    return _check_equal(view, node) if node.op_type == "Equal" else _check_cast(view, node)


def one_hot_level(scale: float, zero_point: int) -> np.float32:
    """The one-hot's 1 as DequantizeLinear(QuantizeLinear(1)) gives it back."""
    s = np.float32(scale)
    q = np.clip(np.round(np.float32(1.0) / s) + zero_point, INT8_MIN, INT8_MAX)
    return np.float32((q - zero_point) * np.float64(s))


def _one_hot_levels(view: QdqView, chain: OneHot) -> tuple[np.float32, np.float32]:
    """(the one-hot's 1 and 0 as the MatMul reads them): through its Q/DQ pair if it has one."""
    if len(chain.nodes) < 5:
        return np.float32(1.0), np.float32(0.0)
    scale, zero_point, _ = dq_params(view, chain.nodes[2])
    s, z = np.float32(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
    levels = [np.clip(np.round(np.float32(v) / s) + z, INT8_MIN, INT8_MAX) for v in (1.0, 0.0)]
    return tuple(np.float32((q - z) * np.float64(s)) for q in levels)


def _lower_equal(builder: Builder, node: onnx.NodeProto) -> None:
    chain = one_hot_chain(builder.view, node)
    builder.done.update(id(n) for n in chain.nodes)
    matmul = chain.nodes[-1]
    if chain.weight in builder.dq_const:
        weight = dequantize_array(*builder.dq_const[chain.weight])
    else:
        weight = builder.view.const(chain.weight).astype(np.float32)
    one = _one_hot_levels(builder.view, chain)[0]
    rows = (weight * one).astype(np.float32)
    no_match = np.zeros((1, rows.shape[1]), np.float32)
    table = np.concatenate([no_match, rows, no_match])
    out = int8_output(builder, matmul)
    if out is not None:
        y_name, y_quant = out
        quantized = np.round(table / np.float32(y_quant.scale[0])) + y_quant.zero_point[0]
        table = np.clip(quantized, INT8_MIN, INT8_MAX).astype(np.int8)
    else:
        note_float(builder, matmul)
        y_name = float_output(builder, matmul.output[0])
    index = builder.alias.get(chain.index, chain.index)
    builder.emit("embedding", node.name, [index], [y_name], EmbeddingAttrs(table))


def run_embedding(op: LoweredOp, values, tensors):
    """Interpreter kernel: the table row of every index, clamped as the module docstring says."""
    index = values[op.inputs[0]].astype(np.int64)
    table = op.attrs.table
    rows = np.clip(index + 1, 0, table.shape[0] - 1)
    Y = tensors[op.outputs[0]]
    return table[rows.reshape(len(rows), -1)].reshape((len(rows), *Y.shape[1:]))


register_kind("embedding", run_embedding)
register_op("Equal", OpInfo(), kinds=("embedding",), lower=_lower_equal, check=_check_equal)
# Lowered by its Equal's embedding; never on its own (the check refuses it then).
register_op("Cast", OpInfo(), kinds=("embedding",), lower=lambda builder, node: None, check=_check_cast)

"""Per-op facts for pruning, quantization and inspection, read from the op cards (fwedge/ops/).

OP_INFO is a view of the card registry for the rooms that ask only "what is this op's OpInfo";
node_macs counts the work of a layer.
"""
from __future__ import annotations

import onnx

from fwedge.ops.registry import OpInfo, all_cards, attribute

__all__ = ["OP_INFO", "OpInfo", "attribute", "node_macs"]

OP_INFO: dict[str, OpInfo] = {op: c.info for op, c in all_cards().items() if c.info is not None}


def node_macs(node: onnx.NodeProto, shapes: dict[str, list]) -> int | None:
    """Multiply-accumulates of one node from inferred shapes, or None if shapes are unknown.

    Conv: output elements × (C_in / group) × kernel area. Gemm/MatMul: M × K × N. A node whose
    inputs or shapes do not have the layout its op needs (a stranger's model) counts as unknown.
    """

    def static(name: str) -> list[int] | None:
        shape = shapes.get(name)
        if shape is None or any(not isinstance(d, int) for d in shape):
            return None
        return shape

    if len(node.input) < 2 or not node.output:
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = static(node.input[1])
        output = static(node.output[0])
        if weight is None or output is None or len(weight) < 2:
            return None
        kernel = 1
        for size in weight[2:]:
            kernel *= size
        out_elements = 1
        for size in output[1:]:
            out_elements *= size
        if node.op_type == "Conv":
            return out_elements * weight[1] * kernel
        inputs = static(node.input[0])
        if inputs is None:
            return None
        in_elements = 1
        for size in inputs[1:]:
            in_elements *= size
        return in_elements * weight[1] * kernel
    if node.op_type in ("Gemm", "MatMul"):
        a = static(node.input[0])
        output = static(node.output[0])
        if not a or not output:
            return None
        k = a[0] if node.op_type == "Gemm" and attribute(node, "transA", 0) else a[-1]
        rows = 1
        for size in output[1:-1] if len(output) > 2 else []:
            rows *= size
        return rows * k * output[-1]
    return None

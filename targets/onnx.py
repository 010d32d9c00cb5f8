"""ONNX target: the float or QDQ model itself, run by onnxruntime (the reference runtime)."""
from __future__ import annotations

import onnx

from fwedge.ir import opset_version


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Nodes onnxruntime has no CPU kernel for, at the model's opset."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    known = {(schema.domain, schema.name) for schema in state.get_all_operator_schema()}
    opset = opset_version(model)
    missing = []
    for node in model.graph.node:
        domain = node.domain if node.domain not in ("ai.onnx",) else ""
        if (domain, node.op_type) not in known:
            missing.append((node.name or node.output[0], node.op_type, opset))
    return missing

"""Model summaries for `fwedge inspect`: inputs, outputs, op histogram, parameters, MACs, support."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from fwedge import ir
from fwedge.op_info import OP_INFO, node_macs


@dataclass
class TensorSpec:
    """A graph input or output: name, shape (None/str for dynamic dims) and element type."""

    name: str
    shape: list
    dtype: str


@dataclass
class LayerCost:
    """One layer with weights: node name, op, parameter count and MACs per sample."""

    name: str
    op: str
    params: int
    macs: int | None


@dataclass
class ModelSummary:
    """What `fwedge inspect` prints."""

    path: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    parameters: int
    total_macs: int | None
    layers: list[LayerCost]
    support: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    # target -> why its support was judged by op type only (targets.base.ByOpTypeOnly)
    support_by_op_type: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    elem = value.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "unknown"
    return TensorSpec(value.name, ir.shape_of(value), dtype)


# Constant inputs that are not learned: BatchNormalization's running mean and variance (state) and
# Clip's bounds (settings).
_NOT_LEARNED = {"BatchNormalization": slice(3, 5), "Clip": slice(1, 3)}


def _not_learned(model: onnx.ModelProto) -> set[str]:
    """Initializers a node reads as state or settings rather than as learned weights."""
    return {name for node in model.graph.node if node.op_type in _NOT_LEARNED
            for name in node.input[_NOT_LEARNED[node.op_type]] if name}


_PARAMETER_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
                    onnx.TensorProto.INT32)


def _subgraph_parameters(graph: onnx.GraphProto) -> int:
    """Learned values held inside control flow (If branches, Loop and Scan bodies): their
    initializers and Constant tensors, with the same exclusions as the main graph."""
    total = 0
    for sub in (sub for node in graph.node for sub in ir.subgraphs(node)):
        state = {name for inner in sub.node if inner.op_type in _NOT_LEARNED
                 for name in inner.input[_NOT_LEARNED[inner.op_type]] if name}
        tensors = [init for init in sub.initializer if init.name not in state]
        tensors += [a.t for inner in sub.node if inner.op_type == "Constant" and inner.output[0] not in state
                    for a in inner.attribute if a.name == "value"]
        total += sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors if t.data_type in _PARAMETER_TYPES)
        total += _subgraph_parameters(sub)
    return total


def summarize(model: onnx.ModelProto, path: str = "", with_support: bool = True) -> ModelSummary:
    """Summarize a loaded model. MACs are per sample: a dynamic batch dimension counts as 1;
    other dynamic dimensions make MACs unknown (fix them with ir.set_input_shapes)."""
    from fwedge.passes.simplify import simplify

    # Folded first: a Reshape whose target is computed from Shape (a dynamic-batch export) has
    # a known output only once the batch is 1 and the Shape chain is folded.
    shapes = ir.value_shapes(simplify(ir.with_batch_one(model)))
    initializers = ir.initializer_map(model)
    state = _not_learned(model)
    parameters = sum(int(np.prod(init.dims, dtype=np.int64)) for name, init in initializers.items()
                     if name not in state and init.data_type in _PARAMETER_TYPES) + _subgraph_parameters(model.graph)
    layers = []
    for node in model.graph.node:
        weights = [name for name in node.input if name in initializers]
        info = OP_INFO.get(node.op_type)
        if info is not None and info.weight_input is not None and weights:
            params = sum(int(np.prod(initializers[name].dims, dtype=np.int64)) for name in weights)
            layers.append(LayerCost(node.name or node.output[0], node.op_type, params, node_macs(node, shapes)))
    known = [layer.macs for layer in layers]
    total = sum(known) if known and all(m is not None for m in known) else None
    support = {}
    if with_support:
        from fwedge.targets import support_matrix

        support = support_matrix(model)
    by_op_type = {name: missing.reason for name, missing in support.items() if hasattr(missing, "reason")}
    return ModelSummary(
        path=path,
        opset=ir.opset_version(model),
        inputs=[_spec(v) for v in ir.graph_inputs(model)],
        outputs=[_spec(v) for v in model.graph.output],
        op_histogram=dict(Counter(node.op_type for node in model.graph.node).most_common()),
        parameters=parameters,
        total_macs=total,
        layers=layers,
        support={name: list(missing) for name, missing in support.items()},
        support_by_op_type=by_op_type,
    )

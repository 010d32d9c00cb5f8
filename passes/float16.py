"""float16 conversion of a float model: weights and compute in float16, inputs and outputs float32.

Every float32 initializer and Constant becomes float16, every float tensor of the graph float16,
and each graph input (output) gets a Cast from (to) float32 at the edge, so the converted model
takes and returns the same float32 tensors as the original and keeps their names. Nodes whose
attributes name a float type (Cast's `to`, ConstantOfShape's value, EyeLike's dtype) are
rewritten to float16 too.

Where a runtime has no float16 kernel for an op (onnxruntime's CPU provider has few), it is the
runtime's business: onnxruntime inserts a Cast to float32 around such a node and back, so the
node's inputs and outputs still round to float16 but its arithmetic is float32. The model file
itself stays the float16 model a GPU or NPU runtime runs natively.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fwedge.errors import ExportError

FLOAT16_MAX = float(np.finfo(np.float16).max)
# Inputs the ONNX spec types tensor(float) only, whatever the data type: they stay float32
# (a constant is left as it is, a computed tensor gets a Cast to float32 in front of the node).
FLOAT32_ONLY_INPUTS = {"Resize": (2,), "Upsample": (1,)}
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


def _half_tensor(tensor: onnx.TensorProto, where: str) -> onnx.TensorProto:
    """A float32 tensor as float16 (same name); a finite value beyond float16's range is refused."""
    values = numpy_helper.to_array(tensor)
    finite = values[np.isfinite(values)]
    if finite.size and float(np.max(np.abs(finite))) > FLOAT16_MAX:
        raise ExportError(f"--fp16: {where} '{tensor.name}' holds {float(np.max(np.abs(finite))):.6g}, beyond "
                          f"float16's largest value {FLOAT16_MAX:g}; export it in fp32")
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _retype(value: onnx.ValueInfoProto) -> None:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type == _FLOAT:
        tensor_type.elem_type = _HALF


def _convert_attributes(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH or attr.type == onnx.AttributeProto.GRAPHS:
            raise ExportError(f"--fp16: node '{node.name or node.output[0]}' ({node.op_type}) holds a subgraph; "
                              "the float16 conversion takes flat graphs only")
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
            attr.t.CopyFrom(_half_tensor(attr.t, f"{node.op_type} '{node.name or node.output[0]}' attribute"))
        elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == _FLOAT:
            attr.i = _HALF


def _float32_only(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors that feed a FLOAT32_ONLY_INPUTS slot."""
    return {node.input[index] for node in graph.node for index in FLOAT32_ONLY_INPUTS.get(node.op_type, ())
            if index < len(node.input) and node.input[index]}


def _cast_float32_only(graph: onnx.GraphProto, keep: set[str], init_names: set[str]) -> list[onnx.NodeProto]:
    """The graph's nodes, a Cast to float32 in front of each FLOAT32_ONLY_INPUTS slot fed by a
    computed (now float16) tensor."""
    constants = init_names | {node.output[0] for node in graph.node if node.op_type == "Constant"}
    nodes = []
    for node in graph.node:
        for index in FLOAT32_ONLY_INPUTS.get(node.op_type, ()):
            name = node.input[index] if index < len(node.input) else ""
            if name and name in keep and name not in constants:
                nodes.append(helper.make_node("Cast", [name], [f"{name}/fp32"], name=f"{name}/to_fp32", to=_FLOAT))
                node.input[index] = f"{name}/fp32"
        nodes.append(node)
    return nodes


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 weights and compute and float32 graph inputs and outputs.

    Args:
        model: a float (non-QDQ) model with a flat graph.

    Returns:
        A new model: float32 initializers and Constant values as float16, every float tensor
        float16, a Cast at each float32 graph input and output (their names are kept).

    Raises:
        ExportError: a weight beyond float16's range, or a node holding a subgraph.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = _float32_only(graph)
    inits = [_half_tensor(init, "initializer") if init.data_type == _FLOAT and init.name not in keep else init
             for init in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    init_names = {init.name for init in graph.initializer}
    for node in graph.node:
        if not (node.op_type == "Constant" and node.output[0] in keep):
            _convert_attributes(node)
    for value in graph.value_info:
        _retype(value)
    renamed: dict[str, str] = {}
    casts_in = []
    for value in graph.input:
        if value.name in init_names or value.type.tensor_type.elem_type != _FLOAT:
            continue
        renamed[value.name] = f"{value.name}/fp16"
        casts_in.append(helper.make_node("Cast", [value.name], [renamed[value.name]], name=f"{value.name}/to_fp16",
                                         to=_HALF))
    for init in graph.input:
        if init.name in init_names:
            _retype(init)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    casts_out = []
    produced = {name: node for node in graph.node for name in node.output}
    for value in graph.output:
        if value.type.tensor_type.elem_type != _FLOAT:
            continue
        half = f"{value.name}/fp16"
        source = renamed.get(value.name, value.name)
        node = produced.get(value.name)
        if node is not None:
            node.output[list(node.output).index(value.name)] = half
            for user in graph.node:
                for index, name in enumerate(user.input):
                    if name == value.name:
                        user.input[index] = half
        else:  # an output that is a graph input or an initializer
            half = source
        casts_out.append(helper.make_node("Cast", [half], [value.name], name=f"{value.name}/to_fp32", to=_FLOAT))
    nodes = casts_in + _cast_float32_only(graph, keep, init_names) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out)

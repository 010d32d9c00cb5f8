"""Simplify: drop Identity/Dropout, fold constant subgraphs (Shape of static inputs included), MatMul + bias as Gemm."""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fwedge import ir

log = logging.getLogger(__name__)

# Never evaluated at compile time: random ops and quantization boundaries (the QDQ layout).
_NEVER_FOLD = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "QuantizeLinear", "DequantizeLinear", "If", "Loop", "Scan",
}
# Refuse to materialise folded tensors larger than this (elements): folding must not bloat a model.
_MAX_FOLDED_ELEMENTS = 1 << 22


def _static_shape(shapes: dict, name: str) -> list[int] | None:
    shape = shapes.get(name)
    if shape is None or any(not isinstance(dim, int) for dim in shape):
        return None
    return shape


_CONSTANT_FORMS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


def _constant_value(node: onnx.NodeProto) -> list[np.ndarray] | None:
    """A Constant node's dense value (exporters feed Slice starts and Reshape targets from them),
    or None for the sparse and string forms, which stay nodes: a sparse value's declared dense
    size is not bounded by the file's bytes."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
        try:
            return [numpy_helper.to_array(attr.t)]
        except (ValueError, TypeError) as exc:
            log.debug("cannot fold Constant '%s': %s", node.name, exc)
            return None
    if attr.name in _CONSTANT_FORMS:
        value = helper.get_attribute_value(attr)
        return [np.asarray(value, dtype=_CONSTANT_FORMS[attr.name])]
    return None


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Run one node with onnx's reference evaluator on constant inputs; None if it cannot."""
    from onnx.reference import ReferenceEvaluator

    inputs = [
        helper.make_tensor_value_info(f"in{index}", helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for index, value in enumerate(values) if value is not None
    ]
    renamed = helper.make_node(
        node.op_type,
        [f"in{index}" if value is not None else "" for index, value in enumerate(values)],
        [f"out{index}" for index in range(len(node.output))],
        domain=node.domain,
    )
    renamed.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [renamed], "fold", inputs,
        [helper.make_tensor_value_info(f"out{index}", onnx.TensorProto.UNDEFINED, None) for index in range(len(node.output))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(
            None, {f"in{index}": value for index, value in enumerate(values) if value is not None})
    except Exception as exc:  # the reference evaluator raises many types; folding is optional
        log.debug("cannot fold %s '%s': %s", node.op_type, node.name, exc)
        return None
    return [np.asarray(result) for result in results]


def simplify(model: onnx.ModelProto, max_rounds: int = 16) -> onnx.ModelProto:
    """Sweep `_simplify_once` until nothing changes (shapes known only after a Reshape's target
    is folded need a fresh shape inference), at most `max_rounds` times: PP-OCRv4 rec's two
    attention blocks each hide the next block's Shape behind a Reshape."""
    for _ in range(max_rounds):
        before = len(model.graph.node)
        model = _simplify_once(model)
        if len(model.graph.node) == before:
            break
    return model


def _same_shape_reshape(node: onnx.NodeProto, shapes: dict) -> bool:
    """A Reshape or Expand whose static output shape is its input's: an identity (jax2tf writes a
    BroadcastTo of every reduced tensor back to the shape it already has)."""
    if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2:
        return False
    before, after = _static_shape(shapes, node.input[0]), _static_shape(shapes, node.output[0])
    return before is not None and before == after


def _simplify_once(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with Identity/Dropout (and Reshape/Expand to the shape the input has) removed and
    constant subgraphs folded into initializers.

    Folds every node whose inputs are all constants, and Shape (and Size) of tensors whose
    shape is static after shape inference, in one topological sweep, so chains such as
    Shape -> Cast -> Slice -> Concat -> Reshape collapse once the input shapes are fixed
    (fwedge.ir.set_input_shapes). Node and tensor names of what remains are unchanged.

    Returns:
        The simplified model (the input is not modified).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = ir.opset_version(out)
    shapes = ir.value_shapes(out)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    rename: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    folded = dropped = 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
        if (node.op_type in ("Identity", "Dropout") or _same_shape_reshape(node, shapes)) \
                and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
                kept.append(node)
                continue
            rename[node.output[0]] = node.input[0]
            dropped += 1
            continue
        if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx") or any(o in outputs for o in node.output):
            kept.append(node)
            continue
        result = None
        if node.op_type in ("Shape", "Size") and node.input[0] not in constants:
            shape = _static_shape(shapes, node.input[0])
            if shape is not None:
                if node.op_type == "Size":
                    result = [np.array(int(np.prod(shape)), dtype=np.int64)]
                else:
                    start = onnx_attr(node, "start", 0)
                    end = onnx_attr(node, "end", None)
                    result = [np.array(shape[start:end], dtype=np.int64)]
        elif node.op_type == "Constant" and not node.input:
            result = _constant_value(node)
        elif node.input and all((not name) or name in constants for name in node.input):
            values = [constants[name] if name else None for name in node.input]
            result = _evaluate(node, values, opset)
        if result is None or any(value.size > _MAX_FOLDED_ELEMENTS for value in result):
            kept.append(node)
            continue
        for name, value in zip(node.output, result):
            constants[name] = value
        folded += 1
    if not folded and not dropped:
        return out
    del graph.node[:]
    graph.node.extend(kept)
    ir.rename_reads(graph, rename)
    for value in graph.output:
        if value.name in rename:
            log.debug("output %s kept through an Identity", value.name)
    used = ir.read_names(graph) | outputs
    # np.require keeps a scalar a scalar (np.ascontiguousarray makes it 1-D: a scalar Gather
    # index then gives a rank-1 result, and the Concat of a dynamic Reshape shape breaks).
    initializers = [numpy_helper.from_array(np.require(constants[name], requirements="C"), name)
                    for name in constants if name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {name for node in graph.node for name in node.output}
    kept_info = [value for value in graph.value_info if value.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    initializer_names = {init.name for init in graph.initializer}
    kept_inputs = [value for value in graph.input
                   if value.name in initializer_names or value.name not in constants]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    out = onnx.shape_inference.infer_shapes(out, data_prop=True)
    log.info("simplify: folded %d node(s), dropped %d Identity/Dropout/same-shape Reshape", folded, dropped)
    return out


def onnx_attr(node: onnx.NodeProto, name: str, default):
    """A node attribute's value or `default`."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def fuse_matmul_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which MatMul(x, W) followed by Add(bias) is one Gemm(x, W, bias).

    That is how TF converters write a Dense layer. As a Gemm the quantizer gives the bias int32
    at the input scale times the weight scale, as for every other layer, instead of rounding the
    MatMul's output to int8 before a separate Add. Taken when x is 2-D, W a 2-D constant, the
    bias a constant of shape [units] or [1, units], and the MatMul's output read by the Add only.
    The Gemm has the MatMul's node name and the Add's output name.

    Returns:
        The rewritten copy (the input is not modified).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = {init.name: init for init in graph.initializer}
    shapes = ir.value_shapes(onnx.shape_inference.infer_shapes(out))
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    fused, drop = 0, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in constants:
            continue
        weight_dims = list(constants[node.input[1]].dims)
        add = users.get(node.output[0], [None])[0]
        if (len(weight_dims) != 2 or len(shapes.get(node.input[0]) or []) != 2 or add is None
                or len(users[node.output[0]]) != 1 or node.output[0] in outputs or add.op_type != "Add"):
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in constants or list(constants[bias].dims) not in ([weight_dims[1]], [1, weight_dims[1]]):
            continue
        if list(constants[bias].dims) != [weight_dims[1]]:
            flat = numpy_helper.to_array(constants[bias]).reshape(-1)
            bias = f"{bias}__flat"
            graph.initializer.append(numpy_helper.from_array(flat, bias))
            constants[bias] = graph.initializer[-1]
        # W [K, units] as Gemm's [units, K] with transB=1, the layout torch exports: onnxruntime's
        # int8 Gemm kernels (QGemm) and fwedge's lowering read per-channel weights that way.
        weight = f"{node.input[1]}__t"
        if weight not in constants:
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(numpy_helper.to_array(constants[node.input[1]]).T), weight))
            constants[weight] = graph.initializer[-1]
        gemm = helper.make_node("Gemm", [node.input[0], weight, bias], [add.output[0]], name=node.name, transB=1)
        node.CopyFrom(gemm)
        drop.add(id(add))
        fused += 1
    if not fused:
        return out
    kept = [node for node in graph.node if id(node) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    ir.drop_unused_initializers(graph)
    del graph.value_info[:]
    log.info("simplify: %d MatMul + bias fused into Gemm", fused)
    return onnx.shape_inference.infer_shapes(out)


def _channel_constant(value: np.ndarray, channels: int) -> np.ndarray | None:
    """The [channels] vector a constant adds to an NCHW tensor's channels, or None when it
    varies along another axis (shapes [C, 1, 1], [1, C, 1, 1], [1], or a scalar)."""
    if value.ndim > 4 or value.size not in (1, channels):
        return None
    dims = [1] * (4 - value.ndim) + list(value.shape)
    if any(d != 1 for i, d in enumerate(dims) if i != 1):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def fuse_conv_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which Conv or ConvTranspose followed by Add(a per-channel constant) is one node
    with that constant in its bias, the way Paddle2ONNX writes the bias of PP-OCR's
    ConvTranspose. Then a BatchNormalization after it folds, and quantization gives the bias
    int32 instead of rounding to int8 before a separate Add. Taken when the weight and any bias
    are float constants and the Add is the only reader. The fused node has its own name and
    the Add's output name.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = ir.initializer_map(out)
    users = ir.consumer_map(out)
    outputs = {value.name for value in graph.output}
    fused, dropped = 0, set()
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        readers = users.get(node.output[0], [])
        weight = constants.get(node.input[1])
        if weight is None or len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in outputs:
            continue
        add = readers[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if other not in constants or (bias_name and bias_name not in constants) or len(weight.dims) != 4:
            continue
        channels = int(weight.dims[1] * onnx_attr(node, "group", 1) if node.op_type == "ConvTranspose" else weight.dims[0])
        extra = _channel_constant(numpy_helper.to_array(constants[other]), channels)
        if extra is None:
            continue
        bias = numpy_helper.to_array(constants[bias_name]).astype(np.float32) if bias_name else np.zeros(channels, np.float32)
        name = f"{node.name or node.output[0]}_bias_add"
        graph.initializer.append(numpy_helper.from_array((bias + extra).astype(np.float32), name))
        del node.input[2:]
        node.input.append(name)
        node.output[0] = add.output[0]
        dropped.add(add.output[0])
        fused += 1
    if not fused:
        return out
    kept = [node for node in graph.node if not (node.op_type == "Add" and node.output[0] in dropped)]
    del graph.node[:]
    graph.node.extend(kept)
    ir.drop_unused_initializers(graph)
    log.info("simplify: %d Conv/ConvTranspose + bias Add fused", fused)
    return out

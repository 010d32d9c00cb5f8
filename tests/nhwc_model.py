"""The shipped cnn_small as a TF-converted model would come: NHWC input, tf2onnx's Transposes.

tf2onnx keeps a Keras model's NHWC input and puts one `Transpose` (perm 0,3,1,2) after it, named
like 'model/conv2d/BiasAdd__6', so that the convolutions run NCHW. Keras' Flatten before a Dense
layer flattens in NHWC order, so the converter puts the inverse Transpose (perm 0,2,3,1) before a
Reshape to [-1, H*W*C], and the Dense layer is a MatMul by a [H*W*C, units] kernel plus an Add.
The weights are cnn_small's own (trained on Fashion-MNIST), with the first Dense kernel's rows
permuted to NHWC order, so this model computes exactly what cnn_small computes on the same image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist"
INPUT = "input_1"


def build(path: Path, elementwise_prefix: bool = False) -> Path:
    """Write the NHWC model to `path`.

    Args:
        elementwise_prefix: put a Keras Rescaling-style Mul/Add run (x * 2 - 1, then the first
            convolution's weights halved and its input shifted back) between the input and the
            Transpose, as a Normalization layer before the first Conv would.
    """
    source = onnx.load(EXAMPLES / "cnn_small.onnx")
    graph = source.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    shapes = onnx.shape_inference.infer_shapes(source)
    dims = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim] for value in shapes.graph.value_info}
    nodes, inits = [], [init for init in graph.initializer if not init.name.startswith("classifier.0")]
    first = INPUT
    if elementwise_prefix:
        # y = (x * 0.5 + 0.25) * 2 - 0.5 = x: two runs of layout-agnostic ops that cancel exactly.
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
                  (("rescale/scale", 0.5), ("rescale/offset", [[[[0.25]]]]), ("normalize/scale", 2.0),
                   ("normalize/offset", -0.5))]
        nodes += [helper.make_node("Mul", [INPUT, "rescale/scale"], ["rescale/mul"], name="model/rescaling/mul"),
                  helper.make_node("Add", ["rescale/mul", "rescale/offset"], ["rescale/add"], name="model/rescaling/add"),
                  helper.make_node("Relu", ["rescale/add"], ["rescale/relu"], name="model/rescaling/relu"),
                  helper.make_node("Mul", ["rescale/relu", "normalize/scale"], ["normalize/mul"],
                                   name="model/normalization/mul"),
                  helper.make_node("Add", ["normalize/mul", "normalize/offset"], ["normalize/add"],
                                   name="model/normalization/add")]
        first = "normalize/add"
    nodes.append(helper.make_node("Transpose", [first], ["model/conv2d/BiasAdd__6:0"], perm=[0, 3, 1, 2],
                                  name="model/conv2d/BiasAdd__6"))
    for node in graph.node:
        if node.op_type == "Flatten":
            pooled = node.input[0]
            _, channels, height, width = dims[pooled]
            inits.append(numpy_helper.from_array(np.array([-1, channels * height * width], np.int64),
                                                 "model/flatten/Const:0"))
            nodes += [helper.make_node("Transpose", [pooled], ["model/flatten/Reshape__20:0"], perm=[0, 2, 3, 1],
                                       name="model/flatten/Reshape__20"),
                      helper.make_node("Reshape", ["model/flatten/Reshape__20:0", "model/flatten/Const:0"],
                                       [node.output[0]], name="model/flatten/Reshape")]
            continue
        if node.op_type == "Gemm" and node.input[1] == "classifier.0.weight":
            kernel = weights["classifier.0.weight"]  # [units, C*H*W], rows of NCHW flatten order
            units = kernel.shape[0]
            nhwc = kernel.reshape(units, channels, height, width).transpose(0, 2, 3, 1).reshape(units, -1)
            inits += [numpy_helper.from_array(np.ascontiguousarray(nhwc.T), "model/dense/MatMul/ReadVariableOp:0"),
                      numpy_helper.from_array(weights["classifier.0.bias"], "model/dense/BiasAdd/ReadVariableOp:0")]
            nodes += [helper.make_node("MatMul", [node.input[0], "model/dense/MatMul/ReadVariableOp:0"],
                                       ["model/dense/MatMul:0"], name="model/dense/MatMul"),
                      helper.make_node("Add", ["model/dense/MatMul:0", "model/dense/BiasAdd/ReadVariableOp:0"],
                                       [node.output[0]], name="model/dense/BiasAdd")]
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for index, name in enumerate(copy.input):
            if name == graph.input[0].name:
                copy.input[index] = "model/conv2d/BiasAdd__6:0"
        nodes.append(copy)
    output = graph.output[0]
    model = helper.make_model(
        helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT,
                                                                           ["N", 28, 28, 1])],
                          [helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, ["N", 10])], inits),
        opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx")
    preprocess = json.loads(next(p.value for p in source.metadata_props if p.key == "fwedge.preprocess"))
    preprocess["layout"] = "NHWC"
    helper.set_model_props(model, {"fwedge.preprocess": json.dumps(preprocess),
                                   **{p.key: p.value for p in source.metadata_props if p.key == "fwedge.classes"}})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path

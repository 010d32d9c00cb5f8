"""Small hand-built graphs with channel dependencies (residual Add, depthwise, Concat, Flatten)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends Conv/BN/activation nodes with seeded random weights; names follow the node."""

    def __init__(self, rng: np.random.Generator, input_shape: list):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input_shape = input_shape

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, name: str, kernel: int = 1, stride: int = 1,
             group: int = 1, bias: bool = False) -> str:
        w = self.rng.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32)
        w *= np.float32(np.sqrt(2.0 / (cin // group * kernel * kernel)))
        inputs = [x, self.const(f"{name}.weight", w)]
        if bias:
            inputs.append(self.const(f"{name}.bias", 0.1 * self.rng.standard_normal(cout).astype(np.float32)))
        pad = kernel // 2
        return self.node("Conv", inputs, name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def bn(self, x: str, channels: int, name: str) -> str:
        r = self.rng
        params = [
            self.const(f"{name}.scale", (0.5 + r.random(channels)).astype(np.float32)),
            self.const(f"{name}.bias", (0.1 * r.standard_normal(channels)).astype(np.float32)),
            self.const(f"{name}.mean", (0.1 * r.standard_normal(channels)).astype(np.float32)),
            self.const(f"{name}.var", (0.5 + r.random(channels)).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, *params], name, epsilon=1e-5)

    def relu6(self, x: str, name: str) -> str:
        lo = self.const(f"{name}.min", np.array(0.0, dtype=np.float32))
        hi = self.const(f"{name}.max", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, lo, hi], name)

    def gemm(self, x: str, k: int, n: int, name: str) -> str:
        w = (self.rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(n)).astype(np.float32)
        return self.node("Gemm", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
                         name, transB=1)

    def model(self, output: str, output_shape: list, opset: int = 13) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "channel_model",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        onnx.checker.check_model(model)
        return model


def mobilenet_like(rng: np.random.Generator | None = None) -> onnx.ModelProto:
    """Stem conv, two inverted residual blocks (the second with a residual Add), a Concat of two
    branches, head conv, GlobalAveragePool, Flatten, Gemm: input [N,1,12,12], output "logits" [N,5]."""
    g = GraphBuilder(rng or np.random.default_rng(0), ["N", 1, 12, 12])
    x = g.relu6(g.bn(g.conv("input", 1, 8, "stem", kernel=3), 8, "stem_bn"), "stem_act")

    def block(x: str, cin: int, cout: int, stride: int, name: str) -> str:
        hidden = cin * 3
        h = g.relu6(g.bn(g.conv(x, cin, hidden, f"{name}.expand"), hidden, f"{name}.expand_bn"), f"{name}.expand_act")
        h = g.relu6(g.bn(g.conv(h, hidden, hidden, f"{name}.dw", kernel=3, stride=stride, group=hidden),
                         hidden, f"{name}.dw_bn"), f"{name}.dw_act")
        h = g.bn(g.conv(h, hidden, cout, f"{name}.project"), cout, f"{name}.project_bn")
        return g.node("Add", [x, h], f"{name}.add") if stride == 1 and cin == cout else h

    x = block(x, 8, 8, 1, "block1")
    x = block(x, 8, 12, 2, "block2")
    x = block(x, 12, 12, 1, "block3")
    a = g.node("Relu", [g.conv(x, 12, 6, "branch_a", bias=True)], "branch_a_act")
    b = g.node("Relu", [g.conv(x, 12, 10, "branch_b", kernel=3, bias=True)], "branch_b_act")
    x = g.node("Concat", [a, b], "concat", axis=1)
    x = g.relu6(g.bn(g.conv(x, 16, 24, "head"), 24, "head_bn"), "head_act")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "pool")], "flatten", axis=1)
    g.gemm(x, 24, 5, "logits")
    return g.model("logits", ["N", 5])


def flatten_gemm(rng: np.random.Generator | None = None) -> onnx.ModelProto:
    """Conv(6) -> Relu -> MaxPool -> Flatten [N, 6*4*4] -> Gemm(16) -> Relu -> Gemm(4)."""
    g = GraphBuilder(rng or np.random.default_rng(0), ["N", 2, 8, 8])
    x = g.node("Relu", [g.conv("input", 2, 4, "conv0", kernel=3, bias=True)], "relu0")
    x = g.node("Relu", [g.conv(x, 4, 6, "conv1", kernel=3, bias=True)], "relu1")
    x = g.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.node("Relu", [g.gemm(x, 96, 16, "fc1")], "fc1_act")
    g.gemm(x, 16, 4, "fc2")
    return g.model("fc2", ["N", 4])


def hardcoded_reshape(rng: np.random.Generator | None = None) -> onnx.ModelProto:
    """Every Conv feeds a Reshape with a hard-coded shape: nothing can be pruned."""
    g = GraphBuilder(rng or np.random.default_rng(0), [2, 1, 6, 6])
    x = g.node("Relu", [g.conv("input", 1, 4, "conv0", kernel=3)], "relu0")
    x = g.node("Reshape", [x, g.const("shape0", np.array([2, 4, 36], dtype=np.int64))], "reshape0")
    x = g.node("Reshape", [x, g.const("shape0b", np.array([2, 4, 6, 6], dtype=np.int64))], "reshape0b")
    x = g.conv(x, 4, 8, "conv1", kernel=3)
    x = g.node("Reshape", [x, g.const("shape1", np.array([2, 288], dtype=np.int64))], "reshape1")
    g.gemm(x, 288, 3, "fc")
    return g.model("fc", [2, 3])

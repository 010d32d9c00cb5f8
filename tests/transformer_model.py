"""A pre-LN transformer block built with onnx.helper (seeded weights): the attention and MLP of a
ViT/SVTR layer on [1, T, D] tokens, for tests/test_transformer.py.

    x -> LayerNorm -> Q, K, V (MatMul by constants + Add bias) -> Reshape [1, T, H, d] ->
    Transpose to heads (K straight to [1, H, d, T]) -> Q.K^T (MatMul of two activations) ->
    Mul 1/sqrt(d) -> Softmax (last axis) -> .V -> Transpose + Reshape back -> output projection ->
    residual Add -> LayerNorm -> MatMul + Add + Relu -> MatMul + Add -> residual Add -> y
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TOKENS, DEPTH, HEADS, HIDDEN = 16, 32, 4, 64


def transformer_block(tokens: int = TOKENS, depth: int = DEPTH, heads: int = HEADS, hidden: int = HIDDEN,
                      seed: int = 0) -> onnx.ModelProto:
    """The block as a float ONNX model (opset 17), input 'x' [1, tokens, depth], output 'y'."""
    rng = np.random.default_rng(seed)
    head = depth // heads
    inits: list[onnx.TensorProto] = []

    def constant(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.asarray(value).dtype), name))
        return name

    def weight(name: str, rows: int, cols: int) -> str:
        return constant(name, (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32))

    def bias(name: str, size: int) -> str:
        return constant(name, rng.normal(0, 0.1, size).astype(np.float32))

    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def layer_norm(x: str, name: str) -> str:
        gamma = constant(f"{name}_gamma", rng.uniform(0.8, 1.2, depth).astype(np.float32))
        return node("LayerNormalization", [x, gamma, bias(f"{name}_beta", depth)], name, axis=-1, epsilon=1e-5)

    def linear(x: str, name: str, rows: int, cols: int) -> str:
        return node("Add", [node("MatMul", [x, weight(f"{name}_w", rows, cols)], f"{name}_matmul"),
                            bias(f"{name}_b", cols)], name)

    split = constant("heads_shape", np.array([0, tokens, heads, head], np.int64))
    merged = constant("tokens_shape", np.array([0, tokens, depth], np.int64))
    n1 = layer_norm("x", "ln1")
    q, k, v = (node("Reshape", [linear(n1, name, depth, depth), split], f"{name}_heads") for name in "qkv")
    q = node("Transpose", [q], "q_t", perm=[0, 2, 1, 3])
    k = node("Transpose", [k], "k_t", perm=[0, 2, 3, 1])
    v = node("Transpose", [v], "v_t", perm=[0, 2, 1, 3])
    scores = node("Mul", [node("MatMul", [q, k], "scores"), constant("scale", np.float32(1 / np.sqrt(head)))],
                  "scaled_scores")
    attention = node("MatMul", [node("Softmax", [scores], "attention", axis=-1), v], "context")
    context = node("Reshape", [node("Transpose", [attention], "context_t", perm=[0, 2, 1, 3]), merged], "context_tokens")
    r1 = node("Add", ["x", linear(context, "proj", depth, depth)], "residual1")
    h = node("Relu", [linear(layer_norm(r1, "ln2"), "fc1", depth, hidden)], "fc1_relu")
    node("Add", [r1, linear(h, "fc2", hidden, depth)], "y")
    graph = helper.make_graph(nodes, "transformer_block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, depth])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", tokens, depth])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def token_batches(count: int, seed: int, tokens: int = TOKENS, depth: int = DEPTH) -> np.ndarray:
    """Seeded token embeddings [count, tokens, depth]: a unit normal plus a per-token offset, so
    that the rows differ in mean and spread as embeddings do."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, 0.5, (count, tokens, 1))
    return (rng.standard_normal((count, tokens, depth)) + offsets).astype(np.float32)

"""passes/attention.py: the rank-5 QKV split and the flattened Softmax become rank-4 ops with the
same values (onnxruntime on both graphs) and the replaced tensors' names."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fwedge import ir
from fwedge.eval import ort_session
from fwedge.passes.attention import rewrite_attention

T, H, D = 4, 2, 3


def _attention(gather: bool) -> onnx.ModelProto:
    """x [1, T, 3*H*D] split as Paddle2ONNX's SVTR writes it, Q.K^T, Softmax over a flattened row, .V."""
    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [ints("five", [0, T, 3, H, D]), ints("back", [1, H, T, T]), ints("zero", [0])]
    nodes = [helper.make_node("Reshape", ["x", "five"], ["r5"], name="reshape"),
             helper.make_node("Transpose", ["r5"], ["t5"], name="transpose", perm=[2, 0, 3, 1, 4])]
    for part, name in enumerate("qkv"):
        if gather and name == "k":
            inits.append(numpy_helper.from_array(np.array(part, np.int64), "index_k"))
            nodes.append(helper.make_node("Gather", ["t5", "index_k"], ["k"], name="gather_k", axis=0))
            continue
        inits += [ints(f"start_{name}", [part]), ints(f"end_{name}", [part + 1])]
        nodes += [helper.make_node("Slice", ["t5", f"start_{name}", f"end_{name}", "zero"], [f"{name}5"], name=f"slice_{name}"),
                  helper.make_node("Squeeze", [f"{name}5", "zero"], [name], name=f"squeeze_{name}")]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
              helper.make_node("Flatten", ["scores"], ["flat"], name="flatten", axis=3),
              helper.make_node("Softmax", ["flat"], ["p_flat"], name="softmax", axis=-1),
              helper.make_node("Reshape", ["p_flat", "back"], ["p"], name="unflatten"),
              helper.make_node("MatMul", ["p", "v"], ["y"], name="context")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, 3 * H * D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def test_the_split_and_softmax_become_rank_4_ops_with_the_same_values():
    for gather in (False, True):
        model = _attention(gather)
        rewritten = rewrite_attention(model)
        onnx.checker.check_model(rewritten)
        ops = [node.op_type for node in rewritten.graph.node]
        assert ops == ["Slice", "Reshape", "Transpose"] * 3 + ["Transpose", "MatMul", "Softmax", "MatMul"], ops
        shapes = ir.value_shapes(rewritten)
        assert max(len(shapes[name]) for node in rewritten.graph.node for name in node.output) == 4
        # The replaced tensors keep their names: q, k, v and the Softmax's reshaped output p.
        assert {"q", "k", "v", "p"} <= {name for node in rewritten.graph.node for name in node.output}
        x = np.random.default_rng(0).normal(size=(1, T, 3 * H * D)).astype(np.float32)
        expected = ort_session(model).run(None, {"x": x})[0]
        got = ort_session(rewritten).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=f"gather={gather}: output 'y'")


def test_a_graph_without_the_patterns_is_returned_as_it_is():
    model = _attention(False)
    rewritten = rewrite_attention(model)
    assert rewrite_attention(rewritten) is rewritten

"""The chains jax2tf/tf2onnx graphs write (magika's): the variance-form normalization fused into
LayerNormalization, the written-out softmax into Softmax, same-shape Reshape/Expand dropped and
integer model inputs calibrated as integers; on hand-built graphs against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.eval import ort_session
from fwedge.passes.layer_norm import fuse_layer_norm
from fwedge.passes.simplify import simplify
from fwedge.passes.softmax import fuse_softmax
from tests.tolerances import FP32_ATOL, FP32_RTOL


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inits, shape, out_shape=None, opset=15, input_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", input_type, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def variance_norm_model(rng, shape: list[int], axis: int) -> onnx.ModelProto:
    """jax2tf's normalization over `axis`: sums without keepdims, Reshapes back, E[x^2] - E[x]^2."""
    n = shape[axis]
    kept = list(shape)
    kept[axis] = 1
    param = [1] * len(shape)
    param[axis] = n
    inits = [_const("axes", [axis], np.int64), _const("inv_n", 1.0 / n), _const("zero", 0.0),
             _const("eps", 1e-6), _const("kept", kept, np.int64),
             _const("gamma", rng.uniform(0.5, 1.5, n).reshape(param)),
             _const("beta", rng.standard_normal(n).reshape(param) * 0.1)]
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s1"], keepdims=0), helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["s2"], keepdims=0),
        helper.make_node("Mul", ["s2", "inv_n"], ["ex2"]), helper.make_node("Mul", ["s1", "inv_n"], ["mean"]),
        helper.make_node("Mul", ["mean", "mean"], ["mean2"]), helper.make_node("Sub", ["ex2", "mean2"], ["var"]),
        helper.make_node("Max", ["zero", "var"], ["var0"]), helper.make_node("Reshape", ["var0", "kept"], ["var_k"]),
        helper.make_node("Add", ["var_k", "eps"], ["var_e"]), helper.make_node("Sqrt", ["var_e"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", ["inv", "gamma"], ["scale"]),
        helper.make_node("Reshape", ["mean", "kept"], ["mean_k"]), helper.make_node("Sub", ["x", "mean_k"], ["d"]),
        helper.make_node("Mul", ["d", "scale"], ["dn"]), helper.make_node("Add", ["dn", "beta"], ["y"]),
    ]
    return _model(nodes, inits, shape)


def _check_same(before, after, x, name):
    expected = ort_session(before).run(None, {"x": x})[0]
    got = ort_session(after).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=name)


@pytest.mark.parametrize("shape,axis,ops", [
    ([2, 8, 6], 2, ["LayerNormalization"]),
    ([2, 6], 1, ["LayerNormalization"]),
    ([2, 8, 6], 1, ["Transpose", "LayerNormalization", "Transpose"]),
])
def test_variance_normalization_is_layer_norm(rng, shape, axis, ops):
    model = variance_norm_model(rng, shape, axis)
    fused = fuse_layer_norm(model)
    assert [n.op_type for n in fused.graph.node] == ops
    onnx.checker.check_model(fused)
    _check_same(model, fused, (rng.standard_normal(shape) * 3 + 1).astype(np.float32), f"norm axis {axis}")


def test_variance_normalization_with_other_reader_is_kept(rng):
    """A chain tensor read outside the chain (the variance here) leaves the chain as it is."""
    model = variance_norm_model(rng, [2, 8, 6], 2)
    model.graph.output.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, [2, 8]))
    assert fuse_layer_norm(model) is model


def written_softmax_model(shape: list[int]) -> onnx.ModelProto:
    kept = [shape[0], 1]
    inits = [_const("ninf", -np.inf), _const("axes", [1], np.int64), _const("kept", kept, np.int64)]
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0), helper.make_node("Max", ["ninf", "m"], ["m0"]),
        helper.make_node("Reshape", ["m0", "kept"], ["mk"]), helper.make_node("Sub", ["x", "mk"], ["d"]),
        helper.make_node("Exp", ["d"], ["e"]), helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
        helper.make_node("Reshape", ["s", "kept"], ["sk"]), helper.make_node("Div", ["e", "sk"], ["y"]),
    ]
    return _model(nodes, inits, shape)


def test_written_out_softmax_is_softmax(rng):
    model = written_softmax_model([3, 10])
    fused = fuse_softmax(model)
    assert [(n.op_type, n.output[0]) for n in fused.graph.node] == [("Softmax", "y")]
    _check_same(model, fused, (rng.standard_normal([3, 10]) * 4).astype(np.float32), "softmax")


def test_softmax_over_another_bound_is_kept():
    model = written_softmax_model([3, 10])
    model.graph.initializer[0].CopyFrom(_const("ninf", -1e30))  # max(-1e30, m) is not softmax's shift
    assert fuse_softmax(model) is model


def test_same_shape_expand_and_reshape_are_dropped(rng):
    inits = [_const("same", [2, 1, 5], np.int64), _const("other", [2, 5], np.int64)]
    nodes = [helper.make_node("Expand", ["x", "same"], ["e"]), helper.make_node("Reshape", ["e", "same"], ["r"]),
             helper.make_node("Reshape", ["r", "other"], ["y"])]
    model = _model(nodes, inits, [2, 1, 5], [2, 5])
    simplified = simplify(model)
    assert [(n.op_type, list(n.input)) for n in simplified.graph.node] == [("Reshape", ["x", "other"])]
    _check_same(model, simplified, rng.standard_normal([2, 1, 5]).astype(np.float32), "reshape")


def test_integer_input_calibrates_as_integers(rng, tmp_path):
    """An int32 model input (byte values, token ids) is fed as int32 to calibration and the check
    (the float cast of the data would not run), and stays int32 in the QDQ model."""
    from fwedge.quantization import quantize

    inits = [_const("w", rng.standard_normal((16, 4)))]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["xf", "w"], ["y"])]
    model = _model(nodes, inits, [1, 16], [1, 4], input_type=TensorProto.INT32)
    data = rng.integers(0, 256, (8, 16)).astype(np.int32)
    np.save(tmp_path / "data.npy", data)
    result = quantize(model, tmp_path / "data.npy", "minmax", num_samples=8)
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT32
    session = ort_session(result.model)
    got = np.concatenate([session.run(None, {"x": data[i:i + 1]})[0] for i in range(len(data))])
    expected = data.astype(np.float32) @ numpy_helper.to_array(inits[0])
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max(), "int8 MatMul of the int32 input"


def gelu_model(rng, shape=(1, 8, 16)) -> onnx.ModelProto:
    """MatMul -> the tanh GELU as jax2tf writes it (nine nodes, x read four times) -> MatMul."""
    inits = [_const("w1", rng.standard_normal((shape[-1], 12)) * 0.5), _const("w2", rng.standard_normal((12, 4))),
             _const("c", 0.044715), _const("k", 0.7978846), _const("one", 1.0), _const("half", 0.5)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Mul", ["c", "h"], ["g1"], name="g1"), helper.make_node("Mul", ["h", "g1"], ["g2"], name="g2"),
        helper.make_node("Mul", ["h", "g2"], ["g3"], name="g3"), helper.make_node("Add", ["h", "g3"], ["g4"], name="g4"),
        helper.make_node("Mul", ["k", "g4"], ["g5"], name="g5"), helper.make_node("Tanh", ["g5"], ["g6"], name="g6"),
        helper.make_node("Add", ["one", "g6"], ["g7"], name="g7"), helper.make_node("Mul", ["half", "g7"], ["g8"], name="g8"),
        helper.make_node("Mul", ["h", "g8"], ["g9"], name="g9"),
        helper.make_node("MatMul", ["g9", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, list(shape), [*shape[:-1], 4])


def test_tanh_gelu_chain_is_one_layer(rng, tmp_path):
    """The quantizer pairs the chain's input and its last Mul's output, nothing between: the
    GELU's steps run in float on the dequantized input, as one layer group."""
    from fwedge.quantization import plan_quantization, quantize

    model = gelu_model(rng)
    plan = plan_quantization(model)
    assert [g.nodes for g in plan.groups if "g1" in g.nodes] == [tuple(f"g{i}" for i in range(1, 10))]
    assert {"h", "g9"} <= set(plan.calibrated) and not {f"g{i}" for i in range(1, 9)} & set(plan.calibrated)
    data = (rng.standard_normal((16, 8, 16)) * 2).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    result = quantize(model, tmp_path / "data.npy", "minmax", num_samples=16)
    quantized = {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert not {f"g{i}" for i in range(1, 9)} & quantized and "g9" in quantized


def test_gelu_chain_with_another_constant_is_not_one_layer(rng):
    model = gelu_model(rng)
    model.graph.initializer[3].CopyFrom(_const("k", 0.5))  # not sqrt(2 / pi): not this GELU
    from fwedge.quantization import plan_quantization

    assert not any("g1" in g.nodes and len(g.nodes) > 1 for g in plan_quantization(model).groups)

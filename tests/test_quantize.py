"""QDQ insertion, BN folding and simplification on hand-built graphs, checked against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.calibration import QuantTable, params_from_range
from fwedge.errors import CalibrationError, DataError
from fwedge.eval import ort_session
from fwedge.passes.fold_bn import fold_batchnorm
from fwedge.passes.simplify import simplify
from fwedge.quantization import QuantizeOptions, plan_quantization, prepare, quantize, quantize_model
from tests.tolerances import FP32_ATOL, FP32_RTOL


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def block_model(rng: np.random.Generator) -> onnx.ModelProto:
    """input[N,1,12,12] -> Conv/BN/Relu -> MaxPool -> Conv -> Add(residual) -> Clip(0,6) -> GAP -> Flatten -> Gemm."""
    inits = [
        _init("w1", rng.standard_normal((4, 1, 3, 3)) * 0.5), _init("b1", rng.standard_normal(4) * 0.1),
        _init("gamma", rng.uniform(0.5, 1.5, 4)), _init("beta", rng.standard_normal(4) * 0.1),
        _init("mean", rng.standard_normal(4) * 0.1), _init("var", rng.uniform(0.5, 2.0, 4)),
        _init("w2", rng.standard_normal((4, 4, 3, 3)) * 0.3),
        _init("lo", 0.0), _init("hi", 6.0),
        _init("fc_w", rng.standard_normal((3, 4))), _init("fc_b", rng.standard_normal(3) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["a2"], name="add2"),
        helper.make_node("Clip", ["a2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "fwedge.preprocess", '{"resize": [12, 12], "color": "grayscale"}'
    onnx.checker.check_model(model)
    return model


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort_session(model).run(None, {"input": x})[0]


@pytest.fixture
def block(rng):
    return block_model(rng)


@pytest.fixture
def block_data(tmp_path, rng):
    path = tmp_path / "x.npy"
    np.save(path, rng.random((96, 1, 12, 12)).astype(np.float32))
    return path


def test_fold_bn_matches_onnxruntime(block, rng):
    folded = fold_batchnorm(block)
    assert [n.op_type for n in folded.graph.node].count("BatchNormalization") == 0
    conv = next(n for n in folded.graph.node if n.name == "conv1")
    assert conv.output[0] == "bn1", "the folded Conv must take over the BN's output name"
    x = rng.random((4, 1, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(block, x), rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg="logits after BN folding")
    onnx.checker.check_model(folded)


def test_fold_bn_into_gemm(rng):
    inits = [_init("w", rng.standard_normal((5, 6))), _init("b", rng.standard_normal(5)),
             _init("s", rng.uniform(0.5, 2, 5)), _init("o", rng.standard_normal(5)),
             _init("m", rng.standard_normal(5)), _init("v", rng.uniform(0.5, 2, 5))]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y0"], name="fc", transB=1),
             helper.make_node("BatchNormalization", ["y0", "s", "o", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    model = _model(graph)
    folded = fold_batchnorm(model)
    assert [n.op_type for n in folded.graph.node] == ["Gemm"]
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_session(folded).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg="Gemm+BN output y")


def test_qdq_layout_and_onnxruntime(block, block_data, rng):
    result = quantize(block, block_data, "minmax", num_samples=64)
    model = result.model
    onnx.checker.check_model(model)
    ops = [(n.op_type, n.name) for n in model.graph.node]
    names = [name for _, name in ops]
    # ReLU and Clip are fused: no Q/DQ between conv1/relu1 nor between add2/relu6.
    assert names.index("relu1") == names.index("conv1") + 1
    assert names.index("relu6") == names.index("add2") + 1
    assert "bn1_QuantizeLinear" not in names and "a2_QuantizeLinear" not in names
    assert "r1_QuantizeLinear" in names and "r2_QuantizeLinear" in names
    # MaxPool shares its input's scale and zero point.
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["p1_scale"] == inits["r1_scale"] and inits["p1_zero_point"] == inits["r1_zero_point"]
    # Weights int8 per channel (axis 0, zero point 0), bias int32 with scale s_in * s_w.
    assert inits["w2_quantized"].dtype == np.int8 and inits["w2_scale"].shape == (4,)
    assert not inits["w2_zero_point"].any()
    dq = next(n for n in model.graph.node if n.name == "w1_DequantizeLinear")
    assert helper.get_attribute_value(dq.attribute[0]) == 0
    assert inits["b1_quantized"].dtype == np.int32
    np.testing.assert_allclose(inits["b1_scale"], inits["input_scale"] * inits["w1_scale"], rtol=1e-6,
                               err_msg="bias scale of conv1")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fwedge.quant_method"] == "minmax" and "fwedge.preprocess" in meta
    # Runs in onnxruntime and stays close to float: an SQNR bound, not a loose allclose.
    x = rng.random((32, 1, 12, 12)).astype(np.float32)
    ref, got = _run(block, x), _run(model, x)
    sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    assert sqnr > 25, f"QDQ logits SQNR {sqnr:.1f} dB against float"


def test_symmetric_and_per_tensor(block, block_data):
    result = quantize(block, block_data, "minmax", num_samples=64, symmetric=True, per_channel=False)
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    zero_points = [v for k, v in inits.items() if k.endswith("_zero_point")]
    assert all(not np.any(z) for z in zero_points)
    assert inits["w2_scale"].shape == ()
    onnx.checker.check_model(result.model)


def test_excluded_node_stays_float(block, block_data, rng):
    prepared = prepare(block)
    full = quantize(block, block_data, "minmax", num_samples=64)
    options = QuantizeOptions(exclude_nodes=frozenset({"conv2"}))
    model = quantize_model(prepared, full.table, options)
    names = {n.name for n in model.graph.node}
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    # conv2 keeps its float weight and reads p1 as float-after-DQ; its output still gets a pair
    # because the int8 Add consumes it.
    assert "w2_DequantizeLinear" not in names and conv2.input[1] == "w2"
    assert "w1_DequantizeLinear" in names and "c2_QuantizeLinear" in names
    x = rng.random((8, 1, 12, 12)).astype(np.float32)
    assert _run(model, x).shape == (8, 3)


def test_concat_inputs_share_output_scale(rng):
    inits = [_init("w1", rng.standard_normal((2, 1, 1, 1))), _init("w2", rng.standard_normal((3, 1, 1, 1)) * 4)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4])], inits)
    model = _model(graph)
    plan = plan_quantization(model)
    assert plan.shared == {"a": "y", "b": "y"}
    assert plan.calibrated == ["x", "y"]
    table = QuantTable("", "minmax", tensors={"x": params_from_range(0, 1), "y": params_from_range(-9, 9)})
    qdq = quantize_model(model, table, plan=plan)
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    assert inits["a_scale"] == inits["y_scale"] == inits["b_scale"]
    x = rng.random((2, 1, 4, 4)).astype(np.float32)
    assert ort_session(qdq).run(None, {"x": x})[0].shape == (2, 5, 4, 4)


def test_missing_table_entry_is_named(block):
    prepared = prepare(block)
    with pytest.raises(CalibrationError, match="'input'"):
        quantize_model(prepared, QuantTable("", "kl"))


def test_no_float_tensors_to_quantize():
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.INT64)]
    graph = helper.make_graph(nodes, "int", [helper.make_tensor_value_info("x", TensorProto.INT32, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    model = _model(graph)
    with pytest.raises(CalibrationError, match="nothing to quantize"):
        plan_quantization(model)


def test_more_samples_than_the_data_holds_calibrates_on_all(block, block_data, caplog):
    result = quantize(block, block_data, "kl", num_samples=1000)
    assert result.table.dataset["num_samples"] == 96
    assert "holds 96 samples, fewer than the 1000 asked for: calibrating on all 96" in caplog.text
    assert result.table.tensors == quantize(block, block_data, "kl", num_samples=96).table.tensors


def test_shape_mismatch_names_file_and_shapes(block, tmp_path, rng):
    path = tmp_path / "bad.npy"
    np.save(path, rng.random((8, 12, 12)).astype(np.float32))
    with pytest.raises(DataError, match=r"bad\.npy.*expects shape \[N,1,12,12\], got \[N,12,12\]"):
        quantize(block, path, "kl", num_samples=8)


def test_simplify_folds_shape_chain(rng):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape collapses once the input is static."""
    inits = [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1")]
    nodes = [helper.make_node("Identity", ["x"], ["xi"], name="id"),
             helper.make_node("Shape", ["xi"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Reshape", ["n", "minus1"], ["n1"], name="as_1d"),
             helper.make_node("Concat", ["n1", "minus1"], ["shape2"], name="cat", axis=0),
             helper.make_node("Reshape", ["xi", "shape2"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(_model(graph))
    model = onnx.shape_inference.infer_shapes(model)
    simple = simplify(model)
    assert [n.op_type for n in simple.graph.node] == ["Reshape"]
    x = rng.random((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(ort_session(simple).run(None, {"x": x})[0], x.reshape(2, -1), err_msg="y")


def test_simplify_folds_constant_nodes_feeding_a_shape_chain(rng):
    """Exporters (paddle2onnx among them: PP-OCR rec) give Slice its starts and ends as Constant
    nodes; those fold, so Shape -> Slice -> Concat -> Reshape collapses. A sparse Constant stays
    a node: its declared dense size is not bounded by the file."""
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], name=f"c_{name}", value=numpy_helper.from_array(np.array(values, dtype=np.int64)))
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0], dtype=np.float32), "v"),
                                       numpy_helper.from_array(np.array([3], dtype=np.int64), "i"), [1 << 40])
    nodes = [const("start", [0]), const("end", [1]), helper.make_node("Constant", [], ["ints"], name="c_ints", value_ints=[-1]),
             helper.make_node("Constant", [], ["big"], name="c_sparse", sparse_value=sparse),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "start", "end"], ["n"], name="slice"),
             helper.make_node("Concat", ["n", "ints"], ["shape2"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "shape2"], ["y"], name="reshape"),
             helper.make_node("Shape", ["big"], ["z"], name="big_shape")]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.INT64, None)])
    simple = simplify(onnx.shape_inference.infer_shapes(_model(graph)))
    assert [n.op_type for n in simple.graph.node] == ["Constant", "Reshape", "Shape"]
    folded = {init.name: numpy_helper.to_array(init).tolist() for init in simple.graph.initializer}
    assert folded[simple.graph.node[1].input[1]] == [2, -1]


def test_fidelity_budget_keeps_layers_float_and_reports_them(block, block_data):
    strict = quantize(block, block_data, "kl", num_samples=64, min_agreement=1.0,
                      eval_data=block_data, eval_samples=96)
    assert strict.budget["met"] and strict.budget["final"] == 1.0
    assert strict.budget["all_int8"] <= strict.budget["final"]
    if strict.budget["all_int8"] < 1.0:
        assert strict.kept_float and all("sensitivity rank" in k.reason for k in strict.kept_float)
        float_nodes = {n for k in strict.kept_float for n in k.node.split("+")}
        assert float_nodes.isdisjoint(strict.plan.quantized_nodes)
    onnx.checker.check_model(strict.model)
    with pytest.raises(DataError, match="needs labels"):
        quantize(block, block_data, "kl", num_samples=64, max_accuracy_drop=0.5, eval_data=block_data)


def test_concat_input_with_other_readers_gets_a_requantizing_pair(rng):
    inits = [_init("w1", rng.standard_normal((2, 1, 1, 1))), _init("w2", rng.standard_normal((3, 1, 1, 1)) * 4),
             _init("w3", rng.standard_normal((2, 2, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1),
             helper.make_node("Conv", ["a", "w3"], ["z"], name="cz")]
    graph = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2, 4, 4])], inits)
    model = _model(graph)
    plan = plan_quantization(model)
    assert plan.shared == {"b": "y"} and plan.requant == [("a", "cat", "y")]
    table = QuantTable("", "minmax", tensors={name: params_from_range(-9, 9) for name in ("x", "a", "y", "z")})
    table.tensors["a"] = params_from_range(-1, 1)
    qdq = quantize_model(model, table, plan=plan)
    cat = next(n for n in qdq.graph.node if n.name == "cat")
    assert cat.input[0] == "a_requant_cat_dequantized" and cat.input[1] == "b_dequantized"
    cz = next(n for n in qdq.graph.node if n.name == "cz")
    assert cz.input[0] == "a_dequantized", "the other reader keeps a's own parameters"
    x = rng.random((2, 1, 4, 4)).astype(np.float32)
    outputs = ort_session(qdq).run(None, {"x": x})
    assert outputs[0].shape == (2, 5, 4, 4) and outputs[1].shape == (2, 2, 4, 4)


def _opset7_model(rng: np.random.Generator) -> onnx.ModelProto:
    """An IR 3 / opset 7 Conv-Relu-Flatten-Gemm model: every initializer is also a graph input."""
    inits = [_init("w", rng.standard_normal((4, 1, 3, 3))), _init("b", rng.standard_normal(4) * 0.1),
             _init("fw", rng.standard_normal((3, 4 * 6 * 6)) * 0.1), _init("fb", np.zeros(3))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "opset7", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    return model


def test_opset7_ir3_model_quantizes(tmp_path):
    from click.testing import CliRunner

    from fwedge.cli import cli

    rng = np.random.default_rng(0)
    model = _opset7_model(rng)
    onnx.checker.check_model(model)
    path = tmp_path / "op7.onnx"
    onnx.save(model, path)
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(cli, ["quantize", str(path), "--data", str(tmp_path / "x.npy"), "--num-samples", "16",
                                      "--method", "minmax", "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    qdq = onnx.load(tmp_path / "q.onnx")
    onnx.checker.check_model(qdq)
    assert qdq.ir_version >= 7
    assert {n.op_type for n in qdq.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"}
    reference = ort_session(model).run(None, {"x": x[:1]})[0]
    got = ort_session(qdq).run(None, {"x": x[:1]})[0]
    assert np.argmax(got) == np.argmax(reference)


def test_qdq_of_an_upgraded_ir3_model_given_as_a_proto_passes_the_checker(tmp_path):
    """A ModelProto upgraded to opset 13 outside fwedge.ir.load keeps IR 3; QDQ insertion still works."""
    rng = np.random.default_rng(0)
    model = onnx.version_converter.convert_version(_opset7_model(rng), 13)
    assert model.ir_version == 3
    x = rng.random((16, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = quantize(model, tmp_path / "x.npy", "minmax", 16)
    onnx.checker.check_model(result.model)
    assert result.model.ir_version >= 7


def test_convs_inside_control_flow_are_named_when_nothing_else_is_quantizable(rng):
    """A model whose convolutions sit in the branches of an If (as a VAD model's do) is told why
    nothing is quantized, not just 'nothing to quantize'."""
    weight = _init("w", rng.standard_normal((2, 1, 1, 1)))
    branch = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["then_y"], name="conv_in_branch")], "then",
                               [], [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, ["N", 2, 4, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["else_y"], name="pass")], "else",
                              [], [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, ["N", 1, 4, 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["flag"], name="gt"),
             helper.make_node("If", ["flag"], ["y"], name="branch_on_energy", then_branch=branch, else_branch=other)]
    graph = helper.make_graph(nodes, "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [weight, _init("zero", np.zeros((), np.float32))])
    with pytest.raises(CalibrationError, match=r"nothing to quantize.*inside control flow.*If 'branch_on_energy' \(1 Conv\)"):
        plan_quantization(_model(graph))

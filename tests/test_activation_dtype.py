"""uint8 activation Q/DQ rewrite: same reals as the int8 QDQ model in onnxruntime, weights untouched."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.errors import ModelError
from fwedge.eval import ort_session
from fwedge.quantization import activation_dtypes, int8_activations, quantize, uint8_activations
from tests.test_quantize import block_model
from tests.tolerances import INT8_MAX_STEPS


def _inits(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _steps(s8_model, u8_model, x, input_name="input"):
    """(max |u8 - s8| in output quantization steps, number of differing elements, total)."""
    out = s8_model.graph.output[0].name
    got_s8 = ort_session(s8_model).run(None, {input_name: x})[0]
    got_u8 = ort_session(u8_model).run(None, {input_name: x})[0]
    scale = float(_inits(s8_model)[f"{out}_scale"])
    steps = np.abs(got_u8.astype(np.float64) - got_s8) / scale
    return float(steps.max()), int(np.count_nonzero(got_u8 != got_s8)), got_s8.size


@pytest.fixture
def qdq(rng, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, rng.random((96, 1, 12, 12)).astype(np.float32))
    return quantize(block_model(rng), data, "kl", num_samples=96).model


def test_uint8_rewrites_only_activation_pairs(qdq):
    u8 = uint8_activations(qdq)
    onnx.checker.check_model(u8, full_check=True)
    assert activation_dtypes(qdq) == {"int8"} and activation_dtypes(u8) == {"uint8"}
    # Same nodes, same names, same wiring; only zero-point values and dtypes change.
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in u8.graph.node] == \
        [(n.name, n.op_type, list(n.input), list(n.output)) for n in qdq.graph.node]
    before, after = _inits(qdq), _inits(u8)
    assert before.keys() == after.keys()
    activation_zps = {n.input[2] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_zps, "the quantizer wrote no activation pairs"
    for name, value in before.items():
        if name in activation_zps:
            assert after[name].dtype == np.uint8, f"activation zero point {name}"
            np.testing.assert_array_equal(after[name].astype(np.int32), value.astype(np.int32) + 128,
                                          err_msg=f"activation zero point {name}")
        else:  # weights, weight/bias scales and zero points, activation scales
            assert after[name].dtype == value.dtype, f"{name} changed dtype"
            np.testing.assert_array_equal(after[name], value, err_msg=f"{name} changed")
    weight_dq = [n for n in u8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in after]
    assert weight_dq and all(after[n.input[2]].dtype in (np.int8, np.int32) for n in weight_dq)
    # The input is not modified, and the inverse restores the int8 model exactly.
    assert activation_dtypes(qdq) == {"int8"}
    back = int8_activations(u8)
    assert {k: (v.dtype, v.tolist()) for k, v in _inits(back).items()} == \
        {k: (v.dtype, v.tolist()) for k, v in before.items()}


def test_uint8_matches_int8_in_onnxruntime(qdq, rng):
    u8 = uint8_activations(qdq)
    x = rng.random((64, 1, 12, 12)).astype(np.float32)
    worst, differing, total = _steps(qdq, u8, x)
    print(f"block model: {differing}/{total} logits differ between s8 and u8 activations, max {worst:.3f} steps")
    assert worst <= INT8_MAX_STEPS + 1e-3, f"logits: u8 differs from s8 by {worst:.3f} output steps"


@pytest.mark.fashion_mnist
def test_uint8_matches_int8_on_mobilenet(mobilenet_path):
    from fwedge.data import open_dataset
    from fwedge.eval import resolve_preprocess

    from fwedge import ir

    float_model = ir.load(mobilenet_path)
    s8 = quantize(float_model, "fashion-mnist:train", "minmax", num_samples=256).model
    u8 = uint8_activations(s8)
    onnx.checker.check_model(u8)
    x = next(open_dataset("fashion-mnist:test").batches(resolve_preprocess(float_model), 500, 500, 0)).x
    # Not bit-exact: with int8 activations onnxruntime (1.31, x86) leaves the depthwise Convs and
    # the residual Adds as DQ -> float op -> Q, while with uint8 it fuses them into QLinearConv /
    # QLinearAdd, whose integer requantization rounds a few values one step differently.
    worst, differing, total = _steps(s8, u8, x, float_model.graph.input[0].name)
    print(f"mobilenet_v2_tiny: {differing}/{total} logits differ between s8 and u8 activations, "
          f"max {worst:.3f} steps")
    assert worst <= INT8_MAX_STEPS + 1e-3, f"logits: u8 differs from s8 by {worst:.3f} output steps"


def test_quantize_output_feeding_a_non_dq_is_refused():
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.int8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_node"),
             helper.make_node("Cast", ["q"], ["y"], name="cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ModelError, match="q_node.*Cast 'cast'"):
        uint8_activations(model)


def test_shared_zero_point_is_copied_not_changed():
    """A zero point read by an activation pair and by a weight DQ: the weight keeps int8."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(np.array([1, -2, 3, 4], np.int8), "w_q")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="xd"),
             helper.make_node("DequantizeLinear", ["w_q", "s", "zp"], ["wd"], name="wd"),
             helper.make_node("Add", ["xd", "wd"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    u8 = uint8_activations(model)
    onnx.checker.check_model(u8, full_check=True)
    values = _inits(u8)
    assert values["zp"].dtype == np.int8 and values["zp_uint8"] == 128
    assert [n.input[2] for n in u8.graph.node[:3]] == ["zp_uint8", "zp_uint8", "zp"]
    x = np.array([-1.0, 0.02, 0.5, 7.0], np.float32)
    np.testing.assert_array_equal(ort_session(u8).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0],
                                  err_msg="y")


def test_quantize_cli_activation_dtype_uint8(tmp_path, rng):
    import json

    from click.testing import CliRunner

    from fwedge.cli import cli

    model, data = tmp_path / "block.onnx", tmp_path / "x.npy"
    onnx.save(block_model(rng), model)
    np.save(data, rng.random((80, 1, 12, 12)).astype(np.float32))
    outputs = {}
    for dtype in ("int8", "uint8"):
        out, report = tmp_path / f"{dtype}.onnx", tmp_path / f"{dtype}.json"
        result = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(data), "--num-samples", "64",
                                          "--method", "minmax", "--activation-dtype", dtype, "-o", str(out),
                                          "--json", str(report)])
        assert result.exit_code == 0, result.output
        assert f"{dtype} activations" in result.output
        assert json.loads(report.read_text())["activation_dtype"] == dtype
        outputs[dtype] = onnx.load(out)
    assert activation_dtypes(outputs["int8"]) == {"int8"} and activation_dtypes(outputs["uint8"]) == {"uint8"}
    x = rng.random((16, 1, 12, 12)).astype(np.float32)
    worst, _, _ = _steps(outputs["int8"], outputs["uint8"], x)
    assert worst <= INT8_MAX_STEPS + 1e-3, f"logits: CLI uint8 model differs by {worst:.3f} steps"


def test_lowering_takes_uint8_activations_as_int8(qdq, rng):
    from fwedge.lowered.interp import run_lowered
    from fwedge.lowered.lower import lower

    u8 = uint8_activations(qdq)
    s8_graph, u8_graph = lower(qdq), lower(u8)
    assert u8_graph.precision == "int8" and not u8_graph.float_fallback
    assert [(op.kind, op.name) for op in u8_graph.ops] == [(op.kind, op.name) for op in s8_graph.ops]
    for name, tensor in s8_graph.tensors.items():
        other = u8_graph.tensors[name]
        assert other.dtype == tensor.dtype, f"lowered tensor {name}: {other.dtype} vs {tensor.dtype}"
        if tensor.quant is not None:
            np.testing.assert_array_equal(other.quant.zero_point, tensor.quant.zero_point,
                                          err_msg=f"lowered zero point of {name}")
    x = rng.random((1, 1, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(run_lowered(u8_graph, {"input": x})["logits"],
                                  run_lowered(s8_graph, {"input": x})["logits"], err_msg="lowered logits")

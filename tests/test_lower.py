"""Lowering and the reference interpreter against onnxruntime: the op matrix, errors, the contract."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.lowered.arith import (
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_double_rounding, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from fwedge.lowered.lower import lower
from fwedge.lowered.graph import quantize_multiplier
from fwedge.ops.registry import KINDS
from helpers import tiny_conv_model
from op_matrix import OP_CASES, op_case_ids, output_scale, qdq_model, random_feeds, steps_off
from tolerances import FP32_ATOL, FP32_RTOL, INT8_MAX_STEPS


@pytest.mark.parametrize("case", OP_CASES, ids=op_case_ids())
def test_float_op_matrix_matches_onnxruntime(case):
    feeds = random_feeds(case, batch=2)
    graph = lower(case.model)
    assert graph.precision == "fp32"
    assert set(case.kinds) <= {op.kind for op in graph.ops}
    from fwedge.lowered.interp import run_lowered

    expected = ort_session(case.model).run(None, feeds)[0]
    got = run_lowered(graph, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{case.id}: y")


@pytest.mark.parametrize("quantizer", ["fwedge", "ort"])
@pytest.mark.parametrize("case", [c for c in OP_CASES if c.int8], ids=[c.id for c in OP_CASES if c.int8])
def test_int8_op_matrix_within_one_step_of_onnxruntime(case, quantizer, record_property):
    from fwedge.lowered.interp import run_lowered

    qdq = qdq_model(case, quantizer)
    try:
        step = output_scale(qdq, "y")
    except KeyError:
        pytest.skip(f"{quantizer} quantizer leaves a lone {case.id} in float")
    feeds = random_feeds(case, batch=2)
    graph = lower(qdq)
    assert graph.precision == "int8"
    kinds = (case.ort_int8_kinds if quantizer == "ort" else None) or case.int8_kinds or case.kinds
    assert set(kinds) <= {op.kind for op in graph.ops}
    assert all(graph.tensors[op.outputs[0]].dtype == "int8" for op in graph.ops if op.kind in kinds)
    expected = ort_session(qdq).run(None, feeds)[0]
    got = run_lowered(graph, feeds)["y"]
    steps = steps_off(expected, got, step)
    off_by_one = int((steps == 1).sum())
    record_property("off_by_one", off_by_one)
    record_property("elements", int(steps.size))
    print(f"{case.id} [{quantizer}]: {off_by_one}/{steps.size} elements off by one step")
    assert steps.max() <= INT8_MAX_STEPS, f"{case.id}: y off by {steps.max()} steps"


def test_fixed_point_primitives_match_tflite_reference_cases():
    # SaturatingRoundingDoublingHighMul: the one overflow case saturates; rounding is to nearest.
    assert saturating_rounding_doubling_high_mul(-2**31, -2**31) == 2**31 - 1
    assert saturating_rounding_doubling_high_mul(2**30, 2**30) == 2**29
    # gemmlowp nudges ties upward: 1.5 -> 2, -1.5 -> -1.
    assert saturating_rounding_doubling_high_mul(3, 2**30) == 2
    assert saturating_rounding_doubling_high_mul(-3, 2**30) == -1
    # RoundingDivideByPOT rounds half away from zero.
    assert list(rounding_divide_by_pot(np.array([5, -5, 6, -6, 7, -7]), 1)) == [3, -3, 3, -3, 4, -4]
    # QuantizeMultiplier: real = m * 2**(shift - 31).
    for real in (0.0037, 0.5, 0.999999, 1.0, 3.75, 1e-9):
        m, shift = quantize_multiplier(real)
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0 ** (shift - 31) - real) <= real * 2**-30
    m, shift = quantize_multiplier(0.25)
    assert multiply_by_quantized_multiplier(1000, m, shift) == 250
    assert multiply_by_quantized_multiplier(-1002, m, shift) == -250  # single rounding: -250.5 half up
    assert multiply_by_quantized_multiplier(1002, m, shift) == 251
    # The case that made the lowering leave the double-rounding form: 5896 * 0.009074 = 53.4992.
    assert multiply_by_quantized_multiplier(5896, 1247094195, -6) == 53
    assert multiply_by_quantized_multiplier_double_rounding(5896, 1247094195, -6) == 54


def test_lowered_int8_conv_carries_integer_weights_and_requant_pairs():
    case = next(c for c in OP_CASES if c.id == "conv_relu6")
    graph = lower(qdq_model(case))
    conv = next(op for op in graph.ops if op.kind == "conv2d")
    x, w, b = (graph.tensors[name] for name in conv.inputs)
    y = graph.tensors[conv.outputs[0]]
    assert (x.dtype, w.dtype, b.dtype, y.dtype) == ("int8", "int8", "int32", "int8")
    assert w.data.dtype == np.int8 and b.data.dtype == np.int32
    assert w.quant.axis == 0 and set(w.quant.zero_point) == {0} and len(w.quant.scale) == w.shape[0]
    requant = conv.attrs.requant
    assert requant.multiplier.dtype == np.int32 and requant.multiplier.shape == (w.shape[0],)
    reals = x.quant.scale[0] * np.array(w.quant.scale) / y.quant.scale[0]
    np.testing.assert_allclose(requant.multiplier * 2.0 ** (requant.shift.astype(float) - 31), reals, rtol=1e-9)
    # ReLU6 fused: the clamp range is [q(0), q(6)] in the output quantization.
    assert conv.attrs.activation == "relu6"
    assert requant.act_min == max(-128, y.quant.zero_point[0])
    assert requant.act_max == min(127, y.quant.zero_point[0] + round(6 / y.quant.scale[0]))


def test_float_lowering_folds_batchnorm_and_fuses_relu():
    rng = np.random.default_rng(0)
    channels = 4
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 2, 3, 3)).astype(np.float32), "w")]
    for name, value in (("gamma", rng.uniform(0.5, 1.5, channels)), ("beta", rng.standard_normal(channels)),
                        ("mean", rng.standard_normal(channels)), ("var", rng.uniform(0.5, 2, channels))):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    lowered = lower(model)
    assert [op.kind for op in lowered.ops] == ["conv2d"]
    assert lowered.ops[0].attrs.activation == "relu"
    from fwedge.lowered.interp import run_lowered

    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_lowered(lowered, {"x": x})["y"], ort_session(model).run(None, {"x": x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg="y")


def test_every_kind_is_exercised_by_the_op_matrix():
    covered = {kind for case in OP_CASES for kind in case.kinds} | {"quantize", "dequantize"}
    assert set(KINDS) - covered == {"relu6"} or set(KINDS) <= covered | {"relu6"}


def test_unsupported_ops_are_listed_in_one_error():
    model = tiny_conv_model()
    graph = model.graph
    # Two unsupported nodes (Erf has no op card) plus a supported tail.
    graph.node.insert(1, helper.make_node("Erf", ["c"], ["c_erf"], name="erf_1"))
    graph.node[2].input[0] = "c_erf"
    graph.node.insert(3, helper.make_node("Erf", ["r"], ["r_erf"], name="erf_2"))
    graph.node[4].input[0] = "r_erf"
    with pytest.raises(UnsupportedOpError) as info:
        lower(model, target="tflite")
    error = info.value
    assert [(name, op) for name, op, _ in error.nodes] == [("erf_1", "Erf"), ("erf_2", "Erf")]
    assert "erf_1" in str(error) and "erf_2" in str(error) and "opset 13" in str(error)


def test_graph_contract_ops_are_topological_and_tensors_known():
    case = next(c for c in OP_CASES if c.id == "concat_channels")
    graph = lower(qdq_model(case))
    available = set(graph.inputs) | {t.name for t in graph.constants()}
    for op in graph.ops:
        assert op.kind in KINDS
        assert set(op.inputs) <= available, op
        available.update(op.outputs)
    assert set(graph.outputs) <= available
    assert all(len(t.shape) == 0 or t.shape[0] == 1 for t in graph.tensors.values() if not t.is_constant)


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("model", ["cnn_small", "mobilenet"])
def test_example_models_interpreter_against_onnxruntime(model, request, record_property):
    from fwedge.data import open_dataset
    from fwedge.eval import resolve_preprocess
    from fwedge.lowered.interp import run_lowered
    from op_matrix import quantized_example

    float_model, qdq = quantized_example(request.getfixturevalue(f"{model}_path"))
    batch = next(open_dataset("fashion-mnist:test").batches(resolve_preprocess(float_model), batch_size=200, limit=200))
    name, output = float_model.graph.input[0].name, float_model.graph.output[0].name
    fp32 = run_lowered(lower(float_model), {name: batch.x})[output]
    np.testing.assert_allclose(fp32, ort_session(float_model).run(None, {name: batch.x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{model} fp32: {output}")
    int8 = run_lowered(lower(qdq), {name: batch.x})[output]
    steps = steps_off(ort_session(qdq).run(None, {name: batch.x})[0], int8, output_scale(qdq, output))
    record_property("off_by_one", int((steps == 1).sum()))
    print(f"{model} interpreter int8: {(steps == 1).sum()}/{steps.size} logits off by one step")
    assert steps.max() <= INT8_MAX_STEPS, f"{model}: {output} off by {steps.max()} steps"


@pytest.mark.rapidocr
def test_ppocr_cls_lowers_in_fp32_and_int8(ppocr_cls_path):
    from collections import Counter

    from fwedge.lowered.interp import run_lowered
    from op_matrix import quantized_ppocr
    from tolerances import DEEP_INT8_TOP1_AGREEMENT

    float_model, qdq, x = quantized_ppocr(ppocr_cls_path)
    x = x[:4]
    name, output = float_model.graph.input[0].name, float_model.graph.output[0].name
    fp32 = lower(float_model)
    reference = np.concatenate([ort_session(float_model).run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(run_lowered(fp32, {name: x})[output], reference, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=f"ppocr fp32: {output}")
    int8 = lower(qdq)
    kinds = Counter((op.kind, int8.tensors[op.outputs[0]].dtype) for op in int8.ops)
    # SE blocks: GAP -> conv -> relu -> conv -> hardsigmoid -> broadcast mul, all in int8.
    for kind in ("conv2d", "depthwise_conv2d", "global_avg_pool", "hardsigmoid", "mul", "add", "fully_connected"):
        assert kinds[(kind, "int8")] > 0, (kind, kinds)
    session = ort_session(qdq)
    ort_int8 = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    got = run_lowered(int8, {name: x})[output]
    agreement = float((got.argmax(1) == ort_int8.argmax(1)).mean())
    print(f"ppocr interpreter int8: top-1 vs ORT int8 {agreement:.3f}, max |dp| {np.abs(got - ort_int8).max():.4f}")
    assert agreement >= DEEP_INT8_TOP1_AGREEMENT

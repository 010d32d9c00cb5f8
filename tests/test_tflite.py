"""TFLite target: op matrix and example models against onnxruntime, int8 I/O, unsupported ops, bundles."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from fwedge.bundle import load_bundle
from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.targets import ExportOptions
from helpers import tiny_conv_model
from op_matrix import (
    OP_CASES, op_case_ids, output_scale, qdq_model, quantized_example, quantized_ppocr, random_feeds, steps_off,
)
from tolerances import DEEP_INT8_TOP1_AGREEMENT, FP32_ATOL, FP32_RTOL, INT8_MAX_STEPS, INT8_TARGET_ACCURACY_PP

pytestmark = pytest.mark.tflite


def _tflite():
    from fwedge.targets import get_target

    return get_target("tflite")


@pytest.mark.parametrize("case", OP_CASES, ids=op_case_ids())
def test_fp32_op_matrix_matches_onnxruntime(case, tmp_path):
    tflite = _tflite()
    feeds = random_feeds(case, batch=2)
    bundle = load_bundle(tflite.export(case.model, tmp_path / "b", ExportOptions()).path)
    assert bundle.precision == "fp32"
    expected = ort_session(case.model).run(None, feeds)[0]
    got = tflite.run(bundle, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{case.id}: y")


@pytest.mark.parametrize("float_io", [True, False], ids=["float_io", "int8_io"])
@pytest.mark.parametrize("case", [c for c in OP_CASES if c.int8], ids=[c.id for c in OP_CASES if c.int8])
def test_int8_op_matrix_within_one_step_of_onnxruntime(case, float_io, tmp_path, record_property):
    tflite = _tflite()
    qdq = qdq_model(case)
    feeds = random_feeds(case, batch=2)
    bundle = load_bundle(tflite.export(qdq, tmp_path / "b", ExportOptions(float_io=float_io)).path)
    assert bundle.precision == "int8"
    if not float_io:
        # int8 I/O: every float input and output int8; an int32 input (indices) stays int32.
        quantized = [spec for spec in bundle.inputs + bundle.outputs if spec.dtype != "int32"]
        assert {spec.dtype for spec in quantized} == {"int8"}
        assert all(spec.scale and spec.zero_point is not None for spec in quantized)
    expected = ort_session(qdq).run(None, feeds)[0]
    got = tflite.run(bundle, feeds)["y"]
    steps = steps_off(expected, got, output_scale(qdq, "y"))
    off_by_one = int((steps == 1).sum())
    record_property("off_by_one", off_by_one)
    print(f"tflite {case.id}: {off_by_one}/{steps.size} elements off by one step")
    assert steps.max() <= INT8_MAX_STEPS, f"{case.id}: y off by {steps.max()} steps"


def test_int8_bundle_follows_the_tflite_quantization_spec(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    case = next(c for c in OP_CASES if c.id == "depthwise_3x3_s2_mult2")
    bundle = _tflite().export(qdq_model(case), tmp_path / "b", ExportOptions())
    interpreter = Interpreter(model_path=str(bundle.file("model.tflite")))
    details = interpreter.get_tensor_details()
    weights = [d for d in details if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] == 1
               and d["quantization_parameters"]["scales"].size > 1]
    assert weights, "no per-channel int8 depthwise weight found"
    w = weights[0]
    assert list(w["shape"]) == [1, 3, 3, 6]  # 1HWO
    assert w["quantization_parameters"]["quantized_dimension"] == 3
    assert not w["quantization_parameters"]["zero_points"].any()
    biases = [d for d in details if d["dtype"] == np.int32 and len(d["shape"]) == 1 and d["shape"][0] == 6]
    assert biases and not biases[0]["quantization_parameters"]["zero_points"].any()
    inputs = interpreter.get_input_details()
    assert inputs[0]["dtype"] == np.float32 and list(inputs[0]["shape"]) == [1, 9, 9, 3]  # NHWC, float I/O


def _lstm_model():
    """x[1,6,4] -> LSTM(3) -> Reshape -> Gemm -> Erf -> Relu: LSTM and Erf have no lowering."""
    import onnx
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R"),
        numpy_helper.from_array(np.array([1, 18], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((5, 18)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_seq"], name="to_sequence", perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_seq", "W", "R"], ["h_all"], name="lstm", hidden_size=3),
        helper.make_node("Reshape", ["h_all", "shape"], ["h"], name="flatten"),
        helper.make_node("Gemm", ["h", "fc_w"], ["fc"], name="fc", transB=1),
        helper.make_node("Erf", ["fc"], ["t"], name="erf"),
        helper.make_node("Relu", ["t"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def test_unsupported_ops_raise_one_error_and_leave_no_bundle(tmp_path):
    tflite = _tflite()
    model = _lstm_model()
    expected = [("to_sequence", "Transpose"), ("lstm", "LSTM"), ("erf", "Erf")]
    assert [(n, op) for n, op, _ in tflite.check(model)] == expected
    out = tmp_path / "bundle"
    with pytest.raises(UnsupportedOpError) as info:
        tflite.export(model, out, ExportOptions())
    assert info.value.target == "tflite"
    assert [(n, op, opset) for n, op, opset in info.value.nodes] == [(n, op, 13) for n, op in expected]
    assert all(name in str(info.value) for name, _ in expected)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_manifest_records_nhwc_io_and_toolchain(tmp_path):
    case = next(c for c in OP_CASES if c.id == "conv_3x3_s1_p1")
    bundle = load_bundle(_tflite().export(qdq_model(case), tmp_path / "b", ExportOptions(float_io=False)).path)
    (x,), (y,) = bundle.inputs, bundle.outputs
    assert (x.name, x.shape, x.dtype, x.layout) == ("x", [1, 8, 8, 3], "int8", "NHWC")
    assert (y.name, y.shape, y.dtype, y.layout) == ("y", [1, 8, 8, 5], "int8", "NHWC")
    assert y.scale == pytest.approx(output_scale(qdq_model(case), "y"))
    assert "ai-edge-litert" in bundle.versions and "flatbuffers" in bundle.versions
    assert bundle.sizes["model_bytes"] > 0


@pytest.fixture(scope="module")
def ppocr_models(ppocr_cls_path):
    """(float model, QDQ model from fwedge's quantizer, 24 real inputs) of the PP-OCR cls model."""
    return quantized_ppocr(ppocr_cls_path)


def _ort_batch(model, x):
    session = ort_session(model)
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.rapidocr
def test_ppocr_cls_fp32_and_int8(ppocr_models, tmp_path):
    tflite = _tflite()
    float_model, qdq, x = ppocr_models
    reference = _ort_batch(float_model, x)
    fp32 = tflite.run(load_bundle(tflite.export(float_model, tmp_path / "fp32", ExportOptions()).path), {"x": x})
    (name,) = fp32
    np.testing.assert_allclose(fp32[name], reference, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"ppocr fp32: {name}")
    int8_bundle = load_bundle(tflite.export(qdq, tmp_path / "int8", ExportOptions()).path)
    int8 = tflite.run(int8_bundle, {"x": x})[name]
    ort_int8 = _ort_batch(qdq, x)
    gap = float(np.abs(int8 - ort_int8).max())
    agreement_ort = float((int8.argmax(1) == ort_int8.argmax(1)).mean())
    fidelity = float((int8.argmax(1) == reference.argmax(1)).mean())
    print(f"ppocr tflite int8: max |p - p_ort_int8| {gap:.4f}, top-1 vs ORT int8 {agreement_ort:.3f}, "
          f"vs float {fidelity:.3f}; kept float: {int8_bundle.extra['float_ops']}")
    assert int8_bundle.extra["op_counts"]["conv2d"] >= 40
    assert agreement_ort >= DEEP_INT8_TOP1_AGREEMENT, f"ppocr int8: top-1 agreement with ORT int8 {agreement_ort}"


EXAMPLE_LIMIT = 500  # seeded subset of the 10,000 test images in the test command; slow test: all


def _example_accuracy(path, tmp_path, limit):
    from fwedge.data import open_dataset
    from fwedge.eval import OrtRunner, accuracy, resolve_preprocess
    from fwedge.runner import BundleRunner

    tflite = _tflite()
    float_model, qdq = quantized_example(path)
    preprocess = resolve_preprocess(float_model)
    dataset = open_dataset("fashion-mnist:test")
    fp32 = tflite.export(float_model, tmp_path / "fp32", ExportOptions(preprocess=preprocess.to_dict()))
    int8 = tflite.export(qdq, tmp_path / "int8", ExportOptions(preprocess=preprocess.to_dict()))
    runners = {"ort_fp32": OrtRunner(float_model), "ort_int8": OrtRunner(qdq),
               "tflite_fp32": BundleRunner(fp32.path), "tflite_int8": BundleRunner(int8.path)}
    result = {name: accuracy(runner, dataset, preprocess, limit=limit).top1 * 100 for name, runner in runners.items()}
    # Output fidelity on the same images: fp32 logits within tolerance, int8 within one step.
    batch = next(dataset.batches(preprocess, batch_size=limit or 10000, limit=limit))
    np.testing.assert_allclose(runners["tflite_fp32"](batch.x), runners["ort_fp32"](batch.x),
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{path.name} fp32: logits")
    steps = steps_off(runners["ort_int8"](batch.x), runners["tflite_int8"](batch.x), output_scale(qdq, qdq.graph.output[0].name))
    result["int8_max_steps"] = int(steps.max())
    result["int8_off_by_one"] = int((steps == 1).sum())
    result["int8_elements"] = int(steps.size)
    print(f"{path.name}: {result}")
    return result


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("model", ["cnn_small", "mobilenet"])
def test_example_models_fp32_and_int8(model, request, tmp_path):
    path = request.getfixturevalue(f"{model}_path")
    result = _example_accuracy(path, tmp_path, EXAMPLE_LIMIT)
    assert result["int8_max_steps"] <= INT8_MAX_STEPS, result
    assert abs(result["tflite_int8"] - result["ort_int8"]) <= INT8_TARGET_ACCURACY_PP + 1e-9, result
    assert result["tflite_fp32"] == result["ort_fp32"], result


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("model", ["cnn_small", "mobilenet"])
def test_example_models_full_test_set(model, request, tmp_path):
    path = request.getfixturevalue(f"{model}_path")
    result = _example_accuracy(path, tmp_path, None)
    assert result["int8_max_steps"] <= INT8_MAX_STEPS, result
    assert abs(result["tflite_int8"] - result["ort_int8"]) <= INT8_TARGET_ACCURACY_PP + 1e-9, result


def test_intermediates_name_onnx_tensors_for_bisection(tmp_path):
    from fwedge.lowered.interp import run_lowered
    from fwedge.lowered.lower import lower

    model = tiny_conv_model()
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    bundle = load_bundle(_tflite().export(model, tmp_path / "b", ExportOptions()).path)
    values = _tflite().intermediates(bundle, feeds, ["r", "p", "not_a_tensor"])
    assert sorted(values) == ["p", "r"]
    expected = run_lowered(lower(model), feeds, keep_all=True)
    for name in ("r", "p"):
        np.testing.assert_allclose(values[name], expected[name], rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=name)


def test_interrupted_export_leaves_no_partial_bundle_and_keeps_the_old_one(tmp_path, monkeypatch):
    tflite = _tflite()
    case = next(c for c in OP_CASES if c.id == "conv_1x1")
    out = tmp_path / "bundle"
    first = tflite.export(case.model, out, ExportOptions())
    before = out.joinpath("manifest.json").read_text()

    def killed(path, data):
        path.write_bytes(data[: len(data) // 2])  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    from fwedge.targets import tflite as tflite_module

    monkeypatch.setattr(tflite_module.ir, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        tflite.export(qdq_model(case), out, ExportOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert out.joinpath("manifest.json").read_text() == before
    assert load_bundle(out).precision == first.precision == "fp32"


def test_tampered_tflite_bundle_is_refused(tmp_path):
    from fwedge.errors import ExportError

    case = next(c for c in OP_CASES if c.id == "conv_1x1")
    bundle = _tflite().export(qdq_model(case), tmp_path / "b", ExportOptions())
    path = bundle.file("model.tflite")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.tflite"):
        load_bundle(bundle.path)


def _asymmetric_weight_model():
    """The conv_1x1 QDQ model with its weight zero points moved off 0 (no int8 form in TFLite)."""
    import onnx
    from onnx import numpy_helper

    qdq = qdq_model(next(c for c in OP_CASES if c.id == "conv_1x1"))
    inits = {init.name: init for init in qdq.graph.initializer}
    weight_dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                     and numpy_helper.to_array(inits[n.input[0]]).ndim == 4)
    zero_point = numpy_helper.to_array(inits[weight_dq.input[2]])
    inits[weight_dq.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(zero_point, 3), weight_dq.input[2]))
    onnx.checker.check_model(qdq)
    return qdq


def test_int8_node_without_int8_form_is_refused_or_kept_float_when_allowed(tmp_path):
    tflite = _tflite()
    qdq = _asymmetric_weight_model()
    with pytest.raises(UnsupportedOpError, match="allow-float-fallback") as info:
        tflite.export(qdq, tmp_path / "refused", ExportOptions())
    assert [(name, op) for name, op, _ in info.value.nodes] == [("conv", "Conv")]
    assert not (tmp_path / "refused").exists()
    bundle = load_bundle(tflite.export(qdq, tmp_path / "b", ExportOptions(allow_float_fallback=True)).path)
    assert bundle.extra["float_fallback"] and bundle.extra["float_fallback"][0]["node"] == "conv"
    assert "conv" in bundle.extra["float_ops"]
    feeds = random_feeds(next(c for c in OP_CASES if c.id == "conv_1x1"), batch=2)
    steps = steps_off(ort_session(qdq).run(None, feeds)[0], tflite.run(bundle, feeds)["y"], output_scale(qdq, "y"))
    assert steps.max() <= INT8_MAX_STEPS


def _softmax_qdq(case_id: str, output_scale: float | None, output_zero_point: int | None):
    """An op matrix int8 Softmax case, its output Q/DQ set to the given parameters (None: the
    calibrated ones)."""
    from onnx import numpy_helper

    case = next(c for c in OP_CASES if c.id == case_id)
    qdq = qdq_model(case)
    for init in qdq.graph.initializer:
        if init.name == "y_scale" and output_scale is not None:
            init.CopyFrom(numpy_helper.from_array(np.array(output_scale, np.float32), "y_scale"))
        if init.name == "y_zero_point" and output_zero_point is not None:
            init.CopyFrom(numpy_helper.from_array(np.array(output_zero_point, np.int8), "y_zero_point"))
    return case, qdq


@pytest.mark.parametrize("case_id", ["softmax_4d_last_axis", "softmax_4d_axis2", "softmax_5d_axis2", "softmax"])
@pytest.mark.parametrize("fixed", [False, True], ids=["calibrated_scale", "scale_1_256"])
def test_int8_softmax_runs_in_float_and_says_so_unless_its_output_scale_is_1_256(fixed, case_id, tmp_path):
    """TFLite's int8 SOFTMAX writes scale 1/256, zero point -128 only: with the calibrated output
    scale (0.0027 to 0.0038 here) the bundle runs it in float and lists it with the reason; with
    1/256 and -128 it stays int8, between int8 TRANSPOSEs for an axis not stored innermost, and
    lists nothing. Both within one step of onnxruntime's QDQ run."""
    case, qdq = _softmax_qdq(case_id, 1 / 256 if fixed else None, -128 if fixed else None)
    bundle = _tflite().export(qdq, tmp_path / "b", ExportOptions(source_sha256="0" * 64))
    islands = bundle.extra["float_islands"]
    if fixed:
        assert islands == [] and "softmax" not in bundle.extra["float_ops"]
    else:
        assert [entry["node"] for entry in islands] == ["softmax"] and "1/256" in islands[0]["reason"]
        assert "softmax" in bundle.extra["float_ops"]
    feeds = random_feeds(case, batch=3)
    reference = ort_session(qdq).run(["y"], feeds)[0]
    got = _tflite().run(load_bundle(tmp_path / "b"), feeds)["y"]
    steps = steps_off(reference, got.reshape(reference.shape), output_scale(qdq, "y"))
    assert steps.max() <= INT8_MAX_STEPS, f"{case_id} ({'1/256' if fixed else 'calibrated'}): {steps.max()} steps"

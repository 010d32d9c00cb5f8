"""The Fashion-MNIST example models and the PP-OCR classifier through onnx, openvino and ncnn, fp32 and int8."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fwedge.data import Preprocess, open_dataset
from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.runner import evaluate_bundle
from fwedge.targets import target_module
from tolerances import FP32_ATOL, FP32_RTOL, INT8_TARGET_ACCURACY_PP

TARGETS = [pytest.param("onnx", id="onnx"), pytest.param("openvino", marks=pytest.mark.openvino, id="openvino"),
           pytest.param("ncnn", marks=pytest.mark.ncnn, id="ncnn")]
# The test command uses a seeded subset; bench/target_accuracy.py runs all 10000 test images.
IMAGES = 600


def _quantize(float_path, out):
    """fwedge's quantizer (percentile ranges, 256 training images), as the demo pipeline runs it."""
    from fwedge.quantization import quantize

    result = quantize(float_path, "fashion-mnist:train", method="percentile", num_samples=256)
    onnx.save(result.model, out)
    return out


# The full-test-set figures for both models come from bench/target_accuracy.py.
@pytest.fixture(scope="module", params=["cnn_small", "mobilenet_v2_tiny"])
def example(request, tmp_path_factory):
    float_path = request.getfixturevalue("cnn_small_path" if request.param == "cnn_small" else "mobilenet_path")
    folder = tmp_path_factory.mktemp(request.param)
    qdq_path = _quantize(float_path, folder / f"{request.param}.int8.onnx")
    return request.param, float_path, qdq_path, folder, None


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("target", TARGETS)
def test_example_model_targets_fp32_and_int8(example, target, tmp_path):
    name, float_path, qdq_path, folder, _ = example
    x = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"), 16, limit=16)).x
    fp32 = export_bundle(float_path, target, tmp_path / "fp32")
    expected = ort_session(float_path).run(None, {"input": x})[0]
    got = target_module(target).run(fp32, {"input": x})["logits"]
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{name} {target} fp32: 'logits'")

    int8 = export_bundle(qdq_path, target, tmp_path / "int8")
    assert int8.precision == "int8"
    # On a 600-image subset a 0.2 pp accuracy gap is one image: the subset checks agreement with
    # onnxruntime on the same QDQ model; the 0.2 pp criterion runs on all 10000 images (slow).
    result = evaluate_bundle(int8.path, "fashion-mnist:test", reference=qdq_path, limit=IMAGES)
    assert result["fidelity"].top1_agreement >= 0.99, (
        f"{name} {target} int8: top-1 agreement with ORT int8 {100 * result['fidelity'].top1_agreement:.2f}%")


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("target", TARGETS)
def test_example_model_int8_accuracy_within_budget_full_test_set(example, target, tmp_path):
    name, _, qdq_path, folder, _ = example
    reference = evaluate_bundle(export_bundle(qdq_path, "onnx", tmp_path / "onnx").path, "fashion-mnist:test")
    result = evaluate_bundle(export_bundle(qdq_path, target, tmp_path / "int8").path, "fashion-mnist:test")
    gap = 100 * abs(result["accuracy"].top1 - reference["accuracy"].top1)
    assert gap <= INT8_TARGET_ACCURACY_PP, (
        f"{name} {target} int8: top-1 {100 * result['accuracy'].top1:.2f}% vs ORT int8 "
        f"{100 * reference['accuracy'].top1:.2f}% on the 10000 test images")


@pytest.mark.rapidocr
@pytest.mark.parametrize("target", TARGETS)
def test_ppocr_cls_exports_fp32_exactly(ppocr_cls_path, target, tmp_path, rng):
    """The real PP-OCR model (opset 11, Constant weights, Shape->Reshape, HardSigmoid SE blocks) at [1,3,48,192]."""
    bundle = export_bundle(ppocr_cls_path, target, tmp_path / "b", input_shapes={"x": [1, 3, 48, 192]})
    x = rng.uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    session = ort_session(ppocr_cls_path)
    expected = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(2)])
    got = target_module(target).run(bundle, {"x": x})
    name = bundle.outputs[0].name
    np.testing.assert_allclose(got[name], expected, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=f"ppocr cls {target} fp32: '{name}'")

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
from fwedge.targets import get_target
from helpers import run_bundle_exact, runtime_int8_problems
from op_matrix import output_scale
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
    got = get_target(target).run(fp32, {"input": x})["logits"]
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{name} {target} fp32: 'logits'")

    int8 = export_bundle(qdq_path, target, tmp_path / "int8")
    assert int8.precision == "int8"
    # The seeded 600-image subset against onnxruntime's exact QDQ semantics, in steps of the
    # logits' scale (tests/tolerances.py says why the criterion holds on any CPU); the 0.2 pp
    # accuracy criterion runs on all 10000 images (slow).
    images = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                              IMAGES, limit=IMAGES, seed=0)).x
    reference = ort_session(qdq_path).run(None, {"input": images})[0]
    candidate = run_bundle_exact(target, int8, {"input": images})["logits"]
    problems = runtime_int8_problems(reference, candidate, output_scale(onnx.load(qdq_path), "logits"))
    assert not problems, f"{name} {target} int8 on {IMAGES} images: {'; '.join(problems)}"
    if target == "onnx":
        # Deployed, the bundle runs onnxruntime's fused int8 kernels: the same as onnxruntime's
        # own run of the QDQ model with those kernels on this CPU, bit for bit.
        deployed = get_target(target).run(int8, {"input": images})["logits"]
        np.testing.assert_array_equal(deployed, ort_session(qdq_path, exact_qdq=False).run(None, {"input": images})[0])


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("target", TARGETS)
def test_example_model_int8_accuracy_within_budget_full_test_set(example, target, tmp_path):
    name, _, qdq_path, folder, _ = example
    # onnx and openvino in their exact int8 mode: their int8 kernels depend on the CPU (without
    # VNNI they saturate int16 pair sums: onnxruntime's cnn_small falls to 89.95% on such a CPU).
    reference = evaluate_bundle(export_bundle(qdq_path, "onnx", tmp_path / "onnx").path, "fashion-mnist:test",
                                exact_int8=True)
    result = evaluate_bundle(export_bundle(qdq_path, target, tmp_path / "int8").path, "fashion-mnist:test",
                             exact_int8=target in ("onnx", "openvino"))
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
    got = get_target(target).run(bundle, {"x": x})
    name = bundle.outputs[0].name
    np.testing.assert_allclose(got[name], expected, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=f"ppocr cls {target} fp32: '{name}'")


def _damaged(qdq_path, out, how: str):
    """A copy of the QDQ model with one layer's quantization parameters wrong, as a writer bug would make them."""
    from onnx import numpy_helper

    model = onnx.load(qdq_path)
    inits = {init.name: init for init in model.graph.initializer}
    readers = {name: node for node in model.graph.node for name in node.input}
    dequantize = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    layer = {"projection weight scale +3%": "/features/features.6/block/block.6/Conv",
             "depthwise weight scale +3%": "/features/features.7/block/block.3/Conv"}[how]
    node = next(n for n in dequantize if n.input[0] in inits and readers[n.output[0]].name == layer)
    index, change = 1, lambda scale: scale * 1.03
    value = numpy_helper.to_array(inits[node.input[index]])
    inits[node.input[index]].CopyFrom(numpy_helper.from_array(change(value).astype(value.dtype), node.input[index]))
    onnx.save(model, out)
    return out


@pytest.mark.fashion_mnist
@pytest.mark.ncnn
@pytest.mark.parametrize("how", ["projection weight scale +3%", "depthwise weight scale +3%"])
def test_the_runtime_criterion_catches_a_slightly_wrong_bundle(tmp_path, mobilenet_path, how):
    """A bundle with one layer's weight scales 3% off passes a 98% agreement test, but not the
    step criterion against the model it should compute."""
    qdq_path = _quantize(mobilenet_path, tmp_path / "m.int8.onnx")
    bundle = export_bundle(_damaged(qdq_path, tmp_path / "damaged.onnx", how), "ncnn", tmp_path / "b")
    images = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                              IMAGES, limit=IMAGES, seed=0)).x
    reference = ort_session(qdq_path).run(None, {"input": images})[0]
    candidate = get_target("ncnn").run(bundle, {"input": images})["logits"]
    assert runtime_int8_problems(reference, candidate, output_scale(onnx.load(qdq_path), "logits"))

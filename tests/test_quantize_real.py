"""Quantization of real models: PP-OCR's direction classifier (opset 11) on real inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fwedge.eval import FidelityAccumulator, ort_session
from fwedge.quantization import quantize


@pytest.mark.rapidocr
def test_ppocr_cls_quantizes_and_follows_float(ppocr_cls_path, tmp_path):
    from tests.ppocr_inputs import ppocr_cls_inputs

    calibration, _ = ppocr_cls_inputs(32, seed=1)
    evaluation, _ = ppocr_cls_inputs(48, seed=2)
    np.save(tmp_path / "calib.npy", calibration)
    result = quantize(ppocr_cls_path, tmp_path / "calib.npy", "percentile", num_samples=32,
                      input_shapes={"x": [1, 3, 48, 192]})
    onnx.checker.check_model(result.model)
    ops = {node.op_type for node in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Shape" not in ops
    assert len(result.plan.weights) == 54  # every Conv and the classifier MatMul
    reference, candidate = ort_session(result.float_model), ort_session(result.model)
    fidelity = FidelityAccumulator()
    for x in evaluation:
        fidelity.update(reference.run(None, {"x": x[None]})[0], candidate.run(None, {"x": x[None]})[0])
    summary = fidelity.result()
    assert summary.top1_agreement >= 0.9, summary


def _int8_drops(model_path, methods, eval_samples):
    from fwedge.data import open_dataset
    from fwedge.eval import OrtRunner, accuracy, resolve_preprocess

    test = open_dataset("fashion-mnist:test")
    float_runner = OrtRunner(model_path)
    spec = resolve_preprocess(float_runner.model)
    limit = None if eval_samples >= test.num_samples else eval_samples
    base = accuracy(float_runner, test, spec, 500, limit).top1
    drops = {}
    for method in methods:
        result = quantize(model_path, "fashion-mnist:train", method, num_samples=512)
        drops[method] = 100 * (base - accuracy(OrtRunner(result.model), test, spec, 500, limit).top1)
    return base, drops


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("name", ["cnn_small", "mobilenet_v2_tiny"])
def test_example_model_int8_accuracy_on_a_subset(name, examples_dir):
    """512 calibration images from the train split; the first 1000 test images; KL (the default)
    and minmax. Bound: INT8_SUBSET_ACCURACY_PP (the full 10k figure is the slow test below)."""
    from tests.tolerances import INT8_SUBSET_ACCURACY_PP

    path = examples_dir / f"{name}.onnx"
    if not path.is_file():
        pytest.fail(f"example model {path} is missing: run examples/fashion_mnist/train.py")
    base, drops = _int8_drops(path, ["kl", "minmax"], 1000)
    assert base > 0.8, f"float model {name} top-1 {base:.3f}"
    assert min(drops.values()) <= INT8_SUBSET_ACCURACY_PP, f"{name}: int8 drops {drops} pp on 1000 test images"


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.parametrize("name", ["cnn_small", "mobilenet_v2_tiny"])
def test_example_model_int8_accuracy_full_test_set(name, examples_dir):
    from tests.tolerances import INT8_VS_FLOAT_ACCURACY_PP

    base, drops = _int8_drops(examples_dir / f"{name}.onnx", ["kl", "percentile", "minmax", "mse"], 10000)
    assert min(drops.values()) <= INT8_VS_FLOAT_ACCURACY_PP, f"{name}: int8 drops {drops} pp on 10,000 test images"

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

"""Calibration memory follows the model, not the batch size: the batch is cut to a memory budget."""
from __future__ import annotations

import importlib
import logging

import numpy as np
import onnx
import pytest

from fwedge import ir
from fwedge.quantization import calibrate, calibration_data, load_prepared, plan_quantization

calibrate_module = importlib.import_module("fwedge.quantization.calibrate")
pytestmark = pytest.mark.fashion_mnist


def _tensor_bytes(model: onnx.ModelProto, names: list[str]) -> int:
    """Bytes of `names` for one sample, from the inferred static shapes (float32)."""
    fixed = ir.set_input_shapes(model, {ir.graph_inputs(model)[0].name: [1, 1, 28, 28]})
    shapes = {value.name: ir.shape_of(value) for value in [*fixed.graph.value_info, *fixed.graph.output,
                                                            *ir.graph_inputs(fixed)]}
    return sum(4 * int(np.prod(shapes[name])) for name in names)


def test_the_batch_is_cut_to_the_budget(cnn_small_path, caplog):
    caplog.set_level(logging.INFO, logger=calibrate_module.__name__)
    prepared, _ = load_prepared(cnn_small_path)
    tensors = plan_quantization(prepared).calibrated
    calib = calibration_data(prepared, "fashion-mnist:train", 256, batch_size=64)
    per_sample = _tensor_bytes(prepared, tensors)
    assert calibrate_module.activation_bytes_per_sample(
        prepared, np.zeros((1, 1, 28, 28), np.float32), tensors) == per_sample
    copies = calibrate_module.ACTIVATION_COPIES
    assert calibrate_module.memory_batch(prepared, calib, tensors, budget=10 * copies * per_sample) == 10
    assert calibrate_module.memory_batch(prepared, calib, tensors, budget=1) == 1
    assert f"calibration batch 1 instead of 64: the calibrated tensors take {per_sample / 1e6:.1f} MB" in caplog.text
    assert calibrate_module.memory_batch(prepared, calib, tensors, budget=1 << 40) == 64


def test_a_cut_batch_calibrates_the_same_samples(cnn_small_path, monkeypatch, caplog):
    """Ranges from batches of 3 equal those from batches of 64 (the same samples, in the same order)."""
    whole = calibrate(cnn_small_path, "fashion-mnist:train", "minmax", 96)
    prepared, _ = load_prepared(cnn_small_path)
    per_sample = _tensor_bytes(prepared, plan_quantization(prepared).calibrated)
    monkeypatch.setattr(calibrate_module, "CALIBRATION_MEMORY_BUDGET", 3 * calibrate_module.ACTIVATION_COPIES * per_sample)
    caplog.set_level(logging.INFO, logger=calibrate_module.__name__)
    cut = calibrate(cnn_small_path, "fashion-mnist:train", "minmax", 96)
    assert "calibration batch 3 instead of 64" in caplog.text
    assert whole.tensors.keys() == cut.tensors.keys()
    for name, quant in whole.tensors.items():
        assert cut.tensors[name].scale == pytest.approx(quant.scale, rel=1e-5), name
        assert cut.tensors[name].zero_point == quant.zero_point, name

"""QDQ int8 models for target tests: the project's quantizer when present, else onnxruntime's quantize_static."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx


def ort_qdq(model: onnx.ModelProto, calibration: np.ndarray, symmetric: bool = False) -> onnx.ModelProto:
    """Quantize with onnxruntime.quantization.quantize_static: QDQ, int8, per-channel weights.

    Args:
        model: float model with one input.
        calibration: a float32 batch for the input, fed one sample at a time.
        symmetric: symmetric activations (zero point 0) instead of asymmetric.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model, source)
        quantize_static(
            str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
        return onnx.load(str(target))

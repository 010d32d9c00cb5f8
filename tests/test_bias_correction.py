"""Empirical bias correction (quantize --bias-correction) on the shipped mobilenet_v2_tiny."""
from __future__ import annotations

import numpy as np
import pytest

from fwedge.errors import QuantizeRequestError
from fwedge.quantization import QuantizeRequest, quantize

pytestmark = pytest.mark.fashion_mnist


def _sqnr(float_model, qdq_model, x) -> float:
    from fwedge.eval import ort_session

    reference = ort_session(float_model).run(None, {"input": x})[0].astype(np.float64)
    candidate = ort_session(qdq_model).run(None, {"input": x})[0]
    return float(10 * np.log10(np.sum(reference ** 2) / np.sum((reference - candidate) ** 2)))


def test_bias_correction_recovers_what_per_tensor_weights_lose(mobilenet_path):
    """Per-tensor weights shift the depthwise layers' outputs; subtracting the measured mean
    shift layer by layer wins it back on held-out images. Measured 2026-12-03 on the 10,000 test
    images: SQNR 17.65 -> 20.99 dB, agreement 95.73% -> 96.59%, top-1 91.36% -> 91.57%."""
    from fwedge.data import Preprocess, open_dataset
    from tests.tolerances import BIAS_CORRECTION_MIN_GAIN_DB

    x = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"), 1000,
                                                        limit=1000, seed=3)).x
    plain = quantize(mobilenet_path, "fashion-mnist:train", "kl", num_samples=256, per_channel=False)
    corrected = quantize(mobilenet_path, "fashion-mnist:train", "kl", num_samples=256, per_channel=False,
                         bias_correction=True)
    before, after = _sqnr(plain.float_model, plain.model, x), _sqnr(corrected.float_model, corrected.model, x)
    assert after - before >= BIAS_CORRECTION_MIN_GAIN_DB, (before, after)
    # The reference stays the float model: only the QDQ model's biases moved.
    assert plain.float_model.SerializeToString() == corrected.float_model.SerializeToString()


def test_bias_correction_needs_calibration_data(mobilenet_path, tmp_path):
    with pytest.raises(QuantizeRequestError, match="bias_correction"):
        QuantizeRequest(mobilenet_path, table=tmp_path / "table.json", bias_correction=True)

"""magika 1.0.3's file-type classifier (a jax2tf graph converted by tf2onnx: one-hot bytes, a
5-wide Conv, GELU, two normalizations, a written-out softmax) on real files of 20 types."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fwedge.eval import ort_session
from magika_inputs import FILES, config, magika_inputs

pytestmark = pytest.mark.magika


def _top1(model: onnx.ModelProto | str, x: np.ndarray) -> list[str]:
    labels = config()["target_labels_space"]
    probabilities = ort_session(model).run(None, {"bytes": x})[0]
    return [labels[i] for i in probabilities.argmax(axis=1)]


def test_float_model_names_the_files(magika_path):
    """The inputs are built as magika builds them: the float model gives every file the label
    magika's own identify_path gives it."""
    x, expected = magika_inputs(FILES)
    assert x.shape == (len(FILES), 2048) and x.dtype == np.int32
    assert _top1(onnx.load(magika_path), x) == expected

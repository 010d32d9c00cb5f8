"""When per-tensor int8 collapses (EfficientNet-Lite's depthwise ranges), quantize says so, analyze
points at the layers and --equalize recovers it: on tests/ill_conditioned.py's mobilenet_v2_tiny."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.data import open_dataset
from fwedge.eval import ort_session, resolve_preprocess
from fwedge.quantization.check import LOW_SQNR_DB
from tests.ill_conditioned import ill_conditioned, relu_base
from tests.tolerances import (EQUALIZE_FLOAT_RTOL, ILL_CONDITIONED_EQUALIZED_MIN_AGREEMENT,
                              ILL_CONDITIONED_PLAIN_MAX_AGREEMENT, ILL_CONDITIONED_TEST_IMAGES)

pytestmark = pytest.mark.fashion_mnist


def _logits(model, x: np.ndarray) -> np.ndarray:
    session = ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)


def _quantize(model, out, *options) -> dict:
    result = CliRunner().invoke(cli, ["quantize", str(model), "--data", "fashion-mnist:train", "--num-samples",
                                      "128", "--per-tensor", *options, "--json", "-", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.mean(reference.argmax(1) == candidate.argmax(1)))


def test_ill_conditioned_depthwise_collapses_is_reported_and_equalize_recovers_it(mobilenet_path, tmp_path, caplog):
    base = relu_base(mobilenet_path)
    model, scaled = ill_conditioned(base)
    assert len(scaled) == 7, scaled  # every depthwise Conv of mobilenet_v2_tiny
    path = tmp_path / "ill.onnx"
    onnx.save(model, path)
    test = open_dataset("fashion-mnist:test")
    x = next(test.batches(resolve_preprocess(base), ILL_CONDITIONED_TEST_IMAGES,
                          limit=ILL_CONDITIONED_TEST_IMAGES)).x
    reference = _logits(base, x)
    np.testing.assert_allclose(_logits(model, x), reference, rtol=0,
                               atol=EQUALIZE_FLOAT_RTOL * np.abs(reference).max(), err_msg="logits")

    plain = _quantize(path, tmp_path / "plain.onnx")
    assert plain["check"]["sqnr_db"] < LOW_SQNR_DB
    assert f"int8 output SQNR {plain['check']['sqnr_db']:.1f} dB against float" in caplog.text
    assert "fwedge analyze" in caplog.text and "--equalize" in caplog.text
    assert _agreement(reference, _logits(str(tmp_path / "plain.onnx"), x)) < ILL_CONDITIONED_PLAIN_MAX_AGREEMENT

    analysis = CliRunner().invoke(cli, ["analyze", str(path), str(tmp_path / "plain.onnx"), "--data",
                                        "fashion-mnist:train", "--limit", "64", "--json", "-"])
    assert analysis.exit_code == 0, analysis.output
    rows = [row for row in json.loads(analysis.output)["tensors"]
            if isinstance(row["jump_db"], float) and math.isfinite(row["jump_db"])]
    # The input layer's jump is against the exact input (inf); of the others, the largest drop is
    # where the first scaled depthwise Conv rounds most of its channels to zero.
    worst = max(rows, key=lambda row: row["jump_db"])
    assert worst["node"].split("+")[0] in scaled, worst

    caplog.clear()
    equalized = _quantize(path, tmp_path / "equalized.onnx", "--equalize")
    assert equalized["equalized_pairs"] >= len(scaled)
    assert equalized["check"]["sqnr_db"] > LOW_SQNR_DB and "fwedge analyze" not in caplog.text
    agreement = _agreement(reference, _logits(str(tmp_path / "equalized.onnx"), x))
    assert agreement >= ILL_CONDITIONED_EQUALIZED_MIN_AGREEMENT, agreement

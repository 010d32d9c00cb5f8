"""Layers kept in float on request: quantize(keep_float=..., float_stem=True) and the CLI flags."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.errors import CalibrationError
from fwedge.eval import ort_session
from fwedge.quantization import quantize, uint8_activations
from tests.test_quantize import block, block_data  # noqa: F401  (pytest fixtures shared with test_quantize)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_float_stem_keeps_the_input_layer_and_its_clamp_float(block, block_data, rng):
    full = quantize(block, block_data, "minmax", num_samples=64)
    stem = quantize(block, block_data, "minmax", num_samples=64, float_stem=True)
    onnx.checker.check_model(stem.model)
    names = [node.name for node in stem.model.graph.node]
    conv1 = next(node for node in stem.model.graph.node if node.name == "conv1")
    # conv1 (BN folded in) reads the float input and its float weight; relu1 stays fused to it in
    # float, and so does the MaxPool after them (data movement follows its input); the first pair
    # is on the pooled tensor p1 that the int8 conv2 and Add read.
    assert conv1.input[0] == "input" and "input_QuantizeLinear" not in names
    assert "w1_DequantizeLinear" not in names and "bn1_QuantizeLinear" not in names
    assert "r1_QuantizeLinear" not in names and "p1_QuantizeLinear" in names and "w2_DequantizeLinear" in names
    assert [(k.node, k.op) for k in stem.kept_float] == [("conv1+relu1", "Conv+Relu")]
    assert "model input" in stem.kept_float[0].reason
    assert {"conv1", "relu1"}.isdisjoint(stem.plan.quantized_nodes)
    # Every other layer is int8 exactly as without the option (same ranges for shared tensors).
    assert set(full.plan.quantized_nodes) - set(stem.plan.quantized_nodes) == {"conv1", "relu1", "pool1"}
    for tensor in ("c2", "r2"):
        assert stem.table.tensors[tensor] == full.table.tensors[tensor], f"range of {tensor}"
    x = rng.random((32, 1, 12, 12)).astype(np.float32)
    ref = ort_session(block).run(None, {"input": x})[0]
    got = ort_session(stem.model).run(None, {"input": x})[0]
    assert _sqnr(ref, got) > 25, f"float-stem QDQ logits SQNR {_sqnr(ref, got):.1f} dB against float"
    # The uint8 activation rewrite handles a model whose input is not quantized.
    u8 = ort_session(uint8_activations(stem.model)).run(None, {"input": x})[0]
    assert _sqnr(ref, u8) > 25, f"uint8 float-stem logits SQNR {_sqnr(ref, u8):.1f} dB against float"


def test_keep_float_by_name_and_its_errors(block, block_data):
    result = quantize(block, block_data, "minmax", num_samples=64, keep_float=["conv2"])
    names = {node.name for node in result.model.graph.node}
    assert [(k.node, k.reason) for k in result.kept_float] == [("conv2", "requested (keep float)")]
    assert "w2_DequantizeLinear" not in names and "w1_DequantizeLinear" in names
    with pytest.raises(CalibrationError, match=r"no node named \['nope'\]"):
        quantize(block, block_data, "minmax", num_samples=64, keep_float=["nope"])
    with pytest.raises(CalibrationError, match=r"pool1 \(MaxPool\).*not int8 compute layers"):
        quantize(block, block_data, "minmax", num_samples=64, keep_float=["pool1"])


def test_budget_works_on_top_of_the_float_stem(block, block_data):
    result = quantize(block, block_data, "kl", num_samples=64, float_stem=True, min_agreement=1.0,
                      eval_data=block_data, eval_samples=96)
    assert result.budget["met"]
    assert result.kept_float[0].node == "conv1+relu1"
    float_nodes = {name for k in result.kept_float for name in k.node.split("+")}
    assert float_nodes.isdisjoint(result.plan.quantized_nodes)
    names = {node.name for node in result.model.graph.node}
    assert "w1_DequantizeLinear" not in names, "the budget must not re-quantize the requested float stem"


def test_quantize_cli_float_stem(tmp_path, block, block_data):
    model = tmp_path / "block.onnx"
    onnx.save(block, model)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(block_data), "--num-samples", "64",
                                      "--float-stem", "--keep-float", "conv2", "--activation-dtype", "uint8",
                                      "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "Kept in float" in result.output
    payload = json.loads(report.read_text())
    assert [entry["node"] for entry in payload["kept_float"]] == ["conv2", "conv1+relu1"]
    onnx.checker.check_model(onnx.load(out))
    bad = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(block_data), "--num-samples", "64",
                                   "--keep-float", "nope", "-o", str(tmp_path / "bad.onnx")])
    assert bad.exit_code != 0 and "no node named ['nope']" in bad.output

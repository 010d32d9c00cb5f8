"""`fwedge calibrate`, `fwedge quantize` and `fwedge analyze` end to end on a small graph."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.calibration.table import read_tensorrt_cache
from fwedge.cli import cli
from tests.test_quantize import block_model


def _setup(tmp_path):
    rng = np.random.default_rng(0)
    model = tmp_path / "block.onnx"
    onnx.save(block_model(rng), model)
    data = tmp_path / "x.npy"
    np.save(data, rng.random((80, 1, 12, 12)).astype(np.float32))
    return model, data


def test_calibrate_writes_table_ncnn_and_tensorrt(tmp_path):
    model, data = _setup(tmp_path)
    table, ncnn, trt = tmp_path / "t.json", tmp_path / "t.table", tmp_path / "t.cache"
    result = CliRunner().invoke(cli, ["calibrate", str(model), "--data", str(data), "--num-samples", "64",
                                      "--method", "kl", "-o", str(table), "--ncnn-table", str(ncnn),
                                      "--tensorrt-cache", str(trt)])
    assert result.exit_code == 0, result.output
    payload = json.loads(table.read_text())
    assert payload["schema"] == "fwedge.quant_table/1" and payload["method"] == "kl"
    assert payload["parameters"]["num_samples"] == 64 and len(payload["dataset"]["fingerprint"]) == 64
    assert set(payload["tensors"]) == set(read_tensorrt_cache(trt.read_text()))
    lines = ncnn.read_text().splitlines()
    assert lines[0].startswith("conv1_param_0 ") and len(lines[0].split()) == 5
    assert {line.split()[0] for line in lines} >= {"conv1", "conv2", "fc"}


def test_quantize_with_table_then_analyze(tmp_path):
    model, data = _setup(tmp_path)
    table, out, report = tmp_path / "t.json", tmp_path / "q.onnx", tmp_path / "a.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["calibrate", str(model), "--data", str(data), "--num-samples", "64",
                               "--method", "minmax", "-o", str(table)]).exit_code == 0
    result = runner.invoke(cli, ["quantize", str(model), "--table", str(table), "-o", str(out)])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(out))
    result = runner.invoke(cli, ["analyze", str(model), str(out), "--data", str(data), "--limit", "32",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    analysis = json.loads(report.read_text())
    sqnr = [entry["sqnr_db"] for entry in analysis["tensors"]]
    numeric = [value for value in sqnr if isinstance(value, float)]
    assert numeric == sorted(numeric), "worst first"
    assert {entry["tensor"] for entry in analysis["tensors"]} >= {"input", "r1", "p1", "logits"}
    assert analysis["first_jump"] is None or analysis["first_jump"]["jump_db"] >= 6.0
    assert "first jump" in result.output or "no layer loses" in result.output


def test_more_samples_than_the_data_holds_uses_all_and_says_so(tmp_path, caplog):
    """As the default 512 against a 256-sample file: every sample is used, with a warning."""
    model, data = _setup(tmp_path)
    result = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(data), "--num-samples", "500",
                                      "--save-table", str(tmp_path / "t.json"), "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    assert "holds 80 samples, fewer than the 500 asked for: calibrating on all 80" in caplog.text
    assert json.loads((tmp_path / "t.json").read_text())["dataset"]["num_samples"] == 80


def test_quantize_bad_input_exits_2(tmp_path):
    model, _ = _setup(tmp_path)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    result = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(tmp_path / "bad.npy"),
                                      "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 2 and "bad.npy" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_accuracy_budget_reports_float_layers(tmp_path):
    """Labels = the float model's own predictions, so float accuracy is 100% and a 0 pp budget
    forces every disagreeing layer to float; the report names them."""
    from fwedge.eval import ort_session

    model, data = _setup(tmp_path)
    x = np.load(data)
    # Centre the classifier's bias so that the three classes are all predicted with small margins
    # (the random block model otherwise predicts one class with a wide margin).
    proto = onnx.load(model)
    logits = ort_session(proto).run(None, {"input": x})[0]
    bias = next(init for init in proto.graph.initializer if init.name == "fc_b")
    centred = onnx.numpy_helper.to_array(bias) - np.median(logits, axis=0)
    bias.CopyFrom(onnx.numpy_helper.from_array(centred.astype(np.float32), "fc_b"))
    onnx.save(proto, model)
    labels = ort_session(proto).run(None, {"input": x})[0].argmax(1)
    assert len(set(labels.tolist())) == 3
    labelled = tmp_path / "eval.npz"
    np.savez(labelled, x=x, y=labels)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["quantize", str(model), "--data", str(data), "--num-samples", "64",
                                      "--method", "kl", "--max-accuracy-drop", "0", "--eval-data", str(labelled),
                                      "-o", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    payload = json.loads(report.read_text())
    budget = payload["budget"]
    assert budget["met"] and budget["float"] == 1.0 and budget["final"] == 1.0
    assert budget["all_int8"] < 1.0, "the setup must make all-int8 miss the 0 pp budget"
    assert payload["kept_float"] and "Kept in float" in result.output
    float_nodes = {name for entry in payload["kept_float"] for name in entry["node"].split("+")}
    assert float_nodes.isdisjoint(payload["quantized_nodes"])
    onnx.checker.check_model(onnx.load(out))


def test_calibration_bar_counts_both_passes_and_says_so():
    from fwedge.console import calibration_bar

    assert calibration_bar("kl", 512) == (1024, "calibrating (kl, 2 passes over 512 samples)")
    assert calibration_bar("minmax", 512) == (512, "calibrating (minmax, 512 samples)")


@pytest.mark.fashion_mnist
def test_quantize_checks_the_int8_output_and_warns_when_it_is_poor(cnn_small_path, mobilenet_path, tmp_path, caplog):
    """The int8 model's output against float on calibration samples: printed, in --json, and a
    warning naming analyze below LOW_SQNR_DB (a 50th-percentile range clips most activations)."""
    from fwedge.quantization.check import LOW_SQNR_DB

    good = CliRunner().invoke(cli, ["quantize", str(cnn_small_path), "--data", "fashion-mnist:train",
                                    "--num-samples", "128", "--json", str(tmp_path / "good.json"),
                                    "-o", str(tmp_path / "good.onnx")])
    assert good.exit_code == 0, good.output
    check = json.loads((tmp_path / "good.json").read_text())["check"]
    assert check["samples"] == 64 and check["sqnr_db"] > LOW_SQNR_DB + 10 and check["top1_agreement"] > 0.95
    assert f"output SQNR {check['sqnr_db']:.1f} dB" in good.output and "fwedge analyze" not in caplog.text
    bad = CliRunner().invoke(cli, ["quantize", str(mobilenet_path), "--data", "fashion-mnist:train", "--num-samples",
                                   "128", "--method", "percentile", "--percentile", "50", "--json", "-",
                                   "-o", str(tmp_path / "bad.onnx")])
    assert bad.exit_code == 0, bad.output
    check = json.loads(bad.output)["check"]
    assert check["sqnr_db"] < LOW_SQNR_DB
    assert f"int8 output SQNR {check['sqnr_db']:.1f} dB against float" in caplog.text and "fwedge analyze" in caplog.text

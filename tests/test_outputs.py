"""eval and run on a model with two outputs: --output picks the one accuracy reads, and every
shared output is compared with the reference (SQNR, cosine, max error), not only the first."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from fwedge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "examples" / "fashion_mnist" / "cnn_small.onnx"
FEATURES = "/classifier/classifier.1/Relu_output_0"
TEST = "fashion-mnist:test"

pytestmark = pytest.mark.fashion_mnist


def _ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """cnn_small with its 128 penultimate features as a second output (as an embedding model or a
    detector's second head would be), its QDQ model and an onnx bundle of it."""
    folder = tmp_path_factory.mktemp("outputs")
    model = onnx.load(CNN)
    model.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["N", 128]))
    onnx.save(model, folder / "two.onnx")
    _ok("quantize", folder / "two.onnx", "--data", "fashion-mnist:train", "--num-samples", "128", "--method",
        "minmax", "-o", folder / "two_int8.onnx")
    _ok("export", folder / "two_int8.onnx", "-t", "onnx", "-o", folder / "bundles")
    return {"float": folder / "two.onnx", "qdq": folder / "two_int8.onnx", "bundle": folder / "bundles" / "two_int8-onnx-int8"}


def test_eval_compares_every_output_and_reads_the_chosen_one(models, wide_console):
    default = json.loads(_ok("eval", models["qdq"], "--data", TEST, "--limit", "96", "--reference", models["float"],
                             "--json", "-").output)
    assert default["output"] == "logits" and set(default["outputs"]) == {"logits", FEATURES}
    assert default["outputs"]["logits"] == default["fidelity"]
    features = default["outputs"][FEATURES]
    assert 10 < features["sqnr_db"] < 80 and features["cosine"] > 0.99  # int8 against float: close, not equal
    chosen = json.loads(_ok("eval", models["qdq"], "--data", TEST, "--limit", "96", "--reference", models["float"],
                            "--output-name", FEATURES, "--json", "-").output)
    assert chosen["output"] == FEATURES and chosen["fidelity"] == features
    assert chosen["outputs"] == default["outputs"]
    text = _ok("eval", models["qdq"], "--data", TEST, "--limit", "32", "--reference", models["float"]).output
    assert "Every output against the reference" in text and FEATURES in text


def test_run_compares_every_output_of_a_bundle(models):
    result = json.loads(_ok("run", models["bundle"], "--data", TEST, "--limit", "64", "--exact-int8",
                            "--reference", models["qdq"], "--json", "-").output)
    assert set(result["outputs"]) == {"logits", FEATURES}
    for name, fidelity in result["outputs"].items():  # the bundle computes the QDQ model's function
        assert fidelity["sqnr_db"] > 25, (name, fidelity)
        # Both outputs come out of a DequantizeLinear of the QDQ model: counted in its steps.
        assert fidelity["max_steps"] == pytest.approx(fidelity["max_abs_error"] / fidelity["step"]), (name, fidelity)
        assert fidelity["max_steps"] == 0.0, (name, fidelity)
    chosen = json.loads(_ok("run", models["bundle"], "--data", TEST, "--limit", "64", "--exact-int8",
                            "--reference", models["qdq"], "--output-name", FEATURES, "--json", "-").output)
    assert chosen["output"] == FEATURES and chosen["fidelity"] == result["outputs"][FEATURES]


def test_an_unknown_output_is_named(models):
    for command in (["eval", models["qdq"]], ["run", models["bundle"]]):
        result = CliRunner().invoke(cli, [*map(str, command), "--data", TEST, "--limit", "8", "--output-name", "boxes"])
        assert result.exit_code == 2 and "no output 'boxes'" in result.output and "logits" in result.output, result.output


def test_farm_run_scores_the_named_output(models, tmp_path):
    """farm run --output-name reads the same output as run --output-name (same runtime, same samples)."""
    by_run = json.loads(_ok("run", models["bundle"], "--data", TEST, "--limit", "64", "--reference", models["float"],
                            "--output-name", FEATURES, "--json", "-").output)
    common = ["farm", "run", models["bundle"], "--devices", "host", "--data", TEST, "--limit", "64", "--repeats", "1",
              "--reference", models["float"]]
    _ok(*common, "--output-name", FEATURES, "-o", tmp_path / "features.json")
    _ok(*common, "-o", tmp_path / "logits.json")
    (features,) = json.loads((tmp_path / "features.json").read_text())["results"]
    (logits,) = json.loads((tmp_path / "logits.json").read_text())["results"]
    assert features["fidelity"]["sqnr_db"] == pytest.approx(by_run["fidelity"]["sqnr_db"], rel=1e-6)
    # Against the float model, with float32 outputs in the manifest, no output has a step.
    assert features["fidelity"]["max_steps"] is None and by_run["fidelity"]["max_steps"] is None
    _ok("farm", "run", models["bundle"], "--devices", "host", "--data", TEST, "--limit", "64", "--repeats", "1",
        "--reference", models["qdq"], "-o", tmp_path / "qdq.json")
    (versus_qdq,) = json.loads((tmp_path / "qdq.json").read_text())["results"]
    by_run = json.loads(_ok("run", models["bundle"], "--data", TEST, "--limit", "64", "--reference", models["qdq"],
                            "--json", "-").output)
    for key in ("step", "max_steps", "far_fraction"):  # the farm records what run prints, on the QDQ model's grid
        assert versus_qdq["fidelity"][key] == pytest.approx(by_run["fidelity"][key], rel=1e-6), key
    assert versus_qdq["fidelity"]["step"] > 0
    assert features["fidelity"]["sqnr_db"] != pytest.approx(logits["fidelity"]["sqnr_db"], rel=1e-3)
    result = CliRunner().invoke(cli, [*map(str, common), "--output-name", "boxes", "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "no such output" in result.output and "logits" in result.output, result.output


def test_the_task_decides_what_the_farm_scores_and_the_gate_reads(models, tmp_path):
    """A signal output (features, boxes, maps) gets no accuracy and no top-1 column; the gate
    then reads its SQNR, not top-1. auto picks classification only for one vector of scores."""
    from fwedge.device_farm import gate
    from fwedge.device_farm.results import load_results
    from fwedge.tasks import task_of

    assert task_of("auto", (4, 10)) == "classification"
    assert task_of("auto", (4, 10, 1, 1)) == "classification"
    for shape in [(4, 2, 28, 28), (4, 8400, 84), (4, 1)]:  # a map, YOLO boxes, one regressed value
        assert task_of("auto", shape) == "signal", shape
    assert task_of("classification", (4, 8400, 84)) == "classification"

    common = ["farm", "run", models["bundle"], "--devices", "host", "--data", TEST, "--limit", "64", "--repeats", "1",
              "--reference", models["float"], "--output-name", FEATURES]
    _ok(*common, "--task", "signal", "-o", tmp_path / "signal.json")  # (the table's width follows the terminal)
    [signal] = load_results(tmp_path / "signal.json").results
    assert signal.task == "signal" and signal.accuracy is None and "reference_accuracy" not in signal.fidelity
    assert 10 < signal.fidelity["sqnr_db"] < 80
    _ok(*common, "-o", tmp_path / "auto.json")
    [auto] = load_results(tmp_path / "auto.json").results
    assert auto.task == "classification" and auto.accuracy is not None  # 128 features look like scores

    # Both signal: a collapsed argmax is not a regression, a lost SQNR is.
    import dataclasses

    def variant(result, agreement, sqnr):
        return dataclasses.replace(result, fidelity={**result.fidelity, "top1_agreement": agreement, "sqnr_db": sqnr})

    base = load_results(tmp_path / "signal.json")
    sqnr = signal.fidelity["sqnr_db"]
    flipped = dataclasses.replace(base, results=[variant(signal, 0.1, sqnr - 1)])
    assert gate.evaluate_gate(flipped, base).passed
    worse = dataclasses.replace(base, results=[variant(signal, signal.fidelity["top1_agreement"], sqnr - 5)])
    assert not gate.evaluate_gate(worse, base).passed
    # A baseline measured as classification keeps the top-1 checks.
    mixed = dataclasses.replace(base, results=[dataclasses.replace(variant(signal, 0.1, sqnr), task="classification")])
    assert not gate.evaluate_gate(mixed, base).passed

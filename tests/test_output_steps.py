"""eval and run count each output's difference in its quantization steps (issue 20, item 4): the
largest and the share more than one step off where the output has a step (a DequantizeLinear
of a QDQ model, a manifest's int8 output scale), and "no step" for a float output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fwedge.cli import cli
from fwedge.eval import FAR_STEPS, OrtRunner, dequantized_steps

STEP = 0.05
WIDTH = 8
MOVED = 3  # the candidate moves one element of each sample's output by exactly this many steps


def _model(path: Path, quantized: bool, moved: int = 0) -> Path:
    """x [N, 8] -> Relu -> (QuantizeLinear -> DequantizeLinear: on the STEP grid) -> (+ `moved`
    steps on element 5 of every sample) -> output y."""
    names = ["r", *(["q", "dq"] if quantized else []), *(["moved"] if moved else [])]
    names[-1] = "y"
    nodes = [helper.make_node("Relu", ["x"], [names[0]])]
    inits = []
    if quantized:
        inits += [numpy_helper.from_array(np.array(STEP, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", [names[0], "s", "z"], [names[1]]),
                  helper.make_node("DequantizeLinear", [names[1], "s", "z"], [names[2]])]
    if moved:
        delta = np.zeros((1, WIDTH), np.float32)
        delta[0, 5] = moved * STEP
        inits.append(numpy_helper.from_array(delta, "delta"))
        nodes.append(helper.make_node("Add", [names[-2], "delta"], ["y"]))
    graph = helper.make_graph(nodes, "steps", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("steps")
    x = np.random.default_rng(0).uniform(-1, 2, size=(40, WIDTH)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return {"data": folder / "x.npy", "qdq": _model(folder / "qdq.onnx", True),
            "moved": _model(folder / "moved.onnx", True, MOVED), "float": _model(folder / "float.onnx", False),
            "float_moved": _model(folder / "float_moved.onnx", False, MOVED)}


def _eval(*args) -> tuple[dict, str]:
    """(the --json result, the printed report) of the real CLI."""
    args = ["eval", *map(str, args)]
    as_json = CliRunner().invoke(cli, [*args, "--json", "-"])
    assert as_json.exit_code == 0, as_json.output
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    return json.loads(as_json.output), text.output


def test_the_step_is_the_dequantize_scale_of_the_output(files):
    assert dequantized_steps(onnx.load(files["qdq"])) == {"y": pytest.approx(STEP)}
    assert OrtRunner(files["qdq"]).output_steps == {"y": pytest.approx(STEP)}
    assert OrtRunner(files["float"]).output_steps == {}


def test_a_qdq_model_against_its_own_run_is_zero_steps_off(files):
    result, text = _eval(files["qdq"], "--data", files["data"], "--reference", files["qdq"])
    fidelity = result["fidelity"]
    assert fidelity["step"] == pytest.approx(STEP) and fidelity["max_steps"] == 0.0
    assert fidelity["far_fraction"] == 0.0
    assert "max 0.00 steps of 0.05, 0.00% > 1.5 steps" in text


def test_one_element_three_steps_off_is_counted(files):
    """The candidate has no step of its own (its output is an Add): the reference's is used."""
    result, text = _eval(files["moved"], "--data", files["data"], "--reference", files["qdq"])
    fidelity = result["fidelity"]
    assert fidelity["max_steps"] == pytest.approx(MOVED, rel=1e-5)
    assert MOVED > FAR_STEPS and fidelity["far_fraction"] == pytest.approx(1 / WIDTH)  # one element of 8 a sample
    assert "max 3.00 steps of 0.05, 12.50% > 1.5 steps" in text


def test_a_float_output_has_no_step(files):
    result, text = _eval(files["float_moved"], "--data", files["data"], "--reference", files["float"])
    fidelity = result["fidelity"]
    assert fidelity["max_abs_error"] == pytest.approx(MOVED * STEP)  # the difference is there ...
    assert fidelity["step"] is None and fidelity["max_steps"] is None and fidelity["far_fraction"] is None
    assert "no step (float output)" in text  # ... and is not counted in a step made up for it


def test_the_report_shows_the_steps_under_the_sqnr(tmp_path):
    from fwedge.device_farm.results import DeviceResult, Latency, Results, save_results

    def result(bundle, **figures):
        return DeviceResult(bundle=bundle, device="host", status="ok", target="onnx", arch="any", precision="int8",
                            accuracy=None, fidelity={"top1_agreement": 1.0, "sqnr_db": 30.0, **figures},
                            latency=Latency(1.0, 1.2, 1.05, 0.9, 20), samples=40)

    save_results(Results(results=[
        result("int8", step=STEP, max_steps=3.0, far_fraction=0.125),
        result("float", step=None, max_steps=None, far_fraction=None),
        result("older"),  # a results file from before steps were counted: nothing said
    ]), tmp_path / "results.json")
    made = CliRunner().invoke(cli, ["report", str(tmp_path / "results.json"), "-o", str(tmp_path / "r.html")])
    assert made.exit_code == 0, made.output
    page = (tmp_path / "r.html").read_text()
    rows = {name: page[page.index(f">{name}<"):][:1500] for name in ("int8", "float", "older")}
    assert "max 3.00 steps" in rows["int8"] and "12.50% of elements more than one step off" in rows["int8"]
    assert "no step (float output)" in rows["float"]
    assert "steps" not in rows["older"].split("</tr>")[0] and "no step" not in rows["older"].split("</tr>")[0]


def test_a_manifest_int8_output_scale_is_its_step(tmp_path):
    """No target writes int8 device outputs today; a manifest that declares one gives its scale
    as the step, under the output's ONNX name, and a float32 output none."""
    from fwedge.bundle import Bundle, TensorInfo

    outputs = [TensorInfo("y_own", [1, 8], "int8", scale=0.25, zero_point=3), TensorInfo("z", [1, 8], "float32"),
               TensorInfo("w", [1, 8], "uint8", scale=None)]
    bundle = Bundle(path=tmp_path, target="tflite", arch="any", precision="int8", source_sha256="0" * 64,
                    inputs=[TensorInfo("x", [1, 8], "float32")], outputs=outputs, files={},
                    extra={"onnx_names": {"y": "y_own"}})
    assert bundle.output_steps == {"y": 0.25}

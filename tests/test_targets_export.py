"""Exporting, running and diffing bundles: CLI, tampering, interrupted exports, unsupported ops, pnnx cross-check."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fwedge.bundle import load_bundle
from fwedge.cli import cli
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import ExportOptions, get_target
from helpers import tiny_conv_model
from qdq_helpers import ort_qdq
from tolerances import FP32_ATOL, FP32_RTOL, INT8_MAX_STEPS

ROOT = Path(__file__).resolve().parent.parent
TARGETS = [pytest.param("onnx", id="onnx"), pytest.param("openvino", marks=pytest.mark.openvino, id="openvino"),
           pytest.param("ncnn", marks=pytest.mark.ncnn, id="ncnn"),
           pytest.param("tflite", marks=pytest.mark.tflite, id="tflite"),
           pytest.param("x86_64", marks=[pytest.mark.cc, pytest.mark.zig], id="c-x86_64")]
# Targets whose runner exposes intermediate tensors (fwedge diff bisects per tensor).
PER_TENSOR = {"onnx", "openvino", "ncnn", "tflite"}
PREPROCESS = json.dumps({"resize": None, "color": None, "layout": "NCHW", "scale": 1.0, "mean": [0.0], "std": [1.0],
                         "dtype": "float32"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny conv model (float and QDQ) and a labelled .npz of float inputs it takes."""
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (48, 1, 8, 8)).astype(np.float32)
    float_model = tiny_conv_model(rng)
    labels = ort_session(float_model).run(None, {"x": x})[0].argmax(axis=1)
    onnx.save(float_model, folder / "tiny.onnx")
    onnx.save(ort_qdq(float_model, x[:16]), folder / "tiny_qdq.onnx")
    np.savez(folder / "data.npz", x=x, y=labels)
    return folder


def _export(models, target, name, out):
    result = CliRunner().invoke(cli, ["export", str(models / name), "-t", target, "--preprocess", PREPROCESS, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,precision", [("tiny.onnx", "fp32"), ("tiny_qdq.onnx", "int8")])
def test_export_then_run_and_diff_on_the_cli(models, tmp_path, target, name, precision):
    _export(models, target, name, tmp_path)
    bundle = tmp_path / f"{Path(name).stem}-{target}-{precision}"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == precision
    # A host-runtime bundle runs wherever its runtime does; a C bundle is built for one architecture.
    assert (manifest["target"], manifest["arch"]) == (("c", "x86_64") if target == "x86_64" else (target, "any"))
    assert manifest["source_sha256"] == __import__("fwedge.ir").ir.sha256_file(models / name)
    assert manifest["inputs"][0]["name"] == "x" and manifest["outputs"][0]["name"] == "y"

    # onnx and openvino in their exact int8 mode: their int8 kernels depend on the CPU.
    exact = ["--exact-int8"] if target in ("onnx", "openvino") else []
    run = CliRunner().invoke(cli, ["run", str(bundle), "--data", str(models / "data.npz"),
                                   "--reference", str(models / name), "--json", "-", *exact])
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    assert result["samples"] == 48
    # Against the model it was exported from: fp32 is the same function; int8 agrees on argmax
    # almost everywhere (within one output step, see the op matrix).
    assert result["fidelity"]["top1_agreement"] >= (1.0 if precision == "fp32" else 0.95), result
    assert result["fidelity"]["sqnr_db"] > (80 if precision == "fp32" else 25), result

    diff = CliRunner().invoke(cli, ["diff", str(bundle), str(models / name), "--data", str(models / "data.npz"),
                                    "--json", "-", "--max-steps", str(INT8_MAX_STEPS + 1), *exact])
    assert diff.exit_code == 0, diff.output
    report = json.loads(diff.output)
    assert report["per_tensor"] is (target in PER_TENSOR) and report["compared"], report
    if target not in PER_TENSOR:
        assert "only graph outputs" in report["note"], report["note"]
    assert report["first_divergence"] is None, [(e["name"], e["max_abs"], e["steps"]) for e in report["compared"]]


@pytest.mark.ncnn
def test_diff_names_the_first_wrong_tensor(models, tmp_path, monkeypatch):
    """A writer bug (Relu written as a leaky ReLU) is located at the Relu's output, not later."""
    from fwedge.targets import ncnn

    original = ncnn.NcnnWriter.emit_unary

    def buggy(self, node):
        if node.op_type == "Relu":
            self.add("ReLU", node.name, [self.input(node.input[0])], [self.blob(node.output[0])], {0: 0.5})
            return
        original(self, node)

    monkeypatch.setattr(ncnn.NcnnWriter, "emit_unary", buggy)
    export_bundle(models / "tiny.onnx", "ncnn", tmp_path / "bundle")
    from fwedge.diff import diff_bundle

    report = diff_bundle(tmp_path / "bundle", models / "tiny.onnx", models / "data.npz")
    assert report.first_divergence is not None
    assert report.first_divergence.name == "r" and report.first_divergence.op == "Relu", report.first_divergence
    assert [entry.name for entry in report.compared][:2] == ["c", "r"]
    assert not report.compared[0].diverged


def test_flipped_weight_byte_is_refused_by_load_and_run(models, tmp_path):
    bundle = export_bundle(models / "tiny.onnx", "onnx", tmp_path / "bundle")
    weights = bundle.path / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match the manifest"):
        load_bundle(bundle.path)
    result = CliRunner().invoke(cli, ["run", str(bundle.path), "--data", str(models / "data.npz")])
    assert result.exit_code == 2 and "refusing a modified bundle" in result.output


@pytest.mark.ncnn
def test_flipped_ncnn_bin_byte_is_refused(models, tmp_path):
    bundle = export_bundle(models / "tiny_qdq.onnx", "ncnn", tmp_path / "bundle")
    weights = bundle.path / "model.bin"
    data = bytearray(weights.read_bytes())
    data[5] ^= 0x80  # inside the int8 weights of the first convolution
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.bin"):
        load_bundle(bundle.path)


@pytest.mark.ncnn
def test_export_failing_midway_keeps_previous_bundle(models, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    first = export_bundle(models / "tiny.onnx", "ncnn", out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    import fwedge.bundle

    def crash(path):
        raise KeyboardInterrupt("simulated interrupt after the files were written")

    monkeypatch.setattr(fwedge.bundle, "sha256_file", crash)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(models / "tiny_qdq.onnx", "ncnn", out)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert load_bundle(out).precision == first.precision == "fp32"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"], "temporary directories left behind"


@pytest.mark.ncnn
def test_export_killed_with_sigkill_leaves_previous_bundle(models, tmp_path):
    """SIGKILL a `fwedge export` subprocess while it writes: the bundle path holds the old bundle."""
    out = tmp_path / "bundles"
    _export(models, "ncnn", "tiny.onnx", out)
    bundle = out / "tiny-ncnn-fp32"
    before = {path.name: path.read_bytes() for path in bundle.iterdir()}
    marker = tmp_path / "writing"
    # The child writes the files, signals, then stalls before the rename, so the kill lands mid-export.
    script = (
        "import sys, time, pathlib\n"
        "import fwedge.targets.ncnn as ncnn\n"
        "real = pathlib.Path.write_bytes\n"
        "def slow(self, data):\n"
        "    n = real(self, data)\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(60)\n"
        "    return n\n"
        "pathlib.Path.write_bytes = slow\n"
        "from fwedge.cli import main\n"
        f"sys.argv = ['fwedge', 'export', {str(models / 'tiny.onnx')!r}, '-t', 'ncnn', '-o', {str(out)!r}]\n"
        "main()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert {path.name: path.read_bytes() for path in bundle.iterdir()} == before
    load_bundle(bundle)
    # What the killed process leaves is a hidden *.partial directory and its (released) lock
    # file, never a half bundle; the next export removes both.
    leftovers = [p.name for p in out.iterdir() if p.name != "tiny-ncnn-fp32"]
    assert all(name.startswith(".tiny-ncnn-fp32.") and name.endswith((".partial", ".lock")) for name in leftovers), leftovers
    _export(models, "onnx", "tiny.onnx", out)
    assert sorted(p.name for p in out.iterdir()) == ["tiny-ncnn-fp32", "tiny-onnx-fp32"]


def _unsupported_model() -> onnx.ModelProto:
    """Conv, then an LSTM and an If that no lowered target takes."""
    rng = np.random.default_rng(0)
    hidden = 4
    then_graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, hidden])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["s"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, hidden])])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "seq_shape"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "W", "R"], ["", "h"], name="lstm", hidden_size=hidden),
        helper.make_node("Reshape", ["h", "state_shape"], ["s"], name="to_state"),
        helper.make_node("ReduceSum", ["s"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([4, 1, 2], np.int64), "seq_shape"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 2)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
        numpy_helper.from_array(np.array([1, hidden], np.int64), "state_shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    graph = helper.make_graph(nodes, "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.ncnn
def test_unsupported_ops_one_error_listing_all_and_no_output(tmp_path):
    onnx.save(_unsupported_model(), tmp_path / "rnn.onnx")
    out = tmp_path / "bundles"
    with pytest.raises(UnsupportedOpError) as caught:
        export_bundle(tmp_path / "rnn.onnx", "ncnn", out / "rnn")
    assert {(name, op) for name, op, _ in caught.value.nodes} >= {("lstm", "LSTM"), ("branch", "If")}
    assert "'lstm' (LSTM, opset 13)" in str(caught.value) and "'branch' (If, opset 13)" in str(caught.value)
    assert not (out / "rnn").exists()
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "rnn.onnx"), "-t", "ncnn", "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "LSTM" in result.output and "If" in result.output
    assert not any(out.iterdir()) if out.exists() else True


@pytest.mark.ncnn
def test_a_multi_target_export_writes_what_it_can_and_names_what_failed(tmp_path):
    """ncnn cannot take LSTM/If, onnx can: the onnx bundle is still written, the command
    exits 2, and its last line names the targets written and the one that failed."""
    onnx.save(_unsupported_model(), tmp_path / "rnn.onnx")
    out = tmp_path / "bundles"
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "rnn.onnx"), "-t", "ncnn", "-t", "onnx",
                                      "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert (out / "rnn-onnx-fp32" / "manifest.json").is_file()
    assert not (out / "rnn-ncnn-fp32").exists()
    lines = result.output.strip().splitlines()
    assert any(line.startswith("ncnn: failed:") and "LSTM" in line for line in lines), result.output
    assert lines[-1].startswith("error: ") and "wrote 1 of 2 targets (onnx)" in lines[-1]
    assert "failed: ncnn" in lines[-1]


def test_precision_request_contradicting_the_model_is_refused(models, tmp_path):
    with pytest.raises(ExportError, match="needs a QDQ model"):
        export_bundle(models / "tiny.onnx", "onnx", tmp_path / "b", ExportOptions(precision="int8"))
    with pytest.raises(ExportError, match="needs the float model"):
        export_bundle(models / "tiny_qdq.onnx", "onnx", tmp_path / "b", ExportOptions(precision="fp32"))
    assert not (tmp_path / "b").exists()


@pytest.mark.pnnx
@pytest.mark.ncnn
def test_fp32_writer_agrees_with_pnnx(models, tmp_path, rng):
    """pnnx (ONNX -> ncnn, offline) as an independent check of fwedge's fp32 ncnn writer."""
    import shutil

    import ncnn as ncnn_module

    work = tmp_path / "pnnx"
    work.mkdir()
    shutil.copy(models / "tiny.onnx", work / "tiny.onnx")
    from conftest import pnnx_path

    done = subprocess.run([pnnx_path(), "tiny.onnx", "inputshape=[1,1,8,8]", "fp16=0"], cwd=work, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # pnnx names the graph's blobs in0.. and out0..
    input_blob, output_blob = "in0", "out0"
    assert f" {output_blob}" in (work / "tiny.ncnn.param").read_text()
    net = ncnn_module.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(work / "tiny.ncnn.param")) == 0 and net.load_model(str(work / "tiny.ncnn.bin")) == 0
    x = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    bundle = export_bundle(models / "tiny.onnx", "ncnn", tmp_path / "bundle")
    ours = get_target("ncnn").run(load_bundle(bundle.path), {"x": x})["y"]
    theirs = []
    for sample in x:
        extractor = net.create_extractor()
        extractor.input(input_blob, ncnn_module.Mat(np.ascontiguousarray(sample)).clone())
        code, mat = extractor.extract(output_blob)
        assert code == 0
        theirs.append(np.array(mat).reshape(-1))
    np.testing.assert_allclose(ours, np.stack(theirs), rtol=FP32_RTOL, atol=FP32_ATOL, err_msg="ncnn output 'y': fwedge vs pnnx")


@pytest.mark.ncnn
def test_ncnn_int8_shifted_padding_many_channels(tmp_path, rng):
    """Asymmetric (zero point != 0) input, 16 channels (ncnn packs int8 by 8), padding 1: the
    shifted input must be padded with the image of 0. Regression: Convolution's pad_value was not
    honoured on packed int8 inputs and the padded border came out as -127 steps."""
    from op_matrix import output_scale, steps_off

    w = (rng.standard_normal((8, 16, 3, 3)) / 12).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])], "pad16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.uniform(0.0, 3.0, (16, 16, 6, 6)).astype(np.float32)  # one-sided range: zero point -128
    qdq = ort_qdq(model, x)
    reference = ort_session(qdq).run(["y"], {"x": x})[0]
    bundle = get_target("ncnn").export(qdq, tmp_path / "b", ExportOptions())
    got = get_target("ncnn").run(load_bundle(bundle.path), {"x": x})["y"]
    steps = steps_off(reference, got, output_scale(qdq, "y"))
    # The zero point -128 window loses its top level in ncnn's [-127, 127]: inputs near 3.0
    # saturate one input step early, which can cost an output step.
    assert steps.max() <= INT8_MAX_STEPS + 1, f"ncnn int8 'y': {int(steps.max())} steps from onnxruntime"
    border = steps[:, :, [0, -1], :]
    assert border.max() <= INT8_MAX_STEPS + 1, "padded border of 'y'"


@pytest.mark.parametrize("target", [pytest.param("x86_64", marks=[pytest.mark.cc, pytest.mark.zig], id="c-x86_64"),
                                    pytest.param("aarch64", marks=[pytest.mark.zig, pytest.mark.qemu("aarch64")],
                                                 id="c-aarch64")])
def test_run_and_diff_take_a_relative_bundle_path(models, tmp_path, monkeypatch, target):
    """The C harness runs in a temporary working folder: a relative bundle path must still find its files."""
    monkeypatch.chdir(tmp_path)
    _export(models, target, "tiny_qdq.onnx", Path("bundles"))
    relative = f"bundles/tiny_qdq-{target}-int8"
    run = CliRunner().invoke(cli, ["run", relative, "--data", str(models / "data.npz"), "--json", "-"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["samples"] == 48
    diff = CliRunner().invoke(cli, ["diff", relative, str(models / "tiny_qdq.onnx"), "--data",
                                    str(models / "data.npz"), "--json", "-", "--max-steps", str(INT8_MAX_STEPS + 1)])
    assert diff.exit_code == 0, diff.output
    assert json.loads(diff.output)["first_divergence"] is None


def test_diff_of_a_batch_one_onnx_bundle_runs_sample_by_sample(models, tmp_path):
    """A model exported with a fixed batch of 1 (PP-OCR, most detectors): diff bisects it on 8
    samples, as run does, instead of failing in onnxruntime on the batch of 8."""
    from fwedge import ir

    fixed = ir.set_input_shapes(onnx.load(models / "tiny_qdq.onnx"), {"x": [1, 1, 8, 8]})
    onnx.save(fixed, tmp_path / "one.onnx")
    bundle = export_bundle(tmp_path / "one.onnx", "onnx", tmp_path / "b")
    assert bundle.inputs[0].shape[0] == 1
    diff = CliRunner().invoke(cli, ["diff", str(bundle.path), str(tmp_path / "one.onnx"), "--data",
                                    str(models / "data.npz"), "--limit", "8", "--exact-int8", "--json", "-"])
    assert diff.exit_code == 0, diff.output
    report = json.loads(diff.output)
    assert report["samples"] == 8 and len(report["compared"]) > 2 and report["first_divergence"] is None, report


def test_diff_with_an_input_shape_runs_a_batch_one_reshape_sample_by_sample(models, tmp_path):
    """A QDQ model prepared at --input-shape 1,... may carry that batch in a Reshape's shape
    constant (PP-OCR cls: [1, 200]) while its input stays dynamic: diff --input-shape fixes the
    reference at batch 1 and runs it sample by sample. Before, it fixed the batch at --limit and
    onnxruntime failed in the Reshape."""
    model = onnx.load(models / "tiny_qdq.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    [last] = [node for node in model.graph.node if "y" in node.output]
    last.output[list(last.output).index("y")] = "y_flat"
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3], np.int64), "batch_one"))
    model.graph.node.append(helper.make_node("Reshape", ["y_flat", "batch_one"], ["y"], name="to_batch_one"))
    onnx.save(model, tmp_path / "one.onnx")
    bundle = export_bundle(tmp_path / "one.onnx", "onnx", tmp_path / "b", input_shapes={"x": [1, 1, 8, 8]})
    diff = CliRunner().invoke(cli, ["diff", str(bundle.path), str(tmp_path / "one.onnx"), "--data",
                                    str(models / "data.npz"), "--limit", "4", "--input-shape", "x=1,1,8,8",
                                    "--exact-int8", "--json", "-"])
    assert diff.exit_code == 0, diff.output
    report = json.loads(diff.output)
    assert report["samples"] == 4 and report["first_divergence"] is None, report


@pytest.mark.parametrize("target", ["tflite", "x86_64"])
def test_a_dynamic_input_names_the_cli_flag(models, tmp_path, target):
    """The message names the command-line flag with the static dimensions filled in, not a
    Python argument."""
    model = onnx.load(models / "tiny.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, tmp_path / "dynamic.onnx")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "dynamic.onnx"), "-t", target, "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--input-shape x=1,1,H,W" in result.output, result.output


_SILERO_REPORT = (
    "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
    "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n"
    "-- Conv-16 with a message:\n[ONNX Frontend] Conversion failed for Conv-16\n"
    "While validating ONNX node '<Node(Conv): If_0_then_branch__Inline_0__/decoder/decoder/2/Conv>': "
    "Check 'data.get_partial_shape().rank().is_static()' failed at src/frontends/onnx/frontend/src/op/conv.cpp:38:\n"
    "FrontEnd API failed with GeneralFailure:\nThe input data tensor's rank has to be known (static)\n\n"
    "-- ReduceMean-16 with a message:\n[ONNX Frontend] Conversion failed for ReduceMean-16\n"
    "Check '(supported_types.find(ov_input.get_element_type()) != supported_types.end())' failed at "
    "src/frontends/onnx/frontend/src/op/reduce.cpp:134:\n"
    "While validating ONNX node '<Node(ReduceMean): If_0_then_branch__Inline_0__/ReduceMean>':\n"
    "Unsupported input type dynamic\n\nSummary:\n-- Conversion is failed for: Conv-16, ReduceMean-16\n")


def test_an_openvino_conversion_failure_is_one_line_naming_the_nodes():
    """The report OpenVINO's ONNX frontend printed for silero-vad's silero_vad.onnx (its If
    branch has tensors of unknown rank), as openvino.convert_model raised it."""
    from fwedge.targets.openvino import conversion_failure

    line = conversion_failure(_SILERO_REPORT)
    assert "\n" not in line and line.startswith("the OpenVINO ONNX frontend could not convert 2 node(s)"), line
    assert "'If_0_then_branch__Inline_0__/decoder/decoder/2/Conv' (Conv: The input data tensor's rank has to be " \
           "known (static))" in line, line
    assert "'If_0_then_branch__Inline_0__/ReduceMean' (ReduceMean: Unsupported input type dynamic)" in line, line
    assert conversion_failure("Some other failure\nwith detail") == "openvino.convert_model failed: Some other failure"


@pytest.mark.openvino
def test_openvino_check_names_the_nodes_a_full_conversion_fails_on(models, monkeypatch):
    """When the partial conversion finds every translator but the full conversion fails (as on
    silero-vad), check() -- and so inspect -- lists the nodes the report names, not 'all nodes'."""
    import openvino

    from fwedge.targets import get_target

    model = onnx.load(models / "tiny.onnx")
    assert get_target("openvino").check(model) == []

    def fails(*args, **kwargs):
        raise RuntimeError(_SILERO_REPORT)

    monkeypatch.setattr(openvino, "convert_model", fails)
    found = get_target("openvino").check(model)
    assert [(name, op) for name, op, _ in found] == [
        ("If_0_then_branch__Inline_0__/decoder/decoder/2/Conv", "Conv"),
        ("If_0_then_branch__Inline_0__/ReduceMean", "ReduceMean")], found

"""Values read only inside an If branch (silero-vad's decoder) survive simplify and calibration."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fwedge import ir
from fwedge.calibration.collect import collect
from fwedge.passes.simplify import simplify
from fwedge.quantization.plan import candidate_tensors
from fwedge.quantization.prepare import load_prepared, prepare


def _session(model: onnx.ModelProto | str):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _branch_reads_outer_model() -> onnx.ModelProto:
    """x -> Relu -> If(sum(x) > 0): then Add(relu, k_id), else Mul(relu, k).

    k is a main-graph Constant and k_id an Identity of it; only the branches read them, as
    silero-vad's decoder If reads '/stft/Constant_output_0'. simplify folds the Constant and
    drops the Identity: before the fix it dropped k too (no main-graph node reads it) and left
    the then-branch reading k_id, which ORT refuses ("Nodes in a graph must be topologically
    sorted ... is not output of any previous nodes").
    """
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["relu", "k_id"], ["then_y"], name="then_add")], "then_branch", [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [1, 4])])
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["relu", "k"], ["else_y"], name="else_mul")], "else_branch", [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("Constant", [], ["k"], name="k_const",
                         value=helper.make_tensor("k_value", TensorProto.FLOAT, [4], [0.5, -1.0, 2.0, 3.0])),
        helper.make_node("Identity", ["k"], ["k_id"], name="k_identity"),
        helper.make_node("Relu", ["x"], ["relu"], name="relu"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Constant", [], ["zero"], name="zero_const", value_float=0.0),
        helper.make_node("Greater", ["total", "zero"], ["flag"], name="positive"),
        helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes, "branch_reads_outer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_simplify_keeps_what_only_a_branch_reads(rng):
    model = _branch_reads_outer_model()
    simplified = simplify(model)
    assert [node.op_type for node in simplified.graph.node] == ["Relu", "ReduceSum", "Greater", "If"]
    assert {"k", "zero"} == {init.name for init in simplified.graph.initializer}
    onnx.checker.check_model(simplified, full_check=True)
    x = np.abs(rng.standard_normal((1, 4))).astype(np.float32)
    for sign in (1, -1):  # both branches
        feeds = {"x": sign * x}
        np.testing.assert_array_equal(_session(simplified).run(None, feeds)[0], _session(model).run(None, feeds)[0],
                                      err_msg=f"y (x sign {sign})")


def test_drop_unused_initializers_keeps_branch_reads():
    model = _branch_reads_outer_model()
    ir.constants_to_initializers(model)
    ir.drop_unused_initializers(model.graph)
    assert {init.name for init in model.graph.initializer} == {"k", "zero"}
    assert ir.read_names(model.graph) == {"x", "flag", "relu", "total", "zero", "k", "k_id", "then_y", "else_y"}


def test_calibration_of_branch_model(rng):
    """The prepared model, and collect's calibration models built from it, load and run."""
    prepared = prepare(_branch_reads_outer_model())
    x = np.abs(rng.standard_normal((1, 4))).astype(np.float32)
    stats = collect(prepared, [x, -x], ["x", "relu"], bins=16)
    assert stats.num_samples == 2 and list(stats.histograms) == ["x", "relu"]


@pytest.mark.silero
def test_silero_half_prepares_and_calibrates(silero_half_path, rng):
    """silero_vad_half.onnx: the prepared model (96 -> 45 nodes) is ORT's original bit for bit,
    and calibration (every candidate tensor as an output) runs on it."""
    prepared, _ = load_prepared(silero_half_path)
    feeds = {"input": (0.1 * rng.standard_normal((2, 512))).astype(np.float32),
             "state": np.zeros((2, 2, 128), np.float32)}
    expected = _session(str(silero_half_path)).run(None, feeds)
    got = _session(prepared).run(None, feeds)
    for value, want, got_value in zip(prepared.graph.output, expected, got):
        np.testing.assert_array_equal(got_value, want, err_msg=value.name)
    tensors = candidate_tensors(prepared)
    stats = collect(prepared, [feeds], tensors, bins=64)
    assert list(stats.histograms) == tensors and stats.num_samples == 2


@pytest.mark.silero
def test_silero_op15_prepares(silero_half_path, rng):
    """silero_vad_16k_op15.onnx (also an `sr` scalar input): the prepared model loads in ORT and
    matches the original bit for bit."""
    path = silero_half_path.parent / "silero_vad_16k_op15.onnx"
    prepared, _ = load_prepared(path)
    feeds = {"input": (0.1 * rng.standard_normal((2, 512))).astype(np.float32),
             "state": np.zeros((2, 2, 128), np.float32), "sr": np.array(16000, np.int64)}
    expected = _session(str(path)).run(None, feeds)
    for value, want, got in zip(prepared.graph.output, expected, _session(prepared).run(None, feeds)):
        np.testing.assert_array_equal(got, want, err_msg=value.name)


@pytest.mark.silero
def test_silero_quantize_from_one_array_is_one_line(silero_half_path, tmp_path, rng):
    """Two inputs (audio and the recurrent state) and a dataset of single arrays: a DataError
    naming both inputs, exit 2, no onnxruntime ValueError traceback."""
    from click.testing import CliRunner

    from fwedge.cli import cli

    np.save(tmp_path / "audio.npy", (0.1 * rng.standard_normal((4, 512))).astype(np.float32))
    done = CliRunner().invoke(cli, ["quantize", str(silero_half_path), "--data", str(tmp_path / "audio.npy"),
                                    "--method", "minmax", "-o", str(tmp_path / "q.onnx")])
    assert done.exit_code == 2, done.output
    assert "the model has 2 inputs ['input', 'state']" in done.output and "Traceback" not in done.output

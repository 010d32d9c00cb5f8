"""export --fp16: every fp16 bundle against onnxruntime fp32 on the same seeded inputs (op matrix
and the two example models), its float weights in exactly half their fp32 bytes, its refusals and
the manifest's weights_dtype."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge import ir
from fwedge.bundle import load_bundle, seal_manifest
from fwedge.cli import cli
from fwedge.data import Preprocess, open_dataset
from fwedge.errors import ExportError
from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.passes.float16 import to_float16
from fwedge.targets import ExportOptions, get_target
from helpers import tiny_conv_model
from op_matrix import OP_CASES, qdq_model, random_feeds
from tolerances import FP16_MIN_AGREEMENT, FP16_MODEL_RTOL, FP16_RTOL

TARGETS = [pytest.param("onnx", id="onnx"), pytest.param("openvino", marks=pytest.mark.openvino, id="openvino"),
           pytest.param("tflite", marks=pytest.mark.tflite, id="tflite"),
           pytest.param("ncnn", marks=pytest.mark.ncnn, id="ncnn")]
IMAGES = 600


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference relative to the reference's largest magnitude (tests/tolerances.py: FP16_RTOL)."""
    return float(np.abs(candidate - reference).max() / max(float(np.abs(reference).max()), 1e-30))


def _export(target: str, model: onnx.ModelProto, folder, precision: str):
    get_target(target).export(model, folder, ExportOptions(precision=precision, source_sha256="0" * 64))
    return load_bundle(folder)


@pytest.mark.parametrize("target", TARGETS)
def test_fp16_op_matrix_matches_onnxruntime_fp32(target, tmp_path, record_property):
    """Every case of the op matrix the target takes: the fp16 bundle within FP16_RTOL of onnxruntime fp32, its
    manifest saying float16, and its input and output still float32 (an int32 input stays int32)."""
    worst = (0.0, "")
    for case in OP_CASES:
        if target in case.refused_by:  # tests/test_targets_matrix.py checks the refusal
            continue
        feeds = random_feeds(case, batch=3)
        reference = ort_session(case.model).run(["y"], feeds)[0]
        bundle = _export(target, case.model, tmp_path / case.id, "fp16")
        assert bundle.precision == "fp16" and bundle.extra["weights_dtype"] == "float16", case.id
        # float I/O stays float32; an integer input (an embedding's indices) keeps its int32
        assert [spec.dtype for spec in bundle.inputs] == [
            "int32" if ir.input_dtype(value) == np.int32 else "float32" for value in ir.graph_inputs(case.model)]
        assert [spec.dtype for spec in bundle.outputs] == ["float32"] * len(bundle.outputs)
        candidate = get_target(target).run(bundle, feeds)["y"]
        assert candidate.dtype == np.float32, f"{target} fp16 {case.id}: output 'y' dtype"
        error = relative_error(candidate.reshape(reference.shape), reference)
        assert error <= FP16_RTOL, f"{target} fp16 {case.id}: output 'y' off by {error:.3g} of max|y| (> {FP16_RTOL:.3g})"
        worst = max(worst, (error, case.id))
    record_property("worst", f"{worst[0]:.3g} ({worst[1]})")


@pytest.mark.parametrize("target", TARGETS)
def test_fp16_weights_are_half_of_fp32(target, tmp_path):
    """The tiny conv model's float weights (55 float32 values, 220 bytes) take half the bytes in
    the fp16 bundle: weights_bytes falls by exactly 110 (onnx and tflite: to exactly half)."""
    model = tiny_conv_model()
    fp32 = _export(target, model, tmp_path / "fp32", "fp32")
    fp16 = _export(target, model, tmp_path / "fp16", "fp16")
    assert fp32.extra["weights_dtype"] == "float32"
    saved = fp32.sizes["weights_bytes"] - fp16.sizes["weights_bytes"]
    # ncnn reads biases untagged as float32: only the 36 conv and 12 fc weights of the tagged
    # buffers shrink (each buffer's float16 data is padded to 4 bytes; here none needs it).
    # OpenVINO's .bin also holds Flatten's int64 shape constant, which stays as it is.
    assert saved == ((36 + 12) * 2 if target == "ncnn" else 110), f"{target}: {fp32.sizes} -> {fp16.sizes}"
    if target in ("onnx", "tflite"):
        assert 2 * fp16.sizes["weights_bytes"] == fp32.sizes["weights_bytes"]


@pytest.fixture(scope="module", params=["cnn_small", "mobilenet_v2_tiny"])
def example(request):
    path = request.getfixturevalue("cnn_small_path" if request.param == "cnn_small" else "mobilenet_path")
    images = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                              IMAGES, limit=IMAGES, seed=0)).x
    return request.param, path, images, ort_session(path).run(None, {"input": images})[0]


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("target", TARGETS)
def test_fp16_example_models_against_fp32(example, target, tmp_path):
    """The example models' fp16 bundles on the 600-image subset: logits within FP16_MODEL_RTOL,
    every image whose fp32 top-2 margin exceeds twice the error bound agrees, FP16_MIN_AGREEMENT
    overall."""
    name, path, images, reference = example
    fp16 = export_bundle(path, target, tmp_path / "fp16", ExportOptions(precision="fp16"))
    fp32 = export_bundle(path, target, tmp_path / "fp32")
    logits = get_target(target).run(fp16, {"input": images})["logits"]
    error = relative_error(logits, reference)
    assert error <= FP16_MODEL_RTOL, f"{name} {target} fp16: 'logits' off by {error:.3g} of max|logits|"
    top2 = np.sort(reference, axis=1)[:, -2:]
    wide = (top2[:, 1] - top2[:, 0]) > 2 * FP16_MODEL_RTOL * np.abs(reference).max()
    agree = logits.argmax(1) == reference.argmax(1)
    assert agree[wide].all(), f"{name} {target} fp16: {int((~agree[wide]).sum())} images with a wide margin flipped"
    assert agree.mean() >= FP16_MIN_AGREEMENT, f"{name} {target} fp16: top-1 agreement {agree.mean():.4f}"
    # ncnn keeps biases float32 (its loader reads them untagged): 56% of fp32 on mobilenet_v2_tiny.
    assert fp16.sizes["weights_bytes"] < (0.6 if target == "ncnn" else 0.51) * fp32.sizes["weights_bytes"], \
        f"{name} {target}: {fp32.sizes} -> {fp16.sizes}"
    # The files shrink by less than the weights in OpenVINO: its .xml gains a Convert to f32 per weight.
    assert fp16.sizes["file_bytes"] < fp32.sizes["file_bytes"], f"{name} {target}: {fp32.sizes} -> {fp16.sizes}"
    if target == "tflite":  # every constant of the lowered models is a float weight
        assert 2 * fp16.sizes["weights_bytes"] == fp32.sizes["weights_bytes"]
    if target == "onnx":  # BatchNormalization folded before the conversion: fewer weights than half
        assert 2 * fp16.sizes["weights_bytes"] < fp32.sizes["weights_bytes"]


def test_float16_pass_keeps_io_float32_and_names():
    model = tiny_conv_model()
    half = to_float16(model)
    onnx.checker.check_model(half)
    assert [v.type.tensor_type.elem_type for v in list(half.graph.input) + list(half.graph.output)] == [1, 1]
    assert [v.name for v in half.graph.input] == ["x"] and [v.name for v in half.graph.output] == ["y"]
    assert {init.data_type for init in half.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert half.graph.node[0].op_type == "Cast" and half.graph.node[-1].op_type == "Cast"


def test_float16_pass_refuses_a_weight_beyond_float16_range():
    model = tiny_conv_model()
    model.graph.initializer[0].raw_data = np.full((4, 1, 3, 3), 1e6, np.float32).tobytes()
    with pytest.raises(ExportError, match="initializer 'w' holds 1e\\+06, beyond float16"):
        to_float16(model)


def test_fp16_refusals_are_one_line_exit_2(tmp_path):
    case = next(c for c in OP_CASES if c.id == "conv_3x3_s1_p1")
    qdq = tmp_path / "m.int8.onnx"
    onnx.save(qdq_model(case), qdq)
    float_path = tmp_path / "m.onnx"
    onnx.save(case.model, float_path)
    runs = [(["export", str(qdq), "-t", "onnx", "--fp16", "-o", str(tmp_path / "b")], "is a QDQ int8 model"),
            (["export", str(float_path), "-t", "onnx", "--fp16", "--int8", "-o", str(tmp_path / "b")],
             "exclude each other"),
            (["export", str(float_path), "-t", "x86_64", "--fp16", "--no-build", "-o", str(tmp_path / "b")],
             "no float16 arithmetic")]
    for args, message in runs:
        result = CliRunner().invoke(cli, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, result.output)
    assert not (tmp_path / "b").exists()


def test_manifest_weights_dtype_must_match_precision(tmp_path):
    bundle = _export("onnx", tiny_conv_model(), tmp_path / "b", "fp16")
    path = bundle.path / "manifest.json"
    manifest = json.loads(path.read_text())
    for extra, message in (({k: v for k, v in manifest["extra"].items() if k != "weights_dtype"}, "needs extra.weights_dtype"),
                           ({**manifest["extra"], "weights_dtype": "float32"}, "does not match precision")):
        path.write_text(json.dumps(seal_manifest({**manifest, "extra": extra})))
        with pytest.raises(ExportError, match=message):
            load_bundle(bundle.path)
    path.write_text(json.dumps(seal_manifest({**manifest, "sizes": {**manifest["sizes"], "weights_bytes": -1}})))
    with pytest.raises(ExportError, match="sizes.weights_bytes must be a non-negative integer"):
        load_bundle(bundle.path)

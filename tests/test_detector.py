"""A YOLOv8-headed detector (tests/detector_model.py): it quantizes, its boxes and scores both
survive int8, and its fidelity is mAP@0.5 against the float model's own boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.detection import Detections, decode, map50
from fwedge.errors import ModelError

pytestmark = [pytest.mark.torch, pytest.mark.fashion_mnist]


def _images(split: str, count: int, seed: int) -> np.ndarray:
    """Fashion-MNIST images upsampled 4x into a 128x128 RGB frame at a seeded offset."""
    from fwedge.data import Preprocess, open_dataset

    from tests.detector_model import SIZE

    x = next(open_dataset(f"fashion-mnist:{split}").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                           batch_size=count, limit=count, seed=seed)).x
    rng = np.random.default_rng(seed)
    frames = np.zeros((count, 3, SIZE, SIZE), dtype=np.float32)
    for i, image in enumerate(x[:, 0]):
        big = np.kron(image, np.ones((4, 4), dtype=np.float32))
        top, left = rng.integers(0, SIZE - big.shape[0], size=2)
        frames[i, :, top:top + big.shape[0], left:left + big.shape[1]] = big
    return frames


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    import warnings

    from tests.detector_model import build

    root = tmp_path_factory.mktemp("detector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        paths = {"static": build(root / "static.onnx"), "dynamic": build(root / "dynamic.onnx", dynamic_batch=True)}
    np.save(root / "calib.npy", _images("train", 32, 1))
    np.save(root / "eval.npy", _images("test", 24, 2))
    return root, paths


def _run(model, x):
    from fwedge.eval import ort_session

    session = ort_session(model)  # QDQ as defined: the same on every CPU
    return np.concatenate([session.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])


def _sqnr(reference, candidate) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2)
                               / max(np.sum((reference.astype(np.float64) - candidate) ** 2), 1e-30)))


def test_map50_scores_boxes_against_the_reference():
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    truth = [Detections(box, np.array([0.9]), np.array([2]))]
    assert map50(truth, truth) == 1.0
    shifted = [Detections(box + 25.0, np.array([0.9]), np.array([2]))]  # IoU 0.14
    assert map50(truth, shifted) == 0.0
    other_class = [Detections(box, np.array([0.9]), np.array([1]))]
    assert map50(truth, other_class) == 0.0
    late_false = [Detections(np.vstack([box, box + 60]), np.array([0.9, 0.3]), np.array([2, 2]))]
    assert map50(truth, late_false) == 1.0  # a false positive ranked after every hit costs nothing
    early_false = [Detections(np.vstack([box + 60, box]), np.array([0.9, 0.3]), np.array([2, 2]))]
    assert map50(truth, early_false) == pytest.approx(0.5)
    assert map50([Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], truth) is None
    with pytest.raises(ModelError, match="'logits'.*\\[N, 4 \\+ classes, anchors\\]"):
        decode(np.zeros((2, 10)), name="logits")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_yolo_head_quantizes_with_its_decode_float_and_scores_apart(detector, kind):
    """Seen on yolov8n: 'quant table has no range for tensor /model.22/Concat_6_output_0', and
    with that Concat kept float by hand, one shared scale for pixel boxes and sigmoid scores
    put every score on one code. Now the decode after the last Conv stays float, the output
    Concat keeps float with a warning that says why, and both halves follow float."""
    from fwedge.quantization import quantize
    from tests.tolerances import DETECTOR_INT8_MAP50, DETECTOR_INT8_SQNR_DB

    root, paths = detector
    result = quantize(paths[kind], root / "calib.npy", "kl", num_samples=32)
    kept = {unit.node: unit.reason for unit in result.kept_float}
    output_concat = [name for name, reason in kept.items() if "input ranges differ" in reason]
    assert len(output_concat) == 1 and "'/model.22/Sigmoid_output_0'" in kept[output_concat[0]], kept
    ops = {unit.node: unit.op for unit in result.kept_float}
    decode_ops = [name for name, op in ops.items() if op in ("Add", "Sub", "Mul", "Div")]
    assert len(decode_ops) >= 5 and all(kept[name].startswith("post-processing") for name in decode_ops), kept
    assert "Conv" not in ops.values()  # the head's Convs, the DFL's included, stay int8
    x = np.load(root / "eval.npy")
    reference, candidate = _run(result.float_model, x), _run(result.model, x)
    boxes, scores = _sqnr(reference[:, :4], candidate[:, :4]), _sqnr(reference[:, 4:], candidate[:, 4:])
    assert boxes > DETECTOR_INT8_SQNR_DB and scores > DETECTOR_INT8_SQNR_DB, (boxes, scores)
    found = decode(reference)
    assert sum(len(d.boxes) for d in found) >= 2 * len(x), "the float model must find boxes to compare"
    assert map50(found, decode(candidate)) >= DETECTOR_INT8_MAP50


def test_a_shared_scale_for_boxes_and_scores_is_what_destroys_them(detector):
    """The reason for the rule, measured: the same model with the output Concat forced to one
    scale (its Sigmoid and Mul given the Concat's range) loses the scores entirely."""
    from fwedge.quantization import quantize

    root, paths = detector
    result = quantize(paths["static"], root / "calib.npy", "kl", num_samples=32)
    x = np.load(root / "eval.npy")[:4]
    reference = _run(result.float_model, x)
    low, high = float(reference.min()), float(reference.max())
    scale = (high - low) / 255
    zero = np.round(-128 - low / scale)
    shared = (np.clip(np.round(reference / scale) + zero, -128, 127) - zero) * scale
    assert _sqnr(reference[:, 4:], shared[:, 4:]) < 10 and np.unique(shared[:, 4:]).size <= 2


def test_inspect_reads_a_dynamic_batch_detector(detector):
    """inspect on a dynamic-batch export: no traceback, and the MACs of every layer known."""
    root, paths = detector
    result = CliRunner().invoke(cli, ["inspect", str(paths["dynamic"]), "--json", "-"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["total_macs"] and all(layer["macs"] for layer in summary["layers"]), summary["layers"][-3:]


def test_farm_scores_a_detector_bundle_by_map50(detector, tmp_path):
    from fwedge.device_farm.results import load_results

    root, paths = detector
    qdq = tmp_path / "detector.int8.onnx"
    for args in (["quantize", str(paths["static"]), "--data", str(root / "calib.npy"), "--num-samples", "32",
                  "-o", str(qdq)],
                 ["export", str(qdq), "--target", "onnx", "-o", str(tmp_path / "bundles")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    # The quantizer's kept-float layers travel with the QDQ model into the manifest, with reasons.
    assert "layer(s) kept in float by the quantizer" in result.output and "/model.22/Concat_" in result.output
    [bundle] = sorted((tmp_path / "bundles").iterdir())
    kept = json.loads((bundle / "manifest.json").read_text())["extra"]["kept_float"]
    assert any("input ranges differ" in entry["reason"] for entry in kept), kept
    assert any(entry["reason"].startswith("post-processing") for entry in kept), kept
    result = CliRunner().invoke(cli, ["farm", "run", str(bundle), "--devices", "host", "--data", str(root / "eval.npy"),
                                      "--repeats", "1", "--task", "detection", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    [entry] = load_results(tmp_path / "r.json").results
    assert entry.task == "detection" and entry.accuracy is None
    assert 0.5 <= entry.fidelity["map50"] <= 1.0, entry.fidelity


def test_a_malformed_kept_float_record_is_refused_in_one_line(detector, tmp_path):
    """The record comes from the model file, which may be anyone's: export checks its form."""
    import onnx

    from fwedge.quantization import quantize

    root, paths = detector
    model = quantize(paths["static"], root / "calib.npy", "kl", num_samples=8).model
    for prop in model.metadata_props:
        if prop.key == "fwedge.kept_float":
            prop.value = '[{"node": 3}]'
    onnx.save(model, tmp_path / "bad.int8.onnx")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "bad.int8.onnx"), "-t", "onnx", "-o", str(tmp_path),
                                      "--reference", str(paths["static"])])
    assert result.exit_code == 2 and "fwedge.kept_float" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


def test_eval_and_run_take_the_task(detector, tmp_path):
    """eval and run read the same --task as farm run: a detector gets mAP@0.5 and no top-1; an
    auto task calls its output a signal."""
    root, paths = detector
    qdq = tmp_path / "d.int8.onnx"
    assert CliRunner().invoke(cli, ["quantize", str(paths["static"]), "--data", str(root / "calib.npy"),
                                    "--num-samples", "32", "-o", str(qdq)]).exit_code == 0
    common = ["--data", str(root / "eval.npy"), "--reference", str(paths["static"]), "--json", "-"]
    detection = json.loads(CliRunner().invoke(cli, ["eval", str(qdq), *common, "--task", "detection"]).output)
    assert detection["task"] == "detection" and 0.85 <= detection["map50"] <= 1.0, detection
    auto = CliRunner().invoke(cli, ["eval", str(qdq), *common[:-2]])
    assert auto.exit_code == 0 and "top-1 agreement" not in auto.output and "SQNR" in auto.output, auto.output
    assert CliRunner().invoke(cli, ["export", str(qdq), "-t", "onnx", "-o", str(tmp_path / "b")]).exit_code == 0
    [bundle] = sorted((tmp_path / "b").iterdir())
    ran = CliRunner().invoke(cli, ["run", str(bundle), *common, "--task", "detection", "--exact-int8"])
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["map50"] == pytest.approx(detection["map50"], abs=0.05)


def test_quantize_reports_no_top1_for_a_detector_output(detector, tmp_path):
    """The check after quantizing prints SQNR only when the output is no vector of class
    scores: a flattened argmax of boxes and scores (17-28% here) means nothing."""
    root, paths = detector
    result = CliRunner().invoke(cli, ["quantize", str(paths["static"]), "--data", str(root / "calib.npy"),
                                      "--num-samples", "32", "-o", str(tmp_path / "d.int8.onnx")])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("check:")]
    assert "output SQNR" in line and "top-1" not in line, line

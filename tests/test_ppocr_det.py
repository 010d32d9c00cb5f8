"""PP-OCR det (PP-OCRv4 mobile, DB head: nearest Resize FPN neck, two ConvTranspose 2x2 stride 2,
HardSwish) from rapidocr-onnxruntime, quantized by fwedge and exported to every target. The
metric is DB's own: the text mask (probability > DB_THRESHOLD) of each bundle against the mask
of onnxruntime's exact run of the same QDQ model, as intersection over union."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import get_target
from tolerances import DB_MASK_IOU_C, DB_MASK_IOU_NCNN, DB_MASK_IOU_RUNTIME

pytestmark = pytest.mark.rapidocr

DB_THRESHOLD = 0.3  # rapidocr's binarisation threshold of the DB probability map
CALIBRATION, HELD_OUT = 16, 8


def mask_iou(got: np.ndarray, reference: np.ndarray) -> float:
    a, b = got > DB_THRESHOLD, reference > DB_THRESHOLD
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def det(ppocr_det_path, tmp_path_factory):
    from fwedge.calibration import collect, compute
    from fwedge.quantization import load_prepared, plan_quantization, quantize_model
    from ppocr_inputs import DET_SIZE, ppocr_det_inputs

    x = ppocr_det_inputs(CALIBRATION + HELD_OUT, seed=0)
    name = onnx.load(ppocr_det_path).graph.input[0].name
    prepared, _ = load_prepared(ppocr_det_path, {name: [1, 3, DET_SIZE, DET_SIZE]})
    plan = plan_quantization(prepared)
    stats = collect(prepared, [x[i:i + 1] for i in range(CALIBRATION)], plan.calibrated)
    qdq = quantize_model(prepared, compute(stats, "minmax"), plan=plan)
    folder = tmp_path_factory.mktemp("ppocr_det")
    onnx.save(qdq, folder / "det.int8.onnx")
    held_out = x[CALIBRATION:]
    output = qdq.graph.output[0].name
    session = ort_session(qdq)
    reference = np.concatenate([session.run([output], {name: held_out[i:i + 1]})[0] for i in range(HELD_OUT)])
    float_session = ort_session(prepared)
    float_out = np.concatenate([float_session.run([output], {name: held_out[i:i + 1]})[0] for i in range(HELD_OUT)])
    return folder, name, output, held_out, reference, float_out, qdq


def _run(det, target, count=HELD_OUT):
    folder, name, output, x, reference, _, _ = det
    bundle = export_bundle(folder / "det.int8.onnx", target, folder / target)
    got = get_target(target).run(bundle, {name: x[:count]}, exact_int8=target in ("onnx", "openvino"))
    return got[output].reshape(reference[:count].shape), reference[:count]


def test_every_layer_of_ppocr_det_is_int8_on_the_lowering(det):
    """No ConvTranspose, Resize or BatchNormalization is left to refuse; the lowered graph
    computes every conv in int8."""
    from fwedge.lowered.lower import lower

    qdq = det[-1]
    graph = lower(qdq)
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("depth_to_space") == 2 and kinds.count("resize_nearest") == 6
    convs = [op for op in graph.ops if op.kind in ("conv2d", "depthwise_conv2d")]
    assert convs and all(graph.tensors[op.outputs[0]].dtype == "int8" for op in convs)
    print(f"QDQ vs float mask IoU: {mask_iou(det[4], det[5]):.3f}")


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("aarch64", "riscv64", "loongarch64")
def test_c_runtime_on_ppocr_det_is_within_its_bound_and_the_same_on_every_arch(det):
    host, reference = _run(det, "x86_64")
    iou = mask_iou(host, reference)
    print(f"x86_64 mask IoU against ORT-QDQ: {iou:.4f}")
    assert iou >= DB_MASK_IOU_C, f"C mask IoU {iou:.4f} against onnxruntime's QDQ run"
    for arch in ("aarch64", "riscv64", "loongarch64"):
        got, _ = _run(det, arch, count=2)
        assert np.array_equal(got.view(np.uint8), host[:2].view(np.uint8)), f"C differs between x86_64 and {arch}"


@pytest.mark.parametrize("target", ["onnx", pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("ncnn", marks=pytest.mark.ncnn),
                                    pytest.param("openvino", marks=pytest.mark.openvino)])
def test_each_runtime_on_ppocr_det_is_within_its_bound(det, target):
    got, reference = _run(det, target)
    iou = mask_iou(got, reference)
    print(f"{target} mask IoU against ORT-QDQ: {iou:.4f}; against float: {mask_iou(got, det[5]):.4f}")
    bound = DB_MASK_IOU_NCNN if target == "ncnn" else DB_MASK_IOU_RUNTIME
    assert iou >= bound, f"{target} mask IoU {iou:.4f} against onnxruntime's QDQ run"

"""PP-OCR rec (PP-OCRv4 mobile, SVTR neck: two attention blocks whose QKV split goes through a
rank-5 tensor and whose Softmax runs over a flattened row; CTC head) from rapidocr-onnxruntime,
quantized by fwedge on rendered text lines and exported to every target in int8 and fp32.

The metric is the recognizer's own: CTC greedy decoding of each bundle's output, as character
accuracy (1 - edit distance / length) against the decoding of the float model (and, for int8,
of onnxruntime's exact run of the same QDQ model), on held-out rendered lines at 48 x 320.
Every int8 bundle runs in the test command, and so does the C int8 bundle's byte identity on
the four architectures; of the fp32 bundles, the C one (a 10 MB model as 77 MB of float
initializers: two minutes of compiling on a loaded host) is marked slow.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import ExportOptions
from helpers import run_bundle_exact
from ppocr_inputs import REC_WIDTH, character_accuracy, ctc_greedy, ppocr_rec_inputs
from tolerances import PPOCR_REC_FP32_CHAR_ACCURACY, PPOCR_REC_INT8_CHAR_ACCURACY_VS_QDQ, PPOCR_REC_QDQ_CHAR_ACCURACY

log = logging.getLogger(__name__)

pytestmark = pytest.mark.rapidocr

CALIBRATION, HELD_OUT = 16, 16
SHAPE = [1, 3, 48, REC_WIDTH]
TARGETS = {"onnx": [], "tflite": [pytest.mark.tflite], "x86_64": [pytest.mark.zig], "ncnn": [pytest.mark.ncnn],
           "openvino": [pytest.mark.openvino]}
FP32_TARGETS = {**TARGETS, "x86_64": [pytest.mark.zig, pytest.mark.slow]}


@pytest.fixture(scope="module")
def rec(ppocr_rec_path, tmp_path_factory):
    """(float path, QDQ path, held-out lines, float decoding, QDQ decoding)."""
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("ppocr_rec")
    np.save(folder / "lines.npy", ppocr_rec_inputs(CALIBRATION, seed=0))
    result = quantize(str(ppocr_rec_path), str(folder / "lines.npy"), "minmax", num_samples=CALIBRATION,
                      input_shapes={"x": SHAPE})
    onnx.save(result.model, folder / "rec.int8.onnx")
    x = ppocr_rec_inputs(HELD_OUT, seed=1)
    decoded = []
    for model in (onnx.load(ppocr_rec_path), result.model):
        session = ort_session(model)
        decoded.append(ctc_greedy(np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])))
    return ppocr_rec_path, folder / "rec.int8.onnx", x, decoded[0], decoded[1]


def _decode(target: str, model_path, precision: str, x: np.ndarray, folder) -> list[list[int]]:
    bundle = export_bundle(model_path, target, folder / f"{target}_{precision}", ExportOptions(precision=precision),
                           input_shapes={"x": SHAPE})
    outputs = [next(iter(run_bundle_exact(target, bundle, {"x": x[i:i + 1]}).values())) for i in range(len(x))]
    return ctc_greedy(np.concatenate(outputs))


def test_the_qdq_model_reads_the_lines_as_the_float_model_does(rec):
    _, _, _, float_text, qdq_text = rec
    accuracy = character_accuracy(float_text, qdq_text)
    log.info("PP-OCR rec QDQ (ORT) vs float: character accuracy %.4f over %d characters", accuracy,
             sum(map(len, float_text)))
    assert sum(map(len, float_text)) > 100, "the float model should read the rendered lines"
    assert accuracy >= PPOCR_REC_QDQ_CHAR_ACCURACY


@pytest.mark.parametrize("target", [pytest.param(t, marks=m, id=t) for t, m in TARGETS.items()])
def test_int8_bundle_reads_as_onnxruntime_qdq(rec, target, tmp_path):
    _, qdq_path, x, float_text, qdq_text = rec
    text = _decode(target, qdq_path, "int8", x, tmp_path)
    vs_qdq, vs_float = character_accuracy(qdq_text, text), character_accuracy(float_text, text)
    log.info("PP-OCR rec int8 %s: character accuracy %.4f vs ORT-QDQ, %.4f vs float", target, vs_qdq, vs_float)
    assert vs_qdq >= PPOCR_REC_INT8_CHAR_ACCURACY_VS_QDQ[target], f"{target} int8: {vs_qdq:.4f} vs ORT-QDQ"


@pytest.mark.parametrize("target", [pytest.param(t, marks=m, id=t) for t, m in FP32_TARGETS.items()])
def test_fp32_bundle_reads_as_the_float_model(rec, target, tmp_path):
    float_path, _, x, float_text, _ = rec
    text = _decode(target, float_path, "fp32", x, tmp_path)
    accuracy = character_accuracy(float_text, text)
    log.info("PP-OCR rec fp32 %s: character accuracy %.4f vs float", target, accuracy)
    assert accuracy >= PPOCR_REC_FP32_CHAR_ACCURACY, f"{target} fp32: {accuracy:.4f} vs float"


@pytest.mark.zig
@pytest.mark.qemu("aarch64", "riscv64", "loongarch64")
def test_c_int8_bundle_gives_the_same_bytes_on_every_arch(rec, tmp_path):
    _, qdq_path, x, _, _ = rec
    outputs = {}
    for arch in ("x86_64", "aarch64", "riscv64", "loongarch64"):
        bundle = export_bundle(qdq_path, arch, tmp_path / arch, ExportOptions(precision="int8"), input_shapes={"x": SHAPE})
        outputs[arch] = next(iter(run_bundle_exact(arch, bundle, {"x": x[:1]}).values()))
    for arch, got in outputs.items():
        assert np.array_equal(got.view(np.uint8), outputs["x86_64"].view(np.uint8)), f"{arch} vs x86_64"

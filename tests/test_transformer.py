"""A pre-LN transformer block (tests/transformer_model.py) on every target, fp32 and int8.

fwedge quantizes it on seeded token batches (minmax): its MatMuls by constants are int8
fully_connected layers row by row, Q.K^T and P.V int8 batch_matmuls, the two LayerNorms reported
float islands (fwedge leaves the Softmax, reported with its reason, and the scale Mul before it
float). onnxruntime's
quantize_static on the same batches quantizes those two as well: its QDQ model has an int8
Softmax over [1, heads, T, T] (tflite: a reported float island, its output scale is 1/255).
Each int8 bundle is compared with onnxruntime's exact run of the same QDQ model
(largest difference in output steps, SQNR), each fp32 bundle with onnxruntime on the float model,
and the C int8 and fp32 bundles give the same bytes on x86_64, aarch64, riscv64 and loongarch64.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

from fwedge.bundle import load_bundle
from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.lowered.lower import lower
from fwedge.quantization import quantize
from fwedge.targets import ExportOptions
from helpers import run_bundle_exact
from op_matrix import _ort_quantize as ort_quantize, output_scale, steps_off
from tolerances import FP32_ATOL, FP32_RTOL, TRANSFORMER_INT8_MAX_STEPS, TRANSFORMER_INT8_MIN_SQNR_DB
from transformer_model import token_batches, transformer_block

log = logging.getLogger(__name__)

TARGETS = {
    "onnx": [],
    "openvino": [pytest.mark.openvino],
    "tflite": [pytest.mark.tflite],
    "ncnn": [pytest.mark.ncnn],
    "x86_64": [pytest.mark.zig],
}
ARCHES = ("x86_64", "aarch64", "riscv64", "loongarch64")


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """(float path, QDQ path, quantize result, 8 held-out inputs [8, 16, 32]): fwedge's quantizer."""
    folder = tmp_path_factory.mktemp("transformer")
    onnx.save(transformer_block(), folder / "block.onnx")
    np.save(folder / "tokens.npy", token_batches(64, seed=1))
    result = quantize(str(folder / "block.onnx"), str(folder / "tokens.npy"), "minmax", num_samples=64)
    onnx.save(result.model, folder / "block.int8.onnx")
    return folder / "block.onnx", folder / "block.int8.onnx", result, token_batches(8, seed=2)


@pytest.fixture(scope="module", params=["fwedge", "ort"])
def quantized(request, block, tmp_path_factory):
    """(QDQ path, QDQ model, held-out inputs, quantizer) from fwedge's or onnxruntime's quantizer."""
    float_path, qdq_path, result, x = block
    if request.param == "fwedge":
        return qdq_path, result.model, x, "fwedge"
    calibration = token_batches(64, seed=1)
    qdq = ort_quantize(onnx.load(float_path), [{"x": calibration[i:i + 1]} for i in range(len(calibration))])
    path = tmp_path_factory.mktemp("transformer_ort") / "block.ort.int8.onnx"
    onnx.save(qdq, path)
    return path, qdq, x, "ort"


def _run(target: str, bundle_path, x: np.ndarray) -> np.ndarray:
    bundle = load_bundle(bundle_path)
    return np.concatenate([run_bundle_exact(target, bundle, {"x": x[i:i + 1]})["y"] for i in range(len(x))])


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise))


def test_the_block_lowers_with_int8_attention_and_reported_layer_norm_islands(block):
    _, qdq_path, result, _ = block
    assert sorted(unit.node for unit in result.kept_float) == ["attention", "ln1", "ln2"]  # the Softmax: reported
    graph = lower(onnx.load(qdq_path))
    kinds = [(op.kind, graph.tensors[op.outputs[0]].dtype) for op in graph.ops]
    assert kinds.count(("batch_matmul", "int8")) == 2, kinds
    assert kinds.count(("fully_connected", "int8")) == 6, kinds
    assert {"ln1", "ln2"} <= set(graph.float_ops)


@pytest.mark.parametrize("target", [pytest.param(t, marks=m, id=t) for t, m in TARGETS.items()])
def test_int8_bundle_against_onnxruntime_qdq(quantized, target, tmp_path, record_property):
    qdq_path, qdq, x, quantizer = quantized
    bundle = export_bundle(qdq_path, target, tmp_path / target, ExportOptions(precision="int8"))
    extra = json.loads((bundle.path / "manifest.json").read_text())["extra"]
    if quantizer == "fwedge":
        assert {"ln1", "ln2"} <= {entry["node"] for entry in extra["kept_float"]}
    if target in ("tflite", "x86_64"):
        assert {"ln1", "ln2"} <= set(extra["float_ops"]), extra["float_ops"]
    if target == "tflite" and quantizer == "ort":
        assert [entry["node"] for entry in extra["float_islands"]] == ["attention"]
    reference = ort_session(qdq).run(None, {"x": x})[0]
    got = _run(target, bundle.path, x).reshape(reference.shape)
    steps = steps_off(reference, got, output_scale(qdq, "y"))
    sqnr = sqnr_db(reference, got)
    record_property("steps", f"max {steps.max()}, {(steps > 0).mean():.4f} off, SQNR {sqnr:.1f} dB")
    log.info("transformer int8 (%s quantizer) %s: max %d steps, %.4f off by one or more, %.1f dB", quantizer, target,
             steps.max(), (steps > 0).mean(), sqnr)
    assert steps.max() <= TRANSFORMER_INT8_MAX_STEPS[target], f"{target}: output 'y' {steps.max()} steps off"
    assert sqnr >= TRANSFORMER_INT8_MIN_SQNR_DB[target], f"{target}: output 'y' SQNR {sqnr:.1f} dB"


@pytest.mark.parametrize("target", [pytest.param(t, marks=m, id=t) for t, m in TARGETS.items()])
def test_fp32_bundle_against_onnxruntime(block, target, tmp_path):
    float_path, _, _, x = block
    bundle = export_bundle(float_path, target, tmp_path / target)
    reference = ort_session(onnx.load(float_path)).run(None, {"x": x})[0]
    got = _run(target, bundle.path, x).reshape(reference.shape)
    np.testing.assert_allclose(got, reference, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{target} fp32: output 'y'")


@pytest.mark.zig
@pytest.mark.qemu("aarch64")
@pytest.mark.qemu("riscv64")
@pytest.mark.qemu("loongarch64")
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_c_bundles_give_the_same_bytes_on_every_arch(block, precision, tmp_path):
    float_path, qdq_path, _, x = block
    source = qdq_path if precision == "int8" else float_path
    outputs = {arch: _run(arch, export_bundle(source, arch, tmp_path / arch, ExportOptions(precision=precision)).path,
                          x[:4]) for arch in ARCHES}
    for arch, got in outputs.items():
        assert np.array_equal(got.view(np.uint8), outputs["x86_64"].view(np.uint8)), f"{precision} {arch} vs x86_64"

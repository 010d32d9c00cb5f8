"""PP-OCR's direction classifier (a real model rapidocr ships) in int8 on every target, against
onnxruntime's exact QDQ run of the same model: the onnx bundle exact, the C runtime within the
bound and the same bytes on x86_64, aarch64, riscv64 and loongarch64; the third-party runtimes
within their documented bound."""
from __future__ import annotations

import numpy as np
import pytest

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import get_target

pytestmark = pytest.mark.rapidocr


@pytest.fixture(scope="module")
def ppocr(ppocr_cls_path, tmp_path_factory):
    import onnx

    from op_matrix import quantized_ppocr

    float_model, qdq, x = quantized_ppocr(ppocr_cls_path)
    folder = tmp_path_factory.mktemp("ppocr_targets")
    onnx.save(qdq, folder / "cls.int8.onnx")
    session = ort_session(qdq)
    name, output = qdq.graph.input[0].name, qdq.graph.output[0].name
    reference = np.concatenate([session.run([output], {name: x[i:i + 1]})[0] for i in range(len(x))])
    return folder, name, x, reference


def _run(ppocr, target):
    folder, name, x, reference = ppocr
    bundle = export_bundle(folder / "cls.int8.onnx", target, folder / target)
    got = get_target(target).run(bundle, {name: x}, exact_int8=target in ("onnx", "openvino"))
    return got[bundle.output_names()[1]].reshape(reference.shape), reference


def _check_deep_bound(target, got, reference):
    """tests/tolerances.py DEEP_INT8_*: confident answers agree, most others too, and the
    probabilities stay close on average."""
    from tolerances import DEEP_INT8_CONFIDENT, DEEP_INT8_MEAN_PROBABILITY, DEEP_INT8_TOP1_AGREEMENT

    same = got.argmax(1) == reference.argmax(1)
    confident = reference.max(1) > DEEP_INT8_CONFIDENT
    mean = float(np.abs(got - reference).mean())
    assert same[confident].all(), f"{target}: disagrees on an input the reference is sure of"
    assert same.mean() >= DEEP_INT8_TOP1_AGREEMENT and mean <= DEEP_INT8_MEAN_PROBABILITY, (target, same.mean(), mean)


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("aarch64", "riscv64", "loongarch64")
def test_c_runtime_on_ppocr_cls_is_within_the_bound_and_the_same_on_every_arch(ppocr):
    """Measured 2026-12-03 on the 24 inputs: mean |dp| 0.0062, all 24 agree. aarch64 on all 24,
    riscv64 (portable loops and, with V, its RVV kernels) and loongarch64 on four under qemu: the
    x86_64 bytes."""
    from fwedge.targets import c

    host, reference = _run(ppocr, "x86_64")
    arm, _ = _run(ppocr, "aarch64")
    assert np.array_equal(host.view(np.uint8), arm.view(np.uint8)), "C differs between x86_64 and aarch64"
    folder, name, x, _ = ppocr
    for arch, cpu in (("riscv64", ""), ("riscv64", "rv64,v=true,vext_spec=v1.0,vlen=128"), ("loongarch64", "")):
        bundle = export_bundle(folder / "cls.int8.onnx", arch, folder / arch)
        outputs = c.run_harness(bundle, {name: x[:4]}, cpu=cpu)[0]
        got = np.asarray(outputs[bundle.output_names()[1]]).reshape(host[:4].shape)
        assert np.array_equal(got.view(np.uint8), host[:4].view(np.uint8)), f"C differs between x86_64 and {arch} {cpu}"
    _check_deep_bound("c", host, reference)


def test_the_onnx_bundle_of_ppocr_cls_is_the_qdq_model(ppocr):
    """The onnx bundle in its exact int8 mode computes what ORT's exact QDQ run computes."""
    got, reference = _run(ppocr, "onnx")
    np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("target", [pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("ncnn", marks=pytest.mark.ncnn),
                                    pytest.param("openvino", marks=pytest.mark.openvino)])
def test_third_party_runtimes_stay_within_their_bound_on_ppocr_cls(ppocr, target):
    got, reference = _run(ppocr, target)
    _check_deep_bound(target, got, reference)

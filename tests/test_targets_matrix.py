"""Op matrix × {onnx, openvino, ncnn} × {fp32, int8}: every single-node model against onnxruntime."""
from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest

from fwedge.bundle import load_bundle
from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.targets import ExportOptions, get_target
from helpers import run_bundle_exact
from op_matrix import OP_CASES, output_scale, qdq_model, random_feeds, steps_off
from tolerances import FP32_ATOL, FP32_RTOL, INT8_MAX_STEPS

log = logging.getLogger(__name__)

TARGET_MARKS = {
    "onnx": [],
    "openvino": [pytest.mark.openvino],
    "ncnn": [pytest.mark.ncnn],
}
# The ONNX bundle is the model itself in onnxruntime: a few cases check the round trip.
ONNX_CASES = {"conv_3x3_s1_p1", "depthwise_3x3", "fully_connected"}


def matrix(cases) -> list:
    """(case, target) parameters: every case on every target, the ONNX target on ONNX_CASES only."""
    return [
        pytest.param(case, target, marks=marks, id=f"{case.id}-{target}")
        for case in cases
        for target, marks in TARGET_MARKS.items()
        if target != "onnx" or case.id in ONNX_CASES
    ]


def export_and_run(target: str, model: onnx.ModelProto, feeds: dict, folder) -> dict:
    """Export `model` to a bundle in `folder`, reload it (hash-checked) and run it on `feeds`
    (onnx and openvino in their exact int8 mode: the matrix checks the bundle, not which integer
    kernels this CPU gets)."""
    get_target(target).export(model, folder / target, ExportOptions(source_sha256="0" * 64))
    return run_bundle_exact(target, load_bundle(folder / target), feeds)


def compare_int8(case, target: str, folder) -> tuple[int, int, int]:
    """(max steps off, elements one step off, elements) of a target's int8 bundle against ORT on the QDQ model."""
    feeds = random_feeds(case, batch=4)
    qdq = qdq_model(case)
    reference = ort_session(qdq).run(["y"], feeds)[0]
    candidate = export_and_run(target, qdq, feeds, folder)["y"]
    steps = steps_off(reference, candidate.reshape(reference.shape), output_scale(qdq, "y"))
    return int(steps.max()), int((steps == 1).sum()), int(steps.size)


def _refused(case, target: str, model: onnx.ModelProto, folder) -> bool:
    """For a case the target cannot express: the export refuses it, naming the node, and writes nothing."""
    if target not in case.refused_by:
        return False
    names = "|".join(re.escape(node.name) for node in case.model.graph.node)
    with pytest.raises(UnsupportedOpError, match=f"'({names})'"):
        get_target(target).export(model, folder / target, ExportOptions(source_sha256="0" * 64))
    assert not (folder / target).exists()
    return True


@pytest.mark.parametrize(("case", "target"), matrix(OP_CASES))
def test_fp32_matches_onnxruntime(case, target, tmp_path):
    if _refused(case, target, case.model, tmp_path):
        return
    feeds = random_feeds(case, batch=3)
    reference = ort_session(case.model).run(["y"], feeds)[0]
    candidate = export_and_run(target, case.model, feeds, tmp_path)["y"]
    assert candidate.shape == reference.shape, f"{target} {case.id}: output 'y' shape"
    np.testing.assert_allclose(candidate, reference, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=f"{target} fp32 {case.id}: output 'y'")


@pytest.mark.parametrize(("case", "target"), matrix([c for c in OP_CASES if c.int8]))
def test_int8_within_one_step_of_onnxruntime_qdq(case, target, tmp_path, record_property):
    if _refused(case, target, qdq_model(case), tmp_path):
        return
    worst, off_by_one, total = compare_int8(case, target, tmp_path)
    record_property("off_by_one", f"{off_by_one}/{total}")
    log.info("%s int8 %s: max %d steps, %d/%d elements one step off", target, case.id, worst, off_by_one, total)
    assert worst <= INT8_MAX_STEPS, (
        f"{target} int8 {case.id}: output 'y' is {worst} quantization steps from onnxruntime "
        f"({off_by_one}/{total} one step off)"
    )

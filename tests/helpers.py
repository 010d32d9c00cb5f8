"""Small graph builders shared by the tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class QuantizedRealModel:
    """A real model quantized once per test module: its QDQ file, the quantize result, held-out
    inputs and the float and ORT-QDQ outputs on them, and each target's bundle once exported."""

    folder: Path
    qdq_path: Path
    result: object
    x: np.ndarray
    float_out: np.ndarray
    qdq_out: np.ndarray
    bundles: dict = field(default_factory=dict)  # target -> Bundle, each exported once


def tiny_conv_model(rng: np.random.Generator | None = None, opset: int = 13) -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(3)."""
    rng = rng or np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    fc_w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc_w")
    fc_b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fc_b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, b, fc_w, fc_b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


# Targets whose runtime can also compute an int8 bundle as its Q/DQ (FakeQuantize) operators
# define it, without the CPU-dependent integer kernels (see fwedge.eval.ort_session).
EXACT_MODE_TARGETS = ("onnx", "openvino")


def run_bundle_exact(target: str, bundle, feeds: dict) -> dict:
    """Run a bundle in its target's runtime; onnx and openvino in their exact int8 mode, so the
    result depends on the bundle and not on which integer kernels the host CPU gets."""
    from fwedge.targets import get_target

    return get_target(target).run(bundle, feeds, exact_int8=target in EXACT_MODE_TARGETS)


def runtime_int8_problems(reference: np.ndarray, candidate: np.ndarray, step: float) -> list[str]:
    """What breaks the whole-model int8 criterion of tests/tolerances.py (empty: it holds).

    Args:
        reference: logits of onnxruntime's exact QDQ run, [N, classes].
        candidate: the bundle's logits on the same inputs.
        step: the logits' output quantization scale.
    """
    from tolerances import (RUNTIME_INT8_FAR_FRACTION, RUNTIME_INT8_MARGIN_STEPS, RUNTIME_INT8_MAX_STEPS,
                            RUNTIME_INT8_MEAN_STEPS, RUNTIME_INT8_MIN_AGREEMENT)

    from fwedge.eval import FAR_STEPS

    steps = np.abs(candidate.astype(np.float64) - reference) / step
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / step
    disagree = candidate.argmax(axis=1) != reference.argmax(axis=1)
    problems = []
    if (disagree & (margin > RUNTIME_INT8_MARGIN_STEPS)).any():
        worst = float(margin[disagree].max())
        problems.append(f"disagrees on an image with a {worst:.1f}-step margin (> {RUNTIME_INT8_MARGIN_STEPS})")
    if steps.max() > RUNTIME_INT8_MAX_STEPS:
        problems.append(f"largest logit difference {steps.max():.1f} steps (> {RUNTIME_INT8_MAX_STEPS})")
    if steps.mean() > RUNTIME_INT8_MEAN_STEPS:
        problems.append(f"mean logit difference {steps.mean():.2f} steps (> {RUNTIME_INT8_MEAN_STEPS})")
    if (steps > FAR_STEPS).mean() > RUNTIME_INT8_FAR_FRACTION:
        problems.append(f"{100 * (steps > FAR_STEPS).mean():.1f}% of logits more than one step off "
                        f"(> {100 * RUNTIME_INT8_FAR_FRACTION:.0f}%)")
    agreement = 1 - disagree.mean()
    if agreement < RUNTIME_INT8_MIN_AGREEMENT:
        problems.append(f"top-1 agreement {100 * agreement:.2f}% (< {100 * RUNTIME_INT8_MIN_AGREEMENT:.0f}%)")
    return problems


def check_same_runs_profile(row: dict) -> None:
    """A C profile's layer sum against the whole run of the same runs: within
    PROFILE_C_SAME_RUNS_RATIO, where the lower bound also admits PROFILE_C_UNCOVERED_MS (the call
    and one clock read, a fixed time that is a large share of a run of a few microseconds)."""
    from tests.tolerances import PROFILE_C_SAME_RUNS_RATIO, PROFILE_C_UNCOVERED_MS

    low, high = PROFILE_C_SAME_RUNS_RATIO
    assert row["sum_over_total"] <= high, row
    assert row["sum_over_total"] >= low or row["total_ms"] - row["layer_sum_ms"] <= PROFILE_C_UNCOVERED_MS, row

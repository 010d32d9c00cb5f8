"""The C runtime's float exp, sigmoid, silu, tanh and softmax (any axis) give the same bits on every architecture.

The C libraries round expf and tanhf their own way (musl and glibc differ by 1 ULP on some
inputs), so a model ending in a float Softmax gave other bytes on aarch64 than on x86_64.
runtime_c/activation_f32.c now computes them with IEEE double arithmetic only; these tests run
the same inputs through bundles built for all four architectures (x86_64 natively, the others
under qemu-user) and compare bytes, and they compare sigmoid, silu and tanh with float64 numpy.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.bundle import host_arch, load_bundle
from fwedge.eval import OrtRunner
from fwedge.targets import C_ARCHES, ExportOptions, get_target
from tolerances import C_TRANSCENDENTAL_MAX_ULP, FP32_ATOL, FP32_RTOL

pytestmark = [pytest.mark.cc, pytest.mark.zig, pytest.mark.qemu("aarch64", "riscv64", "loongarch64")]

ROWS, DEPTH = 470, 10


def _inputs() -> np.ndarray:
    """Seeded values over the whole useful range of each function, tiny values, and edges."""
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.uniform(-110.0, 95.0, 1600), rng.uniform(-12.0, 12.0, 2000), rng.normal(0.0, 1e-3, 600),
        rng.normal(0.0, 1e-6, 400),
        [0.0, -0.0, 1e-45, -1e-45, 88.72, 88.73, -103.9, -104.0, 9.0, 10.0, -10.0, 20.0, 1e30, -1e30],
    ]).astype(np.float32)
    return np.resize(values, ROWS * DEPTH).reshape(1, ROWS, DEPTH)


# softmax over the last axis (contiguous rows); softmax_time over axis 1, its 470-long rows read
# DEPTH apart (fw_softmax_f32 with inner = DEPTH)
_OUTPUTS = ("sigmoid", "silu", "tanh", "softmax", "softmax_time")


def _model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS, DEPTH])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, ROWS, DEPTH])
               for name in _OUTPUTS]
    nodes = [helper.make_node("Sigmoid", ["x"], ["sigmoid"], name="sigmoid"),
             # x * Sigmoid(x), which lowers to one silu op (fw_silu_f32)
             helper.make_node("Sigmoid", ["x"], ["sigmoid_of_silu"], name="silu_sigmoid"),
             helper.make_node("Mul", ["x", "sigmoid_of_silu"], ["silu"], name="silu_mul"),
             helper.make_node("Tanh", ["x"], ["tanh"], name="tanh"),
             helper.make_node("Softmax", ["x"], ["softmax"], name="softmax", axis=-1),
             helper.make_node("Softmax", ["x"], ["softmax_time"], name="softmax_time", axis=1)]
    graph = helper.make_graph(nodes, "transcendental", [x], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (both finite)."""
    def ordered(v):
        bits = np.ascontiguousarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(a) - ordered(b))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    model, x = _model(), _inputs()
    target, by_arch = get_target("c"), {}
    for arch in C_ARCHES:
        bundle = get_target(arch).export(model, tmp_path_factory.mktemp(arch) / "bundle",
                                         ExportOptions(precision="fp32", source_sha256="0" * 64))
        by_arch[arch] = target.run(load_bundle(bundle.path), {"x": x})
    return by_arch


def test_float_results_are_the_same_bytes_on_every_architecture(outputs):
    host = outputs[host_arch()]
    for arch, results in outputs.items():
        for name in _OUTPUTS:
            assert results[name].tobytes() == host[name].tobytes(), f"{name}: {arch} differs from {host_arch()}"


def test_sigmoid_silu_and_tanh_are_correctly_rounded(outputs):
    x = _inputs().astype(np.float64)
    with np.errstate(over="ignore"):
        expected = {"sigmoid": 1.0 / (1.0 + np.exp(-x)), "silu": x / (1.0 + np.exp(-x)), "tanh": np.tanh(x)}
    for name, want in expected.items():
        got = outputs[host_arch()][name]
        assert np.isfinite(got).all()
        worst = int(_ulps(got, want.astype(np.float32)).max())
        assert worst <= C_TRANSCENDENTAL_MAX_ULP, f"{name}: {worst} ULP from the float64 value"


def test_softmax_matches_onnxruntime(outputs):
    references = OrtRunner(_model()).run_all({"x": _inputs()})
    for name in ("softmax", "softmax_time"):
        np.testing.assert_allclose(outputs[host_arch()][name], references[name], rtol=FP32_RTOL, atol=FP32_ATOL,
                                   err_msg=name)


_TRANSFORMER_OUTPUTS = ("layer_norm", "square", "sqrt", "div")


def _transformer_model() -> onnx.ModelProto:
    """LayerNormalization, Pow 2 -> Sqrt and Div by 3 (the float pieces of a transformer block)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS, DEPTH])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, ROWS, DEPTH]) for name in _TRANSFORMER_OUTPUTS]
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, DEPTH).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, DEPTH).astype(np.float32), "beta"),
             numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(3.0), "three")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["layer_norm"], name="layer_norm"),
             helper.make_node("Pow", ["x", "two"], ["square"], name="pow"),
             helper.make_node("Sqrt", ["square"], ["sqrt"], name="sqrt"),
             helper.make_node("Div", ["x", "three"], ["div"], name="div")]
    graph = helper.make_graph(nodes, "transformer_pieces", [x], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layer_norm_sqrt_square_div_are_the_same_bytes_on_every_architecture(tmp_path):
    model = _transformer_model()
    x = np.random.default_rng(4).uniform(-12.0, 12.0, (1, ROWS, DEPTH)).astype(np.float32)
    target, by_arch = get_target("c"), {}
    for arch in C_ARCHES:
        bundle = get_target(arch).export(model, tmp_path / arch, ExportOptions(precision="fp32", source_sha256="0" * 64))
        by_arch[arch] = target.run(load_bundle(bundle.path), {"x": x})
    reference = OrtRunner(model).run_all({"x": x})
    for name in _TRANSFORMER_OUTPUTS:
        np.testing.assert_allclose(by_arch[host_arch()][name], reference[name], rtol=FP32_RTOL, atol=FP32_ATOL,
                                   err_msg=name)
        for arch, results in by_arch.items():
            assert results[name].tobytes() == by_arch[host_arch()][name].tobytes(), f"{name}: {arch} differs"
    # Div by 3 is a true division (x * float32(1/3) differs on some inputs): the same bits as ORT.
    assert by_arch[host_arch()]["div"].tobytes() == reference["div"].tobytes()

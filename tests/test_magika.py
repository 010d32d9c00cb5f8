"""magika 1.0.3's file-type classifier (a jax2tf graph converted by tf2onnx: one-hot bytes, a
5-wide Conv, tanh GELUs, two variance-form normalizations, a written-out softmax) quantized by
fwedge on real files and exported to every target that takes it. The metric is the classifier's
own: each bundle's top-1 label against the float model's and against onnxruntime's exact run of
the same QDQ model, and the log-probabilities' difference from that run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import get_target
from helpers import QuantizedRealModel
from magika_inputs import CALIBRATION, FILES, HELD_OUT, config, magika_inputs
from tolerances import MAGIKA_QDQ_AGREEMENT, MAGIKA_RUNTIME_AGREEMENT_VS_QDQ, MAGIKA_RUNTIME_LOG_DIFFERENCE

pytestmark = pytest.mark.magika
SHAPES = {"bytes": [1, 2048]}


def _run_each(model, x: np.ndarray) -> np.ndarray:
    session = ort_session(model)  # exact QDQ semantics: the same on every CPU
    return np.concatenate([session.run(None, {"bytes": x[i:i + 1]})[0] for i in range(len(x))])


def _labels(probabilities: np.ndarray) -> list[str]:
    names = config()["target_labels_space"]
    return [names[i] for i in probabilities.argmax(axis=1)]


def test_float_model_names_the_files(magika_path):
    """The inputs are built as magika builds them: the float model gives every file the label
    magika's own identify_path gives it."""
    x, expected = magika_inputs(FILES)
    assert x.shape == (len(FILES), 2048) and x.dtype == np.int32
    assert _labels(_run_each(onnx.load(magika_path), x)) == expected


@pytest.fixture(scope="module")
def magika(magika_path, tmp_path_factory) -> QuantizedRealModel:
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("magika")
    np.save(folder / "calibration.npy", magika_inputs(CALIBRATION)[0])
    # mse, not kl: KL's clipped range of the second GELU's output cuts the maxima the
    # GlobalMaxPool after it takes (held-out top-1 agreement 35% with kl, 100% with mse).
    result = quantize(magika_path, folder / "calibration.npy", "mse", num_samples=len(CALIBRATION),
                      input_shapes=SHAPES)
    onnx.save(result.model, folder / "magika.int8.onnx")
    x = magika_inputs(HELD_OUT)[0]
    return QuantizedRealModel(folder, folder / "magika.int8.onnx", result, x, _run_each(result.float_model, x),
                  _run_each(result.model, x))


def _agreement(got: np.ndarray, reference: np.ndarray) -> float:
    return float((got.argmax(axis=1) == reference.argmax(axis=1)).mean())


def test_magika_quantizes_with_its_chains_fused(magika):
    """The tanh GELUs are one layer each (no pair inside), the normalizations LayerNormalization
    float islands and the softmax one Softmax; the QDQ model's labels follow float's."""
    ops = [node.op_type for node in magika.result.model.graph.node]
    assert ops.count("LayerNormalization") == 2 and ops.count("Softmax") == 1
    assert "Exp" not in ops and "Reciprocal" not in ops
    kept = {unit.op: unit.reason for unit in magika.result.kept_float}
    assert set(kept) == {"LayerNormalization", "Softmax"}, magika.result.kept_float  # each reported, with its reason
    assert "left float by fwedge's quantizer" in kept["Softmax"], kept
    quantized = {node.input[0] for node in magika.result.model.graph.node if node.op_type == "QuantizeLinear"}
    assert not any("ApplyActivation_" in name and not name.endswith("Mul_5:0") for name in quantized), quantized
    agreement = _agreement(magika.qdq_out, magika.float_out)
    print(f"QDQ vs float top-1 agreement {agreement:.1%} on {len(HELD_OUT)} held-out files")
    assert agreement >= MAGIKA_QDQ_AGREEMENT


def _bundle(magika: QuantizedRealModel, target: str):
    if target not in magika.bundles:
        magika.bundles[target] = export_bundle(magika.qdq_path, target, magika.folder / target, input_shapes=SHAPES)
    return magika.bundles[target]


def _bundle_output(magika: QuantizedRealModel, target: str, count: int | None = None) -> np.ndarray:
    count = len(magika.x) if count is None else count
    got = get_target(target).run(_bundle(magika, target), {"bytes": magika.x[:count]},
                                 exact_int8=target in ("onnx", "openvino"))
    return np.asarray(got["target_label"]).reshape(magika.qdq_out[:count].shape)


def _log_difference(got: np.ndarray, reference: np.ndarray) -> float:
    """The largest difference of log-probabilities where both are above 1e-6 (below it float32's
    exp loses the digits). The logits are the float output of the int8 Gemm (the Softmax reads
    them unquantized): no int8 step to count, so the difference is in nats."""
    inside = (got > 1e-6) & (reference > 1e-6)
    return float(np.abs(np.log(got[inside]) - np.log(reference[inside])).max())


def _scores(magika: QuantizedRealModel, target: str, got: np.ndarray) -> tuple[float, float, float]:
    reference = magika.qdq_out[:len(got)]
    vs_qdq, vs_float = _agreement(got, reference), _agreement(got, magika.float_out[:len(got)])
    nats = _log_difference(got, reference)
    print(f"{target}: top-1 vs ORT-QDQ {vs_qdq:.1%}, vs float {vs_float:.1%} on {len(got)} files; "
          f"log-probabilities {nats:.2e} off ORT-QDQ, probabilities {np.abs(got - reference).max():.2e}")
    return vs_qdq, vs_float, nats


@pytest.mark.parametrize("target", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino),
                                    pytest.param("tflite", marks=pytest.mark.tflite)])
def test_each_runtime_on_magika_is_within_its_bound(magika, target):
    vs_qdq, vs_float, nats = _scores(magika, target, _bundle_output(magika, target))
    assert vs_qdq >= MAGIKA_RUNTIME_AGREEMENT_VS_QDQ[target], f"{target} top-1 {vs_qdq:.1%} against ORT-QDQ"
    assert vs_float >= MAGIKA_QDQ_AGREEMENT, f"{target} top-1 {vs_float:.1%} against float"
    assert nats <= MAGIKA_RUNTIME_LOG_DIFFERENCE[target], f"{target} log-probabilities {nats:.2e} off ORT-QDQ"


@pytest.mark.ncnn
def test_ncnn_refuses_magikas_embedding(magika):
    """ncnn's Embed reads int32 bits from its float blobs, unclamped: the export refuses the
    one-hot embedding, naming its Equal, and writes nothing."""
    from fwedge.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="pjit__one_hot_/Equal.*ncnn's Embed"):
        export_bundle(magika.qdq_path, "ncnn", magika.folder / "ncnn", input_shapes=SHAPES)
    assert not (magika.folder / "ncnn").exists()


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("aarch64", "riscv64", "loongarch64")
def test_c_runtime_on_magika_is_within_its_bound_and_the_same_on_every_arch(magika):
    """x86_64 on every held-out file; aarch64, riscv64 (with V) and loongarch64 under qemu on two:
    the x86_64 bytes."""
    from fwedge.targets import c

    host = _bundle_output(magika, "x86_64")
    vs_qdq, vs_float, nats = _scores(magika, "x86_64", host)
    assert vs_qdq >= MAGIKA_RUNTIME_AGREEMENT_VS_QDQ["c"] and vs_float >= MAGIKA_QDQ_AGREEMENT
    assert nats <= MAGIKA_RUNTIME_LOG_DIFFERENCE["c"], f"C log-probabilities {nats:.2e} off ORT-QDQ"
    for arch in ("aarch64", "riscv64", "loongarch64"):
        cpu = "rv64,v=true,vext_spec=v1.0,vlen=128" if arch == "riscv64" else ""
        got = c.run_harness(_bundle(magika, arch), {"bytes": magika.x[:2]}, cpu=cpu)[0]["target_label"]
        assert np.array_equal(np.asarray(got).reshape(host[:2].shape).view(np.uint8), host[:2].view(np.uint8)), \
            f"C differs between x86_64 and {arch}"


@pytest.mark.parametrize("target", [pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("x86_64", marks=[pytest.mark.cc, pytest.mark.zig])])
def test_float_magika_matches_onnxruntime(magika_path, tmp_path, target):
    """The float model as an fp32 bundle: the same chains fused and lowered (LayerNormalization,
    Softmax, the embedding's float row table), within fp32 tolerance of onnxruntime on the fused
    model (prepare's: the original's E[x^2] - E[x]^2 loses digits to cancellation that the fused
    LayerNormalization keeps: the two ORT runs differ by up to 2.4e-5, on one css file's top two
    probabilities; measured 2026-12-07: tflite 3.6e-7, C x86_64 1.3e-6 off the fused model)."""
    from fwedge.quantization.prepare import load_prepared
    from tolerances import FP32_ATOL, FP32_RTOL

    x = magika_inputs(HELD_OUT)[0]
    bundle = export_bundle(magika_path, target, tmp_path / target, input_shapes=SHAPES)
    assert bundle.precision == "fp32"
    got = np.asarray(get_target(target).run(bundle, {"bytes": x})["target_label"])
    prepared = load_prepared(magika_path, SHAPES)[0]
    assert {"LayerNormalization", "Softmax"} <= {node.op_type for node in prepared.graph.node}
    expected = _run_each(prepared, x)
    assert _labels(expected) == _labels(_run_each(onnx.load(magika_path), x))
    print(f"{target} fp32: {np.abs(got.reshape(expected.shape) - expected).max():.2e} off onnxruntime")
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=f"{target} fp32 'target_label'")


@pytest.mark.parametrize("target", [pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("x86_64", marks=[pytest.mark.cc, pytest.mark.zig])])
def test_fwedge_run_scores_magikas_bundles_against_the_qdq_model(magika, target, wide_console):
    """What a user types: `fwedge run BUNDLE --reference QDQ --data FILES.npy` on the int32
    byte features. Measured 2026-12-07: top-1 agreement 100.00%, SQNR 114.4 dB (tflite) and
    113.8 dB (C); the output is float, so no step is counted."""
    import re

    from click.testing import CliRunner

    from fwedge.cli import cli

    np.save(magika.folder / "held_out.npy", magika.x)
    result = CliRunner().invoke(cli, ["run", str(_bundle(magika, target).path), "--reference", str(magika.qdq_path),
                                      "--data", str(magika.folder / "held_out.npy")])
    assert result.exit_code == 0, result.output
    agreement = float(re.search(r"top-1 agreement ([0-9.]+)%", result.output).group(1)) / 100
    assert f"{len(HELD_OUT)} samples" in result.output and "no step (float output)" in result.output, result.output
    assert agreement >= MAGIKA_RUNTIME_AGREEMENT_VS_QDQ["c" if target == "x86_64" else target], result.output

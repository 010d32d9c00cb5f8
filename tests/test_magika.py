"""magika 1.0.3's file-type classifier (a jax2tf graph converted by tf2onnx: one-hot bytes, a
5-wide Conv, tanh GELUs, two variance-form normalizations, a written-out softmax) quantized by
fwedge on real files and exported to every target that takes it. The metric is the classifier's
own: each bundle's top-1 label against the float model's and against onnxruntime's exact run of
the same QDQ model, and the probabilities' difference in steps of the output's int8 scale."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.targets import get_target
from helpers import QuantizedRealModel
from magika_inputs import CALIBRATION, FILES, HELD_OUT, config, magika_inputs
from tolerances import MAGIKA_QDQ_AGREEMENT, MAGIKA_RUNTIME_AGREEMENT_VS_QDQ

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
    kept = {unit.op for unit in magika.result.kept_float}
    assert kept == {"LayerNormalization"}, magika.result.kept_float
    quantized = {node.input[0] for node in magika.result.model.graph.node if node.op_type == "QuantizeLinear"}
    assert not any("ApplyActivation_" in name and not name.endswith("Mul_5:0") for name in quantized), quantized
    agreement = _agreement(magika.qdq_out, magika.float_out)
    print(f"QDQ vs float top-1 agreement {agreement:.1%} on {len(HELD_OUT)} held-out files")
    assert agreement >= MAGIKA_QDQ_AGREEMENT


def _bundle_output(magika: QuantizedRealModel, target: str) -> np.ndarray:
    if target not in magika.bundles:
        magika.bundles[target] = export_bundle(magika.qdq_path, target, magika.folder / target, input_shapes=SHAPES)
    got = get_target(target).run(magika.bundles[target], {"bytes": magika.x}, exact_int8=target in ("onnx", "openvino"))
    return np.asarray(got["target_label"]).reshape(magika.qdq_out.shape)


@pytest.mark.parametrize("target", ["onnx", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_each_runtime_on_magika_is_within_its_bound(magika, target):
    got = _bundle_output(magika, target)
    vs_qdq, vs_float = _agreement(got, magika.qdq_out), _agreement(got, magika.float_out)
    print(f"{target}: top-1 vs ORT-QDQ {vs_qdq:.1%}, vs float {vs_float:.1%}; "
          f"largest probability difference from ORT-QDQ {np.abs(got - magika.qdq_out).max():.2e}")
    assert vs_qdq >= MAGIKA_RUNTIME_AGREEMENT_VS_QDQ[target], f"{target} top-1 {vs_qdq:.1%} against ORT-QDQ"
    assert vs_float >= MAGIKA_QDQ_AGREEMENT, f"{target} top-1 {vs_float:.1%} against float"

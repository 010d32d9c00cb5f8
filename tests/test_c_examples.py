"""C target on the Fashion-MNIST example models: fp32/int8 fidelity, interpreter bit-exactness, accuracy, all architectures."""
from __future__ import annotations

import numpy as np
import pytest

from fwedge.eval import ort_session
from fwedge.lowered.interp import run_lowered
from fwedge.lowered.lower import lower
from fwedge.targets import C_ARCHES
from op_matrix import output_scale, steps_off
from qdq_helpers import ort_qdq
from test_c_target import c_runner, export
from tolerances import C_FP32_ATOL

pytestmark = pytest.mark.cc


def _example_qdq(path):
    """The BN-folded example model and its onnxruntime QDQ (per-channel int8) version,
    calibrated on 64 training images."""
    from fwedge import ir
    from fwedge.data import Preprocess, open_dataset
    from fwedge.passes.fold_bn import fold_batchnorm

    folded = fold_batchnorm(ir.load(path))
    batch = next(open_dataset("fashion-mnist:train").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                             batch_size=64, limit=64, seed=0))
    return ort_qdq(folded, batch.x)


def _test_images(count: int):
    from fwedge.data import Preprocess, open_dataset

    batch = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                            batch_size=count, limit=count, seed=0))
    return batch.x, batch.y


@pytest.fixture(params=["cnn_small", "mobilenet"])
def example_model(request):
    return request.getfixturevalue(f"{request.param}_path")


@pytest.mark.fashion_mnist
def test_example_model_fp32_and_int8_on_test_images(example_model, tmp_path):
    from fwedge import ir

    x, _ = _test_images(300)
    float_model = ir.load(example_model)
    fp32 = export(float_model, tmp_path / "fp32")
    np.testing.assert_allclose(c_runner().run(fp32, {"input": x})["logits"],
                               ort_session(float_model).run(None, {"input": x})[0], rtol=0, atol=C_FP32_ATOL,
                               err_msg=f"C fp32 {example_model.name}: 'logits'")
    qdq = _example_qdq(example_model)
    int8 = export(qdq, tmp_path / "int8")
    got = c_runner().run(int8, {"input": x})["logits"]
    np.testing.assert_array_equal(got, run_lowered(lower(qdq), {"input": x})["logits"],
                                  err_msg=f"C int8 {example_model.name}: 'logits' vs the interpreter")
    steps = steps_off(ort_session(qdq).run(None, {"input": x})[0], got, output_scale(qdq, "logits"))
    print(f"C int8 {example_model.name}: max {steps.max()} steps from ORT, {int((steps == 1).sum())}/{steps.size} "
          "one step off")
    for bundle in (fp32, int8):
        assert bundle.sizes["arena_bytes"] <= 1.05 * bundle.sizes["arena_lower_bound_bytes"], bundle.sizes


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.zig
@pytest.mark.qemu
def test_example_model_int8_on_every_architecture(example_model, tmp_path):
    from tolerances import INT8_TARGET_ACCURACY_PP

    x, labels = _test_images(10000)
    qdq = _example_qdq(example_model)
    reference = ort_session(qdq).run(None, {"input": x})[0]
    host = c_runner().run(export(qdq, tmp_path / "x86_64"), {"input": x})["logits"]
    drop = abs((host.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()) * 100
    assert drop <= INT8_TARGET_ACCURACY_PP, f"C int8 {example_model.name}: accuracy {drop:.2f} pp from ORT int8"
    for arch in C_ARCHES:
        if arch == "x86_64":
            continue
        emulated = c_runner().run(export(qdq, tmp_path / arch, arch), {"input": x[:1000]})["logits"]
        assert emulated.tobytes() == host[:1000].tobytes(), f"{example_model.name}: {arch} 'logits' bytes differ"

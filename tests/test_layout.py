"""The layout pass (passes/layout.py) on hand-built graphs, and a TF-converted NHWC classifier on every target."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fwedge.eval import ort_session
from fwedge.passes.layout import LAYOUT_KEY, absorb_io_transposes, fold_transposes, io_layouts
from fwedge.passes.simplify import fuse_matmul_bias
from tolerances import FP32_ATOL, FP32_RTOL

FLOAT = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _const(name, shape, scale=1.0):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, metadata=None):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model = onnx.shape_inference.infer_shapes(model)  # the outputs' shapes
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def _nhwc_input(name="x", shape=(1, 8, 8, 3)):
    return helper.make_tensor_value_info(name, FLOAT, list(shape))


def _output(name="y"):
    return helper.make_tensor_value_info(name, FLOAT, None)


def _ops(model):
    return [node.op_type for node in model.graph.node]


def _same(before, after, feeds, after_feeds=None):
    """Both models give the same outputs (onnxruntime, seeded inputs)."""
    onnx.checker.check_model(after)
    expected = ort_session(before).run(None, feeds)
    got = ort_session(after).run(None, after_feeds or feeds)
    for value, want, have in zip(before.graph.output, expected, got):
        np.testing.assert_allclose(have, want, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"output '{value.name}'")


def _conv(x, y, name="conv"):
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[1, 1, 1, 1])


def _conv_weights(name="conv", cin=3, cout=4):
    return [_const(f"{name}.w", (cout, cin, 3, 3), 0.3), _const(f"{name}.b", (cout,))]


def test_an_input_transpose_is_absorbed_and_the_input_becomes_nchw():
    model = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
                    _conv("t", "c"), helper.make_node("Relu", ["c"], ["y"])],
                   [_nhwc_input()], [_output()], _conv_weights())
    absorbed = absorb_io_transposes(fold_transposes(model))
    assert _ops(absorbed) == ["Conv", "Relu"]
    assert [d.dim_value for d in absorbed.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
    assert io_layouts(absorbed) == {"x": "NHWC"}
    x = RNG.random((1, 8, 8, 3), dtype=np.float32)
    _same(model, absorbed, {"x": x}, {"x": x.transpose(0, 3, 1, 2)})


def test_a_transpose_after_an_elementwise_run_is_hoisted_to_the_input_with_its_constants():
    """Keras normalisation before the first Conv: per-channel Sub/Div, a scalar Mul, a Relu."""
    nodes = [helper.make_node("Sub", ["x", "mean"], ["a"]), helper.make_node("Div", ["a", "std"], ["b"]),
             helper.make_node("Mul", ["scale", "b"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 1, 2]), _conv("t", "y")]
    inits = [_const("mean", (3,)), numpy_helper.from_array(np.array([0.5, 2.0, 4.0], np.float32), "std"),
             numpy_helper.from_array(np.array(1.5, np.float32), "scale"), *_conv_weights()]
    model = _model(nodes, [_nhwc_input()], [_output()], inits)
    folded = fold_transposes(model)
    assert _ops(folded) == ["Transpose", "Sub", "Div", "Mul", "Relu", "Conv"]
    assert folded.graph.node[0].input[0] == "x"
    _same(model, folded, {"x": RNG.random((1, 8, 8, 3), dtype=np.float32)})
    assert _ops(absorb_io_transposes(folded)) == ["Sub", "Div", "Mul", "Relu", "Conv"]


def test_an_output_transpose_before_an_elementwise_run_is_sunk_and_absorbed():
    nodes = [_conv("x", "c"), helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Sigmoid", ["t"], ["s"]), helper.make_node("Mul", ["s", "gain"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])], [_output()],
                   [*_conv_weights(), _const("gain", (4,))])
    folded = fold_transposes(model)
    assert _ops(folded) == ["Conv", "Sigmoid", "Mul", "Transpose"]
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    _same(model, folded, {"x": x})
    absorbed = absorb_io_transposes(folded)
    assert _ops(absorbed) == ["Conv", "Sigmoid", "Mul"] and io_layouts(absorbed) == {"y": "NHWC"}
    got = ort_session(absorbed).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), ort_session(model).run(None, {"x": x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg="output 'y'")


def test_inverse_transposes_around_a_run_cancel():
    nodes = [_conv("x", "c"), helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t", "bias"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Transpose", ["r"], ["u"], perm=[0, 3, 1, 2]), _conv("u", "y", "conv2")]
    model = _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])], [_output()],
                   [*_conv_weights(), _const("bias", (4,)), *_conv_weights("conv2", 4, 2)])
    folded = fold_transposes(model)
    assert _ops(folded) == ["Conv", "Add", "Relu", "Conv"]
    _same(model, folded, {"x": RNG.random((1, 3, 8, 8), dtype=np.float32)})


def test_a_keras_flatten_becomes_permuted_dense_weights_and_matmul_bias_a_gemm():
    nodes = [_conv("x", "c"), helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["f"]), helper.make_node("MatMul", ["f", "kernel"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["y"])]
    inits = [*_conv_weights(), numpy_helper.from_array(np.array([-1, 256], np.int64), "shape"),
             _const("kernel", (256, 10), 0.1), _const("bias", (1, 10))]
    model = _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])], [_output()], inits)
    fused = fuse_matmul_bias(fold_transposes(model))
    assert _ops(fused) == ["Conv", "Reshape", "Gemm"]
    _same(model, fused, {"x": RNG.random((1, 3, 8, 8), dtype=np.float32)})


def test_transposes_that_are_not_layout_moves_stay():
    """A Softmax is not element-wise, an input read by a Transpose and by another node cannot
    become NCHW, and a swap of H and W is no layout change: nothing moves, nothing is absorbed."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Softmax", ["t"], ["s"], axis=-1),
             helper.make_node("Transpose", ["s"], ["y"], perm=[0, 1, 3, 2])]
    model = _model(nodes, [_nhwc_input()], [_output(), _output("r")], [])
    after = absorb_io_transposes(fold_transposes(model))
    assert _ops(after) == _ops(model) and io_layouts(after) == {}


def test_a_layout_record_the_model_brings_is_dropped():
    """Only the pass writes fwedge.io_layout: a stranger's model cannot declare its NCHW input NHWC."""
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_nhwc_input()], [_output()], [],
                   metadata={LAYOUT_KEY: json.dumps({"x": "NHWC"})})
    assert io_layouts(absorb_io_transposes(model)) == {}


# --------------------------------------------------------------------------------------------
# A TF-converted classifier: cnn_small as tf2onnx would write it (tests/nhwc_model.py)
# --------------------------------------------------------------------------------------------

TARGETS = ["onnx", pytest.param("openvino", marks=pytest.mark.openvino), pytest.param("tflite", marks=pytest.mark.tflite),
           pytest.param("ncnn", marks=pytest.mark.ncnn), pytest.param("x86_64", marks=[pytest.mark.cc, pytest.mark.zig])]
IMAGES = 200


@pytest.fixture(scope="module")
def tf_model(tmp_path_factory):
    from fwedge.data import Preprocess, open_dataset
    from fwedge.quantization import quantize
    from nhwc_model import build

    folder = tmp_path_factory.mktemp("nhwc")
    float_path = build(folder / "keras_cnn.onnx", elementwise_prefix=True)
    qdq = quantize(float_path, "fashion-mnist:train", method="percentile", num_samples=64).model
    onnx.save(qdq, folder / "keras_cnn.int8.onnx")
    images = next(open_dataset("fashion-mnist:test").batches(
        Preprocess(resize=(28, 28), color="grayscale", layout="NHWC"), IMAGES, limit=IMAGES, seed=0)).x
    return folder, float_path, qdq, images


def test_the_quantized_tf_model_keeps_one_transpose_at_its_nhwc_input(tf_model):
    _, _, qdq, _ = tf_model
    transposes = [node for node in qdq.graph.node if node.op_type == "Transpose"]
    assert len(transposes) == 1 and transposes[0].input[0] == "input_1"
    assert [d.dim_value for d in qdq.graph.input[0].type.tensor_type.shape.dim][1:] == [28, 28, 1]


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("target", TARGETS)
def test_a_tf_converted_nhwc_classifier_runs_on_every_target_in_its_own_layout(tf_model, target, tmp_path):
    """The bundle takes the NHWC images as they are (the manifest says NHWC); int8 within the
    whole-model step criterion of ORT's exact QDQ run, fp32 within the fp32 tolerance (C: its own)."""
    from fwedge.export import export_bundle
    from helpers import run_bundle_exact, runtime_int8_problems
    from op_matrix import output_scale
    from tolerances import C_FP32_ATOL

    folder, float_path, qdq, images = tf_model
    int8 = export_bundle(folder / "keras_cnn.int8.onnx", target, tmp_path / "int8")
    spec = int8.inputs[0]
    assert (spec.layout, spec.source_layout, spec.logical_shape[1:]) == ("NHWC", "NHWC", [28, 28, 1]), spec
    reference = ort_session(qdq).run(None, {"input_1": images})[0]
    candidate = run_bundle_exact(target, int8, {"input_1": images})["logits"]
    problems = runtime_int8_problems(reference, candidate, output_scale(qdq, "logits"))
    assert not problems, f"{target} int8 on {IMAGES} NHWC images: {'; '.join(problems)}"
    fp32 = export_bundle(float_path, target, tmp_path / "fp32")
    expected = ort_session(float_path).run(None, {"input_1": images[:16]})[0]
    got = run_bundle_exact(target, fp32, {"input_1": images[:16]})["logits"]
    atol = C_FP32_ATOL if target in ("x86_64", "aarch64") else FP32_ATOL
    np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=atol, err_msg=f"{target} fp32: 'logits'")


@pytest.mark.fashion_mnist
@pytest.mark.zig
@pytest.mark.qemu("aarch64")
@pytest.mark.qemu("riscv64")
@pytest.mark.qemu("loongarch64")
def test_the_tf_models_c_bundles_give_the_same_bytes_on_every_arch(tf_model, tmp_path):
    from fwedge.export import export_bundle
    from fwedge.targets import get_target

    folder, _, _, images = tf_model
    feeds = {"input_1": images[:32]}
    outputs = {arch: get_target(arch).run(export_bundle(folder / "keras_cnn.int8.onnx", arch, tmp_path / arch), feeds)
               for arch in ("x86_64", "aarch64", "riscv64", "loongarch64")}
    for arch, got in outputs.items():
        assert np.array_equal(got["logits"].view(np.uint8), outputs["x86_64"]["logits"].view(np.uint8)), arch

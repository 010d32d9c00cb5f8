"""ConvTranspose with kernel == stride as 1x1 Conv + DepthToSpace (passes/conv_transpose.py), the
bias Add fused into it (passes/simplify.fuse_conv_bias), and DepthToSpace on each target."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.passes.conv_transpose import conv_transpose_as_depth_to_space
from fwedge.passes.simplify import fuse_conv_bias
from fwedge.targets import ExportOptions, get_target
from tolerances import FP32_ATOL, FP32_RTOL

RNG = np.random.default_rng(7)


def _model(nodes, x_shape, inits, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def _deconv(c_in, c_out, k, stride, size=(4, 5), bias=True, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.normal(size=(c_in, c_out // attrs.get("group", 1), k, k)).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=c_out).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="up", kernel_shape=[k, k], strides=[stride, stride],
                            **attrs)
    return _model([node], [1, c_in, *size], inits)


def _x(model) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return RNG.uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize(("c_in", "c_out", "k", "bias"), [(4, 3, 2, True), (8, 2, 3, False), (3, 16, 4, True),
                                                           (1, 1, 2, True)])
def test_the_rewrite_computes_the_conv_transpose(c_in, c_out, k, bias):
    model = _deconv(c_in, c_out, k, k, bias=bias)
    rewritten = conv_transpose_as_depth_to_space(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "DepthToSpace"]
    x = _x(model)
    np.testing.assert_allclose(ort_session(rewritten).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"k": 3, "stride": 2}, "only a square kernel equal to its stride"),
    ({"k": 2, "stride": 2, "pads": [1, 1, 1, 1]}, "pads or output_padding"),
    ({"k": 2, "stride": 2, "group": 2}, "group other than 1"),
    ({"k": 2, "stride": 2, "output_padding": [1, 1]}, "pads or output_padding"),
])
def test_other_conv_transposes_stay_and_the_lowering_says_why(attrs, reason):
    from fwedge.lowered.lower import lower

    k, stride = attrs.pop("k"), attrs.pop("stride")
    model = _deconv(4, 4, k, stride, **attrs)
    assert [n.op_type for n in conv_transpose_as_depth_to_space(model).graph.node] == ["ConvTranspose"]
    with pytest.raises(UnsupportedOpError, match=f"'up' \\(ConvTranspose.*{reason}"):
        lower(model)


def test_an_activation_moves_before_the_rearrangement():
    """ConvTranspose -> Relu becomes Conv -> Relu -> DepthToSpace: quantization then fuses the
    Relu into the Conv's range; the output name stays the model's."""
    model = _deconv(3, 2, 2, 2)
    model.graph.node[0].output[0] = "t"
    model.graph.node.append(helper.make_node("Relu", ["t"], ["y"], name="relu"))
    rewritten = conv_transpose_as_depth_to_space(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "DepthToSpace"]
    assert rewritten.graph.node[-1].output[0] == "y"
    x = _x(model)
    np.testing.assert_allclose(ort_session(rewritten).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0],
                               rtol=FP32_RTOL, atol=FP32_ATOL)


def test_a_qdq_conv_transpose_from_onnxruntimes_quantizer_is_rewritten_on_its_int8_weights():
    """DQ(int8 weight, per-channel axis 1) -> ConvTranspose -> Q: the int8 data is rearranged,
    the scales tiled, and the Conv's output gets the same Q/DQ pair, so onnxruntime computes
    the same values before and after."""
    from op_matrix import OP_CASES, qdq_model

    qdq = qdq_model(next(c for c in OP_CASES if c.id == "conv_transpose_2x2_s2"), "ort")
    assert "ConvTranspose" in [n.op_type for n in qdq.graph.node]
    rewritten = conv_transpose_as_depth_to_space(qdq)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ConvTranspose" not in ops and ops.count("DepthToSpace") == 1
    x = RNG.uniform(-1, 1, (2, 4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(ort_session(rewritten).run(["y"], {"x": x})[0], ort_session(qdq).run(["y"], {"x": x})[0])


def test_a_bias_add_and_batchnorm_after_a_conv_transpose_fold_into_it():
    """PP-OCR det's DB head: ConvTranspose -> Add(per-channel constant) -> BatchNormalization."""
    from fwedge.quantization import prepare

    model = _deconv(4, 3, 2, 2, bias=False)
    model.graph.node[0].output[0] = "t"
    bn = [numpy_helper.from_array(RNG.uniform(0.5, 1.5, 3).astype(np.float32), name) for name in ("s", "v")]
    bn += [numpy_helper.from_array(RNG.normal(size=3).astype(np.float32), name) for name in ("o", "m")]
    model.graph.initializer.extend(bn + [numpy_helper.from_array(RNG.normal(size=(1, 3, 1, 1)).astype(np.float32), "c")])
    model.graph.node.extend([helper.make_node("Add", ["t", "c"], ["a"], name="bias"),
                             helper.make_node("BatchNormalization", ["a", "s", "o", "m", "v"], ["y"], name="bn")])
    fused = fuse_conv_bias(model)
    assert [n.op_type for n in fused.graph.node] == ["ConvTranspose", "BatchNormalization"]
    prepared = prepare(model)
    assert [n.op_type for n in prepared.graph.node] == ["Conv", "DepthToSpace"]
    x = _x(model)
    np.testing.assert_allclose(ort_session(prepared).run(None, {"x": x})[0], ort_session(model).run(None, {"x": x})[0],
                               rtol=1e-4, atol=1e-4)  # BN folding reorders float32 products


def test_a_varying_add_is_not_a_bias():
    model = _deconv(2, 3, 2, 2)
    model.graph.node[0].output[0] = "t"
    model.graph.initializer.append(numpy_helper.from_array(RNG.normal(size=(1, 3, 8, 10)).astype(np.float32), "c"))
    model.graph.node.append(helper.make_node("Add", ["t", "c"], ["y"], name="add"))
    assert [n.op_type for n in fuse_conv_bias(model).graph.node] == ["ConvTranspose", "Add"]


@pytest.mark.parametrize("target", [pytest.param("x86_64", marks=pytest.mark.zig), pytest.param("ncnn", marks=pytest.mark.ncnn),
                                    pytest.param("tflite", marks=pytest.mark.tflite)])
def test_depth_to_space_crd_runs_where_the_runtime_has_it(target, tmp_path):
    """CRD (PyTorch's PixelShuffle order): the C runtime and ncnn's PixelShuffle take it;
    TFLite's DEPTH_TO_SPACE is DCR only, so the TFLite writer names the node and refuses."""
    model = _model([helper.make_node("DepthToSpace", ["x"], ["y"], name="shuffle", blocksize=2, mode="CRD")],
                   [1, 8, 3, 4], [])
    options = ExportOptions(source_sha256="0" * 64)
    if target == "tflite":
        with pytest.raises(UnsupportedOpError, match="'shuffle'.*DCR"):
            get_target(target).export(model, tmp_path / target, options)
        return
    x = _x(model)
    bundle = get_target(target).export(model, tmp_path / target, options)
    got = get_target(target).run(bundle, {"x": x})["y"]
    np.testing.assert_array_equal(got.reshape(1, 2, 6, 8), ort_session(model).run(None, {"x": x})[0])

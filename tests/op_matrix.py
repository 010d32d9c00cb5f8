"""The single-node op matrix every target is checked on: float models, inputs and QDQ versions.

API (for the TFLite, NCNN, OpenVINO, C and ONNX target tests):

    from op_matrix import OP_CASES, op_case_ids, qdq_model, random_feeds, steps_off

    @pytest.mark.parametrize("case", OP_CASES, ids=op_case_ids())
    def test_my_target(case, tmp_path):
        feeds = random_feeds(case, batch=2)          # name -> float32 NCHW, seeded
        float_model = case.model                     # onnx.ModelProto, inputs [N, ...]
        int8_model = qdq_model(case)                 # fwedge's own quantizer, cached per case
        ...compare to fwedge.eval.ort_session(model).run(None, feeds)...
        steps = steps_off(reference, candidate, int8_model)   # |diff| in output quant steps

`OpCase` fields: `id` (pytest id), `model` (float ONNX, batch dim "N", single node unless
noted), `kinds` (the lowered kinds it exercises), `input_range` ((low, high) of the seeded
uniform inputs; calibration uses the same distribution), `int8` (False when the case has no
integer version), `refused_by` (targets that cannot express the case and must refuse it with
the node's name, e.g. ncnn for a strided Slice), `int8_kinds` (the int8 version's kinds when they
differ: a float Div by 3 is a `div`, its int8 version a `mul` by the requantized reciprocal),
`ort_int8_kinds` (those of onnxruntime's quantizer's version, when its layout differs). `qdq_model(case, quantizer="fwedge"|"ort")` builds the int8 model with the
project quantizer (fwedge/quantization, minmax ranges over 16 seeded samples) or onnxruntime's
quantize_static (QDQ, per-channel, QInt8/QInt8); both give the standard QDQ layout.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
CALIBRATION_SAMPLES = 16


@dataclass(frozen=True)
class OpCase:
    """One single-node model of the op matrix."""

    id: str
    model: onnx.ModelProto = field(compare=False, repr=False)
    kinds: tuple[str, ...] = ()
    input_range: tuple[float, float] = (-1.0, 1.0)
    int8: bool = True
    refused_by: tuple[str, ...] = ()  # targets that must refuse the case, naming its node
    int8_kinds: tuple[str, ...] | None = None  # the int8 version's kinds, when not `kinds`
    # The kinds of onnxruntime's quantize_static version, when its layout differs: it puts a Q/DQ
    # pair after a SiLU's Sigmoid, so the pair lowers as it is written, a sigmoid and a mul.
    ort_int8_kinds: tuple[str, ...] | None = None


def _model(nodes, inputs: dict[str, list[int]], output_shape: list[int], inits=(), opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "op_case",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(shape[1:])) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + list(output_shape[1:]))],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _conv_case(case_id, c_in, c_out, size, kernel, stride=1, pads=(0, 0, 0, 0), dilation=1, group=1,
               activation=None, bias=True, seed=0, auto_pad=None) -> OpCase:
    rng = np.random.default_rng(seed)
    fan_in = c_in // group * kernel * kernel
    w = (rng.standard_normal((c_out, c_in // group, kernel, kernel)) / np.sqrt(fan_in)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(c_out)).astype(np.float32), "B"))
        inputs.append("B")
    conv_out = "y" if activation is None else "conv_out"
    geometry = {"auto_pad": auto_pad} if auto_pad else {"pads": list(pads)}
    nodes = [helper.make_node("Conv", inputs, [conv_out], name="conv", kernel_shape=[kernel, kernel],
                              strides=[stride, stride], dilations=[dilation, dilation], group=group, **geometry)]
    if activation == "relu":
        nodes.append(helper.make_node("Relu", [conv_out], ["y"], name="relu"))
    elif activation == "relu6":
        inits += [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
        nodes.append(helper.make_node("Clip", [conv_out, "lo", "hi"], ["y"], name="clip"))
    effective = (kernel - 1) * dilation + 1
    out_h = (size + pads[0] + pads[2] - effective) // stride + 1
    out_w = (size + pads[1] + pads[3] - effective) // stride + 1
    if auto_pad:  # SAME_UPPER / SAME_LOWER: ceil(size / stride) positions
        out_h = out_w = -(-size // stride)
    kind = "depthwise_conv2d" if group == c_in and group > 1 else "conv2d"
    return OpCase(case_id, _model(nodes, {"x": [1, c_in, size, size]}, [1, c_out, out_h, out_w], inits), (kind,),
                  (-1.0, 1.0) if activation is None else (-2.0, 4.0))


def _unary(case_id, op, kind, shape=(1, 5, 6, 6), input_range=(-4.0, 4.0), **attrs) -> OpCase:
    node = helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)
    opset = 14 if op == "HardSwish" else OPSET  # HardSwish exists from opset 14
    return OpCase(case_id, _model([node], {"x": list(shape)}, list(shape), opset=opset), (kind,), input_range)


def _silu(case_id, mul_inputs, shape=(1, 5, 6, 6)) -> OpCase:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"),
             helper.make_node("Mul", mul_inputs, ["y"], name="mul")]
    return OpCase(case_id, _model(nodes, {"x": list(shape)}, list(shape)), ("silu",), (-6.0, 6.0),
                  ort_int8_kinds=("sigmoid", "mul"))


def _pool(case_id, op, kernel, stride, pads=(0, 0, 0, 0), size=9, channels=3, **attrs) -> OpCase:
    node = helper.make_node(op, ["x"], ["y"], name=op.lower(), kernel_shape=[kernel, kernel],
                            strides=[stride, stride], pads=list(pads), **attrs)
    out = [(size + pads[0] + pads[2] - kernel) // stride + 1, (size + pads[1] + pads[3] - kernel) // stride + 1]
    kind = "max_pool" if op == "MaxPool" else "avg_pool"
    return OpCase(case_id, _model([node], {"x": [1, channels, size, size]}, [1, channels] + out), (kind,))


def _resize(case_id, shape, out, transform, rounding, mode="nearest", refused_by=()) -> OpCase:
    factors = np.array([o / i for o, i in zip(out, shape)], np.float32)
    inits = [numpy_helper.from_array(factors, "scales")]
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode=mode,
                            coordinate_transformation_mode=transform, nearest_mode=rounding)
    kind = "resize_linear" if mode == "linear" else "resize_nearest"
    return OpCase(case_id, _model([node], {"x": shape}, out, inits), (kind,), refused_by=refused_by)


def _conv_transpose(case_id, c_in, c_out, size, kernel, rng, relu=False) -> OpCase:
    """A ConvTranspose with kernel == stride (the DB head's upsampling), bias, optional Relu."""
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (c_in, c_out, kernel, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.2, c_out).astype(np.float32), "b")]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t" if relu else "y"], name="deconv",
                              kernel_shape=[kernel, kernel], strides=[kernel, kernel])]
    if relu:
        nodes.append(helper.make_node("Relu", ["t"], ["y"], name="relu"))
    out = [1, c_out, size[0] * kernel, size[1] * kernel]
    return OpCase(case_id, _model(nodes, {"x": [1, c_in, *size]}, out, inits), ("conv2d", "depth_to_space"))


def _layer_norm(case_id, shape, rng) -> OpCase:
    """LayerNormalization (opset 17) over the last axis with seeded gamma and beta; float only for
    now: in an int8 model it is a float island (no int8 version to compare step by step)."""
    depth = shape[-1]
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, depth).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, depth).astype(np.float32), "beta")]
    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="layer_norm", axis=-1,
                            epsilon=1e-5)
    return OpCase(case_id, _model([node], {"x": shape}, shape, inits, opset=17), ("layer_norm",), (-2.0, 3.0),
                  int8=False)


def _layer_norm_chain(rng) -> OpCase:
    """The chain exporters write for a LayerNorm (opset 13): ReduceMean, Sub, Pow 2, ReduceMean,
    Add eps, Sqrt, Div, Mul gamma, Add beta; passes/layer_norm.py fuses it into one layer_norm."""
    shape, depth = [1, 5, 12], 12

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    inits = [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-6), "eps"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, depth).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, depth).astype(np.float32), "beta")]
    nodes = [node("ReduceMean", ["x"], "mean", axes=[-1]), node("Sub", ["x", "mean"], "centered"),
             node("Pow", ["centered", "two"], "squares"), node("ReduceMean", ["squares"], "var", axes=[-1]),
             node("Add", ["var", "eps"], "var_eps"), node("Sqrt", ["var_eps"], "std"),
             node("Div", ["centered", "std"], "normalized"), node("Mul", ["normalized", "gamma"], "scaled"),
             node("Add", ["scaled", "beta"], "y")]
    return OpCase("layer_norm_chain", _model(nodes, {"x": shape}, shape, inits), ("layer_norm",), (-2.0, 3.0),
                  int8=False)


def _embedding_case(rng) -> OpCase:
    """magika's one-hot embedding: int32 indices, Equal against arange(10), Cast, MatMul [10, 5];
    the indices run over -3..12, so some match no row (their one-hot is zero: the zero row)."""
    inits = [numpy_helper.from_array(np.array([-1, 6, 1], np.int64), "shape"),
             numpy_helper.from_array(np.arange(10, dtype=np.int32).reshape(1, 1, 10), "arange"),
             numpy_helper.from_array(rng.standard_normal((10, 5)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["column"], name="column"),
             helper.make_node("Equal", ["column", "arange"], ["hot"], name="one_hot"),
             helper.make_node("Cast", ["hot"], ["hot_float"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["hot_float", "w"], ["y"], name="embed")]
    model = _model(nodes, {"x": [1, 6]}, [1, 6, 5], inits)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    del model.graph.value_info[:]  # inferred for a float input
    model = onnx.shape_inference.infer_shapes(model)
    return OpCase("embedding_one_hot", model, ("embedding",), input_range=(-3.0, 12.0), refused_by=("ncnn",))


def _take_cases() -> list[OpCase]:
    """Slice (channels and rows; strided with a negative step), Split + Concat, Gather (a channel
    list; a scalar row index that drops the axis)."""
    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    def node(op, inputs, outputs=("y",), **attrs):
        return helper.make_node(op, list(inputs), list(outputs), name=op.lower(), **attrs)

    return [
        OpCase("slice_channels_rows", _model([node("Slice", ["x", "s", "e", "a"])], {"x": [1, 5, 6, 7]}, [1, 3, 3, 7],
                                             [ints("s", [1, 2]), ints("e", [4, -1]), ints("a", [1, 2])]), ("take",)),
        OpCase("slice_strided_reverse", _model(
            [node("Slice", ["x", "s", "e", "a", "st"])], {"x": [1, 3, 6, 7]}, [1, 3, 3, 4],
            [ints("s", [0, -1]), ints("e", [6, -100]), ints("a", [2, 3]), ints("st", [2, -2])]), ("take",),
            refused_by=("ncnn",)),
        # After a 1x1 conv, as YOLO heads split their box and class channels.
        OpCase("conv_split_concat", _model(
            [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             node("Split", ["c", "sizes"], ["a", "b"], axis=1), helper.make_node("Concat", ["b", "a"], ["y"], name="concat", axis=1)],
            {"x": [1, 3, 4, 5]}, [1, 6, 4, 5],
            [ints("sizes", [2, 4]), numpy_helper.from_array(np.random.default_rng(3).normal(0, 0.5, (6, 3, 1, 1)).astype(np.float32), "w")]),
            ("conv2d", "take", "concat")),
        OpCase("gather_channels", _model([node("Gather", ["x", "i"], axis=1)], {"x": [1, 5, 4, 4]}, [1, 4, 4, 4],
                                         [ints("i", [3, 0, 1, -1])]), ("take",)),
        OpCase("gather_scalar_row", _model([node("Gather", ["x", "i"], axis=2)], {"x": [1, 3, 5, 6]}, [1, 3, 6],
                                           [numpy_helper.from_array(np.array(2, np.int64), "i")]), ("take",),
               refused_by=("ncnn",)),
    ]


def _matmul_cases() -> list[OpCase]:
    """Attention's matrix products: MatMul of two activations (Q.K^T, P.V) on [1, T, K] and on
    [1, heads, T, K] (batch_matmul), a projection by a constant weight of a [1, T, K] input
    (fully_connected, row by row), and a Softmax over the last axis of [1, heads, T, T]."""
    def matmul(a, b, out, inits=()):
        node = helper.make_node("MatMul", ["x", "x2" if not inits else "W"], ["y"], name="matmul")
        inputs = {"x": a} if inits else {"x": a, "x2": b}
        return _model([node], inputs, out, inits)

    w = np.random.default_rng(21).normal(0, 0.3, (12, 10)).astype(np.float32)
    return [
        # An asymmetric range: both inputs' zero points far from 0 (-64 with minmax).
        OpCase("matmul_activations_3d", matmul([1, 6, 8], [1, 8, 5], [1, 6, 5]), ("batch_matmul",), (-1.0, 3.0)),
        OpCase("matmul_activations_4d", matmul([1, 2, 6, 8], [1, 2, 8, 5], [1, 2, 6, 5]), ("batch_matmul",)),
        OpCase("matmul_rank3_weight", matmul([1, 6, 12], None, [1, 6, 10], [numpy_helper.from_array(w, "W")]),
               ("fully_connected",)),
        _unary("softmax_4d_last_axis", "Softmax", "softmax", shape=(1, 2, 6, 7), input_range=(-2.0, 2.0), axis=-1),
    ]


def _softmax_cases() -> list[OpCase]:
    """Softmax over the axes real models take it on, each stored somewhere other than innermost
    in some target: the channels of [1, C, H, W] (a class map), H of it (a keypoint head's
    spatial softmax; W is softmax_4d_last_axis), W of a one-channel [1, 1, H, W] (a heatmap: its
    W axis is not innermost in NHWC either, though the bytes are NCHW's), the time axis of
    [1, T, K], and the D axis of a rank-5 [1, C, D, H, W]."""
    return [
        _unary("softmax_4d_channels", "Softmax", "softmax", shape=(1, 5, 4, 3), input_range=(-3.0, 3.0), axis=1),
        _unary("softmax_4d_axis2", "Softmax", "softmax", shape=(1, 3, 7, 4), input_range=(-3.0, 3.0), axis=2),
        _unary("softmax_4d_last_one_channel", "Softmax", "softmax", shape=(1, 1, 4, 6), input_range=(-3.0, 3.0),
               axis=-1),
        _unary("softmax_3d_axis1", "Softmax", "softmax", shape=(1, 6, 5), input_range=(-3.0, 3.0), axis=1),
        _unary("softmax_5d_axis2", "Softmax", "softmax", shape=(1, 2, 5, 3, 4), input_range=(-3.0, 3.0), axis=2),
    ]


def _build_cases() -> list[OpCase]:
    rng = np.random.default_rng(1)
    cases = [
        _conv_case("conv_3x3_s1_p1", 3, 5, 8, 3, 1, (1, 1, 1, 1)),
        _conv_case("conv_3x3_s2_odd", 7, 9, 9, 3, 2, (0, 0, 0, 0)),
        _conv_case("conv_5x5_s2_asym_pad", 4, 6, 10, 5, 2, (1, 2, 2, 1)),
        _conv_case("conv_3x3_dil2", 3, 4, 9, 3, 1, (2, 2, 2, 2), dilation=2),
        _conv_case("conv_1x1", 8, 6, 5, 1),
        # one input channel (a first layer on a grey image): on aarch64 it reads a padded copy
        _conv_case("conv_1ch_3x3_p1_c16", 1, 16, 10, 3, 1, (1, 1, 1, 1)),
        _conv_case("conv_1ch_5x5_asym_pad", 1, 8, 11, 5, 1, (2, 1, 1, 2)),
        # An even kernel and an odd total: SAME_UPPER and SAME_LOWER put the extra pixel apart.
        _conv_case("conv_4x4_s2_same_upper", 3, 4, 9, 4, 2, auto_pad="SAME_UPPER"),
        _conv_case("conv_4x4_s2_same_lower", 3, 4, 9, 4, 2, auto_pad="SAME_LOWER"),
        _conv_case("conv_group2", 4, 6, 7, 3, 1, (1, 1, 1, 1), group=2),
        _conv_case("conv_no_bias_relu", 3, 5, 6, 3, 1, (1, 1, 1, 1), activation="relu", bias=False),
        _conv_case("conv_relu6", 3, 4, 6, 3, 2, (1, 1, 1, 1), activation="relu6"),
        _conv_case("depthwise_3x3", 6, 6, 8, 3, 1, (1, 1, 1, 1), group=6),
        _conv_case("depthwise_3x3_s2_mult2", 3, 6, 9, 3, 2, (1, 1, 1, 1), group=3),
        _conv_case("depthwise_relu6", 5, 5, 7, 3, 1, (1, 1, 1, 1), group=5, activation="relu6"),
        # sixteen channels and more: the NEON tile path, which on aarch64 reads a padded copy
        _conv_case("depthwise_5x5_s2_asym_c24", 24, 24, 11, 5, 2, (1, 2, 2, 1), group=24),
        _conv_case("depthwise_3x3_dil2_c32", 32, 32, 9, 3, 1, (2, 2, 2, 2), dilation=2, group=32, activation="relu"),
    ]
    w = (rng.standard_normal((10, 12)) / np.sqrt(12)).astype(np.float32)
    b = (0.1 * rng.standard_normal(10)).astype(np.float32)
    cases.append(OpCase("fully_connected", _model(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc", transB=1)], {"x": [1, 12]}, [1, 10],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]), ("fully_connected",)))
    cases.append(OpCase("matmul", _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], {"x": [1, 12]}, [1, 10],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")]), ("fully_connected",)))
    shape = [1, 4, 5, 5]
    cases.append(OpCase("add", _model(
        [helper.make_node("Add", ["x", "x2"], ["y"], name="add")], {"x": shape, "x2": shape}, shape), ("add",)))
    cases.append(OpCase("add_relu", _model(
        [helper.make_node("Add", ["x", "x2"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")],
        {"x": shape, "x2": shape}, shape), ("add",)))
    bias = numpy_helper.from_array((0.5 * rng.standard_normal((1, 4, 1, 1))).astype(np.float32), "C")
    cases.append(OpCase("add_channel_constant", _model(
        [helper.make_node("Add", ["x", "C"], ["y"], name="add")], {"x": shape}, shape, [bias]), ("add",)))
    cases.append(OpCase("mul", _model(
        [helper.make_node("Mul", ["x", "x2"], ["y"], name="mul")], {"x": shape, "x2": shape}, shape), ("mul",)))
    cases.append(OpCase("mul_se_broadcast", _model(
        [helper.make_node("Mul", ["x", "x2"], ["y"], name="mul")], {"x": shape, "x2": [1, 4, 1, 1]}, shape), ("mul",)))
    cases += [
        _pool("maxpool_2x2_s2", "MaxPool", 2, 2, size=8),
        _pool("maxpool_3x3_s2_p1", "MaxPool", 3, 2, (1, 1, 1, 1)),
        _pool("avgpool_2x2_s2", "AveragePool", 2, 2, size=8),
        _pool("avgpool_3x3_s1_p1", "AveragePool", 3, 1, (1, 1, 1, 1), size=6),
    ]
    cases.append(OpCase("global_avg_pool", _model(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], {"x": [1, 5, 6, 6]}, [1, 5, 1, 1]),
        ("global_avg_pool",)))
    cases.append(OpCase("global_max_pool", _model(
        [helper.make_node("GlobalMaxPool", ["x"], ["y"], name="gmp")], {"x": [1, 5, 6, 6]}, [1, 5, 1, 1]),
        ("max_pool", "reshape")))
    # magika's: GlobalMaxPool over the length of a rank-3 [N, C, L] tensor.
    cases.append(OpCase("global_max_pool_1d", _model(
        [helper.make_node("GlobalMaxPool", ["x"], ["y"], name="gmp")], {"x": [1, 6, 20]}, [1, 6, 1]),
        ("max_pool", "reshape")))
    cases.append(_embedding_case(rng))
    cases.append(OpCase("concat_channels", _model(
        [helper.make_node("Concat", ["x", "x2"], ["y"], name="concat", axis=1)],
        {"x": [1, 3, 4, 4], "x2": [1, 5, 4, 4]}, [1, 8, 4, 4]), ("concat",)))
    cases.append(OpCase("flatten", _model(
        [helper.make_node("Flatten", ["x"], ["y"], name="flatten", axis=1)], {"x": [1, 3, 4, 5]}, [1, 60]),
        ("reshape",)))
    target_shape = numpy_helper.from_array(np.array([0, 6, 10], dtype=np.int64), "shape")
    cases.append(OpCase("reshape_3d", _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], {"x": [1, 60]}, [1, 6, 10],
        [target_shape]), ("reshape",)))
    pads = numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64), "pads")
    cases.append(OpCase("pad", _model(
        [helper.make_node("Pad", ["x", "pads"], ["y"], name="pad")], {"x": [1, 3, 5, 5]}, [1, 3, 8, 8], [pads]),
        ("pad",)))
    cases += [
        _unary("relu", "Relu", "relu"),
        _unary("hardswish", "HardSwish", "hardswish"),
        _unary("hardsigmoid", "HardSigmoid", "hardsigmoid", alpha=0.2, beta=0.5),
        _unary("sigmoid", "Sigmoid", "sigmoid"),
        # YOLOv8's SiLU, x * Sigmoid(x), in both Mul input orders: one silu layer.
        _silu("silu", ["x", "s"]),
        _silu("silu_swapped", ["s", "x"]),
        _unary("tanh", "Tanh", "tanh"),
        _unary("leaky_relu", "LeakyRelu", "leaky_relu", alpha=0.1),
        _unary("softmax", "Softmax", "softmax", shape=(1, 10), input_range=(-3.0, 3.0), axis=-1),
        # LayerNorm's pieces standing alone: Sqrt of a positive input, Pow by 2, Div by a constant.
        _unary("sqrt", "Sqrt", "sqrt", input_range=(0.05, 4.0)),
        OpCase("pow_2", _model([helper.make_node("Pow", ["x", "two"], ["y"], name="pow")], {"x": [1, 5, 6, 6]},
                               [1, 5, 6, 6], [numpy_helper.from_array(np.array(2.0, np.float32), "two")]),
               ("square",), (-3.0, 3.0)),
        # Div by 3 stays a true division in float (1/3 is inexact); by 4 it is a mul by 0.25 (exact).
        OpCase("div_constant", _model([helper.make_node("Div", ["x", "d"], ["y"], name="div")], {"x": [1, 3, 4, 5]},
                                      [1, 3, 4, 5], [numpy_helper.from_array(np.float32(3.0), "d")]), ("div",),
               int8_kinds=("mul",)),
        _layer_norm("layer_norm_3d", [1, 6, 16], np.random.default_rng(17)),
        _layer_norm("layer_norm_2d", [1, 24], np.random.default_rng(18)),
        _layer_norm_chain(np.random.default_rng(19)),
        OpCase("div_power_of_two", _model([helper.make_node("Div", ["x", "d"], ["y"], name="div")], {"x": [1, 3, 4, 5]},
                                          [1, 3, 4, 5], [numpy_helper.from_array(np.float32(4.0), "d")]), ("mul",)),
    ]
    # Nearest Resize as FPN necks (PP-OCR det: asymmetric, floor) and torch's Upsample write it,
    # a half_pixel x2 (the same tables), and ratios that are no integers (x1.6, x1.5).
    cases += [
        _resize("resize_nearest_x2", [1, 4, 5, 6], [1, 4, 10, 12], "asymmetric", "floor"),
        _resize("resize_nearest_half_pixel_x2", [1, 3, 4, 4], [1, 3, 8, 8], "half_pixel", "round_prefer_floor"),
        _resize("resize_nearest_x1.6_x1.5", [1, 3, 5, 6], [1, 3, 8, 9], "asymmetric", "floor"),
        # corners aligned (TF1's align_corners=True), ties rounded up (by sizes: tests/test_resize.py,
        # since a sizes constant fixes the batch the matrix varies)
        _resize("resize_nearest_align_corners_x1.5_x2", [1, 3, 4, 5], [1, 3, 6, 10], "align_corners",
                "round_prefer_ceil", refused_by=("ncnn",)),  # ncnn's nearest is floor(x * in / out) only
    ]
    # Bilinear Resize as torch's interpolate (half_pixel; align_corners=True), TF's (asymmetric:
    # ncnn's Interp has no such rule and refuses it) and a downsampling, ratios no integers.
    linear = functools.partial(_resize, rounding="round_prefer_floor", mode="linear")
    cases += [
        linear("resize_linear_half_pixel_x2", [1, 3, 4, 5], [1, 3, 8, 10], "half_pixel"),
        linear("resize_linear_align_corners_x1.6_x1.5", [1, 3, 5, 6], [1, 3, 8, 9], "align_corners"),
        linear("resize_linear_asymmetric_x2", [1, 4, 5, 6], [1, 4, 10, 12], "asymmetric", refused_by=("ncnn",)),
        linear("resize_linear_pytorch_half_pixel_down", [1, 3, 8, 9], [1, 3, 4, 6], "pytorch_half_pixel"),
    ]
    # ConvTranspose with kernel == stride (PP-OCR det's DB head: 2x2 stride 2, then BN + Relu),
    # rewritten as a 1x1 Conv + DepthToSpace; and a DepthToSpace of its own (sub-pixel upsampling).
    cases += [
        _conv_transpose("conv_transpose_2x2_s2", 4, 3, (5, 6), 2, rng),
        _conv_transpose("conv_transpose_3x3_s3_relu", 5, 2, (3, 4), 3, rng, relu=True),
        OpCase("depth_to_space_dcr", _model(
            [helper.make_node("DepthToSpace", ["x"], ["y"], name="d2s", blocksize=2, mode="DCR")],
            {"x": [1, 12, 3, 4]}, [1, 3, 6, 8]), ("depth_to_space",)),
    ]
    cases += _take_cases()
    cases += _matmul_cases()
    cases += _softmax_cases()
    # YOLOv8's DFL head: Transpose(0, 2, 1, 3) of [1, 4, 16, A], Softmax over the 16 bins (axis 1);
    # a Transpose of the channels to the end; the box decode's Sub of two activations (float).
    cases += [
        OpCase("transpose_0213_softmax_axis1", _model(
            [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["t"], ["y"], name="softmax", axis=1)],
            {"x": [1, 4, 6, 10]}, [1, 6, 4, 10]), ("transpose", "softmax"), (-3.0, 3.0), int8=False),
        OpCase("conv_transpose_hw", _model(
            [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
             # 3x3: OpenVINO 2026.4's ConvertWeightCompressedConv1x1ToMatmul throws on a 1x1 conv of a
             # transposed int8 tensor (its shape check reads the pre-transpose dims).
             helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
            {"x": [1, 3, 4, 5]}, [1, 2, 5, 4],
            [numpy_helper.from_array(np.random.default_rng(4).normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.random.default_rng(5).normal(0, 0.3, (2, 4, 3, 3)).astype(np.float32), "w2")]),
            ("conv2d", "transpose")),
        OpCase("transpose_rank3", _model([helper.make_node("Transpose", ["x"], ["y"], name="transpose", perm=[0, 2, 1])],
                                         {"x": [1, 6, 7]}, [1, 7, 6]), ("transpose",)),
        OpCase("sub_activations", _model([helper.make_node("Sub", ["x", "z"], ["y"], name="sub")],
                                         {"x": [1, 3, 4, 5], "z": [1, 3, 4, 5]}, [1, 3, 4, 5]), ("add", "mul"), int8=False),
    ]
    # PRelu as exporters write it: slope (C, 1, 1) after a conv (MTCNN), (C,) after a Gemm.
    slope = numpy_helper.from_array(rng.uniform(0.05, 0.4, (5, 1, 1)).astype(np.float32), "slope")
    cases.append(OpCase("prelu_channels", _model(
        [helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")], {"x": [1, 5, 6, 6]}, [1, 5, 6, 6], [slope]),
        ("prelu",), (-4.0, 4.0)))
    slope = numpy_helper.from_array(rng.uniform(-0.2, 0.3, 12).astype(np.float32), "slope")
    cases.append(OpCase("prelu_2d", _model(
        [helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")], {"x": [1, 12]}, [1, 12], [slope]),
        ("prelu",), (-4.0, 4.0)))
    return cases


OP_CASES: list[OpCase] = _build_cases()


def op_case_ids() -> list[str]:
    """pytest ids of OP_CASES."""
    return [case.id for case in OP_CASES]


def input_shapes(case: OpCase) -> dict[str, list[int]]:
    """Input name -> shape with batch 1."""
    from fwedge import ir

    return {v.name: [1] + [int(d) for d in ir.shape_of(v)[1:]] for v in ir.graph_inputs(case.model)}


def random_feeds(case: OpCase, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded uniform float32 inputs in case.input_range, shape [batch, ...]; int32 inputs
    (indices) uniform integers in the range, its end included."""
    from fwedge import ir

    rng = np.random.default_rng(seed)
    low, high = case.input_range
    integer = {v.name for v in ir.graph_inputs(case.model) if ir.input_dtype(v) == np.int32}
    return {name: (rng.integers(int(low), int(high) + 1, size=[batch] + shape[1:]).astype(np.int32) if name in integer
                   else rng.uniform(low, high, size=[batch] + shape[1:]).astype(np.float32))
            for name, shape in input_shapes(case).items()}


@functools.lru_cache(maxsize=None)
def _qdq_bytes(case_id: str, quantizer: str) -> bytes:
    case = next(c for c in OP_CASES if c.id == case_id)
    calibration = [random_feeds(case, batch=1, seed=100 + i) for i in range(CALIBRATION_SAMPLES)]
    if quantizer == "ort":
        return _ort_quantize(case.model, calibration).SerializeToString()
    from fwedge.calibration import collect, compute
    from fwedge.errors import CalibrationError
    from fwedge.quantization import plan_quantization, prepare, quantize_model

    prepared = prepare(case.model)
    try:
        plan = plan_quantization(prepared)
        stats = collect(prepared, calibration, plan.calibrated)
    except CalibrationError:
        # A lone data-movement op or softmax: fwedge's quantizer only quantizes around compute
        # ops, so wrap the node in Q/DQ pairs by hand (same standard layout).
        return _wrap_in_qdq(case.model, calibration).SerializeToString()
    table = compute(stats, "minmax")
    return quantize_model(prepared, table, plan=plan).SerializeToString()


def _int8_params(low: float, high: float) -> tuple[np.float32, np.int8]:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = np.float32((high - low) / 255.0 or 1.0)
    zero_point = np.int8(np.clip(np.round(-128 - low / scale), -128, 127))
    return scale, zero_point


def _wrap_in_qdq(model: onnx.ModelProto, calibration: list[dict]) -> onnx.ModelProto:
    """x -Q-DQ- node -Q-DQ- y with min/max parameters; data-movement outputs keep the input's."""
    from fwedge.eval import ort_session
    from fwedge.op_info import OP_INFO

    node = model.graph.node[0]
    session = ort_session(model)
    outputs = np.concatenate([session.run(None, feeds)[0].reshape(-1) for feeds in calibration])
    params, nodes, inits = {}, [], []
    for name in calibration[0]:
        values = np.concatenate([feeds[name].reshape(-1) for feeds in calibration])
        params[name] = _int8_params(float(values.min()), float(values.max()))
    info = OP_INFO.get(node.op_type)
    params["y"] = (params[node.input[0]] if info is not None and info.shares_input_scale
                   else _int8_params(float(outputs.min()), float(outputs.max())))
    renamed = {}
    for name, (scale, zero_point) in params.items():
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                  numpy_helper.from_array(np.array(zero_point, np.int8), f"{name}_zero_point")]
        source = f"{name}_float" if name == "y" else name
        nodes.append(helper.make_node("QuantizeLinear", [source, f"{name}_scale", f"{name}_zero_point"],
                                      [f"{name}_quantized"], name=f"{name}_QuantizeLinear"))
        target = "y" if name == "y" else f"{name}_dequantized"
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                                      [target], name=f"{name}_DequantizeLinear"))
        renamed[name] = target
    core = onnx.NodeProto()
    core.CopyFrom(node)
    for index, name in enumerate(core.input):
        core.input[index] = renamed.get(name, name)
    core.output[0] = "y_float"
    ordered = [n for n in nodes if n.output[0] != "y_quantized" and n.output[0] != "y"] + [core] + \
              [n for n in nodes if n.output[0] in ("y_quantized", "y")]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    out.graph.initializer.extend(inits)
    onnx.checker.check_model(out)
    return out


def qdq_model(case: OpCase, quantizer: str = "fwedge") -> onnx.ModelProto:
    """The case's int8 QDQ model (cached), from fwedge's quantizer or onnxruntime's ("ort")."""
    return onnx.load_from_string(_qdq_bytes(case.id, quantizer))


def _ort_quantize(model: onnx.ModelProto, calibration: list[dict]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        onnx.save(model, source)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return onnx.load(target)


def output_scale(qdq: onnx.ModelProto, output: str) -> float:
    """The quantization step of a QDQ model's graph output (scale of the DequantizeLinear producing it)."""
    inits = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    for node in qdq.graph.node:
        if output in node.output and node.op_type == "DequantizeLinear":
            return float(inits[node.input[1]].reshape(-1)[0])
    raise KeyError(f"output '{output}' is not produced by a DequantizeLinear")


def steps_off(reference: np.ndarray, candidate: np.ndarray, step: float) -> np.ndarray:
    """|candidate - reference| in quantization steps, rounded to integers."""
    return np.rint(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)) / step).astype(np.int64)


@functools.lru_cache(maxsize=None)
def _example_bytes(path: str) -> tuple[bytes, bytes]:
    from fwedge import ir
    from fwedge.data import open_dataset
    from fwedge.quantization import quantize

    result = quantize(path, data=open_dataset("fashion-mnist:train"), method="percentile", num_samples=256)
    return ir.load(path).SerializeToString(), result.model.SerializeToString()


def quantized_example(path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(float model, QDQ model) of an example model: fwedge's quantizer, percentile ranges over
    256 Fashion-MNIST training images (the demo pipeline's method); cached per path."""
    float_bytes, qdq_bytes = _example_bytes(str(path))
    return onnx.load_from_string(float_bytes), onnx.load_from_string(qdq_bytes)


@functools.lru_cache(maxsize=None)
def _ppocr_bytes(path: str) -> tuple[bytes, bytes, bytes]:
    from fwedge.calibration import collect, compute
    from fwedge.quantization import load_prepared, plan_quantization, quantize_model
    from ppocr_inputs import ppocr_cls_inputs

    inputs, _ = ppocr_cls_inputs(40, seed=0)
    prepared, _ = load_prepared(path, {"x": [1, 3, 48, 192]})
    plan = plan_quantization(prepared)
    stats = collect(prepared, [inputs[i:i + 1] for i in range(16)], plan.calibrated)
    qdq = quantize_model(prepared, compute(stats, "minmax"), plan=plan)
    return prepared.SerializeToString(), qdq.SerializeToString(), inputs[16:].tobytes()


def quantized_ppocr(path) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """(float model fixed to [1,3,48,192], QDQ model, 24 held-out inputs) of the PP-OCR cls model:
    fwedge's quantizer, min/max ranges over 16 rendered text lines and image crops; cached."""
    float_bytes, qdq_bytes, inputs = _ppocr_bytes(str(path))
    x = np.frombuffer(inputs, dtype=np.float32).reshape(-1, 3, 48, 192)
    return onnx.load_from_string(float_bytes), onnx.load_from_string(qdq_bytes), x

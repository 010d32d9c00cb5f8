"""The aarch64 C bundle's export-time work for its NEON kernels: padded copies of padded depthwise
and one-channel convs (targets/c_pad.py) and the kernels' per-channel constants
(targets/c_prepared.py). That the bytes do not change is checked on every CPU model by
tests/test_c_aarch64.py (the op matrix's depthwise_*_c24/_c32 and conv_1ch_* cases); here, that
the rewrite and the constants are what the kernels expect."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fwedge.errors import UnsupportedOpError
from fwedge.export import export_bundle
from fwedge.targets import ExportOptions
from fwedge.targets.c import generate_checked
from fwedge.targets.c_prepared import conv_constants, depthwise_constants
from op_matrix import OP_CASES, qdq_model

CASES = {case.id: case for case in OP_CASES}
OPTIONS = ExportOptions(source_sha256="0" * 64)


@pytest.mark.parametrize("case_id, kind, pads", [
    ("depthwise_5x5_s2_asym_c24", "depthwise_conv2d", ((0, 0, 1, 2), (0, 0, 2, 1))),
    ("conv_1ch_5x5_asym_pad", "conv2d", ((0, 0, 2, 1), (0, 0, 1, 2))),
])
def test_aarch64_gives_a_padded_conv_a_padded_copy_and_prepared_constants(case_id, kind, pads):
    qdq = qdq_model(CASES[case_id])
    graph, program = generate_checked(qdq, "aarch64", OPTIONS)
    kinds = [op.kind for op in graph.ops]
    assert kinds.count("pad") == 1, kinds
    pad = graph.ops[kinds.index("pad")]
    conv = next(op for op in graph.ops if op.kind == kind)
    assert conv.inputs[0] == pad.outputs[0] and conv.attrs.pads == (0, 0, 0, 0)
    assert (pad.attrs.begin, pad.attrs.end) == pads
    padded, source = graph.tensors[pad.outputs[0]], graph.tensors[pad.inputs[0]]
    assert padded.quant is source.quant and padded.dtype == "int8"
    assert "fw_conv_prepared" in program.model_c and ".prepared = &" in program.model_c
    # x86_64 keeps the padding in the conv and computes its constants at run time
    host_graph, host_program = generate_checked(qdq, "x86_64", OPTIONS)
    assert "pad" not in [op.kind for op in host_graph.ops]
    assert "fw_conv_prepared" not in host_program.model_c
    assert program.weights_bytes == host_program.weights_bytes  # derived constants are not weights


def test_a_depthwise_conv_without_padding_and_a_many_channel_conv_are_left_alone():
    for case_id in ("conv_3x3_s2_odd", "conv_3x3_s1_p1"):
        graph, _ = generate_checked(qdq_model(CASES[case_id]), "aarch64", OPTIONS)
        assert "pad" not in [op.kind for op in graph.ops], case_id


def test_conv_constants_pad_to_whole_blocks_and_wrap_like_int32():
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 128, (10, 3, 3, 3)).astype(np.int8)  # positive sums
    bias = np.full(10, 2**31 - 1000, dtype=np.int32)
    multiplier = rng.integers(2**30, 2**31 - 1, 10).astype(np.int32)
    shift = rng.integers(-9, -1, 10).astype(np.int32)
    m, sh, b, high, no_min_weight = conv_constants(weights, bias, multiplier, shift, -128)
    assert m.shape == sh.shape == b.shape == (16,) and high and no_min_weight
    assert list(m[10:]) == [multiplier[9]] * 6 and list(sh[:10]) == list(shift)
    sums = weights.reshape(10, -1).astype(np.int32).sum(axis=1)
    expected = bias.astype(np.int64) + 128 * sums - 2**32  # past int32 max: C's int32 wraps once
    assert np.array_equal(b[:10], expected) and (b[:10] < 0).all()  # wrapped past int32 max
    assert list(b[10:]) == [bias[9]] * 6  # a padding channel has no weights
    # one shift of 0 (a gain above 1/2): every channel takes the 64-bit form, shifts less 31
    shift[4] = 0
    _, sh, _, high, _ = conv_constants(weights, bias, multiplier, shift, 5)
    assert not high and list(sh[:10]) == list(shift - 31)
    weights[2, 0, 0, 0] = -128
    assert conv_constants(weights, None, multiplier, shift, 0)[4] is False
    assert conv_constants(np.zeros((257, 1, 1, 1), np.int8), None, np.ones(257, np.int32),
                          -np.ones(257, np.int32), 0) is None  # wider than the kernel's table


def test_depthwise_constants_sum_each_channels_taps():
    taps = np.arange(-60, 60, dtype=np.int8)[:3 * 3 * 8].reshape(3, 3, 8)
    bias = np.arange(8, dtype=np.int32) * 100
    b, high, no_min_weight = depthwise_constants(taps, bias, np.full(8, 2**30, np.int32), np.full(8, -3, np.int32), 7)
    assert list(b) == [int(bias[c]) - 7 * int(taps[..., c].astype(np.int64).sum()) for c in range(8)]
    assert high and no_min_weight


def _pad_model(pads: list[int]) -> onnx.ModelProto:
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="crop")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 7])],
                              [helper.make_tensor("pads", TensorProto.INT64, [8], pads)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["aarch64", "tflite", "ncnn"])
def test_a_negative_pad_is_refused_naming_the_node(target, tmp_path):
    """A negative pad crops: fw_pad_nhwc would write before its output's first byte, TFLite's PAD
    rejects it at run time, and ncnn's Padding gave other values (3.6 off on this model). Each
    refuses it, naming the node, in one line."""
    path = tmp_path / "crop.onnx"
    onnx.save(_pad_model([0, 0, -1, 0, 0, 0, 1, 1]), path)
    with pytest.raises(UnsupportedOpError) as error:
        export_bundle(path, target, tmp_path / "bundle", OPTIONS)
    message = str(error.value)
    assert "negative pads (a crop)" in message and "'crop'" in message and "\n" not in message, message

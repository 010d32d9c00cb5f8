"""Cross-layer equalization (passes/equalize.py, `fwedge quantize --equalize`) on hand-built graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fwedge.cli import cli
from fwedge.eval import ort_session
from fwedge.passes.equalize import MAX_SCALE, equalize, find_pairs
from fwedge.quantization.prepare import load_prepared
from tests.tolerances import EQUALIZE_FLOAT_RTOL, EQUALIZE_RANGE_RTOL


def _weight(rng, shape, spread=True) -> np.ndarray:
    """Seeded weights whose output channels' ranges differ up to 30x (what equalization evens out)."""
    w = rng.standard_normal(shape).astype(np.float32)
    if spread:
        w *= np.geomspace(0.1, 3.0, shape[0]).astype(np.float32).reshape([-1] + [1] * (len(shape) - 1))
    return w


def _model(nodes, inits, out_channels, outputs=("y",), hw=8) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "equalize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, hw, hw])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "c", "h", "w"]) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def conv_relu_conv(rng, middle=("Relu",), second_group=1, readers=(), second_filters=None,
                   first_group=1) -> onnx.ModelProto:
    """x -> Conv c1 (3 -> 6, group first_group) -> middle ops -> Conv c2 (6 -> 4, or with
    second_group > 1 6 -> second_filters, 6 by default: group 6 is depthwise) -> y."""
    inits = {"w1": _weight(rng, [6, 3 // first_group, 3, 3]), "b1": rng.standard_normal(6).astype(np.float32),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["t0"], name="c1", pads=[1] * 4, group=first_group)]
    for i, op in enumerate(middle):
        extra = {"Clip": ["lo", "hi"]}.get(op, [])
        attrs = {"kernel_shape": [2, 2], "strides": [2, 2]} if op == "MaxPool" else {}
        nodes.append(helper.make_node(op, [f"t{i}", *extra], [f"t{i + 1}"], name=f"m{i}", **attrs))
    filters = second_filters or (4 if second_group == 1 else 6)
    inits["w2"] = _weight(rng, [filters, 6 // second_group, 3, 3], spread=False)
    inits["b2"] = rng.standard_normal(inits["w2"].shape[0]).astype(np.float32)
    nodes.append(helper.make_node("Conv", [f"t{len(middle)}", "w2", "b2"], ["y"], name="c2", pads=[1] * 4,
                                  group=second_group))
    nodes += [helper.make_node("Neg", [name], [f"{name}_neg"], name=f"reader_{name}") for name in readers]
    return _model(nodes, inits, 6, ("y", *(f"{name}_neg" for name in readers)))


def _outputs(model, x) -> list[np.ndarray]:
    return ort_session(model).run(None, {"x": x})


def _assert_same_function(original, equalized, rng) -> None:
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    for name, want, got in zip([o.name for o in original.graph.output], _outputs(original, x),
                               _outputs(equalized, x)):
        np.testing.assert_allclose(got, want, rtol=0, atol=EQUALIZE_FLOAT_RTOL * np.abs(want).max(), err_msg=name)


def _init(model, name) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name).astype(np.float64)


def _ranges(weight, axis) -> np.ndarray:
    return np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)


@pytest.mark.parametrize("middle", [("Relu",), ("Relu", "MaxPool"), ()], ids=["relu", "relu-maxpool", "direct"])
def test_conv_relu_conv_keeps_the_function_and_equalizes_ranges(middle):
    rng = np.random.default_rng(0)
    model = conv_relu_conv(rng, middle)
    equalized, pairs = equalize(model)
    assert pairs == 1
    assert [n.op_type for n in equalized.graph.node] == [n.op_type for n in model.graph.node]
    _assert_same_function(model, equalized, rng)
    r1, r2 = _ranges(_init(model, "w1"), 0), _ranges(_init(model, "w2"), 1)
    scale = np.clip(np.sqrt(r1 / r2), 1 / MAX_SCALE, MAX_SCALE)
    assert np.ptp(np.log(scale)) > 1.0, "the test weights must need equalizing"
    # s = sqrt(r1 / r2): both sides end at sqrt(r1 r2); the bias of c1 follows its weights, c2's stays.
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), r1 / scale, rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(_ranges(_init(equalized, "w2"), 1), r2 * scale, rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), np.sqrt(r1 * r2), rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(_init(equalized, "b1"), _init(model, "b1") / scale, rtol=EQUALIZE_RANGE_RTOL)
    assert np.array_equal(_init(equalized, "b2"), _init(model, "b2"))


def test_conv_relu_depthwise_conv():
    rng = np.random.default_rng(1)
    model = conv_relu_conv(rng, ("Relu",), second_group=6)
    equalized, pairs = equalize(model)
    assert pairs == 1 and find_pairs(model)[0].second_axis == 0  # filter i reads channel i
    _assert_same_function(model, equalized, rng)
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), _ranges(_init(equalized, "w2"), 0),
                               rtol=EQUALIZE_RANGE_RTOL)


def test_a_chain_converges_pair_by_pair():
    """c1 -> Relu -> depthwise -> Relu -> c3: the depthwise layer is in two pairs; the sweeps end
    with both pairs' ranges equal."""
    rng = np.random.default_rng(2)
    inits = {"w1": _weight(rng, [6, 3, 1, 1]), "w2": _weight(rng, [6, 1, 3, 3]), "b2": rng.random(6, np.float32),
             "w3": _weight(rng, [5, 6, 1, 1], spread=False)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "w2", "b2"], ["b"], name="dw", group=6, pads=[1] * 4),
             helper.make_node("Relu", ["b"], ["rb"], name="r2"),
             helper.make_node("Conv", ["rb", "w3"], ["y"], name="c3")]
    nodes[1].name = "r1"
    model = _model(nodes, inits, 6)
    equalized, pairs = equalize(model)
    assert pairs == 2
    _assert_same_function(model, equalized, rng)
    w1, w2, w3 = (_init(equalized, name) for name in ("w1", "w2", "w3"))
    np.testing.assert_allclose(_ranges(w1, 0), _ranges(w2, 0), rtol=1e-2)  # the sweeps stop at |log s| < 1e-3
    np.testing.assert_allclose(_ranges(w2, 0), _ranges(w3, 1), rtol=1e-2)


def test_gemm_relu_gemm():
    rng = np.random.default_rng(3)
    inits = {"w1": _weight(rng, [6, 48]), "b1": rng.standard_normal(6).astype(np.float32),
             "w2": _weight(rng, [6, 4], spread=False), "shape": np.array([1, 48], np.int64)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], name="g1", transB=1),
             helper.make_node("Relu", ["h"], ["rh"], name="relu"),
             helper.make_node("Gemm", ["rh", "w2"], ["y"], name="g2")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    equalized, pairs = equalize(model)
    assert pairs == 1
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    want = _outputs(model, x)[0]
    np.testing.assert_allclose(_outputs(equalized, x)[0], want, rtol=0, atol=EQUALIZE_FLOAT_RTOL * np.abs(want).max(),
                               err_msg="y")
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), _ranges(_init(equalized, "w2"), 0),
                               rtol=EQUALIZE_RANGE_RTOL)


def _expected_scale(r1, r2) -> np.ndarray:
    return np.clip(np.sqrt(r1 / r2), 1 / MAX_SCALE, MAX_SCALE)


def _assert_pair_ranges(model, equalized, r2_of) -> None:
    """c1's output channel ranges and the second weight's per-channel ranges (`r2_of(weight)`,
    written in the test from the layout, not from the pass) end where s = sqrt(r1 / r2) puts them."""
    r1, r2 = _ranges(_init(model, "w1"), 0), r2_of(_init(model, "w2"))
    scale = _expected_scale(r1, r2)
    assert np.ptp(np.log(scale)) > 1.0, "the test weights must need equalizing"
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), r1 / scale, rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(r2_of(_init(equalized, "w2")), r2 * scale, rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(_ranges(_init(equalized, "w1"), 0), np.sqrt(r1 * r2), rtol=EQUALIZE_RANGE_RTOL)
    np.testing.assert_allclose(_init(equalized, "b1"), _init(model, "b1") / scale, rtol=EQUALIZE_RANGE_RTOL)


def conv_to_gemm(rng, middle=("Relu",), flatten=("Flatten", 1), second="Gemm", trans_b=0, dims=(8, 8),
                 channels=6) -> tuple[onnx.ModelProto, int]:
    """x [n, 3, *dims] -> Conv c1 (3 -> channels, 3x3, pad 1) -> middle ops (Relu, MaxPool 2x2,
    GlobalAveragePool, ReduceMean over H, W) -> Flatten(axis) | Reshape(shape) | nothing ->
    Gemm (transB) | MatMul g2 (-> 5) -> y; and the H*W columns per channel at 8x8."""
    spatial = 64
    inits = {"w1": _weight(rng, [channels, 3, 3, 3]), "b1": rng.standard_normal(channels).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["t0"], name="c1", pads=[1] * 4)]
    for i, op in enumerate(middle):
        attrs = {"MaxPool": {"kernel_shape": [2, 2], "strides": [2, 2]}, "ReduceMean": {"axes": [2, -1]}}.get(op, {})
        spatial = {"MaxPool": spatial // 4, "GlobalAveragePool": 1, "GlobalMaxPool": 1, "ReduceMean": 1}.get(op, spatial)
        nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=f"m{i}", **attrs))
    tensor, columns = f"t{len(middle)}", (channels * spatial if flatten else channels)
    if flatten and flatten[0] == "Flatten":
        nodes.append(helper.make_node("Flatten", [tensor], ["flat"], name="flatten", axis=flatten[1]))
        columns = columns // channels if flatten[1] == 2 else columns  # axis 2 of [n, C, h, w]: [n C, h w]
    elif flatten:
        inits["shape"] = np.array(flatten[1], np.int64)
        nodes.append(helper.make_node("Reshape", [tensor, "shape"], ["flat"], name="flatten"))
    inits["w2"] = _weight(rng, [5, columns] if trans_b else [columns, 5], spread=False)
    attrs = {"transB": trans_b} if second == "Gemm" else {}
    nodes.append(helper.make_node(second, ["flat" if flatten else tensor, "w2"], ["y"], name="g2", **attrs))
    graph = helper.make_graph(
        nodes, "flatten", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, *dims])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])],
        [numpy_helper.from_array(array, name) for name, array in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model, spatial


def _column_ranges(span, trans_b):
    """Per channel c of c1: max |w| over the span columns c*span .. c*span + span - 1 of the
    flattened input, which are rows of B (columns of B with transB)."""
    def ranges(weight):
        rows = weight.T if trans_b else weight
        return np.array([np.abs(rows[c * span:(c + 1) * span]).max() for c in range(rows.shape[0] // span)])
    return ranges


@pytest.mark.parametrize("middle, flatten, second, trans_b", [
    (("Relu",), ("Flatten", 1), "Gemm", 0),
    (("Relu", "MaxPool"), ("Flatten", 1), "Gemm", 1),
    (("Relu", "MaxPool"), ("Flatten", -3), "MatMul", 0),
    (("Relu", "MaxPool"), ("Reshape", [0, -1]), "Gemm", 0),
    (("Relu",), ("Reshape", [-1, 384]), "Gemm", 1),
    (("Relu", "GlobalAveragePool"), ("Flatten", 1), "Gemm", 0),
    (("Relu", "GlobalAveragePool", "Relu"), ("Reshape", [-1, 6]), "MatMul", 0),
    (("ReduceMean",), ("Flatten", 1), "Gemm", 1),
    (("GlobalMaxPool",), ("Flatten", 1), "Gemm", 0),
], ids=["relu-flatten-gemm", "maxpool-flatten-gemm-transB", "flatten-axis-minus3-matmul", "reshape-0-minus1",
        "reshape-minus1-columns-transB", "gap-flatten-gemm", "gap-relu-reshape-matmul", "reducemean-flatten",
        "gmp-flatten"])
def test_conv_through_flatten_to_gemm(middle, flatten, second, trans_b):
    """Column c*H*W + k of the flattened input reads channel c: those H*W rows of B (columns
    with transB) are scaled by s_c, and r2_c is their range; GAP/ReduceMean may sit in between."""
    rng = np.random.default_rng(9)
    model, span = conv_to_gemm(rng, middle, flatten, second, trans_b)
    equalized, pairs = equalize(model)
    assert pairs == 1 and find_pairs(model)[0].second_span == span
    assert [n.op_type for n in equalized.graph.node] == [n.op_type for n in model.graph.node]
    _assert_same_function(model, equalized, rng)
    _assert_pair_ranges(model, equalized, _column_ranges(span, trans_b))


@pytest.mark.parametrize("kwargs", [
    {"flatten": ("Flatten", 2)}, {"dims": ("h", "w")}, {"flatten": ("Reshape", [-1, 64])},
    {"flatten": None, "second": "MatMul", "channels": 8}],
    ids=["flatten-axis-2", "dynamic-height-width", "reshape-not-per-sample", "matmul-on-4d-reads-width"])
def test_what_a_flatten_pair_must_not_be(kwargs):
    """No pair: a Flatten of axis 2 (a [n C, H W] matrix: row n C + c is channel c, and B's
    H W rows do not read one channel each); a Flatten whose H, W are not static (the columns per
    channel are unknown); a Reshape to [-1, 64] (not one row per sample); a MatMul on the 4-D conv
    output (it contracts W, here 8 like the channels, not the channels)."""
    model, _ = conv_to_gemm(np.random.default_rng(10), **kwargs)
    equalized, pairs = equalize(model)
    assert pairs == 0 and find_pairs(model) == []
    assert equalized.SerializeToString() == model.SerializeToString()


def test_global_average_pool_makes_a_dynamic_height_static():
    """After GlobalAveragePool the shape is [n, C, 1, 1] whatever H and W: the Flatten pairs."""
    rng = np.random.default_rng(11)
    model, _ = conv_to_gemm(rng, ("Relu", "GlobalAveragePool"), dims=("h", "w"))
    equalized, pairs = equalize(model)
    assert pairs == 1
    _assert_same_function(model, equalized, rng)
    _assert_pair_ranges(model, equalized, _column_ranges(1, 0))


@pytest.mark.parametrize("name, relu6_as_relu, pairs, span", [("cnn_small", False, 4, 9),
                                                               ("mobilenet_v2_tiny", True, 15, 1)])
def test_the_examples_last_conv_pairs_with_the_classifier(name, relu6_as_relu, pairs, span):
    """cnn_small: Conv (64) -> Relu -> MaxPool -> [64, 3, 3] -> Flatten -> Gemm (576 inputs);
    mobilenet_v2_tiny: Conv -> ReLU6 -> GlobalAveragePool -> Flatten -> Gemm."""
    model = load_prepared(str(Path(__file__).parent.parent / "examples" / "fashion_mnist" / f"{name}.onnx"))[0]
    found = find_pairs(model, relu6_as_relu)
    gemm = next(node.name for node in model.graph.node if node.op_type == "Gemm")
    assert len(found) == pairs
    assert [(pair.second_span, pair.second_axis) for pair in found if pair.second == gemm] == [(span, 1)]


def _grouped_ranges(groups):
    """r2 of channel i: max |w| of input slot i % (C/g) over the filters of group i // (C/g)."""
    def ranges(weight):
        per_group, filters = 6 // groups, weight.shape[0] // groups
        return np.array([np.abs(weight[(i // per_group) * filters:(i // per_group + 1) * filters, i % per_group]).max()
                         for i in range(6)])
    return ranges


@pytest.mark.parametrize("groups, filters", [(2, 6), (3, 6), (3, 9), (6, 12)],
                         ids=["group2", "group3", "group3-9-filters", "depthwise-multiplier2"])
def test_conv_relu_grouped_conv(groups, filters):
    """Channel i of c1 feeds group i // (C/g) of c2, input slot i % (C/g): only those filters'
    slot is scaled, and r2_i is their range."""
    rng = np.random.default_rng(12)
    model = conv_relu_conv(rng, ("Relu",), second_group=groups, second_filters=filters)
    equalized, pairs = equalize(model)
    assert pairs == 1 and find_pairs(model)[0].second_groups == groups
    _assert_same_function(model, equalized, rng)
    _assert_pair_ranges(model, equalized, _grouped_ranges(groups))
    np.testing.assert_array_equal(_init(equalized, "b2"), _init(model, "b2"))


def test_grouped_first_layer():
    """A grouped c1 (3 groups, 3 -> 6): its output channel i is still weight row i."""
    rng = np.random.default_rng(13)
    model = conv_relu_conv(rng, ("Relu", "MaxPool"), first_group=3)
    equalized, pairs = equalize(model)
    assert pairs == 1
    _assert_same_function(model, equalized, rng)
    _assert_pair_ranges(model, equalized, lambda weight: _ranges(weight, 1))


@pytest.mark.parametrize("reader", ["t0", "t1"], ids=["conv-output", "relu-output"])
def test_a_second_reader_leaves_the_pair_alone(reader):
    """Another node reads c1's output (or the Relu's): scaling it would change what that node sees."""
    model = conv_relu_conv(np.random.default_rng(4), ("Relu",), readers=(reader,))
    equalized, pairs = equalize(model)
    assert pairs == 0 and find_pairs(model) == []
    assert equalized.SerializeToString() == model.SerializeToString()


def test_relu6_pairs_are_left_alone_because_scaling_would_change_the_function():
    """Clip(x / s, 0, 6) = Clip(x, 0, 6 s) / s: ONNX Clip has one scalar bound, so the pass skips
    the pair. Scaling it anyway (done here by hand through a Relu twin) changes the output."""
    rng = np.random.default_rng(5)
    model = conv_relu_conv(rng, ("Clip",))
    equalized, pairs = equalize(model)
    assert pairs == 0 and equalized.SerializeToString() == model.SerializeToString()
    twin = conv_relu_conv(np.random.default_rng(5), ("Relu",))
    scaled, _ = equalize(twin)
    for node in scaled.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.input.extend(["lo", "hi"])
    x = 3 * rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.abs(_outputs(scaled, x)[0] - _outputs(model, x)[0]).max() > 0.1


def test_relu6_as_relu_on_request_pairs_them_and_says_which_clips_changed():
    """Only when asked: the Clip inside the pair becomes a Relu (the float model changes where a
    value passed 6, and matches its Relu twin equalized), and its bound constants go."""
    rng = np.random.default_rng(5)
    model = conv_relu_conv(rng, ("Clip",))
    assert find_pairs(model, relu6_as_relu=True)[0].clips == ("m0",)
    equalized, pairs = equalize(model, relu6_as_relu=True)
    assert pairs == 1 and [n.op_type for n in equalized.graph.node] == ["Conv", "Relu", "Conv"]
    assert not {"lo", "hi"} & {init.name for init in equalized.graph.initializer}
    onnx.checker.check_model(equalized)
    _assert_same_function(equalize(conv_relu_conv(np.random.default_rng(5), ("Relu",)))[0], equalized, rng)


def test_quantize_equalize_flag_prints_the_pairs(tmp_path):
    rng = np.random.default_rng(6)
    model, data, out, report = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "q.onnx", tmp_path / "r.json"
    onnx.save(conv_relu_conv(rng, ("Relu", "MaxPool")), model)
    np.save(data, rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    args = ["quantize", str(model), "--data", str(data), "--num-samples", "32", "--per-tensor", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--equalize"])
    assert result.exit_code == 0, result.output
    assert "cross-layer equalization: 1 layer pairs equalized" in result.output
    onnx.checker.check_model(onnx.load(out))
    result = CliRunner().invoke(cli, [*args, "--json", str(report)])
    assert result.exit_code == 0 and "equalization" not in result.output
    assert json.loads(report.read_text())["equalized_pairs"] is None


def test_pipeline_quantize_section_passes_equalize_on(tmp_path):
    from types import SimpleNamespace

    from fwedge.pipeline import _quantize_request
    from fwedge.pipeline_config import QuantizeSettings, parse_section

    settings = parse_section(QuantizeSettings, {"equalize": True, "per_channel": False}, "[quantize]")
    run = SimpleNamespace(config=SimpleNamespace(quantize=settings, data=SimpleNamespace(calibration="x.npy",
                                                                                          eval=None)))
    assert _quantize_request(run, tmp_path / "model.onnx").equalize is True
    assert parse_section(QuantizeSettings, {}, "[quantize]").equalize is False


def test_quantize_relu6_as_relu_is_reported_and_needs_equalize(tmp_path):
    from fwedge.errors import QuantizeRequestError
    from fwedge.quantization import QuantizeRequest

    rng = np.random.default_rng(7)
    model, data, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "q.onnx"
    onnx.save(conv_relu_conv(rng, ("Clip",)), model)
    np.save(data, rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    args = ["quantize", str(model), "--data", str(data), "--num-samples", "32", "--per-tensor", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--equalize"])
    assert result.exit_code == 0 and "0 layer pairs equalized" in result.output, result.output
    result = CliRunner().invoke(cli, [*args, "--equalize", "--relu6-as-relu"])
    assert result.exit_code == 0, result.output
    assert "1 layer pairs equalized; 1 ReLU6 replaced by Relu" in result.output
    assert [n.op_type for n in onnx.load(out).graph.node if n.op_type in ("Clip", "Relu")] == ["Relu"]
    with pytest.raises(QuantizeRequestError, match="relu6_as_relu"):
        QuantizeRequest(model, data, relu6_as_relu=True)


def test_quantize_table_with_equalize_is_refused_naming_both_flags(tmp_path):
    """A table's ranges were measured before equalization rescaled the activations: exit 2, one line."""
    rng = np.random.default_rng(8)
    model, data, out, table = (tmp_path / name for name in ("m.onnx", "x.npy", "q.onnx", "t.json"))
    onnx.save(conv_relu_conv(rng, ("Relu",)), model)
    np.save(data, rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    args = ["quantize", str(model), "--per-tensor", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--data", str(data), "--num-samples", "32", "--save-table", str(table)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, [*args, "--table", str(table), "--equalize"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--equalize with --table" in lines[0] and "calibrated" in lines[0], result.output
    assert CliRunner().invoke(cli, [*args, "--table", str(table)]).exit_code == 0

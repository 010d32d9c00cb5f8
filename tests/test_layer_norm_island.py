"""A LayerNormalization inside an int8 model is a reported float island, never a silent one.

MatMul -> LayerNormalization -> MatMul, quantized by fwedge: the two MatMuls are int8, the
LayerNorm runs in float between a dequantize and a quantize, and the quantizer's kept-float
record (QDQ metadata fwedge.kept_float, copied into every manifest's extra.kept_float) names it
with the op card's reason. The int8 bundles (C, TFLite) stay within INT8_MAX_STEPS output steps
of onnxruntime running the same QDQ model.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge.eval import ort_session
from fwedge.export import export_bundle
from fwedge.quantization import quantize
from fwedge.targets import ExportOptions, get_target
from fwedge.bundle import load_bundle
from op_matrix import output_scale, steps_off
from tolerances import INT8_MAX_STEPS

C = 16  # rank 2: the int8 MatMul by a constant takes [1, K] rows


def _chain(x: str, y: str) -> list[onnx.NodeProto]:
    """The exporters' LayerNorm chain (opset 13), named as fwedge's prepare would keep it."""
    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    return [node("ReduceMean", [x], "layer_norm", axes=[-1]), node("Sub", [x, "layer_norm"], "centered"),
            node("Pow", ["centered", "two"], "squares"), node("ReduceMean", ["squares"], "var", axes=[-1]),
            node("Add", ["var", "eps"], "var_eps"), node("Sqrt", ["var_eps"], "std"),
            node("Div", ["centered", "std"], "normalized"), node("Mul", ["normalized", "gamma"], "scaled"),
            node("Add", ["scaled", "beta"], y)]


def _model(chain: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(21)
    inits = [numpy_helper.from_array((rng.standard_normal((C, C)) / 4).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, C).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, C).astype(np.float32), "beta"),
             numpy_helper.from_array((rng.standard_normal((C, 8)) / 4).astype(np.float32), "w2")]
    inits += [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-5), "eps")]
    norm = _chain("h", "n") if chain else [
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="layer_norm")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), *norm,
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "ln_island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13 if chain else 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module", params=["node", "chain"])
def quantized(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("ln_island")
    data = folder / "x.npy"
    np.save(data, np.random.default_rng(22).uniform(-1, 1, (32, C)).astype(np.float32))
    # "chain": the exporters' ReduceMean ... Add chain, fused by prepare (passes/layer_norm.py).
    result = quantize(_model(request.param == "chain"), data, "minmax", num_samples=32)
    path = folder / "ln_qdq.onnx"
    onnx.save(result.model, path)
    return result, path


def test_the_quantizer_records_the_layer_norm_with_its_reason(quantized):
    result, _ = quantized
    kept = {unit.node: (unit.op, unit.reason) for unit in result.kept_float}
    assert kept["layer_norm"][0] == "LayerNormalization" and "float island" in kept["layer_norm"][1]
    record = {prop.key: prop.value for prop in result.model.metadata_props}["fwedge.kept_float"]
    assert [entry["node"] for entry in json.loads(record)] == ["layer_norm"]
    assert {"fc1", "fc2"} <= set(result.plan.quantized_nodes)


@pytest.mark.parametrize("target", ["x86_64", "tflite"])
def test_int8_bundle_lists_the_island_and_matches_onnxruntime(quantized, target, tmp_path):
    result, path = quantized
    bundle = export_bundle(path, target, tmp_path / target, ExportOptions(precision="int8"))
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert [entry["node"] for entry in manifest["extra"]["kept_float"]] == ["layer_norm"]
    assert "float island" in manifest["extra"]["kept_float"][0]["reason"]
    assert manifest["extra"]["float_ops"] == ["layer_norm"]
    x = np.random.default_rng(23).uniform(-1, 1, (1, C)).astype(np.float32)
    expected = ort_session(result.model).run(None, {"x": x})[0]
    got = get_target(target).run(load_bundle(bundle.path), {"x": x})["y"]
    steps = steps_off(expected, got, output_scale(result.model, "y"))
    assert steps.max() <= INT8_MAX_STEPS, f"{target}: {steps.max()} steps off onnxruntime's QDQ"

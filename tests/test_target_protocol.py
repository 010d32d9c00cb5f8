"""The target protocol: registered classes, one check before writing, float fallback, typed options."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fwedge.bundle import host_arch, load_bundle
from fwedge.cli import cli
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.export import export_bundle
from fwedge.targets import (
    C_ARCHES, COptions, ExportOptions, Target, TfliteOptions, available_targets, export_names, get_target, target,
    target_class,
)
from op_matrix import OP_CASES, output_scale, qdq_model, random_feeds, steps_off
from tolerances import INT8_MAX_STEPS

PROTOCOL = ("check", "export", "run")


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "protocol", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _sequence_pad_model() -> onnx.ModelProto:
    """Two Pad nodes on a rank-3 [1, 3, 5] tensor (a sequence model's [N, T, K]): the lowering takes
    them, the C emitter refuses them (it pads C, H and W of 4-D tensors only)."""
    pads = numpy_helper.from_array(np.array([0, 1, 2, 0, 1, 2], np.int64), "pads")
    return _model(
        [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad_a"),
         helper.make_node("Relu", ["p"], ["r"], name="relu"),
         helper.make_node("Pad", ["r", "pads"], ["y"], name="pad_b")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 13])], [pads])


def _asymmetric_weight_model() -> onnx.ModelProto:
    """The conv_1x1 QDQ model with its weight zero points moved off 0: no int8 form in the lowering."""
    qdq = qdq_model(next(case for case in OP_CASES if case.id == "conv_1x1"))
    inits = {init.name: init for init in qdq.graph.initializer}
    weight_dq = next(node for node in qdq.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in inits
                     and numpy_helper.to_array(inits[node.input[0]]).ndim == 4)
    zero_point = numpy_helper.to_array(inits[weight_dq.input[2]])
    inits[weight_dq.input[2]].CopyFrom(numpy_helper.from_array(np.full_like(zero_point, 3), weight_dq.input[2]))
    onnx.checker.check_model(qdq)
    return qdq


# --------------------------------------------------------------------------------------------
# Registration and capabilities
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_targets())
def test_every_registered_target_implements_the_protocol(name):
    cls = target_class(name)
    assert issubclass(cls, Target) and cls.name == name
    for method in PROTOCOL:
        assert getattr(cls, method) is not getattr(Target, method), f"{name}: {method} is not implemented"
    if cls.supports_intermediates:
        assert cls.intermediates is not Target.intermediates, f"{name}: supports_intermediates without intermediates"
    for capability in ("exact_int8", "supports_intermediates", "lowers"):
        assert isinstance(getattr(cls, capability), bool), (name, capability)
    if cls.options_type is not None:
        assert dataclasses.is_dataclass(cls.options_type) and cls.options_type.__dataclass_params__.frozen
    instance = get_target(name)
    assert isinstance(instance, cls) and instance.name == name


def test_capabilities_replace_probing():
    assert {name for name in available_targets() if target_class(name).exact_int8} == {"onnx", "openvino"}
    assert {name for name in available_targets() if target_class(name).lowers} == {"tflite", "c"}
    assert {name for name in available_targets() if target_class(name).supports_intermediates} == {
        "onnx", "openvino", "tflite", "ncnn"}


def test_c_architectures_share_one_class_parameterised_by_arch():
    targets = [get_target(arch) for arch in C_ARCHES]
    assert {type(t) for t in targets} == {target_class("c")}
    assert [t.arch for t in targets] == list(C_ARCHES) and [t.label for t in targets] == list(C_ARCHES)
    assert get_target("c").arch == host_arch()


def test_the_cli_target_choices_are_the_registry_names():
    from fwedge.commands.export import TARGET_NAMES

    assert TARGET_NAMES == export_names()


def test_registering_a_second_class_under_a_taken_name_is_refused():
    target_class("onnx")  # registered first, so the impostor below cannot take its place
    with pytest.raises(TypeError, match="registered twice"):
        @target("onnx")
        class Impostor(Target):
            pass
    with pytest.raises(TypeError, match="is not a Target"):
        target("plain")(object)


# --------------------------------------------------------------------------------------------
# One check before writing: emitter refusals are check() results
# --------------------------------------------------------------------------------------------


def test_c_check_reports_every_node_its_emitters_refuse():
    model = _sequence_pad_model()
    assert get_target(host_arch()).check(model) == [("pad_a", "Pad", 13), ("pad_b", "Pad", 13)]
    from fwedge.targets import support_matrix

    assert support_matrix(model)["c"] == [("pad_a", "Pad", 13), ("pad_b", "Pad", 13)]


def test_c_export_refuses_emitter_refusals_in_one_error_before_writing(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(UnsupportedOpError) as info:
        get_target("aarch64").export(_sequence_pad_model(), out, ExportOptions())
    assert info.value.nodes == [("pad_a", "Pad", 13), ("pad_b", "Pad", 13)]
    assert "only 4-D pads of C, H and W" in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fwedge_export_exits_2_naming_the_node_and_op_and_writes_nothing(tmp_path):
    onnx.save(_sequence_pad_model(), tmp_path / "pad.onnx")
    out = tmp_path / "bundles"
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "pad.onnx"), "-t", "x86_64", "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "'pad_a' (Pad, opset 13)" in lines[0] and "'pad_b' (Pad, opset 13)" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_softmax_along_the_batch_axis_is_refused_where_a_bundle_runs_one_sample_at_a_time(tmp_path):
    """Softmax over axis 0 of [N, 6]: onnxruntime spreads it over the batch (3 samples: not 1.0),
    the C and TFLite bundles would run each sample alone (every output 1.0, 0.996 off), so the op
    card refuses it and ncnn's writer too (no batch axis); onnx and openvino run the batch whole."""
    model = _model([helper.make_node("Softmax", ["x"], ["y"], name="batch_softmax", axis=0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    from fwedge.eval import ort_session
    from fwedge.targets import support_matrix

    batch = np.random.default_rng(0).uniform(-3, 3, (3, 6)).astype(np.float32)
    assert ort_session(model).run(["y"], {"x": batch})[0].max() < 1.0
    refused = [("batch_softmax", "Softmax", 13)]
    assert support_matrix(model) == {"onnx": [], "openvino": [], "tflite": refused, "ncnn": refused, "c": refused}
    for name in ("tflite", host_arch()):
        with pytest.raises(UnsupportedOpError, match=r"'batch_softmax'.*along the batch axis \(axis 0\)"):
            get_target(name).export(model, tmp_path / name, ExportOptions())
        assert not (tmp_path / name).exists()


def test_ncnn_check_reports_writer_refusals():
    """Concat along the batch axis passes ncnn's node table; its translation refuses it."""
    shape = [1, 2, 3, 3]
    model = _model([helper.make_node("Concat", ["a", "b"], ["y"], name="batch_concat", axis=0)],
                   [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("a", "b")],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 3, 3])])
    assert get_target("ncnn").check(model) == [("batch_concat", "Concat", 13)]


# --------------------------------------------------------------------------------------------
# --allow-float-fallback
# --------------------------------------------------------------------------------------------


def test_c_without_float_fallback_refuses_an_int8_node_without_an_int8_form(tmp_path):
    qdq = _asymmetric_weight_model()
    c = get_target(host_arch())
    assert c.check(qdq) == [("conv", "Conv", 13)]
    assert c.check(qdq, ExportOptions(allow_float_fallback=True)) == []
    with pytest.raises(UnsupportedOpError, match="allow-float-fallback") as info:
        c.export(qdq, tmp_path / "refused", ExportOptions(target_options=COptions(build=False)))
    assert [(name, op) for name, op, _ in info.value.nodes] == [("conv", "Conv")]
    assert not (tmp_path / "refused").exists()


def test_c_float_fallback_on_the_cli_keeps_the_node_in_float_and_reports_it(tmp_path):
    onnx.save(_asymmetric_weight_model(), tmp_path / "asym.onnx")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "asym.onnx"), "-t", "aarch64", "--no-build",
                                      "--allow-float-fallback", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "note: kept in float (--allow-float-fallback): conv (" in result.output
    manifest = json.loads((tmp_path / "out" / "asym-aarch64-int8" / "manifest.json").read_text())
    assert [entry["node"] for entry in manifest["extra"]["float_fallback"]] == ["conv"]
    assert "conv" in manifest["extra"]["float_ops"]
    help_text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "--allow-float-fallback" in help_text and "C and TFLite" in " ".join(help_text.split())


def test_c_manifest_has_no_float_fallback_entry_when_nothing_fell_back(tmp_path):
    qdq = qdq_model(next(case for case in OP_CASES if case.id == "conv_1x1"))
    bundle = get_target("riscv64").export(qdq, tmp_path / "b", ExportOptions(
        allow_float_fallback=True, target_options=COptions(build=False)))
    assert "float_fallback" not in load_bundle(bundle.path).extra


@pytest.mark.cc
def test_c_float_fallback_bundle_matches_onnxruntime(tmp_path):
    from fwedge.eval import ort_session

    qdq = _asymmetric_weight_model()
    bundle = get_target(host_arch()).export(qdq, tmp_path / "b", ExportOptions(allow_float_fallback=True))
    feeds = random_feeds(next(case for case in OP_CASES if case.id == "conv_1x1"), batch=2)
    got = get_target("c").run(load_bundle(bundle.path), feeds)["y"]
    steps = steps_off(ort_session(qdq).run(None, feeds)[0], got, output_scale(qdq, "y"))
    assert steps.max() <= INT8_MAX_STEPS, f"'y': {int(steps.max())} steps off"


def test_float_fallback_changes_nothing_on_a_target_that_takes_the_qdq_model_as_is(tmp_path):
    qdq = _asymmetric_weight_model()
    onnx_target = get_target("onnx")
    assert onnx_target.check(qdq, ExportOptions(allow_float_fallback=True)) == onnx_target.check(qdq) == []
    plain = onnx_target.export(qdq, tmp_path / "plain", ExportOptions())
    allowed = onnx_target.export(qdq, tmp_path / "allowed", ExportOptions(allow_float_fallback=True))
    assert plain.files == allowed.files


# --------------------------------------------------------------------------------------------
# Unknown targets and options
# --------------------------------------------------------------------------------------------


def test_an_unknown_target_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"unknown target 'sparc'; choose from onnx, .*loongarch64"):
        get_target("sparc")
    onnx.save(_sequence_pad_model(), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="unknown target 'c'"):  # C is exported per architecture
        export_bundle(tmp_path / "m.onnx", "c", tmp_path / "b")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "m.onnx"), "-t", "sparc", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "'sparc' is not one of" in result.output


def test_options_of_another_target_are_a_clear_error(tmp_path):
    model = qdq_model(next(case for case in OP_CASES if case.id == "conv_1x1"))
    with pytest.raises(ExportError, match="target 'tflite' takes TfliteOptions, got COptions"):
        get_target("tflite").export(model, tmp_path / "t", ExportOptions(target_options=COptions()))
    with pytest.raises(ExportError, match="target 'onnx' takes no target options, got TfliteOptions"):
        get_target("onnx").export(model, tmp_path / "o", ExportOptions(target_options=TfliteOptions()))
    with pytest.raises(ExportError, match="target 'aarch64' takes COptions, got TfliteOptions"):
        get_target("aarch64").export(model, tmp_path / "c", ExportOptions(target_options=TfliteOptions()))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="extra"):  # the untyped option dict is gone
        ExportOptions(extra={"cflags": ["-O2"]})
    with pytest.raises(TypeError, match="input_shapes"):
        TfliteOptions(input_shapes={"x": [1, 3, 8, 8]})
    with pytest.raises(ExportError, match="cflags must be a sequence of flags"):
        COptions(cflags="-O2 -g")
    onnx.save(_sequence_pad_model(), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "m.onnx"), "-t", "onnx", "--cflags=-O2",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "options of the C targets" in result.output
    assert not (tmp_path / "out").exists()

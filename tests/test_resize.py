"""Nearest Resize (fwedge/ops/resize.py): the index rule against onnxruntime, and what each target takes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.ops.resize import source_index
from tolerances import FP32_ATOL, FP32_RTOL

MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
         "half_pixel_symmetric"]
ROUNDING = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SIZES = [(5, 10), (5, 8), (7, 3), (4, 4), (3, 9), (6, 13), (10, 5), (1, 4), (4, 1)]


def _resize_model(size, out, transform, rounding, mode="nearest", sizes=False, opset=19):
    if sizes:
        inputs, inits = ["x", "", "", "sizes"], [numpy_helper.from_array(np.array([1, 2, out, out], np.int64), "sizes")]
    else:
        inputs = ["x", "", "scales"]
        inits = [numpy_helper.from_array(np.array([1, 1, out / size, out / size], np.float32), "scales")]
    node = helper.make_node("Resize", inputs, ["y"], name="up", mode=mode, coordinate_transformation_mode=transform,
                            nearest_mode=rounding)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, size, size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("transform", MODES)
def test_the_nearest_index_rule_is_onnxruntimes(transform):
    """Every nearest_mode, scales and sizes, up and down: the same source pixels as onnxruntime
    (its float32 ties included)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # tf_half_pixel_for_nn is deprecated; still read
    for rounding in ROUNDING:
        for size, out in SIZES:
            for sizes in (False, True):
                x = np.arange(2 * size * size, dtype=np.float32).reshape(1, 2, size, size)
                y = ort_session(_resize_model(size, out, transform, rounding, sizes=sizes)).run(None, {"x": x})[0]
                scale = np.float32(out) / np.float32(size) if sizes else np.float32(out / size)
                table = list(source_index(y.shape[2], size, float(scale), transform, rounding))
                np.testing.assert_array_equal(x[:, :, table][:, :, :, table], y,
                                              err_msg=f"{transform} {rounding} {size}->{out} sizes={sizes}")


@pytest.mark.tflite
@pytest.mark.ncnn
@pytest.mark.cc
@pytest.mark.zig
def test_each_target_takes_the_tables_it_can_express(tmp_path):
    """half_pixel 5->8: TFLite's half_pixel_centers rule and C's tables give onnxruntime's
    result; ncnn's nearest rule (floor(x * in / out)) picks other rows, so ncnn refuses it."""
    from fwedge.targets import ExportOptions, get_target

    model = _resize_model(5, 8, "half_pixel", "round_prefer_floor", opset=13)
    x = np.random.default_rng(0).random((1, 2, 5, 5), dtype=np.float32)
    expected = ort_session(model).run(None, {"x": x})[0]
    for target in ("tflite", "x86_64"):
        bundle = get_target(target).export(model, tmp_path / target, ExportOptions(source_sha256="0" * 64))
        got = get_target(target).run(bundle, {"x": x})["y"]
        np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{target}: output 'y'")
    with pytest.raises(UnsupportedOpError, match="'up' \\(Resize"):
        get_target("ncnn").export(model, tmp_path / "ncnn", ExportOptions(source_sha256="0" * 64))
    assert not (tmp_path / "ncnn").exists()


def test_cubic_resize_is_refused_with_its_reason():
    from fwedge.lowered.lower import unsupported_nodes
    from fwedge.lowered.lower import lower

    model = _resize_model(4, 8, "half_pixel", "round_prefer_floor", mode="cubic", opset=13)
    assert unsupported_nodes(model) == [("up", "Resize", 13)]
    with pytest.raises(UnsupportedOpError, match="mode 'cubic': only nearest and linear"):
        lower(model)


def test_a_resize_to_a_huge_output_is_refused_before_its_tables_are_made(monkeypatch):
    """A stranger's scales can ask for any size: the output is bounded by FWEDGE_MAX_TENSOR_BYTES
    before one table entry is computed."""
    from fwedge.lowered.lower import lower

    monkeypatch.setenv("FWEDGE_MAX_TENSOR_BYTES", str(1 << 20))
    model = _resize_model(4, 4096, "asymmetric", "floor", opset=13)  # [1, 2, 4096, 4096] float32: 128 MiB
    with pytest.raises(UnsupportedOpError, match="FWEDGE_MAX_TENSOR_BYTES"):
        lower(model)

"""fwedge.ir: loading, validation, opset upgrade, constants, external data, atomic save."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fwedge import ir
from fwedge.errors import ModelError
from fwedge.eval import OrtRunner
from tests.helpers import tiny_conv_model


def test_load_round_trip(tmp_path, rng):
    path = ir.save(tiny_conv_model(rng), tmp_path / "m.onnx")
    model = ir.load(path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert ir.value_shapes(model)["c"] == ["N", 4, 8, 8]


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"missing\.onnx.*not found"):
        ir.load(tmp_path / "missing.onnx")


def test_truncated_model(tmp_path, rng):
    data = tiny_conv_model(rng).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated\.onnx.*(truncated or corrupt|not an ONNX model)"):
        ir.load(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"random\.onnx"):
        ir.load(path)


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match=r"notes\.onnx"):
        ir.load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx.*empty"):
        ir.load(path)


def _with_external(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return model


def test_external_data_outside_folder_is_refused(tmp_path, rng):
    model = _with_external(tiny_conv_model(rng), "../../etc/passwd")
    path = tmp_path / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"evil\.onnx.*tensor 'w'.*\.\./\.\./etc/passwd.*outside"):
        ir.load(path)


def test_external_data_absolute_is_refused(tmp_path, rng):
    model = _with_external(tiny_conv_model(rng), "/etc/passwd")
    path = tmp_path / "abs.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"/etc/passwd.*outside"):
        ir.load(path)


def test_external_data_symlink_escape_is_refused(tmp_path, rng):
    (tmp_path / "inner").mkdir()
    os.symlink("/etc/passwd", tmp_path / "inner" / "weights.bin")
    model = _with_external(tiny_conv_model(rng), "weights.bin")
    path = tmp_path / "inner" / "link.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"weights\.bin.*outside"):
        ir.load(path)


def test_external_data_inside_folder_loads(tmp_path, rng):
    model = tiny_conv_model(rng)
    expected = numpy_helper.to_array(model.graph.initializer[0])
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").is_file()
    loaded = ir.load(tmp_path / "ext.onnx")
    got = numpy_helper.to_array(ir.initializer_map(loaded)["w"])
    np.testing.assert_array_equal(got, expected)


def test_no_graph_inputs(tmp_path):
    const = numpy_helper.from_array(np.ones(3, np.float32), "c")
    graph = helper.make_graph([helper.make_node("Identity", ["c"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "noinput.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"noinput\.onnx.*no inputs"):
        ir.load(path)


def test_constants_become_initializers_and_opset_is_upgraded(tmp_path, rng):
    """An opset-11 model with Constant-node weights (the PP-OCR export style) loads as opset 13."""
    weight = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c"], ["y"], name="clip", min=0.0, max=6.0),  # attributes in opset 10
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])])
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    old.ir_version = 6
    path = tmp_path / "old.onnx"
    path.write_bytes(old.SerializeToString())
    model = ir.load(path)
    assert ir.opset_version(model) == 13
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    assert "w" in ir.initializer_map(model)
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    reference = OrtRunner(old)(x)
    np.testing.assert_allclose(OrtRunner(model)(x), reference, rtol=1e-6, err_msg="y")


def test_save_is_atomic(tmp_path, rng, monkeypatch):
    path = ir.save(tiny_conv_model(rng), tmp_path / "m.onnx")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        ir.save(tiny_conv_model(np.random.default_rng(1)), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.rapidocr
def test_ppocr_cls_loads(ppocr_cls_path):
    raw = onnx.load(str(ppocr_cls_path))
    assert ir.opset_version(raw) == 11
    assert sum(n.op_type == "Constant" for n in raw.graph.node) > 100
    model = ir.load(ppocr_cls_path)
    assert ir.opset_version(model) == 13
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    x = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
    np.testing.assert_allclose(OrtRunner(model)(x), OrtRunner(raw)(x), rtol=1e-5, atol=1e-6,
                               err_msg="PP-OCR cls logits after load")


def test_saved_files_get_the_umask_mode(tmp_path, rng):
    old = os.umask(0o022)
    try:
        path = ir.save(tiny_conv_model(rng), tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644

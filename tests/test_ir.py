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


# --------------------------------------------------------------------------------------------
# Hostile models: one ModelError line, no traceback, nothing huge allocated
# --------------------------------------------------------------------------------------------


def _cli_one_line(args: list[str], *fragments: str) -> None:
    from click.testing import CliRunner

    from fwedge.cli import cli

    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_external_data_location_with_a_nul_byte_is_refused(tmp_path, rng):
    path = tmp_path / "nul.onnx"
    path.write_bytes(_with_external(tiny_conv_model(rng), "w\x00.bin").SerializeToString())
    with pytest.raises(ModelError, match=r"nul\.onnx.*tensor 'w'.*NUL"):
        ir.load(path)
    _cli_one_line(["inspect", str(path)], "nul.onnx", "NUL")


@pytest.mark.parametrize("entries", [{"offset": "4096"}, {"length": "1000000000000"}, {"offset": "x"},
                                     {"length": "-5"}, {"offset": "0", "length": "8"}])
def test_external_data_range_must_fit_the_file_and_the_tensor(entries, tmp_path, rng):
    model = _with_external(tiny_conv_model(rng), "w.bin")
    (tmp_path / "w.bin").write_bytes(b"\0" * (4 * 36))
    for key, value in entries.items():
        entry = model.graph.initializer[0].external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "range.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"range\.onnx.*tensor 'w'.*external data"):
        ir.load(path)


def test_initializer_whose_data_does_not_match_its_shape_is_refused(tmp_path, rng):
    model = tiny_conv_model(rng)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "short.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=r"short\.onnx.*initializer 'w'.*shape \[4, 1, 3, 3\]"):
        ir.load(path)


def test_names_that_are_not_utf8_are_refused(tmp_path, rng):
    model = tiny_conv_model(rng)
    model.graph.node[1].op_type = "Relx"
    path = tmp_path / "utf8.onnx"
    path.write_bytes(model.SerializeToString().replace(b"Relx", b"R\xffl\xfe"))
    with pytest.raises(ModelError, match=r"utf8\.onnx.*not valid UTF-8"):
        ir.load(path)
    _cli_one_line(["inspect", str(path)], "utf8.onnx", "UTF-8")
    model = tiny_conv_model(rng)
    model.graph.node[1].name = "rexx"
    path.write_bytes(model.SerializeToString().replace(b"rexx", b"r\xff\xfex"))
    with pytest.raises(ModelError, match=r"node.*not valid UTF-8"):
        ir.load(path)


def _huge_constant_model(op: str) -> onnx.ModelProto:
    """x[1,1,8,8] + ReduceSum(op(...)) where op makes a 2^40-element float tensor from constants."""
    inits, nodes = [], []
    if op == "ConstantOfShape":
        inits.append(numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape"))
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                      value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])))
    elif op == "Expand":
        inits += [numpy_helper.from_array(np.ones((1, 1), np.float32), "one"),
                  numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "shape")]
        nodes.append(helper.make_node("Expand", ["one", "shape"], ["big"]))
    elif op == "Tile":
        inits += [numpy_helper.from_array(np.ones((2, 2), np.float32), "one"),
                  numpy_helper.from_array(np.array([2**19, 2**19], np.int64), "repeats")]
        nodes.append(helper.make_node("Tile", ["one", "repeats"], ["big"]))
    elif op == "Range":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "start"),
                  numpy_helper.from_array(np.array(2.0**40, np.float32), "limit"),
                  numpy_helper.from_array(np.array(1.0, np.float32), "delta")]
        nodes.append(helper.make_node("Range", ["start", "limit", "delta"], ["big"]))
    nodes += [helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile", "Range"])
def test_model_that_builds_a_huge_constant_tensor_is_refused(op, tmp_path):
    path = tmp_path / "huge.onnx"
    path.write_bytes(_huge_constant_model(op).SerializeToString())
    with pytest.raises(ModelError, match=rf"huge\.onnx.*{op}.*bytes"):
        ir.load(path)


def test_quantize_of_a_huge_constant_of_shape_is_one_line_error(tmp_path):
    import resource
    import subprocess
    import sys

    path = tmp_path / "huge.onnx"
    path.write_bytes(_huge_constant_model("ConstantOfShape").SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros((8, 1, 8, 8), np.float32))
    fwedge = str(Path(sys.executable).parent / "fwedge")
    cap = 3 << 30
    done = subprocess.run(
        [fwedge, "quantize", str(path), "--data", str(tmp_path / "x.npy"), "--num-samples", "8", "--method", "minmax",
         "-o", str(tmp_path / "q.onnx")], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "huge.onnx" in lines[0] and "ConstantOfShape" in lines[0], lines[0]


def test_external_data_location_too_long_for_the_file_system_is_refused(tmp_path, rng):
    path = tmp_path / "long.onnx"
    path.write_bytes(_with_external(tiny_conv_model(rng), "x" * 5000).SerializeToString())
    with pytest.raises(ModelError, match=r"long\.onnx.*tensor 'w'.*external data"):
        ir.load(path)


def _dynamic_huge_model() -> onnx.ModelProto:
    """A ConstantOfShape whose shape depends on the batch size: [N * 2^20, 2^20], unknown until run."""
    inits = [numpy_helper.from_array(np.array([2**20], np.int64), "scale"),
             numpy_helper.from_array(np.array([2**20], np.int64), "width")]
    nodes = [helper.make_node("Shape", ["x"], ["shape_x"], start=0, end=1),
             helper.make_node("Mul", ["shape_x", "scale"], ["rows"]),
             helper.make_node("Concat", ["rows", "width"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("command", ["eval", "quantize"])
def test_a_model_that_fails_in_onnxruntime_is_one_line_error(command, tmp_path):
    """A tensor too large to allocate, known only at run time: onnxruntime's failure is a ModelError."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "dynamic.onnx"
    path.write_bytes(_dynamic_huge_model().SerializeToString())
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    fwedge = str(Path(sys.executable).parent / "fwedge")
    args = [fwedge, command, str(path), "--data", str(tmp_path / "d.npz")]
    args += ["--num-samples", "4", "--method", "minmax", "-o", str(tmp_path / "q.onnx")] if command == "quantize" else []
    cap = 3 << 30
    done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "onnxruntime" in lines[0] and "ConstantOfShape" in lines[0], lines[0]


@pytest.mark.parametrize("where", ["input", "output"])
def test_unknown_element_type_of_a_graph_input_or_output_is_refused(where, tmp_path, rng):
    model = tiny_conv_model(rng)
    getattr(model.graph, where)[0].type.tensor_type.elem_type = 127
    path = tmp_path / "elem.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match=rf"elem\.onnx.*{where}.*element type 127"):
        ir.load(path)


@pytest.mark.parametrize("op, inputs, shapes", [
    ("Conv", ["x"], {"x": [1, 3, 8, 8], "y": [1, 4, 8, 8]}),            # no weight input
    ("Conv", ["x", "w"], {"x": [1, 3, 8, 8], "w": [4], "y": [1, 4, 8, 8]}),  # a rank-1 weight
    ("ConvTranspose", ["x", "w"], {"x": [1, 3, 8, 8], "w": [], "y": [1, 4, 8, 8]}),
    ("MatMul", ["a", "b"], {"a": [], "b": [3, 4], "y": [4]}),          # a scalar operand
    ("Gemm", ["a", "b"], {"a": [1, 3], "b": [3, 4], "y": []}),
])
def test_node_macs_of_a_malformed_layer_is_unknown_not_a_crash(op, inputs, shapes):
    from onnx import helper

    from fwedge.op_info import node_macs

    assert node_macs(helper.make_node(op, inputs, ["y"]), shapes) is None


def test_an_empty_initializer_with_dims_no_array_can_hold_is_refused(tmp_path):
    """dims [2**40, 2**40, 0] declare no element, but numpy cannot make that shape: the loader
    names the tensor instead of numpy's ValueError surfacing later (found by the long fuzz)."""
    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**40, 2**40, 0])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [tensor])
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelError, match="'w' has dims .* too large for any array"):
        ir.load(path)


def _unsorted_model() -> onnx.ModelProto:
    """Nodes listed out of order, as onnxruntime accepts them: Relu before the Neg it reads, and
    an If before the Mul whose output only its then-branch reads (an outer-scope read)."""
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["relu", "scaled"], ["then_y"], name="then_add")], "then_branch", [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [1, 4])])
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["relu"], ["else_y"], name="else_neg")], "else_branch", [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("Relu", ["negated"], ["relu"], name="relu"),
        helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Neg", ["x"], ["negated"], name="negate"),
        helper.make_node("Mul", ["x", "x"], ["scaled"], name="square"),
    ]
    graph = helper.make_graph(
        nodes, "unsorted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nodes_out_of_topological_order_are_sorted(tmp_path, rng):
    import onnxruntime as ort

    model = _unsorted_model()
    onnx.save(model, tmp_path / "unsorted.onnx")
    loaded = ir.load(tmp_path / "unsorted.onnx")
    assert [node.name for node in loaded.graph.node] == ["negate", "relu", "square", "branch"]
    assert not ir.sort_nodes(loaded.graph)  # already sorted: nothing moves
    x = rng.standard_normal((1, 4)).astype(np.float32)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        np.testing.assert_array_equal(OrtRunner(loaded).run_all(feeds)["y"], original.run(None, feeds)[0],
                                      err_msg=f"y (flag={flag})")


def test_a_name_nobody_produces_is_one_line_naming_the_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["y"], name="second"), helper.make_node("Neg", ["missing"], ["a"], name="first")],
        "dangling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "dangling.onnx")
    with pytest.raises(ModelError) as error:
        ir.load(tmp_path / "dangling.onnx")
    message = str(error.value)
    assert "\n" not in message and "input 'missing' of node: name: first OpType: Neg" in message, message

"""What a new user meets first: exit codes, missing extras, Ctrl-C, inspect on the examples, the Python floor."""
from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fwedge import ir
from fwedge.cli import cli
from tests import farm_helpers as fh

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("fwedge", "passes", "calibration", "targets", "device_farm")
# Standard-library modules and names that appeared after 3.10, with the version that brought them.
NEWER_STDLIB = {"tomllib": (3, 11), "wsgiref.types": (3, 12)}


@pytest.mark.parametrize("target,module,extra", [("tflite", "ai_edge_litert", "tflite"),
                                                 ("openvino", "openvino", "openvino"),
                                                 ("ncnn", "ncnn", "ncnn")])
def test_export_without_an_optional_extra_is_one_line_naming_it(tmp_path, monkeypatch, target, module, extra):
    onnx.save(fh.fashion_mlp(train_samples=200), tmp_path / "m.onnx")
    for name in [name for name in sys.modules if name.split(".")[0] in (module, "tflite_runtime")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    done = CliRunner().invoke(cli, ["export", str(tmp_path / "m.onnx"), "-t", target, "-o", str(tmp_path / "b")])
    assert done.exit_code == 2, done.output
    assert not isinstance(done.exception, ModuleNotFoundError), done.exception
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and f"pip install 'fwedge[{extra}]'" in lines[-1], done.output


def test_a_missing_core_module_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch):
    import fwedge.summary

    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'fwedge_internal'", name="fwedge_internal")

    monkeypatch.setattr(fwedge.summary, "summarize", broken)
    onnx.save(fh.fashion_mlp(train_samples=200), tmp_path / "m.onnx")
    done = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx")])
    assert isinstance(done.exception, ModuleNotFoundError)


def test_ctrl_c_exits_130_not_the_gate_code(tmp_path, monkeypatch):
    import fwedge.summary

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fwedge.summary, "summarize", interrupted)
    onnx.save(fh.fashion_mlp(train_samples=200), tmp_path / "m.onnx")
    done = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.onnx")])
    assert done.exit_code == 130, (done.exit_code, done.output)


def test_ctrl_c_in_a_real_process_exits_130(tmp_path):
    """SIGINT to a running `fwedge eval` (a long loop over a large .npz): exit 130, one line."""
    import os
    import signal
    import subprocess
    import time

    import numpy as np

    onnx.save(fh.fashion_mlp(train_samples=200), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((200_000, 1, 28, 28), np.float32), y=np.zeros(200_000, np.int64))
    # As from a terminal: SIGINT at its default. A runner started in the background by a
    # non-interactive shell (`make test &`) hands its children SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler at all (the evaluation ran to the end, exit 0).
    process = subprocess.Popen([str(Path(sys.executable).parent / "fwedge"), "eval", str(tmp_path / "m.onnx"),
                                "--data", str(tmp_path / "d.npz"), "--batch-size", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt once the evaluation has opened the data (past start-up, however loaded the
    # machine): 200,000 samples one at a time take far longer than the second that follows.
    deadline = time.monotonic() + 120
    data = str(tmp_path / "d.npz")
    while time.monotonic() < deadline and process.poll() is None:
        fds = Path(f"/proc/{process.pid}/fd")
        try:
            if any(os.readlink(fd) == data for fd in fds.iterdir()):
                break
        except OSError:
            pass
        time.sleep(0.1)
    time.sleep(1)
    assert process.poll() is None, "the evaluation finished before it could be interrupted"
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["cnn_small", "mobilenet_v2_tiny"])
def test_inspect_counts_macs_with_a_batch_of_one(name):
    done = CliRunner().invoke(cli, ["inspect", str(ROOT / "examples" / "fashion_mnist" / f"{name}.onnx"), "--json", "-"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["total_macs"] and all(layer["macs"] for layer in summary["layers"]), summary["total_macs"]
    # The dynamic batch stays visible in the model's own input shape.
    assert not isinstance(summary["inputs"][0]["shape"][0], int)
    assert summary["total_macs"] == sum(layer["macs"] for layer in summary["layers"])
    text = CliRunner().invoke(cli, ["inspect", str(ROOT / "examples" / "fashion_mnist" / f"{name}.onnx")]).output
    assert "MACs unknown" not in text and f"MACs {summary['total_macs']:,}" in text


def test_inspect_keeps_macs_unknown_when_more_than_the_batch_is_dynamic(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H2", "W2"])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "dyn.onnx")
    summary = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "dyn.onnx"), "--json", "-"]).output)
    assert summary["total_macs"] is None
    fixed = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "dyn.onnx"), "--json", "-",
                                                "--input-shape", "x=1,3,8,8"]).output)
    assert fixed["total_macs"] == 4 * 3 * 9 * 6 * 6


def _conv_silu_model(input_dims: list, named_dims: bool):
    """Conv 3->8 (3x3, stride 2, pad 1) + SiLU + Reshape [1, 8, -1], as a YOLOv8 head ends. With
    named_dims, the input is [batch, 3, height, width] and value_info and the output carry the
    names tf2onnx and onnx's shape inference give unknown dims ('unk__1', 'batch', 'height')."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.array([1, 8, -1], np.int64), "flat_shape")]
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Sigmoid", ["conv_out"], ["gate"], name="sigmoid"),
             helper.make_node("Mul", ["conv_out", "gate"], ["silu"], name="silu"),
             helper.make_node("Reshape", ["silu", "flat_shape"], ["output0"], name="flatten")]
    info = [helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, ["unk__1", 8, "unk__2", "unk__3"]),
            helper.make_tensor_value_info("gate", TensorProto.FLOAT, ["batch", 8, "height", "unk__4"])] if named_dims else []
    output = ["unk__1", 8, "unk__5"] if named_dims else [1, 8, (input_dims[2] // 2) * (input_dims[3] // 2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_dims)],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output)], inits, value_info=info)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_inspect_input_shape_on_symbolic_dims(tmp_path, wide_console):
    """--input-shape on a model whose dims are named like a tf2onnx/ultralytics export's
    (a YOLOv8n export crashed here once with int('unk__1')): MACs and the support lines print."""
    onnx.save(_conv_silu_model(["batch", 3, "height", "width"], named_dims=True), tmp_path / "sym.onnx")
    done = CliRunner().invoke(cli, ["inspect", str(tmp_path / "sym.onnx"), "--input-shape", "images=1,3,64,64"])
    assert done.exit_code == 0, done.output
    macs = 8 * 3 * 9 * 32 * 32  # output elements x C_in x kernel area
    assert f"MACs {macs:,}" in done.output and "MACs unknown" not in done.output
    assert re.search(rf"conv\s.*Conv\s.*{macs:,}", done.output), done.output
    assert re.search(r"tflite\s.*all nodes", done.output), done.output
    assert "by op type only" not in done.output
    unfixed = CliRunner().invoke(cli, ["inspect", str(tmp_path / "sym.onnx")])
    assert unfixed.exit_code == 0 and "MACs unknown (dynamic shapes)" in unfixed.output, unfixed.output


def test_inspect_says_when_support_is_judged_by_op_type_only(tmp_path, wide_console):
    """Dynamic height/width: the lowering targets cannot run their exact check, and their
    support lines say so (onnx and openvino take dynamic shapes and judge exactly)."""
    from fwedge.targets import get_target
    from fwedge.targets.base import ByOpTypeOnly

    model = _conv_silu_model(["batch", 3, "height", "width"], named_dims=True)
    onnx.save(model, tmp_path / "sym.onnx")
    done = CliRunner().invoke(cli, ["inspect", str(tmp_path / "sym.onnx"), "--json", "-"])
    summary = json.loads(done.output)
    assert sorted(summary["support_by_op_type"]) == ["c", "ncnn", "tflite"], summary["support_by_op_type"]
    assert "dynamic" in summary["support_by_op_type"]["tflite"]
    assert isinstance(get_target("tflite").check(model), ByOpTypeOnly)
    assert not isinstance(get_target("tflite").check(ir.set_input_shapes(model, {"images": [1, 3, 64, 64]})), ByOpTypeOnly)
    text = CliRunner().invoke(cli, ["inspect", str(tmp_path / "sym.onnx")]).output
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    for name in ("tflite", "ncnn", "c"):
        assert "all nodes; by op type only: give --input-shape for the exact check" in lines[name], text
    assert "by op type only" not in lines["onnx"] + lines["openvino"], text


def test_inspect_static_model_shows_macs(tmp_path, wide_console):
    onnx.save(_conv_silu_model([1, 3, 64, 64], named_dims=False), tmp_path / "static.onnx")
    done = CliRunner().invoke(cli, ["inspect", str(tmp_path / "static.onnx")])
    assert done.exit_code == 0, done.output
    assert f"MACs {8 * 3 * 9 * 32 * 32:,}" in done.output and "?" not in done.output, done.output


def test_lowering_refuses_a_symbolic_dim_on_one_line():
    """A dim shape inference left symbolic ('unk__1') is a ModelError naming the tensor (check()
    then judges by op type), not a ValueError from int('unk__1')."""
    from types import SimpleNamespace

    from fwedge.errors import ModelError
    from fwedge.lowered.build import Builder

    with pytest.raises(ModelError, match=r"tensor 'anchors': shape \['unk__1', 2\] is not static"):
        Builder(SimpleNamespace(shapes={"anchors": ["unk__1", 2]})).shape("anchors")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_requires_python_covers_what_the_code_imports():
    """pip enforces requires-python: it must be at least what the newest standard module used needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = tuple(int(part) for part in re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups())
    needed = {}
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for module in _imported_modules(path) & set(NEWER_STDLIB):
                needed[f"{path.relative_to(ROOT)}: {module}"] = NEWER_STDLIB[module]
    too_new = {where: version for where, version in needed.items() if version > floor}
    assert not too_new, f"requires-python {project['requires-python']} but the code needs {too_new}"
    readme = (ROOT / "README.md").read_text()
    assert f"Python {floor[0]}.{floor[1]}+" in readme

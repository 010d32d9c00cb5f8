"""The CLI: lazy help that imports no heavy toolchain, exit codes, and inspect/eval end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwedge.cli import COMMANDS, LazyGroup, cli

HEAVY = ("openvino", "ai_edge_litert", "ncnn", "torch", "tensorflow")


def _imports_after(args: list[str]) -> tuple[int, list[str]]:
    """Run the CLI in a fresh interpreter and list the heavy modules it imported."""
    code = (
        "import sys\n"
        "from fwedge.cli import cli\n"
        "try:\n"
        f"    cli.main(args={args!r}, prog_name='fwedge', standalone_mode=False)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 0\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(code or 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = [l for l in done.stdout.splitlines() if l.startswith("HEAVY=")]
    assert line, done.stdout + done.stderr
    heavy = [m for m in line[-1][6:].split(",") if m]
    return done.returncode, heavy


def test_help_imports_no_heavy_toolchain():
    code, heavy = _imports_after(["--help"])
    assert code == 0
    assert heavy == [], f"fwedge --help imported {heavy}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_imports_no_heavy_toolchain(name):
    if name not in LazyGroup(cli).list_commands(None):
        pytest.skip(f"command {name} is not built in this checkout")
    code, heavy = _imports_after([name, "--help"])
    assert code == 0, f"fwedge {name} --help exited {code}"
    assert heavy == [], f"fwedge {name} --help imported {heavy}"


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "fwedge, version" in result.output


def test_fwedge_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    result = CliRunner().invoke(cli, ["inspect", str(bad)])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model") and "bad.onnx" in lines[0]


def test_console_script_installed():
    script = Path(sys.executable).parent / "fwedge"
    assert script.is_file(), f"console script {script} missing: is fwedge installed in this environment?"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "fwedge, version" in done.stdout


@pytest.mark.rapidocr
def test_inspect_ppocr_cls(ppocr_cls_path):
    result = CliRunner().invoke(cli, ["inspect", str(ppocr_cls_path), "--input-shape", "x=1,3,48,192", "--json", "-"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["opset"] == 13
    assert summary["op_histogram"]["Conv"] == 53 and "Constant" not in summary["op_histogram"]
    assert summary["inputs"][0]["shape"] == [1, 3, 48, 192]
    convs = [layer for layer in summary["layers"] if layer["op"] == "Conv"]
    assert len(convs) == 53 and all(layer["macs"] for layer in convs)
    assert summary["parameters"] > 100_000
    assert "onnx" in summary["support"] and summary["support"]["onnx"] == []


@pytest.mark.fashion_mnist
def test_eval_example_model_subset(cnn_small_path):
    result = CliRunner().invoke(cli, ["eval", str(cnn_small_path), "--data", "fashion-mnist:test",
                                      "--limit", "500", "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["samples"] == 500
    assert payload["accuracy"]["top1"] > 0.85


@pytest.mark.fashion_mnist
def test_eval_reports_fidelity_against_itself(cnn_small_path):
    result = CliRunner().invoke(cli, ["eval", str(cnn_small_path), "--data", "fashion-mnist:test",
                                      "--limit", "64", "--reference", str(cnn_small_path), "--json", "-"])
    assert result.exit_code == 0, result.output
    fidelity = json.loads(result.output)["fidelity"]
    assert fidelity["top1_agreement"] == 1.0 and fidelity["max_abs_error"] == 0.0


def test_eval_wrong_shape_is_a_data_error(tmp_path):
    from fwedge import ir
    from tests.helpers import tiny_conv_model
    import numpy as np

    model = ir.save(tiny_conv_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    result = CliRunner().invoke(cli, ["eval", str(model), "--data", str(tmp_path / "d.npz")])
    assert result.exit_code == 2
    assert "d.npz" in result.output and "expects shape [N,1,8,8], got [N,8,8]" in result.output


@pytest.mark.parametrize("name", ["cnn_small", "mobilenet_v2_tiny"])
def test_inspect_counts_learnable_parameters(name):
    """Conv/Gemm weights and biases and BatchNorm's scale and shift, as torch counts them: not
    BatchNorm's running statistics nor Clip's bounds. The figure is the example README's."""
    import onnx
    from onnx import numpy_helper

    path = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist" / f"{name}.onnx"
    model = onnx.load(path)
    sizes = {init.name: numpy_helper.to_array(init).size for init in model.graph.initializer}
    learned = {"Conv": slice(1, 3), "Gemm": slice(1, 3), "BatchNormalization": slice(1, 3)}
    expected = sum(sizes[i] for node in model.graph.node if node.op_type in learned
                   for i in node.input[learned[node.op_type]] if i in sizes)
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"] == expected
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert f"learnable parameters {expected:,}" in text
    readme = (path.parent / "README.md").read_text()
    assert f"| `{name}.onnx` | {expected:,} |" in readme


def test_inspect_counts_the_parameters_inside_control_flow(tmp_path):
    """Weights in If branches (silero-vad's model holds all of them there): branch initializers
    and Constant tensors count; shape constants (int64) and Clip bounds do not."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, channels: int) -> onnx.GraphProto:
        weight = numpy_helper.from_array(np.ones((channels, 1, 3, 3), np.float32), f"{name}_w")
        bound = helper.make_node("Constant", [], [f"{name}_max"], value=numpy_helper.from_array(np.float32(6)))
        shape = helper.make_node("Constant", [], [f"{name}_shape"], value=numpy_helper.from_array(np.array([1, -1])))
        nodes = [helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"], pads=[1, 1, 1, 1]), bound, shape,
                 helper.make_node("Clip", [f"{name}_c", "", f"{name}_max"], [f"{name}_r"]),
                 helper.make_node("Reshape", [f"{name}_r", f"{name}_shape"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, "n"])],
                                 [weight])

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 4), else_branch=branch("else", 2))], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "branches.onnx")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "branches.onnx"), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameters"] == 4 * 9 + 2 * 9

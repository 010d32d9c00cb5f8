"""The FP32 reference a bundle records, and --input-shape / --preprocess on the commands that run bundles.

quantize names the float model in the QDQ model, export records it in the manifest (a relative
path and its sha256), and run, diff and farm run use it when no --reference is given, only while
its bytes are the recorded ones. A changed reference is refused (exit 2), a missing one is named.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import numpy as np
import pytest
from click.testing import CliRunner

from fwedge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "examples" / "fashion_mnist" / "cnn_small.onnx"
TEST = "fashion-mnist:test"

pytestmark = pytest.mark.fashion_mnist


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(*args: str):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """project/cnn_small.onnx, its QDQ model q.onnx (fwedge quantize) and onnx + tflite bundles of it."""
    work = tmp_path_factory.mktemp("reference") / "project"
    work.mkdir()
    shutil.copy(CNN, work / "cnn_small.onnx")
    _ok("quantize", work / "cnn_small.onnx", "--data", "fashion-mnist:train", "--num-samples", "64",
        "--method", "minmax", "-o", work / "q.onnx")
    _ok("export", work / "q.onnx", "-t", "onnx", "-t", "tflite", "-o", work / "bundles")
    return work


def _copy(project: Path, tmp_path: Path) -> Path:
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved)
    return moved


def _run_json(bundle: Path, *extra: str) -> dict:
    return json.loads(_ok("run", bundle, "--data", TEST, "--limit", "64", "--json", "-", *extra).output)


def test_quantize_names_the_float_model_and_export_records_it(project):
    from fwedge import ir
    from fwedge.reference import METADATA_KEY

    digest = ir.sha256_file(project / "cnn_small.onnx")
    metadata = {p.key: p.value for p in onnx.load(project / "q.onnx").metadata_props}
    assert json.loads(metadata[METADATA_KEY]) == {"path": "cnn_small.onnx", "sha256": digest}
    for target in ("onnx", "tflite"):
        manifest = json.loads((project / "bundles" / f"q-{target}-int8" / "manifest.json").read_text())
        assert manifest["extra"]["reference_model"] == {"path": "../../cnn_small.onnx", "sha256": digest}
        assert manifest["arch"] == "any"  # a host-runtime bundle is not built for one CPU


def test_a_float_export_references_itself_and_reference_overrides(project, tmp_path):
    from fwedge import ir

    _ok("export", project / "cnn_small.onnx", "-t", "onnx", "-o", tmp_path / "fp32")
    manifest = json.loads((tmp_path / "fp32" / "cnn_small-onnx-fp32" / "manifest.json").read_text())
    assert Path(tmp_path / "fp32" / "cnn_small-onnx-fp32" / manifest["extra"]["reference_model"]["path"]).resolve() \
        == (project / "cnn_small.onnx").resolve()
    other = tmp_path / "other.onnx"  # the same model with other bytes
    model = onnx.load(project / "cnn_small.onnx")
    model.doc_string = "another copy"
    onnx.save(model, other)
    _ok("export", project / "q.onnx", "-t", "onnx", "--reference", other, "-o", tmp_path / "override")
    manifest = json.loads((tmp_path / "override" / "q-onnx-int8" / "manifest.json").read_text())
    assert manifest["extra"]["reference_model"] == {"path": "../../other.onnx", "sha256": ir.sha256_file(other)}


def test_a_qdq_model_that_names_no_float_model_says_so(project, tmp_path):
    model = onnx.load(project / "q.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "plain.onnx")
    result = _ok("export", tmp_path / "plain.onnx", "-t", "onnx", "-o", tmp_path / "b")
    assert "note: no FP32 reference recorded: the QDQ model names no float model" in result.output
    assert "reference_model" not in json.loads((tmp_path / "b" / "plain-onnx-int8" / "manifest.json").read_text())["extra"]


def test_run_and_farm_use_the_recorded_reference_after_the_folder_moves(project, tmp_path):
    moved = _copy(project, tmp_path)
    bundle = moved / "bundles" / "q-tflite-int8"
    recorded = _run_json(bundle)
    assert Path(recorded["reference"]) == moved / "cnn_small.onnx"
    explicit = _run_json(bundle, "--reference", moved / "cnn_small.onnx")
    assert recorded["fidelity"] == explicit["fidelity"] and recorded["fidelity"]["top1_agreement"] > 0.9

    result = _ok("farm", "run", bundle, "--devices", "host", "--data", TEST, "--limit", "64", "--repeats", "2",
                 "-o", tmp_path / "r.json")
    assert "no FP32 reference" not in result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row["reference"] == str(moved / "cnn_small.onnx")
    assert row["fidelity"]["top1_agreement"] == pytest.approx(recorded["fidelity"]["top1_agreement"], abs=1 / 64)


def test_a_reference_changed_after_export_is_refused(project, tmp_path):
    moved = _copy(project, tmp_path)
    model = onnx.load(moved / "cnn_small.onnx")
    model.graph.initializer[0].float_data[:] = []  # same file name, other weights: raw data zeroed
    raw = bytearray(model.graph.initializer[0].raw_data)
    raw[:4] = b"\0\0\0\0"
    model.graph.initializer[0].raw_data = bytes(raw)
    onnx.save(model, moved / "cnn_small.onnx")
    bundle = moved / "bundles" / "q-onnx-int8"
    for args in (["run", bundle, "--data", TEST, "--limit", "8"],
                 ["farm", "run", bundle, "--devices", "host", "--data", TEST, "--limit", "8", "-o", tmp_path / "r.json"]):
        result = _invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        assert "cnn_small.onnx" in lines[0] and "changed since it was recorded" in lines[0], lines[0]
    assert not (tmp_path / "r.json").exists()


def test_a_missing_reference_is_named(project, tmp_path):
    moved = _copy(project, tmp_path)
    (moved / "cnn_small.onnx").unlink()
    bundle = moved / "bundles" / "q-tflite-int8"
    result = _ok("run", bundle, "--data", TEST, "--limit", "8")
    assert "note: no fidelity: bundle 'q-tflite-int8' records the reference" in result.output
    assert "which is not there" in result.output
    farm = _ok("farm", "run", bundle, "--devices", "host", "--data", TEST, "--limit", "8", "--repeats", "1",
               "-o", tmp_path / "r.json")
    assert "which is not there" in farm.output and "no FP32 reference for q-tflite-int8" in farm.output


def _reseal(bundle: Path, entry) -> None:
    from fwedge.bundle import seal_manifest

    data = json.loads((bundle / "manifest.json").read_text())
    data["extra"]["reference_model"] = entry
    (bundle / "manifest.json").write_text(json.dumps(seal_manifest(data)))


@pytest.mark.parametrize("entry, expected", [
    ({"path": "/etc/hostname", "sha256": "0" * 64}, "changed since it was recorded"),
    ("not json", "manifest extra.reference_model: not JSON"),
    ({"path": "../../cnn_small.onnx"}, "exactly 'path' and 'sha256'"),
    ({"path": "x" * 5000, "sha256": "0" * 64}, "at most 4096 characters"),
    ({"path": "../../cnn_small.onnx", "sha256": "$(reboot)"}, "64 lowercase hex digits"),
])
def test_a_hostile_reference_entry_is_refused(project, tmp_path, entry, expected):
    """A stranger's bundle may name any file: it is used only if its bytes hash to the recorded digest."""
    moved = _copy(project, tmp_path)
    bundle = moved / "bundles" / "q-onnx-int8"
    _reseal(bundle, entry)
    result = _invoke("run", bundle, "--data", TEST, "--limit", "8")
    assert result.exit_code == 2, result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output


def _dynamic_cnn(path: Path) -> Path:
    """cnn_small with its height and width left dynamic (as many exported models are), and no
    preprocessing in its metadata: fwedge guesses it from the input shape."""
    model = onnx.load(CNN)
    del model.metadata_props[:]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims[2:], ("height", "width")):
        dim.Clear()
        dim.dim_param = name
    del model.graph.value_info[:]
    onnx.save(model, path)
    return path


def _large_images(folder: Path, count: int = 48) -> Path:
    """`count` Fashion-MNIST test images at 56x56 (PNG, one folder per class): another size than
    the model's 28x28, as photos are."""
    import gzip

    from PIL import Image

    base = Path("/usr/share/datasets/fashion-mnist")
    with gzip.open(base / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(base / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)[:count]
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / f"{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((56, 56), Image.BILINEAR).save(folder / f"{label}" / f"{index:03d}.png")
    return folder


def test_input_shape_fixes_a_dynamic_model_in_eval(tmp_path):
    dynamic = _dynamic_cnn(tmp_path / "dynamic.onnx")
    images = str(_large_images(tmp_path / "images"))
    unfixed = _invoke("eval", dynamic, "--data", images)  # 56x56 reaches the 28x28 classifier head
    assert unfixed.exit_code == 2 and len(unfixed.output.strip().splitlines()) == 1, unfixed.output
    assert "is dynamic" in unfixed.output and "give --input-shape input=" in unfixed.output
    fixed = json.loads(_ok("eval", dynamic, "--data", images, "--input-shape", "input=1,1,28,28",
                           "--json", "-").output)
    assert fixed["preprocess"]["resize"] == [28, 28] and fixed["samples"] == 48
    static = json.loads(_ok("eval", CNN, "--data", images, "--preprocess", json.dumps(fixed["preprocess"]),
                            "--reference", dynamic, "--input-shape", "input=1,1,28,28", "--json", "-").output)
    assert fixed["accuracy"] == static["accuracy"]  # the same function on the same resized samples
    assert static["fidelity"]["top1_agreement"] == 1.0 and static["fidelity"]["max_abs_error"] < 1e-4


def test_input_shape_of_the_reference_must_agree_with_the_bundle(project, tmp_path):
    dynamic = _dynamic_cnn(tmp_path / "dynamic.onnx")
    bundle = project / "bundles" / "q-tflite-int8"  # NHWC on the device, compared in NCHW
    good = _run_json(bundle, "--reference", dynamic, "--input-shape", "input=1,1,28,28")
    static = _run_json(bundle, "--reference", CNN)
    assert good["fidelity"] == static["fidelity"]
    wrong = ["--input-shape", "input=1,1,32,32"]
    for command in (["run", bundle, "--data", TEST, "--limit", "8", "--reference", dynamic, *wrong],
                    ["diff", bundle, dynamic, "--data", TEST, *wrong],
                    ["farm", "run", bundle, "--devices", "host", "--data", TEST, "--reference", dynamic, *wrong,
                     "-o", tmp_path / "r.json"]):
        result = _invoke(*command)
        assert result.exit_code == 2, result.output
        assert "bundle 'q-tflite-int8' was exported with input" in result.output and "[1, 1, 28, 28]" in result.output


@pytest.mark.cc
def test_farm_run_takes_preprocess_as_run_does(project, tmp_path):
    """The C bundle gives the same bytes on every CPU (no third-party int8 kernels), so the farm's
    accuracy with the override must equal run's exactly."""
    from fwedge.bundle import host_arch

    _ok("export", project / "q.onnx", "-t", host_arch(), "-o", tmp_path)
    bundle = tmp_path / f"q-{host_arch()}-int8"
    darker = json.dumps({"resize": [28, 28], "color": "grayscale", "layout": "NCHW", "scale": 0.5 / 255})
    by_run = _run_json(bundle, "--preprocess", darker)
    default = _run_json(bundle)
    _ok("farm", "run", bundle, "--devices", "host", "--data", TEST, "--limit", "64", "--repeats", "1",
        "--preprocess", darker, "-o", tmp_path / "r.json")
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert by_run["accuracy"]["top1"] != default["accuracy"]["top1"]  # the override is used...
    assert row["accuracy"] == by_run["accuracy"]["top1"]  # ...by the farm too
    bad = _invoke("farm", "run", bundle, "--devices", "host", "--data", TEST, "--preprocess", "{", "-o",
                  tmp_path / "bad.json")
    assert bad.exit_code == 2 and "--preprocess" in bad.output


@pytest.mark.tflite
def test_litert_prints_nothing_of_its_own(project, tmp_path):
    """LiteRT writes "INFO: Created TensorFlow Lite XNNPACK delegate" to file descriptor 2 when an
    interpreter starts. The runtimes run in child processes whose stderr is captured, so none of
    it reaches fwedge's output (checked on the real file descriptors, in a subprocess)."""
    bundle = project / "bundles" / "q-tflite-int8"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["run", bundle, "--data", TEST, "--limit", "8"],
                 ["farm", "run", bundle, "--devices", "host", "--data", TEST, "--limit", "8", "--repeats", "1",
                  "-o", tmp_path / "r.json"]):
        done = subprocess.run([sys.executable, "-m", "fwedge", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "XNNPACK" not in done.stdout + done.stderr and "INFO:" not in done.stdout + done.stderr


def test_eval_runs_a_model_whose_batch_is_fixed_to_one(tmp_path):
    """Many exported models fix the batch to 1; eval feeds them in slices (it used to fail with
    'Got: 256 Expected: 1')."""
    model = onnx.load(CNN)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = 1
    del model.graph.value_info[:]
    onnx.save(model, tmp_path / "batch1.onnx")
    fixed = json.loads(_ok("eval", tmp_path / "batch1.onnx", "--data", TEST, "--limit", "300", "--json", "-").output)
    dynamic = json.loads(_ok("eval", CNN, "--data", TEST, "--limit", "300", "--json", "-").output)
    assert fixed["samples"] == 300 and fixed["accuracy"] == dynamic["accuracy"]

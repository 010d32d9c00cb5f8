"""`fwedge profile`: per-layer time in each bundle's own runtime, its JSON, and the report's chart.

The only timing assertions are ratios of sums measured in the same process, as the issue asks
(tests/tolerances.py gives their bounds and why they hold)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fwedge.bundle import MANIFEST, load_bundle, seal_manifest
from fwedge.cli import cli
from fwedge.errors import DataError, ExportError
from fwedge.profile import MAX_LAYERS, BundleProfile, Layer, load_profiles, write_profiles
from tests.helpers import check_same_runs_profile
from tests.tolerances import PROFILE_C_PLAIN_RATIO, PROFILE_NESTED_MAX_RATIO, PROFILE_OPENVINO_SAME_RUNS_RATIO

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "examples" / "fashion_mnist" / "cnn_small.onnx"
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>[bold]"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("profile")
    result = _invoke("quantize", CNN, "--data", "fashion-mnist:train", "--num-samples", "64", "--method", "minmax",
                     "-o", folder / "cnn.onnx")
    assert result.exit_code == 0, result.output
    result = _invoke("export", folder / "cnn.onnx", "-t", "onnx", "-t", "x86_64", "-o", folder)
    assert result.exit_code == 0, result.output
    return folder


def _export(bundles: Path, target: str) -> Path:
    if not (bundles / f"cnn-{target}-int8").is_dir():
        result = _invoke("export", bundles / "cnn.onnx", "-t", target, "-o", bundles)
        assert result.exit_code == 0, result.output
    return bundles / f"cnn-{target}-int8"


def _profile(*args) -> list[dict]:
    result = _invoke("profile", *args, "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "fwedge.profile/1"
    return data["profiles"]


def _check_c_profile(row: dict, bundle_dir: Path) -> None:
    manifest = load_bundle(bundle_dir).extra
    names = [layer["name"] for layer in row["layers"]]
    assert names == ["(inputs)", *manifest["op_names"], "(outputs)"]
    assert [layer["kind"] for layer in row["layers"]][1:-1] == manifest["op_kinds"]
    assert row["runs"] == 50 and row["layer_sum_ms"] > 0
    assert sum(layer["percent"] for layer in row["layers"]) == pytest.approx(100.0)
    check_same_runs_profile(row)
    low, high = PROFILE_C_PLAIN_RATIO
    assert low <= row["sum_over_plain"] <= high, row


pytestmark = [pytest.mark.fashion_mnist, pytest.mark.cc]


def test_c_layer_sum_matches_the_whole_run_on_the_host(bundles):
    (row,) = _profile(bundles / "cnn-x86_64-int8", "--repeats", "50")
    assert row["device"] == "host" and row["target"] == "c"
    _check_c_profile(row, bundles / "cnn-x86_64-int8")
    assert row["ordinary_p50_ms"] > 0


@pytest.mark.zig
@pytest.mark.qemu("aarch64")
def test_c_layer_sum_matches_the_whole_run_on_a_qemu_board(bundles):
    bundle = _export(bundles, "aarch64")
    (row,) = _profile(bundle, "--devices", "qemu-aarch64", "--repeats", "50")
    assert row["device"] == "qemu-aarch64" and "emulated" in row["note"]
    _check_c_profile(row, bundle)


def test_the_default_binary_is_the_bundle_binary_byte_for_byte(bundles, tmp_path):
    from fwedge.targets.c_profile import PROFILE_DEFINE, rebuild

    bundle = load_bundle(bundles / "cnn-x86_64-int8")
    plain = rebuild(bundle, tmp_path / "plain")
    profiled = rebuild(bundle, tmp_path / "profiled", (PROFILE_DEFINE,))

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(plain) == bundle.files["bin/fwedge_model"]
    assert digest(profiled) != bundle.files["bin/fwedge_model"]
    model_c = (bundles / "cnn-x86_64-int8" / "model.c").read_text()
    assert model_c.count("    FW_STEP(") == bundle.extra["ops"] + 2


def test_op_macs_are_the_source_nodes_macs(bundles):
    from fwedge.op_info import node_macs

    extra = load_bundle(bundles / "cnn-x86_64-int8").extra
    model = onnx.shape_inference.infer_shapes(onnx.load(str(bundles / "cnn.onnx")))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    shapes |= {init.name: list(init.dims) for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    checked = 0
    for name, kind, macs in zip(extra["op_names"], extra["op_kinds"], extra["op_macs"]):
        if kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            assert macs == node_macs(nodes[name], shapes) > 0, name
            checked += 1
        else:
            assert macs == 0, name
    assert checked >= 3


def test_a_manifest_with_bad_op_facts_is_refused(bundles, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles / "cnn-x86_64-int8", copy)
    data = json.loads((copy / MANIFEST).read_text())
    for key, value, expected in (("op_macs", ["3"] * len(data["extra"]["op_names"]), "integers"),
                                 ("op_kinds", ["conv2d"], "differ in length"),
                                 ("op_kinds", ["<b>"] * len(data["extra"]["op_names"]), "short names")):
        edited = json.loads(json.dumps(data))
        edited["extra"][key] = value
        edited.pop("manifest_sha256", None)
        (copy / MANIFEST).write_text(json.dumps(seal_manifest(edited)))
        with pytest.raises(ExportError, match=expected):
            load_bundle(copy)


def test_onnx_layers_nest_in_onnxruntimes_own_run_time(bundles):
    (row,) = _profile(bundles / "cnn-onnx-int8", "--repeats", "10", "--threads", "1")
    assert row["runs"] == 10 and row["layers"]
    source = {node.name for node in onnx.load(str(bundles / "cnn.onnx")).graph.node}
    convs = [layer for layer in row["layers"] if layer["kind"] == "QLinearConv"]
    assert convs and all(layer["name"] in source and layer["macs"] > 0 for layer in convs)
    assert 0 < row["sum_over_total"] <= PROFILE_NESTED_MAX_RATIO


@pytest.mark.openvino
def test_openvino_layers_nest_in_the_infer_calls(bundles):
    (row,) = _profile(_export(bundles, "openvino"), "--repeats", "10", "--threads", "1")
    assert row["layers"] and "not executed" in row["note"]
    assert 0 < row["sum_over_total"] <= PROFILE_NESTED_MAX_RATIO


@pytest.mark.tflite
def test_tflite_says_it_has_no_per_op_profiler(bundles):
    bundle = _export(bundles, "tflite")
    result = _invoke("profile", bundle, "--repeats", "3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "cnn-tflite-int8" in line]
    assert len(lines) == 1 and "no per-op profiler" in lines[0] and "ordinary p50" in lines[0]
    (row,) = _profile(bundle, "--repeats", "3")
    assert row["layers"] == [] and row["method"] == "none" and row["ordinary_p50_ms"] > 0


@pytest.mark.ncnn
@pytest.mark.pnnx
def test_ncnn_says_it_has_no_per_layer_timer(bundles):
    (row,) = _profile(_export(bundles, "ncnn"), "--repeats", "3")
    assert row["layers"] == [] and "no per-layer timer" in row["note"]


def _sample(name: str = "conv") -> BundleProfile:
    return BundleProfile(bundle="b", device="host", target="c", arch="x86_64", method="m", runs=3,
                         layers=[Layer(name, "conv2d", 10, 0.5), Layer("(outputs)", "copy", None, 0.25)],
                         total_ms=0.8, ordinary_p50_ms=0.7, plain_ms=0.75).finish()


def test_json_round_trip(tmp_path):
    write_profiles(tmp_path / "p.json", [_sample()])
    (back,) = load_profiles(tmp_path / "p.json")
    assert back.to_dict() == _sample().to_dict()
    assert back.layers[0].percent == pytest.approx(200 / 3)


def _payload() -> dict:
    return {"schema": "fwedge.profile/1", "profiles": [_sample().to_dict()]}


def _edit(path: str, value):
    data = _payload()
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return json.dumps(data)


HOSTILE_FILES = {
    "bad schema": _edit("schema", "fwedge.profile/2"),
    "not an object": "[1, 2]",
    "not json": "{\"schema\": ",
    "NaN": _edit("profiles.0.total_ms", 12345.5).replace("12345.5", "NaN"),
    "repeated key": "{\"schema\": \"fwedge.profile/1\", \"schema\": \"x\", \"profiles\": []}",
    "profiles not a list": _edit("profiles", {"a": 1}),
    "string time": _edit("profiles.0.layers.0.time_ms", "0.5"),
    "negative time": _edit("profiles.0.layers.0.time_ms", -1),
    "bool runs": _edit("profiles.0.runs", True),
    "name not text": _edit("profiles.0.layers.0.name", ["x"]),
    "float macs": _edit("profiles.0.layers.0.macs", 1.5),
    "unknown key": _edit("profiles.0.extra", 1),
    "layer keys": _edit("profiles.0.layers.0", {"name": "x"}),
    "huge name": _edit("profiles.0.layers.0.name", "x" * 5000),
    "too many layers": _edit("profiles.0.layers", [_sample().to_dict()["layers"][0]] * (MAX_LAYERS + 1)),
    "deep": "[" * 100000 + "]" * 100000,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_profile_files_are_one_line_exit_2(case, tmp_path):
    from fwedge.device_farm.results import Results, save_results

    (tmp_path / "p.json").write_text(HOSTILE_FILES[case])
    with pytest.raises(DataError):
        load_profiles(tmp_path / "p.json")
    results = save_results(Results(results=[]), tmp_path / "results.json")
    done = _invoke("report", results, "--profile", tmp_path / "p.json", "-o", tmp_path / "r.html")
    assert done.exit_code == 2, done.output
    assert len(done.output.strip().splitlines()) == 1 and "profile" in done.output
    assert not (tmp_path / "r.html").exists()


def test_report_shows_the_profile_and_escapes_every_name(tmp_path):
    from fwedge.device_farm.results import Results, save_results

    hostile = _sample(HOSTILE)
    hostile.bundle, hostile.device, hostile.note = HOSTILE, HOSTILE, HOSTILE
    hostile.layers[1].kind = HOSTILE
    write_profiles(tmp_path / "p.json", [hostile, BundleProfile(bundle="t", device="host", target="tflite", arch="any",
                                                                  method="none", runs=0, note="no per-op profiler")])
    results = save_results(Results(results=[]), tmp_path / "results.json")
    done = _invoke("report", results, "--profile", tmp_path / "p.json", "-o", tmp_path / "r.html")
    assert done.exit_code == 0, done.output
    page = (tmp_path / "r.html").read_text()
    assert "Per-layer time on the device" in page and page.count("class='profile-chart'") == 1
    assert "no per-op profiler" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("<script>") == 1  # the report's own


def test_help_has_examples_and_the_command_is_listed():
    result = _invoke("profile", "--help")
    assert result.exit_code == 0 and "fwedge profile build/bundles/" in result.output
    for option in ("--devices", "--repeats", "--json", "--threads", "--inventory"):
        assert option in result.output
    assert "profile" in _invoke("--help").output
    bad = _invoke("profile", ROOT, "--repeats", "0")
    assert bad.exit_code == 2


@pytest.mark.chromium
def test_report_with_a_hostile_profile_renders_in_chromium_and_runs_no_injected_script(tmp_path):
    from fwedge.device_farm.results import Results
    from fwedge.report import render_html
    from tests.test_report import _chromium, _console_errors

    hostile = _sample("<img src=x onerror=\"document.title='PWNED'\">")
    hostile.bundle = "<script>document.title='PWNED'</script>"
    page = tmp_path / "report.html"
    page.write_text(render_html(Results(results=[]), profiles=[hostile]))
    dom, log = _chromium(tmp_path, page, "--dump-dom")
    assert _console_errors(log) == [] and 'data-ready="yes"' in dom and "PWNED</title>" not in dom
    chart = dom[dom.index('<svg class="profile-chart"'):]
    chart = chart[:chart.index("</svg>")]
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([0-9.]+)"', chart)]
    assert len(widths) == 2 and widths[0] == pytest.approx(2 * widths[1]), widths


def test_a_bundle_exported_before_profile_is_one_line_exit_2(bundles, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(bundles / "cnn-x86_64-int8", copy)
    data = json.loads((copy / MANIFEST).read_text())
    for key in ("op_kinds", "op_macs"):
        data["extra"].pop(key)
    data.pop("manifest_sha256", None)
    (copy / MANIFEST).write_text(json.dumps(seal_manifest(data)))
    done = _invoke("profile", copy, "--repeats", "2")
    assert done.exit_code == 2 and len(done.output.strip().splitlines()) == 1, done.output
    assert "export it again" in done.output


@pytest.mark.openvino
@pytest.mark.rapidocr
def test_openvino_layer_sum_is_the_whole_run_on_a_model_of_long_layers(ppocr_det_path, tmp_path):
    """PP-OCR det at 320x320 (about 100 executed layers, most of them tens to thousands of
    microseconds): the layer sum is within a few % of the same infer() calls. On cnn_small it is
    not, and the note says why (whole-microsecond counters)."""
    result = _invoke("export", ppocr_det_path, "-t", "openvino", "--input-shape", "x=1,3,320,320", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    (row,) = _profile(tmp_path / "ch_PP-OCRv4_det_infer-openvino-fp32", "--repeats", "20", "--threads", "1")
    low, high = PROFILE_OPENVINO_SAME_RUNS_RATIO
    assert low <= row["sum_over_total"] <= high, row
    assert "whole microseconds" in row["note"]

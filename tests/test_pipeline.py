"""`fwedge pipeline`: stages chain, cache by content hash, survive interruption, name missing stages."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm.results import load_results, save_results
from fwedge.errors import PipelineError
from fwedge.pipeline import load_config, run_pipeline
from tests import farm_helpers as fh

PIPELINE = """
[pipeline]
cache_dir = "cache"
out_dir = "out"

[model]
path = "mlp.onnx"

[data]
calibration = "fashion-mnist:train"
eval = "fashion-mnist:test"

[quantize]
method = "minmax"
num_samples = 128

[analyze]
num_samples = 64

[export]
targets = ["onnx"]

[farm]
devices = ["host"]
limit = 200
repeats = 5

[gate]
baseline = "baseline.json"
max_latency_increase = "1000%"
"""


@pytest.fixture
def project(tmp_path):
    onnx.save(fh.fashion_mlp(), tmp_path / "mlp.onnx")
    (tmp_path / "pipeline.toml").write_text(PIPELINE)
    return tmp_path


# Tests of caching and stages, not of the gate: no [gate] baseline (a named one that is missing is an error).
NO_GATE = {"gate.baseline": None}


def _cached(result) -> dict:
    return {stage.name: stage.cached for stage in result.stages if stage.key}


@pytest.mark.fashion_mnist
def test_pipeline_runs_then_reuses_every_stage(project, monkeypatch):
    import contextlib

    from fwedge import console

    bars = []

    @contextlib.contextmanager
    def recording(total, description):  # the long stages show a bar, as their commands do
        bar = {"description": description, "total": total, "done": 0}
        bars.append(bar)
        yield lambda amount=1: bar.update(done=bar["done"] + amount)

    monkeypatch.setattr(console, "progress", recording)
    first = run_pipeline(project / "pipeline.toml", overrides={"gate.baseline": None})
    assert _cached(first) == {"load": False, "quantize": False, "analyze": False, "export-onnx": False, "farm": False}
    assert bars == [{"description": "calibrating (minmax, 128 samples)", "total": 128, "done": 128},
                    {"description": "farm", "total": 1, "done": 1}]
    assert first.gate_passed is None  # no [gate] baseline: no verdict
    results = load_results(first.results_path)
    [result] = results.results
    assert result.ok and result.bundle == "mlp-onnx-int8" and result.precision == "int8"
    assert result.accuracy > 0.6 and result.fidelity["top1_agreement"] > 0.9
    page = (project / "out" / "report.html").read_text()
    assert "mlp-onnx-int8" in page and "<svg id='sqnr-chart'" in page

    # Writing the baseline, then changing only gate settings: nothing before the gate reruns.
    second = run_pipeline(project / "pipeline.toml", update_baseline=True)
    assert all(_cached(second).values()) and (project / "baseline.json").is_file()
    third = run_pipeline(project / "pipeline.toml", overrides={"gate.max_accuracy_drop": 0.1})
    assert all(_cached(third).values()) and third.gate_passed is True

    # A farm setting change reruns the farm only.
    fourth = run_pipeline(project / "pipeline.toml", overrides={"farm.repeats": 6})
    assert _cached(fourth) == {"load": True, "quantize": True, "analyze": True, "export-onnx": True, "farm": False}


@pytest.mark.fashion_mnist
def test_changed_fwedge_code_rebuilds_every_stage(project, monkeypatch):
    """Bundles built by older kernels or passes must not be reused after an upgrade."""
    from fwedge import pipeline

    run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "0" * 64)
    again = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert not any(_cached(again).values())


@pytest.mark.fashion_mnist
def test_interrupted_stage_leaves_nothing_half_written_and_resumes(project, monkeypatch):
    from fwedge.device_farm import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_farm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    cache = project / "cache"
    assert not list(cache.glob("*.partial")) and not list(cache.glob("farm-*"))
    monkeypatch.undo()
    resumed = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert _cached(resumed) == {"load": True, "quantize": True, "analyze": True, "export-onnx": True, "farm": False}


@pytest.mark.fashion_mnist
def test_pipeline_gate_failure_exits_1_and_names_the_regression(project):
    run_pipeline(project / "pipeline.toml", update_baseline=True)
    baseline = load_results(project / "baseline.json")
    baseline.results[0].accuracy = min(1.0, baseline.results[0].accuracy + 0.05)
    save_results(baseline, project / "baseline.json")
    done = CliRunner().invoke(cli, ["pipeline", str(project / "pipeline.toml")])
    assert done.exit_code == 1, done.output
    assert "mlp-onnx-int8 on host: accuracy dropped" in " ".join(done.output.split())
    summary = (project / "out" / "summary.md").read_text()
    assert summary.startswith("## fwedge: ❌ FAIL")


def test_missing_stage_library_is_named(project, monkeypatch):
    text = PIPELINE + "\n[distill]\nepochs = 1\n"
    (project / "pipeline.toml").write_text(text)
    monkeypatch.setitem(sys.modules, "fwedge.passes.distill", None)
    with pytest.raises(PipelineError, match="stage 'distill' needs fwedge.passes.distill"):
        run_pipeline(project / "pipeline.toml", overrides=NO_GATE)


def test_bad_pipeline_files_are_usage_errors(tmp_path):
    (tmp_path / "p.toml").write_text("[modle]\npath='x'\n")
    with pytest.raises(PipelineError, match="unknown section"):
        load_config(tmp_path / "p.toml")
    (tmp_path / "q.toml").write_text("[model]\npath = 'missing.onnx'\n")
    done = CliRunner().invoke(cli, ["pipeline", str(tmp_path / "q.toml")])
    assert done.exit_code == 2 and "missing.onnx" in done.output
    (tmp_path / "r.toml").write_text(PIPELINE.replace('targets = ["onnx"]', 'targets = ["onnx", "vhdl"]'))
    (tmp_path / "mlp.onnx").write_bytes(b"")
    with pytest.raises(PipelineError):
        run_pipeline(tmp_path / "r.toml")


@pytest.mark.torch
@pytest.mark.fashion_mnist
def test_prune_and_distill_stages_feed_quantization(project):
    text = PIPELINE.replace("[quantize]", "[prune]\nratio = 0.25\n\n[distill]\nepochs = 1\nlimit = 300\n\n[quantize]")
    (project / "pipeline.toml").write_text(text)
    result = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    stages = [stage.name for stage in result.stages]
    assert stages[:4] == ["load", "prune", "distill", "quantize"]
    prune = next(stage for stage in result.stages if stage.name == "prune")
    assert "50,890 -> 38,170" in prune.summary  # 16 of 64 hidden units removed
    [run] = load_results(result.results_path).results
    assert run.ok and run.accuracy > 0.5
    # Only the distill settings change: load and prune are reused.
    again = run_pipeline(project / "pipeline.toml", overrides={"distill.limit": 200, **NO_GATE})
    assert _cached(again)["load"] and _cached(again)["prune"] and not _cached(again)["distill"]


@pytest.mark.torch
@pytest.mark.fashion_mnist
def test_qat_stage_replaces_the_quantized_model(project):
    """[qat] trains from [quantize]'s table; export and the farm take its QDQ model, whose
    activation scales are quantize's; only [qat] reruns when its settings change."""
    from fwedge import ir

    text = PIPELINE.replace("[analyze]", "[qat]\nepochs = 1\nlimit = 300\nkd = true\n\n[analyze]")
    (project / "pipeline.toml").write_text(text)
    result = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    stages = {stage.name: stage for stage in result.stages}
    assert [stage.name for stage in result.stages][:3] == ["load", "quantize", "qat"]
    assert "300 samples x 1 epochs" in stages["qat"].summary
    trained, quantized = (ir.load(Path(stages[name].path) / "model_int8.onnx") for name in ("qat", "quantize"))
    assert any(prop.key == "fwedge.qat" for prop in trained.metadata_props)

    def scales(model):
        inits = ir.initializer_map(model)
        return {n.name: inits[n.input[1]].SerializeToString() for n in model.graph.node if n.op_type == "QuantizeLinear"}

    assert scales(trained) == scales(quantized)
    [run] = load_results(result.results_path).results
    assert run.ok and run.accuracy > 0.5
    again = run_pipeline(project / "pipeline.toml", overrides={"qat.limit": 200, **NO_GATE})
    assert _cached(again)["quantize"] and not _cached(again)["qat"]
    with pytest.raises(PipelineError, match=r"\[qat\].kd: expected true or false"):
        run_pipeline(project / "pipeline.toml", overrides={"qat.kd": "yes", **NO_GATE})


@pytest.mark.parametrize("text,message", [
    ('[quantize]\nmethd = "minmax"\n', "[quantize]: unknown key(s) ['methd']; known: method, num_samples"),
    ('[quantize]\nactivation_dtyp = "uint8"\n', "unknown key(s) ['activation_dtyp']"),
    ('[farm]\nrepeats = "x"\n', "[farm].repeats: expected an integer, got str 'x'"),
    ('[farm]\ndevices = 5\n', "[farm].devices: expected one of 'all' or a list, got int 5"),
    ('[farm]\nrepeats = 0\n', "[farm].repeats: expected >= 1, got 0"),
    ('[quantize]\nmethod = "entropy"\n', "[quantize].method: expected one of 'kl', 'percentile', 'minmax', 'mse'"),
    ('[quantize]\nnum_samples = true\n', "[quantize].num_samples: expected an integer, got bool True"),
    ('[gate]\nmax_accuracy_drop = nan\n', "[gate].max_accuracy_drop: expected a finite number"),
    ('[prune]\ncriterion = "l1"\n', "[prune]: give exactly one of ratio, macs, sparsity"),
    ('[prune]\nratio = 0.3\nsparsity = 0.5\n', "give exactly one of ratio, macs, sparsity (got ['ratio', 'sparsity'])"),
    ('[report]\nhtml = "../../escape.html"\n', "[report].html: expected a plain file name"),
    ('analyze = 3\n', "[analyze] must be a table, got int"),
    ('[export]\ncflags = "-O2 -fplugin=/tmp/evil.so"\n', "[export].cflags: '-fplugin=/tmp/evil.so' is not allowed"),
    ('[export]\ncflags = "@/etc/passwd"\n', "[export].cflags: '@/etc/passwd' is not allowed"),
    ('[export]\ncflags = "-B/tmp/bin"\n', "[export].cflags: '-B/tmp/bin' is not allowed"),
    ('[export]\ncc = "sh -c touch${IFS}pwned"\n', "[export].cc: expected a C compiler's name"),
])
def test_every_key_and_value_is_checked(tmp_path, text, message):
    path = tmp_path / "p.toml"
    model = '[model]\npath = "m.onnx"\n'
    path.write_text(model + text if text.startswith("[") else text + model)
    with pytest.raises(PipelineError) as error:
        load_config(path)
    assert message in str(error.value), str(error.value)
    done = CliRunner().invoke(cli, ["pipeline", str(path)])
    assert done.exit_code == 2 and done.output.startswith("error: ") and len(done.output.strip().splitlines()) == 1


def test_binary_and_oversized_pipeline_files_are_one_line_errors(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"[model]\npath = '\xff\xfe'\n")
    with pytest.raises(PipelineError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml")
    (tmp_path / "big.toml").write_bytes(b"# " + b"x" * (2 << 20) + b"\n[model]\npath='m.onnx'\n")
    with pytest.raises(PipelineError, match="a pipeline file is at most"):
        load_config(tmp_path / "big.toml")
    with pytest.raises(PipelineError, match=r"\[farm\]: unknown key\(s\) \['repeat'\]"):
        load_config(_write(tmp_path / "ok.toml", '[model]\npath = "m.onnx"\n'), overrides={"farm.repeat": 3})


def _write(path, text):
    path.write_text(text)
    return path


def test_every_cli_option_of_a_stage_can_be_set_in_its_section(tmp_path):
    config = load_config(_write(tmp_path / "p.toml", """
[model]
path = "m.onnx"
[prune]
macs = 0.5
round_to = 8
[quantize]
method = "percentile"
percentile = 99.9
bins = 1024
keep_float = ["conv0"]
float_stem = true
activation_dtype = "uint8"
max_accuracy_drop = 0.5
input_shape = { x = [1, 3, 48, 192] }
[export]
cflags = "-march=x86-64-v3"
input_shape = { x = [1, 3, 48, 192] }
allow_float_fallback = true
"""))
    assert config.prune.macs == 0.5 and config.prune.round_to == 8 and config.prune.ratio is None
    q = config.quantize
    assert (q.method, q.percentile, q.bins, q.keep_float, q.float_stem, q.activation_dtype, q.max_accuracy_drop) == (
        "percentile", 99.9, 1024, ("conv0",), True, "uint8", 0.5)
    assert q.input_shape == {"x": (1, 3, 48, 192)}
    assert config.export.cflags == "-march=x86-64-v3" and config.export.allow_float_fallback


@pytest.mark.fashion_mnist
def test_named_baseline_that_does_not_exist_fails_the_pipeline(project):
    done = CliRunner().invoke(cli, ["pipeline", str(project / "pipeline.toml"), "--set", "gate.baseline=basline.json"])
    assert done.exit_code == 2, done.output
    assert "baseline" in done.output and "basline.json' not found" in " ".join(done.output.split())


@pytest.mark.fashion_mnist
def test_the_cache_key_follows_what_the_stage_uses(project):
    first = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    # activation_dtype was silently ignored before: now it reaches the model and the key.
    uint8 = run_pipeline(project / "pipeline.toml", overrides={"quantize.activation_dtype": "uint8", **NO_GATE})
    assert _cached(uint8)["load"] and not _cached(uint8)["quantize"] and not _cached(uint8)["export-onnx"]
    model = onnx.load(next(s for s in uint8.stages if s.name == "quantize").path + "/model_int8.onnx")
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point") and i.data_type == onnx.TensorProto.UINT8]
    assert zero_points, "activation_dtype = uint8 gave no uint8 activations"
    # A C compiler flag does not reach an onnx bundle: its export stays cached.
    again = run_pipeline(project / "pipeline.toml", overrides={"export.cflags": "-O3", **NO_GATE})
    assert all(_cached(again).values()), _cached(again)
    assert first.bundles == again.bundles


@pytest.mark.fashion_mnist
def test_an_edited_stage_output_is_rebuilt_not_reused(project):
    first = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    quantize = next(s for s in first.stages if s.name == "quantize")
    table = project / "cache" / quantize.path.split("/")[-1] / "quant_table.json"
    table.write_text(table.read_text()[:-20])  # truncated
    (project / "cache" / quantize.path.split("/")[-1] / "extra.bin").write_bytes(b"x")
    again = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert not _cached(again)["quantize"] and _cached(again)["load"]
    assert not (project / "cache" / quantize.path.split("/")[-1] / "extra.bin").exists()
    json.loads(table.read_text())  # whole again


@pytest.mark.fashion_mnist
def test_a_failed_farm_stage_is_not_cached(project, monkeypatch):
    from fwedge.device_farm import runner

    real = runner.run_farm

    def failing(bundles, devices, options, progress=None):
        results = real(bundles, devices, options, progress)
        for result in results.results:
            result.status, result.error = "error", "device fell over"
        return results

    monkeypatch.setattr(runner, "run_farm", failing)
    first = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert "1 failed" in next(s for s in first.stages if s.name == "farm").summary
    assert not list((project / "cache").glob("farm-*")) and not list((project / "cache").glob(".farm-*"))
    monkeypatch.undo()
    second = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert not _cached(second)["farm"] and "0 failed" in next(s for s in second.stages if s.name == "farm").summary
    third = run_pipeline(project / "pipeline.toml", overrides=NO_GATE)
    assert _cached(third)["farm"]
    fourth = run_pipeline(project / "pipeline.toml", overrides=NO_GATE, rerun=("farm",))
    assert not _cached(fourth)["farm"] and _cached(fourth)["export-onnx"]


def test_a_finished_stage_is_kept_for_a_concurrent_reader(tmp_path):
    """Two runs build the same key at once: the second keeps the first one's output instead of removing it."""
    from fwedge.pipeline import StageCache

    cache = StageCache(tmp_path)
    first = cache.run("s", {"a": 1}, lambda out: (out / "f.txt").write_text("first") and "one")
    reader = open(first.path + "/f.txt")  # a concurrent run is reading it

    def build_while_the_first_finished(out):
        (out / "f.txt").write_text("second")
        return "two"

    other = StageCache(tmp_path)
    other._valid = lambda final, real=other._valid: None if not hasattr(other, "_seen") and not setattr(other, "_seen", 1) else real(final)
    second = other.run("s", {"a": 1}, build_while_the_first_finished)
    assert second.path == first.path and (tmp_path / first.path.split("/")[-1] / "f.txt").read_text() == "first"
    assert reader.read() == "first"
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.fashion_mnist
def test_the_cli_says_when_no_gate_ran_and_when_a_baseline_was_written(project):
    none = CliRunner().invoke(cli, ["pipeline", str(project / "pipeline.toml"), "--set", "gate.baseline=null"])
    assert none.exit_code == 0 and "names no [gate] baseline" in " ".join(none.output.split()), none.output
    written = CliRunner().invoke(cli, ["pipeline", str(project / "pipeline.toml"), "--update-baseline"])
    assert written.exit_code == 0 and "baseline written" in written.output and "names no" not in written.output

"""`fwedge pipeline`: stages chain, cache by content hash, survive interruption, name missing stages."""
from __future__ import annotations

import json
import sys

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


def _cached(result) -> dict:
    return {stage.name: stage.cached for stage in result.stages if stage.key}


@pytest.mark.fashion_mnist
def test_pipeline_runs_then_reuses_every_stage(project):
    first = run_pipeline(project / "pipeline.toml")
    assert _cached(first) == {"load": False, "quantize": False, "analyze": False, "export-onnx": False, "farm": False}
    assert first.gate_passed is None  # no baseline yet
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

    run_pipeline(project / "pipeline.toml")
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda: "0" * 64)
    again = run_pipeline(project / "pipeline.toml")
    assert not any(_cached(again).values())


@pytest.mark.fashion_mnist
def test_interrupted_stage_leaves_nothing_half_written_and_resumes(project, monkeypatch):
    from fwedge.device_farm import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_farm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(project / "pipeline.toml")
    cache = project / "cache"
    assert not list(cache.glob("*.partial")) and not list(cache.glob("farm-*"))
    monkeypatch.undo()
    resumed = run_pipeline(project / "pipeline.toml")
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
        run_pipeline(project / "pipeline.toml")


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
    result = run_pipeline(project / "pipeline.toml")
    stages = [stage.name for stage in result.stages]
    assert stages[:4] == ["load", "prune", "distill", "quantize"]
    prune = next(stage for stage in result.stages if stage.name == "prune")
    assert "50,890 -> 38,170" in prune.summary  # 16 of 64 hidden units removed
    [run] = load_results(result.results_path).results
    assert run.ok and run.accuracy > 0.5
    # Only the distill settings change: load and prune are reused.
    again = run_pipeline(project / "pipeline.toml", overrides={"distill.limit": 200})
    assert _cached(again)["load"] and _cached(again)["prune"] and not _cached(again)["distill"]

"""The gate: damaged candidates fail and are named, identical ones pass, missing results fail closed."""
from __future__ import annotations

import dataclasses
import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm import gate
from fwedge.device_farm.local import LocalDevice
from fwedge.device_farm.results import DeviceResult, Latency, Results, load_results, save_results
from fwedge.device_farm.runner import FarmOptions, run_farm
from tests import farm_helpers as fh

LIMIT = 300


def _farm(tmp_path, bundles, name, *extra):
    output = tmp_path / f"{name}.json"
    run = CliRunner().invoke(cli, ["farm", "run", *map(str, bundles), "--devices", "host", "--data",
                                   "fashion-mnist:test", "--limit", str(LIMIT), "--repeats", "10",
                                   "-o", str(output), *extra])
    assert run.exit_code == 0, run.output
    return output


def _gate(results, baseline, *extra):
    return CliRunner().invoke(cli, ["gate", str(results), "--baseline", str(baseline),
                                    "--max-latency-increase", "1000%", *extra])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate_models")
    model = fh.fashion_mlp()
    onnx.save(model, folder / "float.onnx")
    return folder, model


@pytest.mark.fashion_mnist
def test_zeroed_layer_fails_the_gate_and_is_named(tmp_path, models):
    folder, model = models
    fh.onnx_bundle(model, tmp_path / "base" / "mlp")
    fh.onnx_bundle(fh.zero_layer(model, "fc1_w"), tmp_path / "cand" / "mlp")
    reference = ["--reference", str(folder / "float.onnx")]
    baseline = _farm(tmp_path, [tmp_path / "base" / "mlp"], "baseline", *reference)
    results = _farm(tmp_path, [tmp_path / "cand" / "mlp"], "results", *reference)
    verdict = _gate(results, baseline)
    assert verdict.exit_code == 1, verdict.output
    text = " ".join(verdict.output.split())
    assert "regression: mlp on host: accuracy dropped" in text and "gate: FAIL" in text
    assert "fidelity (top-1 agreement) dropped" in text
    same = _gate(baseline, baseline)
    assert same.exit_code == 0 and "gate: PASS" in same.output, same.output


@pytest.mark.fashion_mnist
def test_quantized_with_half_range_fails_on_fidelity(tmp_path, models):
    """Activation ranges 50 % narrower: on this model accuracy happens not to drop, but top-1
    agreement with the FP32 reference does, and the gate names that."""
    from fwedge.calibration.table import params_from_range
    from fwedge.quantization import quantize

    folder, model = models
    good = quantize(model, "fashion-mnist:train", method="minmax", num_samples=256)
    narrow = dataclasses.replace(good.table, tensors={
        name: params_from_range(q.range[0] * 0.5, q.range[1] * 0.5) for name, q in good.table.tensors.items()})
    fh.onnx_bundle(good.model, tmp_path / "base" / "mlp_int8")
    fh.onnx_bundle(quantize(model, table=narrow).model, tmp_path / "cand" / "mlp_int8")
    reference = ["--reference", str(folder / "float.onnx")]
    baseline = _farm(tmp_path, [tmp_path / "base" / "mlp_int8"], "baseline", *reference)
    results = _farm(tmp_path, [tmp_path / "cand" / "mlp_int8"], "results", *reference)
    before = load_results(baseline).results[0].fidelity["top1_agreement"]
    after = load_results(results).results[0].fidelity["top1_agreement"]
    assert before - after > 0.01, (before, after)
    verdict = _gate(results, baseline)
    assert verdict.exit_code == 1, verdict.output
    assert "fidelity (top-1 agreement) dropped" in " ".join(verdict.output.split())


@pytest.mark.fashion_mnist
def test_identical_candidate_passes_with_interleaved_latency_ratio(tmp_path, models):
    _, model = models
    fh.onnx_bundle(model, tmp_path / "base" / "mlp")
    shutil.copytree(tmp_path / "base" / "mlp", tmp_path / "cand" / "mlp")
    baseline = _farm(tmp_path, [tmp_path / "base" / "mlp"], "baseline")
    results = _farm(tmp_path, [tmp_path / "cand" / "mlp"], "results", "--baseline-bundles",
                    str(tmp_path / "base"), "--repeats", "400", "--rounds", "20")
    loaded = load_results(results)
    candidate = loaded.find("mlp", "host")
    assert loaded.find("mlp", "host", role="baseline").ok and candidate.latency.iterations == 400
    assert candidate.latency_ratio is not None
    # An identical bundle, A/B interleaved on one machine: the ratio measures noise only.
    verdict = CliRunner().invoke(cli, ["gate", str(results), "--baseline", str(baseline),
                                       "--max-latency-increase", "25%"])
    assert verdict.exit_code == 0, verdict.output
    assert "interleaved A/B ratio" in " ".join(verdict.output.split())


class _RecordingDevice(LocalDevice):
    def run(self, bundle, inputs, repeats):
        self.calls.append(bundle.path.parent.name)
        return super().run(bundle, inputs, repeats)


@pytest.mark.fashion_mnist
def test_baseline_and_candidate_alternate_on_the_same_device(tmp_path, models):
    _, model = models
    fh.onnx_bundle(model, tmp_path / "A" / "mlp")
    fh.onnx_bundle(model, tmp_path / "B" / "mlp")
    device = _RecordingDevice(name="host", runtimes=["onnx"])
    device.calls = []
    results = run_farm([tmp_path / "B" / "mlp"], [device],
                       FarmOptions(data="fashion-mnist:test", limit=50, repeats=8, rounds=4,
                                   baseline_bundles=str(tmp_path / "A")))
    # The device runs private verified copies, kept in a work folder per role.
    assert device.calls == ["baseline", "candidate"] * 4
    assert [r.role for r in results.results] == ["baseline", "candidate"]


# -- verdict logic on hand-made results -------------------------------------------------------------


def _result(bundle="m", device="host", **fields) -> DeviceResult:
    values = dict(status="ok", accuracy=0.9, fidelity={"top1_agreement": 0.99},
                  latency=Latency(1.0, 1.2, 1.05, 0.9, 20), sizes={"file_bytes": 1000})
    values.update(fields)
    return DeviceResult(bundle=bundle, device=device, **values)


def _save(tmp_path, name, results):
    return save_results(Results(results=results), tmp_path / f"{name}.json")


def test_missing_device_fails_closed_unless_waived(tmp_path):
    baseline = _save(tmp_path, "baseline", [_result(), _result(device="qemu-riscv64")])
    results = _save(tmp_path, "results", [_result()])
    verdict = _gate(results, baseline)
    assert verdict.exit_code == 1, verdict.output
    assert "m on qemu-riscv64: missing" in " ".join(verdict.output.split())
    assert _gate(results, baseline, "--waive", "qemu-riscv64").exit_code == 0
    assert _gate(results, baseline, "--waive", "m@qemu-riscv64").exit_code == 0
    # An error now is a failure too, even for a pair the baseline does not know.
    errors = _save(tmp_path, "errors", [_result(), _result(device="qemu-riscv64"),
                                        _result(device="board", status="error", error="ssh: refused")])
    verdict = _gate(errors, baseline)
    assert verdict.exit_code == 1 and "board: error on the device: ssh: refused" in " ".join(verdict.output.split())


def test_latency_ratio_and_size_limits():
    base = Results(results=[_result()])
    slow = Results(results=[_result(latency_ratio=1.3)])
    report = gate.evaluate_gate(slow, base, gate.Thresholds(max_latency_increase=0.10))
    assert not report.passed and "latency p50 increased 30.0% (interleaved A/B ratio)" in report.regressions[0]
    assert gate.evaluate_gate(slow, base, gate.Thresholds(max_latency_increase=0.35)).passed
    # Without an interleaved run, two separate p50s are compared.
    separate = Results(results=[_result(latency=Latency(1.2, 1.3, 1.2, 1.1, 20))])
    assert "(vs baseline run)" in gate.evaluate_gate(separate, base).regressions[0]
    bigger = Results(results=[_result(sizes={"file_bytes": 1100})])
    report = gate.evaluate_gate(bigger, base, gate.Thresholds(max_size_increase=0.05))
    assert report.regressions == ["m on host: file_bytes increased 10.0%, limit +5%"]
    assert gate.parse_fraction("10%", "x") == pytest.approx(0.10) and gate.parse_fraction("0.2", "x") == 0.2


def test_usage_errors_exit_2_and_update_baseline(tmp_path):
    results = _save(tmp_path, "results", [_result()])
    assert _gate(results, tmp_path / "nope.json").exit_code == 2
    (tmp_path / "wrong.json").write_text(json.dumps({"schema": "other/1", "results": []}))
    wrong = _gate(results, tmp_path / "wrong.json")
    assert wrong.exit_code == 2 and "schema 'other/1'" in wrong.output
    bad = CliRunner().invoke(cli, ["gate", str(results), "--baseline", str(results), "--max-latency-increase", "ten"])
    assert bad.exit_code == 2 and "--max-latency-increase" in bad.output
    other_data = save_results(Results(results=[_result()], data="fashion-mnist:test", samples=500),
                              tmp_path / "other.json")
    mismatch = _gate(results, other_data)
    assert mismatch.exit_code == 2 and "500 samples of 'fashion-mnist:test'" in mismatch.output
    # --update-baseline writes a new baseline on purpose, even over a regression.
    baseline = _save(tmp_path, "baseline", [_result(accuracy=0.99)])
    assert _gate(results, baseline).exit_code == 1
    update = _gate(results, baseline, "--update-baseline")
    assert update.exit_code == 0 and "baseline updated" in update.output
    assert load_results(baseline).results[0].accuracy == 0.9
    assert _gate(results, baseline).exit_code == 0

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
from fwedge.device_farm.runner import FarmOptions, paired_ratio, run_farm
from fwedge.errors import GateError
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


def test_interleaved_ratio_is_paired_by_round_so_load_drift_cancels():
    # Load rises tenfold during round 3, between its A and its B; every other round's A and B see
    # the same load. The pooled p50s give 10.0 / 1.0; the rounds' own ratios give 1.0.
    assert paired_ratio([1.0, 1.0, 1.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0, 10.0]) == 1.0
    assert paired_ratio([1.0, 1.0, 1.0], [1.2, 1.2, 1.2]) == pytest.approx(1.2)
    # A role that lost a round cannot be paired: no ratio, and the gate then needs the stored p50.
    assert paired_ratio([1.0, 1.0], [1.0]) is None and paired_ratio([], []) is None


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


def test_output_sqnr_is_gated_in_db_and_capped_where_outputs_match_float(tmp_path):
    """A detector's top-1 means nothing; its output SQNR against FP32 does. A drop beyond
    --max-sqnr-drop fails, a figure gone missing fails, and above 80 dB (an fp32 bundle: exact,
    or 100-150 dB depending on the runtime's kernels) two runs count as equal."""
    def detector(sqnr, **fields):
        fidelity = None if sqnr is None else {"top1_agreement": 0.71, "sqnr_db": sqnr}
        return _result(accuracy=None, fidelity=fidelity, **fields)

    base = Results(results=[detector(31.0)])
    worse = gate.evaluate_gate(Results(results=[detector(27.5)]), base)
    assert not worse.passed
    assert worse.regressions == ["m on host: fidelity (SQNR vs FP32) dropped 3.50 dB (31.00 dB -> 27.50 dB), limit 3 dB"]
    assert gate.evaluate_gate(Results(results=[detector(28.5)]), base).passed
    assert gate.evaluate_gate(Results(results=[detector(27.5)]), base, gate.Thresholds(max_sqnr_drop=4.0)).passed
    gone = gate.evaluate_gate(Results(results=[detector(None)]), base)
    assert not gone.passed and any("SQNR vs FP32) missing" in r for r in gone.regressions)
    fp32 = Results(results=[detector(float("inf"))])
    assert gate.evaluate_gate(Results(results=[detector(118.0)]), fp32).passed
    assert not gate.evaluate_gate(Results(results=[detector(60.0)]), fp32).passed
    # Through the files and the CLI, where an exact match is spelled "inf".
    verdict = _gate(_save(tmp_path, "now", [detector(20.0)]), _save(tmp_path, "base", [detector(float("inf"))]),
                    "--max-sqnr-drop", "100")
    assert verdict.exit_code == 0, verdict.output
    verdict = _gate(_save(tmp_path, "now", [detector(20.0)]), _save(tmp_path, "base", [detector(float("inf"))]))
    assert verdict.exit_code == 1 and "SQNR vs FP32) dropped 60.00 dB" in " ".join(verdict.output.split())


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


# -- fails closed on unusable or unproven input -----------------------------------------------------


def _edit(path, change):
    """Load a results file as plain JSON, let `change` edit it, write it back."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _one_line_exit_2(verdict):
    assert verdict.exit_code == 2, verdict.output
    assert isinstance(verdict.exception, SystemExit), verdict.exception
    assert "Traceback" not in verdict.output and verdict.output.startswith("error: ")
    assert len(verdict.output.strip().splitlines()) == 1, verdict.output


def test_null_metrics_are_a_regression_not_a_pass(tmp_path):
    baseline = _save(tmp_path, "baseline", [_result()])
    for nulled in (["accuracy"], ["fidelity"], ["latency"], ["accuracy", "fidelity", "latency"]):
        results = _save(tmp_path, "results", [_result(**dict.fromkeys(nulled))])
        verdict = _gate(results, baseline)
        assert verdict.exit_code == 1, (nulled, verdict.output)
        assert "missing in this run" in " ".join(verdict.output.split()), verdict.output
    # Nothing measured on either side proves nothing.
    empty = _save(tmp_path, "empty", [_result(accuracy=None, fidelity=None, latency=None)])
    verdict = _gate(empty, empty)
    assert verdict.exit_code == 1 and "gate: FAIL" in verdict.output, verdict.output
    report = gate.evaluate_gate(Results(results=[_result(accuracy=None)]), Results(results=[_result(accuracy=None)]))
    assert report.passed, "fidelity and latency still prove this pair"


def test_max_steps_is_read_where_the_baseline_has_it(tmp_path, wide_console):
    """Shown, not limited; a baseline's max_steps missing from this run fails (no evidence); a
    baseline without one (a float output, an older file) asks for none."""
    def steps(value, step=0.15):
        return {"top1_agreement": 0.99, "step": step, "max_steps": value, "far_fraction": 0.0 if value else None}

    baseline = Results(results=[_result(fidelity=steps(1.0))])
    report = gate.evaluate_gate(Results(results=[_result(fidelity=steps(3.0))]), baseline)
    [check] = [c for c in report.rows[0].checks if c.metric == "fidelity (max steps)"]
    assert report.passed and (check.baseline, check.current, check.change) == (1.0, 3.0, "+2.00 steps")
    lost = gate.evaluate_gate(Results(results=[_result(fidelity=steps(None, None))]), baseline)
    assert not lost.passed and "fidelity (max steps) missing in this run (baseline 1.00 steps)" in lost.rows[0].reasons
    for before in (steps(None, None), {"top1_agreement": 0.99}):
        report = gate.evaluate_gate(Results(results=[_result(fidelity=steps(None, None))]),
                                    Results(results=[_result(fidelity=before)]))
        assert report.passed and not [c for c in report.rows[0].checks if "steps" in c.metric]
    # Through the files and the CLI: the figures pass the results schema, and the gate prints the check.
    verdict = _gate(_save(tmp_path, "results", [_result(fidelity=steps(3.0))]),
                    _save(tmp_path, "baseline", [_result(fidelity=steps(1.0))]))
    assert verdict.exit_code == 0 and "max steps" in verdict.output, verdict.output


def test_a_metric_key_deleted_from_the_file_is_unusable_input(tmp_path):
    baseline = _save(tmp_path, "baseline", [_result()])
    for key in ("accuracy", "fidelity", "latency", "status", "bundle"):
        results = _edit(_save(tmp_path, "results", [_result()]), lambda data: data["results"][0].pop(key))
        verdict = _gate(results, baseline)
        _one_line_exit_2(verdict)
        assert key in verdict.output


@pytest.mark.parametrize("where, value", [
    ("accuracy", 5.0), ("accuracy", -0.1), ("accuracy", True), ("accuracy", "0.1"), ("accuracy", [0.9]),
    ("latency.p50_ms", -1.0), ("latency.p50_ms", 0.0), ("latency.iterations", 0), ("latency.p50_ms", "1"),
    ("fidelity.top1_agreement", 1.5), ("fidelity.top1_agreement", None), ("latency_ratio", -2.0),
    ("sizes.file_bytes", -5), ("sizes.file_bytes", "big"), ("status", "fine"), ("role", "other"),
    ("bundle", ""), ("bundle", 7), ("samples", -1), ("samples", 1.5), ("error", 3), ("unknown_field", 1),
    ("accuracy", 10 ** 400), ("sizes.file_bytes", 10 ** 400), ("fidelity.cosine", 10 ** 400),
    ("fidelity.cosine", 3.0), ("fidelity.max_abs_error", "-inf"), ("fidelity.sqnr_db", "big"), ("fidelity.x", 1),
    ("fidelity.far_fraction", 1.5), ("fidelity.max_steps", -1.0), ("fidelity.step", "big"),
], ids=lambda value: repr(value)[:24])
def test_out_of_range_or_mistyped_values_exit_2(tmp_path, where, value):
    baseline = _save(tmp_path, "baseline", [_result()])

    def change(data):
        *parents, leaf = where.split(".")
        target = data["results"][0]
        for parent in parents:
            target = target[parent]
        target[leaf] = value

    verdict = _gate(_edit(_save(tmp_path, "results", [_result()]), change), baseline)
    _one_line_exit_2(verdict)
    assert where.split(".")[-1] in verdict.output
    # The same value in the baseline is refused as well.
    verdict = _gate(_save(tmp_path, "results", [_result()]), _edit(baseline, change))
    _one_line_exit_2(verdict)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_numbers_exit_2(tmp_path, literal):
    baseline = _save(tmp_path, "baseline", [_result()])
    results = _save(tmp_path, "results", [_result()])
    results.write_text(results.read_text().replace('"accuracy": 0.9', f'"accuracy": {literal}'))
    assert literal in results.read_text()
    verdict = _gate(results, baseline)
    _one_line_exit_2(verdict)
    assert "accuracy" in verdict.output or literal in verdict.output


def test_a_pair_listed_twice_exits_2(tmp_path):
    baseline = _save(tmp_path, "baseline", [_result()])
    for twice in ([_result(), _result(accuracy=0.1)], [_result(), _result()],
                  [_result(), _result(status="error", error="crashed")]):
        verdict = _gate(_save(tmp_path, "results", twice), baseline)
        _one_line_exit_2(verdict)
        assert "'m' on 'host'" in verdict.output and "twice" in verdict.output
        verdict = _gate(_save(tmp_path, "results", [_result()]), _save(tmp_path, "twice", twice))
        _one_line_exit_2(verdict)
    # A baseline bundle run interleaved with the candidate is not a duplicate.
    both = _save(tmp_path, "both", [_result(), _result(role="baseline")])
    assert _gate(both, baseline).exit_code == 0


def test_a_baseline_without_an_ok_candidate_is_unusable(tmp_path):
    results = _save(tmp_path, "results", [_result()])
    for entries in ([], [_result(status="error", error="crashed", accuracy=None, fidelity=None, latency=None)],
                    [_result(role="baseline")]):
        verdict = _gate(results, _save(tmp_path, "baseline", entries))
        _one_line_exit_2(verdict)
        assert "nothing to compare" in verdict.output


def test_every_row_waived_or_new_is_not_a_pass(tmp_path):
    baseline = _save(tmp_path, "baseline", [_result()])
    results = _save(tmp_path, "results", [_result(accuracy=0.1)])
    verdict = _gate(results, baseline, "--waive", "host")
    assert verdict.exit_code == 1 and "no (bundle, device) pair was compared and passed" in verdict.output
    # A partly waived run passes on the pairs that were compared.
    two = _save(tmp_path, "two", [_result(), _result(device="b")])
    assert _gate(_save(tmp_path, "r2", [_result(), _result(device="b", accuracy=0.1)]), two,
                 "--waive", "b").exit_code == 0


@pytest.mark.parametrize("text", [
    '{"schema": "fwedge.results/1", "results": [1, 2, 3]}', '{"schema": "fwedge.results/1", "results": {"a": 1}}',
    '[1, 2]', '"fwedge.results/1"', '', '{"schema": "fwedge.results/1", "results": [', '\xff\xfe',
    '[' * 100000 + ']' * 100000, '{"schema": "fwedge.results/1", "schema": "fwedge.results/1", "results": []}',
])
def test_malformed_files_exit_2_in_one_line(tmp_path, text):
    baseline = _save(tmp_path, "baseline", [_result()])
    results = tmp_path / "results.json"
    results.write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode())
    _one_line_exit_2(_gate(results, baseline))
    _one_line_exit_2(_gate(baseline, results))
    with pytest.raises(GateError):
        load_results(results)


def test_missing_baseline_is_an_error_unless_allowed_explicitly(tmp_path):
    results = _save(tmp_path, "results", [_result()])
    missing = tmp_path / "baseline.json"
    verdict = _gate(results, missing)
    _one_line_exit_2(verdict)
    assert "not found" in verdict.output and "--allow-missing-baseline" in verdict.output
    with pytest.raises(GateError, match="not found"):
        gate.run_gate(results, missing)
    assert gate.run_gate(results, missing, allow_missing_baseline=True) is None
    allowed = _gate(results, missing, "--allow-missing-baseline")
    assert allowed.exit_code == 0 and "no baseline" in allowed.output, allowed.output
    # The option only covers a baseline that does not exist yet, never a broken one or broken results.
    missing.write_text("{}")
    _one_line_exit_2(_gate(results, missing, "--allow-missing-baseline"))
    _one_line_exit_2(_gate(tmp_path / "no-results.json", tmp_path / "none.json", "--allow-missing-baseline"))


def test_in_memory_results_are_validated_too():
    base = Results(results=[_result()])
    for bad in (_result(accuracy=float("nan")), _result(accuracy=float("inf")),
                _result(latency=Latency(-1.0, 1.2, 1.05, 0.9, 20))):
        with pytest.raises(GateError):
            gate.evaluate_gate(Results(results=[bad]), base)
        with pytest.raises(GateError):
            gate.evaluate_gate(base, Results(results=[bad]))


def test_the_committed_example_baseline_validates_and_passes_against_itself(tmp_path):
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "baseline.json"
    loaded = load_results(committed, "baseline")
    assert len(loaded.candidates()) == 8 and all(result.ok for result in loaded.results)
    report = gate.run_gate(committed, committed)
    assert report.passed and {row.verdict for row in report.rows} == {gate.PASS}


def _verdict_json(change) -> str:
    report = gate.evaluate_gate(Results(results=[_result(accuracy=0.5)]), Results(results=[_result()]))
    data = json.loads(json.dumps(report.to_dict()))
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("text", [
    '[' * 100000 + ']' * 100000, '{"schema": "fwedge.gate/1", "rows": 5}', "NaN",
    '{"schema": "fwedge.gate/1", "rows": [[1]], "thresholds": {}}',
    _verdict_json(lambda data: data["rows"][0].update(verdict=5)),
    _verdict_json(lambda data: data["rows"][0].update(verdict="maybe")),
    _verdict_json(lambda data: data["rows"][0].update(bundle=["m"])),
    _verdict_json(lambda data: data["rows"][0].update(reasons=[1, 2])),
    _verdict_json(lambda data: data["rows"][0]["checks"][0].update(metric=None)),
    _verdict_json(lambda data: data["rows"][0]["checks"][0].update(passed="yes")),
    _verdict_json(lambda data: data["rows"][0]["checks"][0].update(current="0.5")),
    _verdict_json(lambda data: data.update(waived=[None])),
    _verdict_json(lambda data: data.update(thresholds={"max_accuracy_drop": True})),
])
def test_a_malformed_gate_verdict_file_is_one_gate_error(tmp_path, text):
    path = tmp_path / "gate.json"
    path.write_text(text)
    with pytest.raises(GateError):
        gate.load_gate(path)


def test_a_gate_verdict_file_reads_back(tmp_path):
    path = tmp_path / "gate.json"
    path.write_text(_verdict_json(lambda data: None))
    again = gate.load_gate(path)
    assert not again.passed and again.regressions == ["m on host: accuracy dropped 40.00 pp (90.00% -> 50.00%), limit 0.5 pp"]


def test_update_baseline_replaces_an_unusable_baseline_but_never_writes_one(tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text('{"schema": "fwedge.results/1", "results": [1]}')
    results = _save(tmp_path, "results", [_result()])
    update = _gate(results, baseline, "--update-baseline")
    assert update.exit_code == 0 and "not comparable with the previous baseline" in update.output, update.output
    assert _gate(results, baseline).exit_code == 0
    failed = _save(tmp_path, "failed", [_result(status="error", error="crashed")])
    before = baseline.read_bytes()
    _one_line_exit_2(_gate(failed, baseline, "--update-baseline"))
    assert baseline.read_bytes() == before

"""The gate on emulated boards: executed instructions compared exactly; missing or hostile counts never pass."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm import gate
from fwedge.device_farm.results import DeviceResult, Instructions, Latency, Results, save_results

BASE_COUNT = 1_000_000
EMULATOR = "qemu-aarch64 version 7.2.22"


def _count(per_inference: int, emulator: str = EMULATOR, cpu: str = "default") -> Instructions:
    return Instructions(per_inference=per_inference, low=1, high=2, low_total=5_000,
                        high_total=5_000 + per_inference, emulator=emulator, cpu=cpu, counter="fwedge qemu plugin t")


def _qemu(count: int | None = BASE_COUNT, latency_ms: float = 20.0, **fields) -> DeviceResult:
    base = dict(status="ok", device_kind="qemu", target="c", arch="aarch64", performance="instructions",
                accuracy=0.9, fidelity={"top1_agreement": 0.99},
                latency=Latency(latency_ms, latency_ms * 1.1, latency_ms, latency_ms * 0.9, 20),
                instructions=None if count is None else _count(count), sizes={"file_bytes": 1000})
    values = dict(bundle="m-aarch64", device="qemu-aarch64", **base)
    values.update(fields)
    return DeviceResult(**values)


def _save(tmp_path, name, *results):
    return save_results(Results(results=list(results)), tmp_path / f"{name}.json")


def _gate(results, baseline, *extra):
    return CliRunner().invoke(cli, ["gate", str(results), "--baseline", str(baseline), *extra])


def _one_line_exit_2(verdict, *words):
    assert verdict.exit_code == 2, verdict.output
    assert isinstance(verdict.exception, SystemExit), verdict.exception
    assert "Traceback" not in verdict.output and verdict.output.startswith("error: ")
    assert len(verdict.output.strip().splitlines()) == 1, verdict.output
    for word in words:
        assert word in verdict.output, (word, verdict.output)


def test_equal_counts_pass_with_a_ratio_of_exactly_one(tmp_path):
    baseline = _save(tmp_path, "baseline", _qemu())
    verdict = _gate(_save(tmp_path, "results", _qemu()), baseline, "--json", str(tmp_path / "gate.json"))
    assert verdict.exit_code == 0, verdict.output
    [row] = json.loads((tmp_path / "gate.json").read_text())["rows"]
    [check] = [c for c in row["checks"] if c["metric"] == "instructions"]
    assert check["baseline"] == check["current"] == BASE_COUNT and check["change"].startswith("x1.000 (+0)")


@pytest.mark.parametrize("count, exit_code", [
    (BASE_COUNT * 1009 // 1000, 0),  # +0.9 %
    (BASE_COUNT * 101 // 100, 0),  # +1 % exactly: within the limit
    (BASE_COUNT * 101 // 100 + 1, 1),  # one instruction beyond +1 %
    (BASE_COUNT * 1011 // 1000, 1),  # +1.1 %
    (BASE_COUNT // 2, 0),  # fewer instructions are no regression
])
def test_the_default_limit_is_one_percent_of_the_exact_count(tmp_path, count, exit_code):
    verdict = _gate(_save(tmp_path, "results", _qemu(count)), _save(tmp_path, "baseline", _qemu()))
    assert verdict.exit_code == exit_code, verdict.output
    if exit_code:
        assert "instructions per inference increased" in " ".join(verdict.output.split())


def test_the_limit_is_an_option(tmp_path):
    results = _save(tmp_path, "results", _qemu(BASE_COUNT * 105 // 100))
    baseline = _save(tmp_path, "baseline", _qemu())
    assert _gate(results, baseline).exit_code == 1
    assert _gate(results, baseline, "--max-instructions-increase", "5%").exit_code == 0
    assert _gate(results, baseline, "--max-instructions-increase", "0.049").exit_code == 1
    _one_line_exit_2(_gate(results, baseline, "--max-instructions-increase", "-1%"), "--max-instructions-increase")


def test_wall_time_on_emulated_boards_is_not_gated_unless_asked(tmp_path):
    """Under emulation the wall time of an unchanged bundle swings by tens of percent."""
    results = _save(tmp_path, "results", _qemu(latency_ms=40.0))
    baseline = _save(tmp_path, "baseline", _qemu(latency_ms=20.0))
    assert _gate(results, baseline).exit_code == 0
    asked = _gate(results, baseline, "--max-emulated-latency-increase", "50%")
    assert asked.exit_code == 1 and "latency p50 increased 100.0%" in " ".join(asked.output.split())
    # The host keeps its wall-time check.
    host = dict(device_kind="local", performance="latency", instructions=None, device="host")
    assert _gate(_save(tmp_path, "h1", _qemu(latency_ms=40.0, **host)),
                 _save(tmp_path, "h0", _qemu(latency_ms=20.0, **host))).exit_code == 1


@pytest.mark.parametrize("side", ["results", "baseline", "both"])
def test_a_missing_count_on_an_emulated_board_fails_closed(tmp_path, side):
    before = _qemu(None if side in ("baseline", "both") else BASE_COUNT)
    after = _qemu(None if side in ("results", "both") else BASE_COUNT)
    verdict = _gate(_save(tmp_path, "results", after), _save(tmp_path, "baseline", before))
    assert verdict.exit_code == 1, verdict.output
    assert "instruction" in " ".join(verdict.output.split())


def test_a_qemu_result_that_claims_latency_still_needs_instructions(tmp_path):
    """Emulated is what either side says: a device kind of qemu, or performance "instructions"."""
    dodge = _qemu(None, performance="latency")
    assert _gate(_save(tmp_path, "results", dodge), _save(tmp_path, "baseline", _qemu())).exit_code == 1
    old = _qemu(None, performance="latency", device_kind="")  # the baseline side only says so
    assert _gate(_save(tmp_path, "results", old), _save(tmp_path, "b", _qemu())).exit_code == 1


def test_counts_under_another_emulator_or_cpu_are_not_compared(tmp_path):
    baseline = _save(tmp_path, "baseline", _qemu())
    for count in (_count(BASE_COUNT, emulator="qemu-aarch64 version 8.2.0"), _count(BASE_COUNT, cpu="cortex-a53")):
        verdict = _gate(_save(tmp_path, "results", _qemu(instructions=count)), baseline)
        assert verdict.exit_code == 1 and "not comparable" in " ".join(verdict.output.split()), verdict.output


def test_the_interleaved_baseline_bundle_count_is_used_when_present(tmp_path):
    """A count of the baseline bundle from the same job beats the baseline file's."""
    baseline = _save(tmp_path, "baseline", _qemu(BASE_COUNT // 2))
    same_job = _qemu(BASE_COUNT, baseline_instructions=BASE_COUNT, baseline_bundle="base/m-aarch64")
    verdict = _gate(_save(tmp_path, "results", same_job), baseline)
    assert verdict.exit_code == 0 and "same run" in " ".join(verdict.output.split()), verdict.output
    worse = _qemu(BASE_COUNT * 102 // 100, baseline_instructions=BASE_COUNT, baseline_bundle="base/m-aarch64")
    assert _gate(_save(tmp_path, "results", worse), baseline).exit_code == 1


def _entry(tmp_path, change) -> str:
    path = _save(tmp_path, "seed", _qemu())
    data = json.loads(path.read_text())
    change(data["results"][0])
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("field, value", [
    ("per_inference", -1), ("per_inference", 0), ("per_inference", True), ("per_inference", "1000000"),
    ("per_inference", 1e6), ("per_inference", 2 ** 70), ("per_inference", None), ("low_total", -5),
    ("high", 1), ("low", 0), ("emulator", ""), ("emulator", 7), ("cpu", None), ("counter", "x" * 500),
])
def test_hostile_instruction_counts_are_one_line_exit_2(tmp_path, field, value):
    results = _entry(tmp_path, lambda entry: entry["instructions"].update({field: value}))
    _one_line_exit_2(_gate(results, _save(tmp_path, "baseline", _qemu())), "instructions", field)
    # the same file as the baseline
    _one_line_exit_2(_gate(_save(tmp_path, "r", _qemu()), results), "baseline", "instructions")


@pytest.mark.parametrize("change, word", [
    (lambda e: e["instructions"].update(per_inference=BASE_COUNT + 1), "per_inference"),  # totals disagree
    (lambda e: e["instructions"].update(extra=1), "unknown key"),
    (lambda e: e["instructions"].pop("high_total"), "high_total"),
    (lambda e: e.update(instructions=[1, 2]), "instructions"),
    (lambda e: e.update(instructions="NaN"), "instructions"),
    (lambda e: e.update(performance="speed"), "performance"),
    (lambda e: e.update(performance=None), "performance"),
    (lambda e: e.update(baseline_instructions=-3), "baseline_instructions"),
    (lambda e: e.update(baseline_instructions=False), "baseline_instructions"),
    (lambda e: e.update(baseline_instructions=10 ** 400), "baseline_instructions"),
])
def test_malformed_instruction_fields_are_one_line_exit_2(tmp_path, change, word):
    _one_line_exit_2(_gate(_entry(tmp_path, change), _save(tmp_path, "baseline", _qemu())), word)


def test_an_old_results_file_without_the_new_keys_still_validates(tmp_path):
    """Schema 1 files written before instructions existed: valid, and their host pairs still pass."""
    host = _qemu(None, device_kind="local", device="host", performance="latency")
    path = _entry(tmp_path, lambda e: [e.pop(key) for key in ("performance", "instructions", "baseline_instructions")])
    data = json.loads(open(path).read())
    data["results"][0].update(device="host", device_kind="local")
    with open(path, "w") as handle:
        json.dump(data, handle)
    assert _gate(path, _save(tmp_path, "baseline", host)).exit_code == 0


def test_thresholds_refuse_a_bad_instruction_limit():
    with pytest.raises(Exception, match="max_instructions_increase"):
        gate.Thresholds(max_instructions_increase=-0.1)
    assert gate.Thresholds().max_instructions_increase == 0.01
    assert gate.Thresholds().max_emulated_latency_increase is None

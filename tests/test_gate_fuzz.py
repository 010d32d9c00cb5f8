"""Seeded mutation fuzzer of results and baseline files: the gate raises only FwEdgeError, and
passes a mutated input only when it is still a valid file whose figures are within limits."""
from __future__ import annotations

import copy
import json
import math
import random
import time
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm import gate
from fwedge.device_farm.results import DeviceResult, Instructions, Latency, Results, load_results, save_results
from fwedge.errors import FwEdgeError

COMMITTED_BASELINE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "baseline.json"
THRESHOLDS = gate.Thresholds(max_accuracy_drop=0.5, max_fidelity_drop=1.0, max_latency_increase=0.10,
                             max_size_increase=0.05)
QUICK_SECONDS = 12.0  # the test command's share; the slow run below takes minutes
VERDICT_SECONDS = 3.0
SLOW_SECONDS = 300.0

HOSTILE_VALUES = [
    None, True, False, 0, -1, 1, 2, 0.0, -0.0, -1e-300, 1e-300, 5.0, 1e308, -1e308, 10 ** 400, -(10 ** 400),
    float("nan"), float("inf"), float("-inf"), "", "0.1", "ok", "error", "candidate", "baseline", "inf", "NaN",
    "\x00", "\n#include </etc/passwd>", "é" * 3, "x" * 5000, [], [1, 2, 3], [[[[[]]]]], {}, {"a": {"b": [None]}},
    {"p50_ms": 1.0}, {"top1_agreement": 2}, [{"bundle": "m"}],
]


def _built_results(with_error: bool = False) -> dict:
    """A run with every shape the farm writes: ok, interleaved baseline role, a ratio, no labels,
    and with_error an error result."""
    def ok(bundle, device, **extra):
        values = dict(status="ok", target="c", arch="aarch64", precision="int8", samples=200, accuracy=0.9,
                      fidelity={"top1_agreement": 0.98, "cosine": 0.999, "max_abs_error": 0.2,
                                "sqnr_db": float("inf"), "samples": 200},
                      latency=Latency(2.0, 2.5, 2.1, 1.9, 40),
                      sizes={"file_bytes": 4000, "rom_bytes": 3000, "ram_bytes": 900, "arena_ratio": 1.0})
        values.update(extra)
        return DeviceResult(bundle=bundle, device=device, **values)

    def counted(per_inference):
        return Instructions(per_inference=per_inference, low=1, high=2, low_total=4000, high_total=4000 + per_inference,
                            emulator="qemu-aarch64 version 7.2.22", cpu="default", counter="fwedge qemu plugin t")

    emulated = dict(device_kind="qemu", performance="instructions", instructions=counted(1_000_000))
    results = Results(results=[
        ok("cnn-aarch64", "qemu-aarch64", **emulated),
        ok("cnn-aarch64", "qemu-aarch64", role="baseline", **emulated),
        ok("cnn-b-aarch64", "qemu-aarch64", **emulated, baseline_instructions=995_000, baseline_bundle="b"),
        ok("cnn-onnx", "host", target="onnx", latency_ratio=1.01, baseline_bundle="cnn-onnx"),
        ok("cnn-onnx", "host", target="onnx", role="baseline"),
        ok("cnn-nolabels", "host", accuracy=None),
    ] + [DeviceResult(bundle="cnn-riscv64", device="qemu-riscv64", status="error", target="c", arch="riscv64",
                      error="qemu-riscv64: killed by SIGSEGV", stderr_tail="uncaught target signal 11")] * with_error,
        data="fashion-mnist:test", samples=200, repeats=40, created="2026-01-01T00:00:00+00:00",
        host={"node": "ci", "machine": "x86_64"})
    return json.loads(results_json(results))


def results_json(results: Results) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return save_results(results, Path(folder) / "r.json").read_text()


def _seeds() -> list[dict]:
    return [json.loads(COMMITTED_BASELINE.read_text()), _built_results(), _built_results(with_error=True)]


# -- mutations -----------------------------------------------------------------------------------------


def _containers(value, path=()):
    """Every (path, container) inside a JSON value."""
    if isinstance(value, (dict, list)):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from _containers(item, path + (key,))


def _mutate_tree(rng: random.Random, doc) -> object:
    places = list(_containers(doc))
    if not places:
        return copy.deepcopy(rng.choice(HOSTILE_VALUES))
    _, container = rng.choice(places)
    keys = list(container) if isinstance(container, dict) else list(range(len(container)))
    action = rng.randrange(9)
    if not keys or action == 0:  # add an unknown key or element
        if isinstance(container, dict):
            container[rng.choice(["extra", "acuracy", "schema", "results", "x" * rng.randrange(1, 40)])] = \
                copy.deepcopy(rng.choice(HOSTILE_VALUES))
        else:
            # Copies, never the shared HOSTILE_VALUES objects themselves: a later mutation could
            # append such a list to itself (a circular document, and every later input poisoned).
            container.append(copy.deepcopy(rng.choice(container)) if container and rng.random() < 0.5
                             else copy.deepcopy(rng.choice(HOSTILE_VALUES)))
        return doc
    key = rng.choice(keys)
    value = container[key]
    if action == 1:  # delete
        del container[key]
    elif action == 2:  # another type or a hostile value
        container[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    elif action == 3 and isinstance(value, (int, float)) and not isinstance(value, bool):
        # A nearby number: often still valid, sometimes a regression, sometimes out of range.
        factor = rng.choice([0.0, 0.5, 0.9, 0.99, 0.999, 1.0, 1.001, 1.04, 1.06, 1.2, 2.0, -1.0])
        try:
            container[key] = value * factor
        except OverflowError:  # an int beyond any float (a hostile value put there before): keep it
            pass
    elif action == 4 and isinstance(container, list):  # duplicate an entry, maybe changed
        twin = copy.deepcopy(value)
        if isinstance(twin, dict) and twin:
            twin[rng.choice(list(twin))] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        container.insert(rng.randrange(len(container) + 1), twin)
    elif action == 5:  # swap two values of the same container
        other = rng.choice(keys)
        container[key], container[other] = container[other], container[key]
    elif action == 6:  # nested garbage
        garbage = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        for _ in range(rng.randrange(1, 60)):
            garbage = rng.choice([[garbage], {"k": garbage}])
        container[key] = garbage
    elif action == 7 and isinstance(value, str):
        container[key] = rng.choice([value + "x", value.upper(), value[: len(value) // 2], value * 2, "", "  "])
    elif action == 8 and isinstance(container, list) and len(container) > 1:
        rng.shuffle(container)
    else:
        container[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    return doc


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        action, at = rng.randrange(5), rng.randrange(len(data))
        if action == 0:
            data = data[:at]  # truncated
        elif action == 1:
            data[at] ^= 1 << rng.randrange(8)
        elif action == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif action == 3:
            del data[at:at + rng.randrange(1, 64)]
        else:
            data[at:at] = rng.choice([b"NaN", b"Infinity", b"-1e999", b"[", b"{", b"\x00", b"\xff", b'"', b","])
    return bytes(data)


def mutate(rng: random.Random, seed_doc: dict) -> bytes:
    """One to three tree mutations and/or byte mutations of a results document."""
    doc = json.loads(json.dumps(seed_doc))  # a deep copy, faster than copy.deepcopy
    if rng.random() < 0.8:
        for _ in range(rng.randrange(1, 4)):
            doc = _mutate_tree(rng, doc)
    raw = json.dumps(doc, indent=rng.choice([None, 2])).encode()  # NaN/Infinity literals on purpose
    if rng.random() < 0.3:
        raw = _mutate_bytes(rng, raw)
    return raw


# -- the oracle: what a pass must mean, checked without the gate's code --------------------------------


def _finite_in(value, low, high) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _oracle_sqnr(value) -> float | None:
    """The gate's reading of an SQNR figure, written apart: capped at 80 dB, None when absent."""
    if value is None:
        return None
    value = {"inf": math.inf, "-inf": -math.inf}.get(value, value) if isinstance(value, str) else float(value)
    return None if math.isnan(value) else min(value, 80.0)


def _emulated(entry: dict) -> bool:
    identity = entry.get("identity")
    return (entry.get("performance") == "instructions" or entry.get("device_kind") == "qemu"
            or isinstance(identity, dict) and identity.get("emulated") is True)


def _instructions_justified(before: dict, after: dict, limits: gate.Thresholds) -> str | None:
    """On an emulated board: a whole count now, within the limit of the interleaved baseline
    bundle's count or else of the baseline file's count under the same emulator and -cpu."""
    now = after.get("instructions")
    if not isinstance(now, dict) or not _whole(now.get("per_inference")):
        return "no instruction count"
    if after.get("baseline_instructions") is not None:
        reference = after["baseline_instructions"]
    else:
        then = before.get("instructions")
        if not isinstance(then, dict) or (then.get("emulator"), then.get("cpu")) != (now.get("emulator"), now.get("cpu")):
            return "no comparable instruction count in the baseline"
        reference = then.get("per_inference")
    if not _whole(reference) or now["per_inference"] > reference * (1 + limits.max_instructions_increase):
        return "instructions"
    return None


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2 ** 62


def _pass_is_justified(results_doc: dict, baseline_doc: dict, limits: gate.Thresholds) -> str | None:
    """None when the documents independently show a pass; otherwise why not."""
    def candidates(doc):
        entries = [e for e in doc["results"] if e["role"] == "candidate"]
        keys = [(e["bundle"], e["device"]) for e in entries]
        if len(keys) != len(set(keys)):
            return None
        return dict(zip(keys, entries))

    current, base = candidates(results_doc), candidates(baseline_doc)
    if current is None or base is None:
        return "a pair is listed twice"
    if (results_doc["data"], results_doc["samples"]) != (baseline_doc["data"], baseline_doc["samples"]):
        return "measured on other data"
    if any(e["status"] != "ok" for e in current.values()):
        return "an error result"
    compared = 0
    for key, before in base.items():
        if before["status"] != "ok":
            if key not in current:
                return f"{key} missing"
            continue
        after = current.get(key)
        if after is None:
            return f"{key} missing"
        quality = 0
        for get, allowed in ((lambda e: e["accuracy"], limits.max_accuracy_drop),
                             (lambda e: (e["fidelity"] or {}).get("top1_agreement"), limits.max_fidelity_drop)):
            if get(before) is None:
                continue
            if not (_finite_in(get(before), 0, 1) and _finite_in(get(after), 0, 1)):
                return f"{key}: quality figure missing or out of range"
            if 100 * (get(before) - get(after)) > allowed + 1e-9:
                return f"{key}: quality dropped"
            quality += 1
        sqnr = [_oracle_sqnr((e["fidelity"] or {}).get("sqnr_db")) for e in (before, after)]
        if sqnr[0] is not None:
            if sqnr[1] is None:
                return f"{key}: SQNR missing"
            if sqnr[0] - sqnr[1] > limits.max_sqnr_drop + 1e-9:
                return f"{key}: SQNR dropped"
            quality += 1
        if not quality:
            return f"{key}: no quality figure"
        if _emulated(before) or _emulated(after):
            why = _instructions_justified(before, after, limits)
            if why:
                return f"{key}: {why}"
        elif after["latency_ratio"] is not None:
            if not _finite_in(after["latency_ratio"], 1e-300, 1 + limits.max_latency_increase + 1e-12):
                return f"{key}: ratio"
        else:
            p50 = [(e["latency"] or {}).get("p50_ms") for e in (before, after)]
            if not all(_finite_in(v, 1e-300, 1e308) for v in p50) or p50[1] / p50[0] - 1 > \
                    limits.max_latency_increase + 1e-12:
                return f"{key}: latency"
        for name, size in before["sizes"].items():
            if name.endswith("_bytes"):
                now = after["sizes"].get(name)
                if not _finite_in(now, 0, 1e308) or now > size * (1 + limits.max_size_increase) + 1e-9:
                    return f"{key}: {name}"
        compared += 1
    return None if compared else "nothing compared"


# -- the loop ------------------------------------------------------------------------------------------


def fuzz_gate(folder: Path, seconds: float, seed: int = 0, min_inputs: int = 0) -> dict:
    """Mutate results and baseline files for `seconds` (and at least `min_inputs` times, so that
    a slow machine still tries the same first inputs); returns the counts and any failure."""
    rng = random.Random(seed)
    seeds = _seeds()
    counts = {"inputs": 0, "fwedge_error": 0, "other_exceptions": 0, "passes": 0, "regressions": 0,
              "unjustified_passes": 0, "cli_runs": 0}
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    results_path, baseline_path = folder / "results.json", folder / "baseline.json"
    while counts["inputs"] < min_inputs or time.monotonic() < deadline:
        origin = rng.choice(seeds)
        side = rng.choice(["results", "baseline", "both"])
        results_raw = mutate(rng, origin) if side in ("results", "both") else json.dumps(origin).encode()
        baseline_raw = mutate(rng, origin) if side in ("baseline", "both") else json.dumps(origin).encode()
        results_path.write_bytes(results_raw)
        baseline_path.write_bytes(baseline_raw)
        counts["inputs"] += 1
        try:
            report = gate.run_gate(results_path, baseline_path, THRESHOLDS)
        except FwEdgeError as exc:
            counts["fwedge_error"] += 1
            if "\n" in str(exc):
                failures.append(f"multi-line error: {str(exc)[:200]!r}")
            report = None
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            counts["other_exceptions"] += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {str(exc)[:200]}")
            report = None
        if report is not None:
            if report.passed:
                counts["passes"] += 1
                # A pass needs files that still validate and figures within limits.
                docs = [load_results(results_path).to_dict(), load_results(baseline_path).to_dict()]
                why = _pass_is_justified(json.loads(results_raw), json.loads(baseline_raw), THRESHOLDS)
                if why is not None or docs[0]["schema"] != "fwedge.results/1":
                    counts["unjustified_passes"] += 1
                    failures.append(f"pass without evidence ({why}): {results_raw[:300]!r}")
            else:
                counts["regressions"] += 1
        if counts["inputs"] % 40 == 0:
            counts["cli_runs"] += 1
            run = CliRunner().invoke(cli, ["gate", str(results_path), "--baseline", str(baseline_path)])
            expected = {None: 2, True: 0, False: 1}[None if report is None else report.passed]
            if run.exit_code != expected or not isinstance(run.exception, (SystemExit, type(None))):
                failures.append(f"CLI exit {run.exit_code} (expected {expected}): {run.output[-300:]!r}")
    counts["failures"] = failures
    return counts


def _report(counts: dict, capsys) -> None:
    with capsys.disabled():
        print(f"\ngate fuzz: {counts['inputs']} inputs tried, {counts['fwedge_error']} FwEdgeError, "
              f"{counts['other_exceptions']} other exceptions, {counts['passes']} passes "
              f"({counts['unjustified_passes']} without evidence), {counts['regressions']} regressions, "
              f"{counts['cli_runs']} CLI runs")


def test_unmutated_seeds_pass_against_themselves_unless_one_errored(tmp_path):
    committed, built, with_error = _seeds()
    for number, doc in enumerate([committed, built]):
        path = tmp_path / f"seed{number}.json"
        path.write_text(json.dumps(doc))
        report = gate.run_gate(path, path, THRESHOLDS)
        assert report.passed, report.regressions
        assert _pass_is_justified(doc, doc, THRESHOLDS) is None
    path = tmp_path / "with_error.json"
    path.write_text(json.dumps(with_error))
    report = gate.run_gate(path, path, THRESHOLDS)
    assert report.regressions == ["cnn-riscv64 on qemu-riscv64: error on the device: qemu-riscv64: killed by SIGSEGV"]
    assert _pass_is_justified(with_error, with_error, THRESHOLDS) == "an error result"


def test_the_oracle_rejects_what_the_gate_must_fail():
    doc = _built_results()
    worse = copy.deepcopy(doc)
    worse["results"][0]["accuracy"] = 0.8
    assert _pass_is_justified(worse, doc, THRESHOLDS) == "('cnn-aarch64', 'qemu-aarch64'): quality dropped"
    bigger = copy.deepcopy(doc)
    bigger["results"][0]["sizes"]["rom_bytes"] = 4000
    assert "rom_bytes" in _pass_is_justified(bigger, doc, THRESHOLDS)


def test_fuzz_results_and_baseline_files(tmp_path, capsys):
    counts = fuzz_gate(tmp_path, QUICK_SECONDS, seed=13, min_inputs=100)
    _report(counts, capsys)
    assert counts["failures"] == [], counts["failures"][:10]
    assert counts["other_exceptions"] == 0 and counts["unjustified_passes"] == 0
    # The loop must reach every outcome, or it is not exploring (the first 100 inputs do).
    assert counts["fwedge_error"] > 0 and counts["passes"] > 0 and counts["regressions"] > 0


@pytest.mark.slow
def test_fuzz_results_and_baseline_files_long(tmp_path, capsys):
    counts = fuzz_gate(tmp_path, SLOW_SECONDS, seed=2026)
    _report(counts, capsys)
    assert counts["failures"] == [], counts["failures"][:10]
    assert counts["other_exceptions"] == 0 and counts["unjustified_passes"] == 0
    verdicts = fuzz_verdicts(tmp_path, SLOW_SECONDS / 5, seed=2026)
    assert verdicts["failures"] == [], verdicts["failures"][:10]


# -- gate verdict files (`fwedge gate --json`, read back by `fwedge report --gate`) -------------------


def _verdict_seed() -> dict:
    committed = load_results(COMMITTED_BASELINE, "baseline")
    worse = json.loads(COMMITTED_BASELINE.read_text())
    worse["results"][0]["accuracy"] -= 0.02
    worse["results"][1]["sizes"]["file_bytes"] *= 2
    worse["results"][2]["status"], worse["results"][2]["error"] = "error", "killed"
    from fwedge.device_farm.results import validate_results

    report = gate.evaluate_gate(validate_results(worse), committed, THRESHOLDS, waive=["qemu-riscv64"])
    return json.loads(json.dumps(report.to_dict()))


def fuzz_verdicts(folder: Path, seconds: float, seed: int = 0, min_inputs: int = 0) -> dict:
    """Mutate a gate verdict file; reading it and everything the report uses raise only FwEdgeError."""
    from fwedge.commands.gate import render_table

    rng = random.Random(seed)
    origin = _verdict_seed()
    counts = {"inputs": 0, "fwedge_error": 0, "other_exceptions": 0, "read": 0}
    failures: list[str] = []
    path = folder / "gate.json"
    deadline = time.monotonic() + seconds
    while counts["inputs"] < min_inputs or time.monotonic() < deadline:
        path.write_bytes(mutate(rng, origin))
        counts["inputs"] += 1
        try:
            report = gate.load_gate(path)
            # What `fwedge report` and the CLI table read from it.
            report.passed, report.regressions, json.dumps(report.to_dict())
            for row in report.rows:
                row.verdict.upper(), "; ".join(row.reasons), [c.metric.endswith("_bytes") for c in row.shown_checks()]
            render_table(report)
            counts["read"] += 1
        except FwEdgeError:
            counts["fwedge_error"] += 1
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            counts["other_exceptions"] += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {str(exc)[:200]}")
    counts["failures"] = failures
    return counts


def test_fuzz_gate_verdict_files(tmp_path, capsys):
    assert not gate.GateReport.from_dict(_verdict_seed()).passed
    counts = fuzz_verdicts(tmp_path, VERDICT_SECONDS, seed=7, min_inputs=100)
    with capsys.disabled():
        print(f"\ngate verdict fuzz: {counts['inputs']} inputs tried, {counts['fwedge_error']} FwEdgeError, "
              f"{counts['other_exceptions']} other exceptions, {counts['read']} read")
    assert counts["failures"] == [], counts["failures"][:10]
    assert counts["fwedge_error"] > 0 and counts["read"] > 0

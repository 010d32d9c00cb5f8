"""The regression gate: compare farm results with a baseline per (bundle, device); fail closed."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from fwedge.device_farm.results import (
    INSTRUCTIONS, DeviceResult, Results, as_float, check_results, load_results, save_results,
)
from fwedge.errors import GateError
from fwedge.tasks import DETECTION, SIGNAL

PASS, FAIL, WAIVED, NEW = "pass", "fail", "waived", "new"
GATE_SCHEMA = "fwedge.gate/1"
NO_EVIDENCE = ("no (bundle, device) pair was compared and passed: every pair is waived or new, so nothing "
               "shows that this run is within limits")


# Above this SQNR an output matches its FP32 reference to float rounding: an fp32 bundle gives
# 100-150 dB or an exact "inf" depending on the runtime's kernels and threads, so differences up
# there are not a regression. int8 outputs sit at 15-45 dB, far below it.
SQNR_CEILING_DB = 80.0


@dataclass
class Thresholds:
    """How much worse a result may be than its baseline.

    Attributes:
        max_accuracy_drop: top-1 accuracy, percentage points.
        max_fidelity_drop: top-1 agreement with the FP32 reference, percentage points.
        max_sqnr_drop: SQNR of the scored output against the FP32 reference, dB: the quality
            figure that means something for detectors, OCR and regressors, whose top-1 does not.
            Values above SQNR_CEILING_DB count as the ceiling (both runs match the reference).
        max_latency_increase: fraction (0.10 = +10 %) of p50 latency; with an interleaved
            baseline run the measured ratio is used instead of two separate runs.
        max_size_increase: fraction of each size figure present in both (file, ROM, RAM bytes).
        max_instructions_increase: fraction of the executed instructions per inference on
            emulated boards, compared exactly (integers).
        max_emulated_latency_increase: the wall-time limit on emulated boards; None (the
            default) does not gate their wall time, which swings from run to run.
        The latency limit applies to real boards and the host only.
    """

    max_accuracy_drop: float = 0.5
    max_fidelity_drop: float = 1.0
    max_sqnr_drop: float = 3.0
    max_latency_increase: float = 0.10
    max_size_increase: float = 0.05
    max_instructions_increase: float = 0.01
    max_emulated_latency_increase: float | None = None

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None and item.name == "max_emulated_latency_increase":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(as_float(value)) \
                    or value < 0:
                raise GateError(f"gate threshold {item.name} must be a non-negative number, got {value!r}")


def parse_fraction(text: str, what: str) -> float:
    """'10%' -> 0.10, '0.1' -> 0.1.

    Raises:
        GateError: not a number, or negative.
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError as exc:
        raise GateError(f"{what}: expected a fraction like 0.1 or a percentage like 10%, got {text!r}") from exc
    if value < 0 or math.isnan(value):
        raise GateError(f"{what}: must be non-negative, got {text!r}")
    return value


@dataclass
class Check:
    """One metric compared: baseline value, current value, the allowed limit, and the verdict."""

    metric: str
    baseline: float | None
    current: float | None
    change: str
    limit: str
    passed: bool


@dataclass
class GateRow:
    """The verdict for one (bundle, device)."""

    bundle: str
    device: str
    verdict: str
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def shown_checks(self) -> list[Check]:
        """Checks worth a table cell: quality and performance always; sizes only when they changed."""
        return [c for c in self.checks if not c.metric.endswith("_bytes") or not c.passed
                or c.baseline != c.current]


@dataclass
class GateReport:
    """All rows, the overall verdict, and one line per regression."""

    rows: list[GateRow]
    thresholds: Thresholds
    waived: list[str]

    @property
    def passed(self) -> bool:
        """Positive evidence only: no row failed, and at least one row was compared and passed."""
        return not any(row.failed for row in self.rows) and any(row.verdict == PASS for row in self.rows)

    @property
    def regressions(self) -> list[str]:
        lines = [f"{row.bundle} on {row.device}: {reason}" for row in self.rows if row.failed for reason in row.reasons]
        if not lines and not self.passed:
            lines.append(NO_EVIDENCE)
        return lines

    def to_dict(self) -> dict:
        return {"schema": GATE_SCHEMA, "passed": self.passed, "thresholds": dataclasses.asdict(self.thresholds),
                "waived": self.waived, "regressions": self.regressions,
                "rows": [dataclasses.asdict(row) for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict, source: str = "gate verdict") -> "GateReport":
        """Read back `fwedge gate --json` output.

        Raises:
            GateError: another schema or a malformed row.
        """
        if not isinstance(data, dict) or data.get("schema") != GATE_SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise GateError(f"{source}: schema {str(got)[:60]!r}, expected {GATE_SCHEMA!r}")
        # The report renders every field: check the types it relies on, not just the keys.
        if not isinstance(data.get("rows"), list) or not isinstance(data.get("thresholds"), dict):
            raise GateError(f"{source}: malformed (expected a list of rows and an object of thresholds)")
        waived = data.get("waived", [])
        if not _strings(waived):
            raise GateError(f"{source}: waived must be a list of strings")
        thresholds = data["thresholds"]
        try:
            limits = Thresholds(**thresholds)
        except TypeError as exc:
            raise GateError(f"{source}: malformed thresholds ({str(exc)[:200]})") from exc
        return cls(rows=[_row_from_dict(row, f"{source}: rows[{index}]") for index, row in enumerate(data["rows"])],
                   thresholds=limits, waived=list(waived))


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


_CHECK_TYPES = {"metric": (str,), "change": (str,), "limit": (str,), "passed": (bool,)}


def _row_from_dict(row, where: str) -> GateRow:
    if not isinstance(row, dict):
        raise GateError(f"{where}: expected an object")
    for key in ("bundle", "device", "verdict"):
        if not isinstance(row.get(key), str):
            raise GateError(f"{where}.{key}: expected a string")
    if row["verdict"] not in (PASS, FAIL, WAIVED, NEW):
        raise GateError(f"{where}.verdict: expected one of {PASS}, {FAIL}, {WAIVED}, {NEW}, got {row['verdict'][:60]!r}")
    reasons = row.get("reasons", [])
    if not _strings(reasons):
        raise GateError(f"{where}.reasons: expected a list of strings")
    checks = row.get("checks", [])
    if not isinstance(checks, list):
        raise GateError(f"{where}.checks: expected a list")
    parsed = []
    for number, check in enumerate(checks):
        label = f"{where}.checks[{number}]"
        if not isinstance(check, dict) or set(check) != {item.name for item in dataclasses.fields(Check)}:
            raise GateError(f"{label}: expected an object with the keys of a check")
        for key, kinds in _CHECK_TYPES.items():
            if not isinstance(check[key], kinds):
                raise GateError(f"{label}.{key}: expected {kinds[0].__name__}")
        for key in ("baseline", "current"):
            value = check[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(as_float(value))):
                raise GateError(f"{label}.{key}: expected a finite number or null")
        parsed.append(Check(**check))
    return GateRow(bundle=row["bundle"], device=row["device"], verdict=row["verdict"], checks=parsed,
                   reasons=list(reasons))


def load_gate(path: str | os.PathLike) -> GateReport:
    """Read a gate verdict JSON file written by `fwedge gate --json`.

    Raises:
        GateError: missing, not strict JSON, or malformed.
    """
    from fwedge.device_farm.results import read_json_file

    return GateReport.from_dict(read_json_file(path, "gate verdict"), f"gate verdict '{path}'")


def _is_waived(bundle: str, device: str, waive: list[str]) -> bool:
    return bundle in waive or device in waive or f"{bundle}@{device}" in waive


def is_emulated(result: DeviceResult) -> bool:
    """An emulated board's result: performance "instructions", a qemu device, or an emulated run."""
    return (result.performance == INSTRUCTIONS or result.device_kind == "qemu"
            or result.identity.get("emulated") is True)


def _compare_instructions(base: DeviceResult, current: DeviceResult, allowed: float, checks: list[Check],
                          reasons: list[str]) -> None:
    """Executed instructions per inference, compared exactly: with the interleaved baseline bundle's
    count from this job when there is one, else with the baseline file's count under the same
    emulator and -cpu. Anything missing fails: on an emulated board it is the performance figure."""
    limit = f"<= +{100 * allowed:g}%"
    now = current.instructions.per_inference if current.instructions else None
    if current.baseline_instructions is not None:
        before, how = current.baseline_instructions, "vs baseline bundle, same run"
    elif base.instructions is not None:
        before, how = base.instructions.per_inference, "vs baseline file"
        if now is not None:
            then = (base.instructions.emulator, base.instructions.cpu)
            if then != (current.instructions.emulator, current.instructions.cpu):
                checks.append(Check("instructions", before, now, "not comparable", limit, False))
                reasons.append(f"instructions counted under {current.instructions.emulator!r} -cpu "
                               f"{current.instructions.cpu!r}, the baseline under {then[0]!r} -cpu {then[1]!r}: "
                               "not comparable; run with the baseline's emulator or record a new baseline")
                return
    else:
        checks.append(Check("instructions", None, now, "missing in the baseline", limit, False))
        reasons.append("no instruction count in the baseline for an emulated board: nothing to compare; record "
                       "a new baseline (--update-baseline) or run interleaved baseline bundles")
        return
    if now is None:
        checks.append(Check("instructions", before, None, "missing", limit, False))
        reasons.append(f"instructions missing in this run (baseline {before:,} per inference); the farm counts "
                       "them on emulated boards")
        return
    # Exact: integers against the limit as a fraction, no float rounding at the boundary.
    ok = Fraction(now) <= Fraction(before) * (1 + Fraction(allowed))
    ratio = now / before
    checks.append(Check("instructions", before, now, f"x{ratio:.3f} ({now - before:+,}) {how}", limit, ok))
    if not ok:
        reasons.append(f"instructions per inference increased {100 * (ratio - 1):.2f}% ({before:,} -> {now:,}, "
                       f"{how}), limit +{100 * allowed:g}%")


def _sqnr(value) -> float | None:
    """An SQNR figure as the gate compares it: capped at SQNR_CEILING_DB; None when absent or
    NaN ("inf" and "-inf" are the strict-JSON spellings of the infinities)."""
    if value is None or isinstance(value, bool):
        return None
    number = {"inf": math.inf, "-inf": -math.inf}.get(value, value) if isinstance(value, str) else value
    if not isinstance(number, (int, float)) or math.isnan(number):
        return None
    return min(float(number), SQNR_CEILING_DB)


def _compare_steps(before: dict, after: dict, checks: list[Check], reasons: list[str]) -> None:
    """The scored output's largest difference in its quantization steps (fidelity.max_steps),
    read only where the baseline has one. It is shown, not limited (no threshold is defined for
    it: SQNR and top-1 are the quality limits); as with every figure, a baseline's max_steps
    that this run lacks (its output lost its step, or the run lost its figure) is no evidence
    and fails."""
    if before.get("max_steps") is None:
        return
    base_steps, now = float(before["max_steps"]), after.get("max_steps")  # a number or "inf"
    shown = lambda value: value if math.isfinite(value) else None  # noqa: E731 - a check holds finite numbers
    if now is None:
        checks.append(Check("fidelity (max steps)", shown(base_steps), None, "missing", "shown, not limited", False))
        reasons.append(f"fidelity (max steps) missing in this run (baseline {base_steps:.2f} steps)")
        return
    now = float(now)
    change = f"{now - base_steps:+.2f} steps" if math.isfinite(now - base_steps) else f"{now:g} steps"
    checks.append(Check("fidelity (max steps)", shown(base_steps), shown(now), change, "shown, not limited", True))


def _compare(base: DeviceResult, current: DeviceResult, limits: Thresholds) -> tuple[list[Check], list[str]]:
    """Every check of one pair. A figure the baseline has and this run lacks fails (null is no
    evidence); the pair also fails when no quality figure could be compared, or no performance
    figure: instructions on emulated boards, latency elsewhere."""
    checks, reasons = [], []

    def dropped(metric: str, before, after, allowed: float, unit: str) -> bool:
        """One quality figure that may drop by `allowed` (unit "pp": fractions shown as
        percentages; "dB"); False when the baseline has none."""
        if before is None:
            return False
        scale = 100.0 if unit == "pp" else 1.0
        show = (lambda v: f"{100 * v:.2f}%") if unit == "pp" else (lambda v: f"{v:.2f} dB")
        if after is None:
            checks.append(Check(metric, before, None, "missing", f"drop <= {allowed:g} {unit}", False))
            reasons.append(f"{metric} missing in this run (baseline {show(before)})")
            return True
        drop = scale * (before - after)
        ok = drop <= allowed + 1e-9
        checks.append(Check(metric, before, after, f"{scale * (after - before):+.2f} {unit}",
                            f"drop <= {allowed:g} {unit}", ok))
        if not ok:
            reasons.append(f"{metric} dropped {drop:.2f} {unit} ({show(before)} -> {show(after)}), "
                           f"limit {allowed:g} {unit}")
        return True

    def ratio(metric: str, value: float, before, after, allowed: float, how: str) -> None:
        ok = value - 1.0 <= allowed + 1e-12
        checks.append(Check(metric, before, after, f"{100 * (value - 1):+.1f}% {how}".strip(),
                            f"<= +{100 * allowed:g}%", ok))
        if not ok:
            reasons.append(f"{metric} increased {100 * (value - 1):.1f}% {how}".rstrip() + f", limit +{100 * allowed:g}%")

    before, after = base.fidelity or {}, current.fidelity or {}
    quality = False
    # Top-1 figures are skipped only when both runs say the output is a signal (a detector's or
    # regressor's argmax means nothing); a pair measured as classification once keeps them.
    if not (base.task in (SIGNAL, DETECTION) and current.task in (SIGNAL, DETECTION)):
        quality |= dropped("accuracy", base.accuracy, current.accuracy, limits.max_accuracy_drop, "pp")
        quality |= dropped("fidelity (top-1 agreement)", before.get("top1_agreement"),
                           after.get("top1_agreement"), limits.max_fidelity_drop, "pp")
    quality |= dropped("fidelity (mAP@0.5 vs FP32 boxes)", before.get("map50"), after.get("map50"),
                       limits.max_fidelity_drop, "pp")
    quality |= dropped("fidelity (SQNR vs FP32)", _sqnr(before.get("sqnr_db")), _sqnr(after.get("sqnr_db")),
                       limits.max_sqnr_drop, "dB")
    _compare_steps(before, after, checks, reasons)
    if not quality:
        reasons.append("no accuracy or fidelity in the baseline: nothing shows that quality held")
    emulated = is_emulated(base) or is_emulated(current)
    if emulated:
        _compare_instructions(base, current, limits.max_instructions_increase, checks, reasons)
    latency_limit = limits.max_emulated_latency_increase if emulated else limits.max_latency_increase
    if latency_limit is None:
        pass  # an emulated board's wall time: recorded, not gated
    elif current.latency_ratio is not None:
        ratio("latency p50", current.latency_ratio, None, current.latency.p50_ms if current.latency else None,
              latency_limit, "(interleaved A/B ratio)")
    elif base.latency is None:
        reasons.append("no latency in the baseline and no interleaved baseline run: nothing to compare")
    elif current.latency is None:
        checks.append(Check("latency p50", base.latency.p50_ms, None, "missing", f"<= +{100 * latency_limit:g}%",
                            False))
        reasons.append(f"latency p50 missing in this run (baseline {base.latency.p50_ms:g} ms)")
    else:  # validated: both p50 > 0
        ratio("latency p50", current.latency.p50_ms / base.latency.p50_ms, base.latency.p50_ms,
              current.latency.p50_ms, latency_limit, "(vs baseline run)")
    for key in sorted(base.sizes):
        if not key.endswith("_bytes"):
            continue  # ratios and counts in `sizes` are not sizes
        before, after = base.sizes[key], current.sizes.get(key)
        if after is None:
            checks.append(Check(key, before, None, "missing", f"<= +{100 * limits.max_size_increase:g}%", False))
            reasons.append(f"{key} missing in this run (baseline {before:g})")
        elif before > 0:
            ratio(key, after / before, before, after, limits.max_size_increase, "")
        elif after > 0:
            checks.append(Check(key, before, after, f"0 -> {after:g}", f"<= +{100 * limits.max_size_increase:g}%", False))
            reasons.append(f"{key} grew from 0 to {after:g}")
    return checks, reasons


def check_baseline_usable(baseline: Results, source: str = "baseline") -> None:
    """A baseline must follow the schema and hold at least one ok candidate result: an empty
    one, or one whose runs all failed or are all interleaved baseline runs, proves nothing.

    Raises:
        GateError: it does not.
    """
    check_results(baseline, source)
    if not any(base.ok for base in baseline.candidates()):
        raise GateError(f"{source}: no ok candidate result among its {len(baseline.results)} entries, so nothing "
                        "to compare with; a baseline is written from a good run with --update-baseline")


def evaluate_gate(results: Results, baseline: Results, thresholds: Thresholds | None = None,
                  waive: list[str] | tuple[str, ...] = ()) -> GateReport:
    """Compare every candidate result with the baseline.

    Fails closed: a (bundle, device) the baseline has but this run lacks, any error result, a
    figure the baseline has and this run lacks, and a pair with no quality figure or no
    performance figure to compare (instructions on emulated boards, where wall time is not gated
    unless thresholds.max_emulated_latency_increase is set; latency elsewhere), is a failure
    unless waived by device name, bundle name, or BUNDLE@DEVICE. The
    report passes only when no row failed and at least one row was compared and passed.

    Returns:
        GateReport; `passed` is the verdict.

    Raises:
        GateError: results or baseline fail the schema (see results.validate_results), the
            baseline holds no ok candidate result, or they were measured on different data or
            sample counts.
    """
    thresholds = thresholds or Thresholds()
    waive = list(waive)
    check_results(results, "results")
    check_baseline_usable(baseline, "baseline")
    if (results.data, results.samples) != (baseline.data, baseline.samples):
        # Accuracy on another subset is not comparable: refuse instead of guessing.
        raise GateError(f"the baseline was measured on {baseline.samples} samples of {baseline.data!r}, this run on "
                        f"{results.samples} samples of {results.data!r}; run the farm with the baseline's data "
                        "and --limit, or write a new baseline with --update-baseline")
    rows: list[GateRow] = []
    seen = set()
    for base in baseline.candidates():
        key = base.key
        seen.add(key)
        current = results.find(*key)
        row = GateRow(bundle=key[0], device=key[1], verdict=PASS)
        if current is None:
            row.verdict, row.reasons = FAIL, ["missing: in the baseline but not in this run (fails closed)"]
        elif not current.ok:
            row.verdict, row.reasons = FAIL, [f"error on the device: {current.error}"]
        elif not base.ok:
            row.verdict, row.reasons = NEW, ["the baseline run had failed; nothing to compare"]
        else:
            row.checks, row.reasons = _compare(base, current, thresholds)
            row.verdict = FAIL if row.reasons else PASS
        if row.failed and _is_waived(*key, waive):
            row.verdict = WAIVED
        rows.append(row)
    for current in results.candidates():
        if current.key in seen:
            continue
        row = GateRow(bundle=current.bundle, device=current.device, verdict=NEW, reasons=["not in the baseline"])
        if not current.ok:
            row.verdict, row.reasons = FAIL, [f"error on the device: {current.error}"]
            if _is_waived(*current.key, waive):
                row.verdict = WAIVED
        rows.append(row)
    return GateReport(rows=rows, thresholds=thresholds, waived=waive)


def load_baseline(path: str | os.PathLike, allow_missing: bool = False) -> Results | None:
    """Read and validate a baseline file.

    Args:
        path: the baseline results JSON.
        allow_missing: return None when nothing exists at `path` (a first run, on purpose).
            A file that exists but is unusable is an error either way.

    Raises:
        GateError: no file at `path` (unless allowed), or the file is unusable.
    """
    if allow_missing and not os.path.lexists(path):
        return None
    if not os.path.lexists(path):
        raise GateError(f"baseline '{path}': not found; check the path, write one with --update-baseline, or "
                        "accept a first run without one with --allow-missing-baseline")
    return load_results(path, "baseline")


def run_gate(results_path: str | os.PathLike, baseline_path: str | os.PathLike, thresholds: Thresholds | None = None,
             waive: list[str] | tuple[str, ...] = (), allow_missing_baseline: bool = False) -> GateReport | None:
    """Read, validate and compare a results file with a baseline file: what `fwedge gate` does.

    Args:
        results_path: results JSON of this run.
        baseline_path: baseline results JSON.
        thresholds: limits (defaults: Thresholds()).
        waive: device names, bundle names or BUNDLE@DEVICE not to fail on.
        allow_missing_baseline: when no baseline file exists, return None instead of raising.

    Returns:
        GateReport, or None when the baseline does not exist and that was allowed.

    Raises:
        GateError: an unusable results or baseline file (see evaluate_gate).
    """
    results = load_results(results_path)
    baseline = load_baseline(baseline_path, allow_missing=allow_missing_baseline)
    if baseline is None:
        return None
    return evaluate_gate(results, baseline, thresholds, waive)


def update_baseline(results: Results, path: str | os.PathLike) -> Path:
    """Write the candidate results as the new baseline (atomically), on purpose.

    Error results are kept, so a later gate still knows which pairs were expected.

    Raises:
        GateError: the results fail the schema or hold no ok candidate (the gate would refuse
            such a baseline).
    """
    check_baseline_usable(results, "results")
    kept = [result for result in results.candidates()]
    return save_results(dataclasses.replace(results, results=kept), path)

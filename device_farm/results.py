"""Farm results: one DeviceResult per (bundle, device), saved as JSON with schema fwedge.results/1."""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import os
import platform
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fwedge import __version__, strict_json
from fwedge.errors import GateError
from fwedge.tasks import CLASSIFICATION, DETECTION, TASKS

RESULTS_SCHEMA = "fwedge.results/1"
STDERR_TAIL_CHARS = 2000

# DeviceResult.status values.
OK = "ok"
ERROR = "error"


@dataclass
class DeviceRun:
    """What a device returns for one bundle: outputs and on-device latencies.

    Attributes:
        outputs: output name -> array with one row per input sample.
        latencies_ms: per-iteration latency in milliseconds, measured on the device's own clock
            (clock_gettime in the C harness, perf_counter_ns on the host, time.perf_counter in
            the ssh runner script).
        stderr: whatever the device printed on stderr (kept for error reports).
        identity: facts about how it ran (emulator version, board uname, runtime versions).
        stdout: the C harness's standard output (fwedge profile reads its per-step lines).
    """

    outputs: dict[str, np.ndarray]
    latencies_ms: list[float]
    stderr: str = ""
    identity: dict = field(default_factory=dict)
    stdout: str = ""


@dataclass
class Latency:
    """Latency statistics in milliseconds over `iterations` timed runs."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    iterations: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "Latency | None":
        if not samples_ms:
            return None
        values = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            p50_ms=float(np.percentile(values, 50)),
            p95_ms=float(np.percentile(values, 95)),
            mean_ms=float(values.mean()),
            min_ms=float(values.min()),
            iterations=int(values.size),
        )


# DeviceResult.performance values: the figure the gate compares for a device's speed.
INSTRUCTIONS = "instructions"  # emulated boards: executed guest instructions (exact)
LATENCY = "latency"  # real boards and the host: wall time on the device's clock
PERFORMANCE_METRICS = (INSTRUCTIONS, LATENCY)
# Above any count one inference of an edge model executes (about 3e9 s at 1e9 instructions/s).
MAX_INSTRUCTIONS = 2 ** 62


@dataclass
class Instructions:
    """Executed guest instructions of one inference on an emulated board, exact and repeatable.

    Counted by the qemu plugin (fwedge.device_farm.instructions) as the difference of two runs of
    the harness on one sample repeated `low` and `high` times, so start-up cancels out.

    Attributes:
        per_inference: (high_total - low_total) / (high - low), a whole number.
        low, high: inferences of the two runs.
        low_total, high_total: executed instructions of each whole run.
        emulator: the emulator's version line; counts compare only under the same one.
        cpu: the emulated `-cpu` ("default" when none was given).
        counter: the plugin that counted, with the digest of its sources.
    """

    per_inference: int
    low: int
    high: int
    low_total: int
    high_total: int
    emulator: str
    cpu: str
    counter: str


@dataclass
class DeviceResult:
    """The outcome of one bundle on one device.

    Attributes:
        bundle: the bundle's name (its directory name); the gate matches results on
            (bundle, device).
        device: the device's inventory name.
        status: "ok" or "error".
        role: "candidate", or "baseline" for a baseline bundle run interleaved with it.
        accuracy: top-1 on labels in [0, 1], None without labels.
        fidelity: Fidelity.to_dict() against the FP32 reference, None without a reference; with
            labels also `reference_accuracy`, the reference's own top-1 on the same samples.
        latency: Latency of one inference on the device's clock.
        latency_ratio: candidate p50 / baseline p50 measured interleaved (A B A B) in the same
            job on the same device; None when no baseline bundle was run.
        performance: the authoritative performance figure for this device: "instructions" on
            emulated boards (qemu), "latency" on real boards and the host.
        instructions: Instructions of one inference on an emulated board, else None.
        baseline_instructions: the interleaved baseline bundle's instructions per inference,
            counted in the same job on the same emulator; None when no baseline bundle was run.
        sizes: the bundle's size figures (file_bytes, rom_bytes, ram_bytes, ...).
        identity: device and toolchain identity.
        error: a one-line reason when status is "error".
        stderr_tail: the end of the device's stderr when it failed.
        task: "classification" (the output is one score per class: accuracy and top-1
            agreement mean something), "signal" (OCR, map, regressor outputs: no accuracy, and
            the gate reads SQNR, not top-1) or "detection" (a [N, 4 + classes, anchors] detector
            output: signal, plus mAP@0.5 against the FP32 model's boxes, fwedge.detection).
            Absent in older files: classification.
    """

    bundle: str
    device: str
    status: str
    target: str = ""
    arch: str = ""
    precision: str = ""
    device_kind: str = ""
    role: str = "candidate"
    bundle_path: str = ""
    samples: int = 0
    accuracy: float | None = None
    fidelity: dict | None = None
    latency: Latency | None = None
    latency_ratio: float | None = None
    baseline_bundle: str | None = None
    performance: str = LATENCY
    instructions: Instructions | None = None
    baseline_instructions: int | None = None
    sizes: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    reference: str | None = None
    attempts: int = 1
    wall_seconds: float = 0.0
    error: str | None = None
    stderr_tail: str | None = None
    task: str = CLASSIFICATION

    @property
    def agreement(self) -> float | None:
        """What agreement with the reference means for the task: top-1 agreement for a
        classifier, mAP@0.5 against the FP32 boxes for a detector, None for any other signal."""
        fidelity = self.fidelity or {}
        if self.task == DETECTION:
            return fidelity.get("map50")
        return fidelity.get("top1_agreement") if self.task == CLASSIFICATION else None

    @property
    def key(self) -> tuple[str, str]:
        return (self.bundle, self.device)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceResult":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if values.get("latency") is not None:
            values["latency"] = Latency(**values["latency"])
        if values.get("instructions") is not None:
            values["instructions"] = Instructions(**values["instructions"])
        return cls(**values)


@dataclass
class Results:
    """A farm run: its settings and every DeviceResult."""

    results: list[DeviceResult]
    data: str = ""
    samples: int = 0
    repeats: int = 0
    created: str = ""
    host: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fwedge_version: str = __version__

    def find(self, bundle: str, device: str, role: str = "candidate") -> DeviceResult | None:
        for result in self.results:
            if result.bundle == bundle and result.device == device and result.role == role:
                return result
        return None

    def candidates(self) -> list[DeviceResult]:
        return [r for r in self.results if r.role == "candidate"]

    def to_dict(self) -> dict:
        return {
            "schema": RESULTS_SCHEMA,
            "fwedge_version": self.fwedge_version,
            "created": self.created,
            "host": self.host,
            "data": self.data,
            "samples": self.samples,
            "repeats": self.repeats,
            "notes": self.notes,
            "results": [result.to_dict() for result in self.results],
        }


def host_identity() -> dict:
    """Where the farm run was driven from."""
    return {"node": platform.node(), "machine": platform.machine(), "python": platform.python_version()}


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite(value):
    """Strict JSON: infinities (an identical output's SQNR) become "inf"/"-inf", NaN null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def save_results(results: Results, path: str | os.PathLike) -> Path:
    """Write results JSON atomically (strict JSON: no Infinity/NaN literals)."""
    from fwedge.ir import write_atomic

    payload = _finite(json.loads(json.dumps(results.to_dict(), default=_json_default)))
    return write_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# The largest results file read: a farm run writes a few kB per (bundle, device), so this is far
# above any real file and keeps a hostile one from taking the memory of the CI job.
MAX_RESULTS_BYTES = 64 * 1024 * 1024

_TOP_LEVEL = {"schema": str, "fwedge_version": str, "created": str, "host": dict, "data": str,
              "samples": int, "repeats": int, "notes": list, "results": list}
# Keys every result entry must state, even as null: a gate must tell "measured nothing" (null)
# from a damaged file (the key is gone).
_REQUIRED_ENTRY_KEYS = ("bundle", "device", "status", "role", "samples", "accuracy", "fidelity", "latency",
                        "latency_ratio", "sizes")
_LATENCY_KEYS = ("p50_ms", "p95_ms", "mean_ms", "min_ms", "iterations")
ROLES = ("candidate", "baseline")
# Relative slack for the order min <= p50 <= p95 of latency figures rounded in JSON.
_ORDER_SLACK = 1e-9


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _number(where: str, value, low: float | None = None, high: float | None = None, *, above: bool = False,
            integer: bool = False) -> None:
    """Refuse anything but a finite number in [low, high] (or (low, high] with above=True)."""
    if integer and not _is_int(value):
        raise GateError(f"{where}: expected an integer, got {_show(value)}")
    if not _is_number(value):
        raise GateError(f"{where}: expected a number, got {_show(value)}")
    if not math.isfinite(as_float(value)):
        raise GateError(f"{where}: expected a finite number, got {_show(value)}")
    if low is not None and (value <= low if above else value < low):
        raise GateError(f"{where}: expected {'>' if above else '>='} {low:g}, got {_show(value)}")
    if high is not None and value > high:
        raise GateError(f"{where}: expected <= {high:g}, got {_show(value)}")


def as_float(value) -> float:
    """float(value), with an integer beyond the float range (JSON allows 10**400) as inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _short(value) -> str:
    """A short repr for an error message: hostile text stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show(value) -> str:
    """A value for an error message: its JSON-ish type and a short repr."""
    return f"{type(value).__name__} {_short(value)}"


def _text(where: str, value, *, optional: bool = False, non_empty: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise GateError(f"{where}: expected a string{' or null' if optional else ''}, got {_show(value)}")
    if non_empty and not value.strip():
        raise GateError(f"{where}: expected a non-empty string")


def _check_latency(where: str, latency) -> None:
    if not isinstance(latency, dict):
        raise GateError(f"{where}: expected an object with {', '.join(_LATENCY_KEYS)} or null, got {_show(latency)}")
    unknown = sorted(set(latency) - set(_LATENCY_KEYS))
    if unknown:
        raise GateError(f"{where}: unknown key(s) {', '.join(map(_short, unknown[:5]))}")
    for key in _LATENCY_KEYS:
        if key not in latency:
            raise GateError(f"{where}.{key}: missing")
        if key == "iterations":
            _number(f"{where}.{key}", latency[key], 1, integer=True)
        else:
            # A timer that reads zero or less measured nothing.
            _number(f"{where}.{key}", latency[key], 0.0, above=True)
    low, mid, high = (float(latency[key]) for key in ("min_ms", "p50_ms", "p95_ms"))
    if not low <= mid * (1 + _ORDER_SLACK) or not mid <= high * (1 + _ORDER_SLACK):
        raise GateError(f"{where}: expected min_ms <= p50_ms <= p95_ms, got {low:g}, {mid:g}, {high:g}")


_INSTRUCTION_COUNTS = ("per_inference", "low", "high", "low_total", "high_total")
_INSTRUCTION_TEXTS = ("emulator", "cpu", "counter")


def _check_instructions(where: str, value) -> None:
    keys = _INSTRUCTION_COUNTS + _INSTRUCTION_TEXTS
    if not isinstance(value, dict):
        raise GateError(f"{where}: expected an object with {', '.join(keys)} or null, got {_show(value)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise GateError(f"{where}: unknown key(s) {', '.join(map(_short, unknown[:5]))}")
    for key in keys:
        if key not in value:
            raise GateError(f"{where}.{key}: missing")
    for key in _INSTRUCTION_COUNTS:
        _number(f"{where}.{key}", value[key], 1 if key == "per_inference" else 0, MAX_INSTRUCTIONS, integer=True)
    for key in _INSTRUCTION_TEXTS:
        _text(f"{where}.{key}", value[key], non_empty=True)
        if len(value[key]) > 200:
            raise GateError(f"{where}.{key}: longer than 200 characters")
    low, high = value["low"], value["high"]
    if not 1 <= low < high:
        raise GateError(f"{where}: expected 1 <= low < high, got low {low}, high {high}")
    if value["high_total"] - value["low_total"] != value["per_inference"] * (high - low):
        raise GateError(f"{where}: per_inference {value['per_inference']} is not (high_total - low_total) / "
                        f"(high - low) = ({value['high_total']} - {value['low_total']}) / {high - low}")


# Fidelity figures besides top1_agreement are shown, not gated: each is a finite number in its
# range, null (NaN in memory), or the strict-JSON spelling of an infinity (an identical output's
# SQNR, a diverged output's error).
# reference_accuracy: the FP32 reference's own top-1 on the same labelled samples (the report's
# drop against float). map50: a detector's mAP@0.5 against the FP32 model's own boxes
# (fwedge.detection), gated like top-1 agreement. step, max_steps, far_fraction: the scored
# output's quantization step and its difference counted in it (fwedge.eval.Fidelity), null for a
# float output.
_FIDELITY_RANGES = {"cosine": (-1.0 - 1e-6, 1.0 + 1e-6), "max_abs_error": (0.0, None), "sqnr_db": (None, None),
                    "reference_accuracy": (0.0, 1.0), "map50": (0.0, 1.0), "step": (0.0, None),
                    "max_steps": (0.0, None), "far_fraction": (0.0, 1.0)}


def _check_fidelity(where: str, fidelity) -> None:
    if not isinstance(fidelity, dict):
        raise GateError(f"{where}: expected an object or null, got {_show(fidelity)}")
    unknown = sorted(set(fidelity) - {"top1_agreement", "samples", *_FIDELITY_RANGES})
    if unknown:
        raise GateError(f"{where}: unknown key(s) {', '.join(map(_short, unknown[:5]))}")
    if "top1_agreement" not in fidelity:
        raise GateError(f"{where}.top1_agreement: missing")
    _number(f"{where}.top1_agreement", fidelity["top1_agreement"], 0.0, 1.0)
    if "samples" in fidelity:
        _number(f"{where}.samples", fidelity["samples"], 0, integer=True)
    for key, (low, high) in _FIDELITY_RANGES.items():
        value = fidelity.get(key)
        if value is None:
            continue
        if value in ("inf", "-inf"):
            if (low is not None and value == "-inf") or (high is not None and value == "inf"):
                raise GateError(f"{where}.{key}: {value!r} is out of range")
            continue
        _number(f"{where}.{key}", value, low, high)


def _check_entry(where: str, entry, known: set[str]) -> None:
    """One DeviceResult as read from JSON (or DeviceResult.to_dict()); see validate_results."""
    if not isinstance(entry, dict):
        raise GateError(f"{where}: expected an object, got {_show(entry)}")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise GateError(f"{where}: unknown key(s) {', '.join(map(_short, unknown[:5]))}")
    for key in _REQUIRED_ENTRY_KEYS:
        if key not in entry:
            raise GateError(f"{where}: key {key!r} is missing")
    _text(f"{where}.bundle", entry["bundle"], non_empty=True)
    _text(f"{where}.device", entry["device"], non_empty=True)
    where = f"{where} ({_short(entry['bundle'])} on {_short(entry['device'])})"
    if entry["status"] not in (OK, ERROR):
        raise GateError(f"{where}: status must be {OK!r} or {ERROR!r}, got {_show(entry['status'])}")
    if entry["role"] not in ROLES:
        raise GateError(f"{where}: role must be one of {', '.join(map(repr, ROLES))}, got {_show(entry['role'])}")
    for key in ("target", "arch", "precision", "device_kind", "bundle_path"):
        if key in entry:
            _text(f"{where}.{key}", entry[key])
    for key in ("baseline_bundle", "reference", "error", "stderr_tail"):
        if key in entry:
            _text(f"{where}.{key}", entry[key], optional=True)
    if entry["status"] == ERROR and not entry.get("error"):
        raise GateError(f"{where}: status 'error' without an error message")
    _number(f"{where}.samples", entry["samples"], 0, integer=True)
    if "attempts" in entry:
        _number(f"{where}.attempts", entry["attempts"], 0, integer=True)
    if "wall_seconds" in entry:
        _number(f"{where}.wall_seconds", entry["wall_seconds"], 0.0)
    if entry["accuracy"] is not None:
        _number(f"{where}.accuracy", entry["accuracy"], 0.0, 1.0)
    if entry["fidelity"] is not None:
        _check_fidelity(f"{where}.fidelity", entry["fidelity"])
    if entry["latency"] is not None:
        _check_latency(f"{where}.latency", entry["latency"])
    if entry["latency_ratio"] is not None:
        _number(f"{where}.latency_ratio", entry["latency_ratio"], 0.0, above=True)
    if "task" in entry and entry["task"] not in TASKS:
        raise GateError(f"{where}.task: expected one of {', '.join(map(repr, TASKS))}, got {_show(entry['task'])}")
    if "performance" in entry and entry["performance"] not in PERFORMANCE_METRICS:
        raise GateError(f"{where}.performance: expected one of {', '.join(map(repr, PERFORMANCE_METRICS))}, "
                        f"got {_show(entry['performance'])}")
    if entry.get("instructions") is not None:
        _check_instructions(f"{where}.instructions", entry["instructions"])
    if entry.get("baseline_instructions") is not None:
        _number(f"{where}.baseline_instructions", entry["baseline_instructions"], 1, MAX_INSTRUCTIONS, integer=True)
    if not isinstance(entry["sizes"], dict):
        raise GateError(f"{where}.sizes: expected an object, got {_show(entry['sizes'])}")
    for key, value in entry["sizes"].items():
        _number(f"{where}.sizes.{key}", value, 0.0)
    if "identity" in entry and not isinstance(entry["identity"], dict):
        raise GateError(f"{where}.identity: expected an object, got {_show(entry['identity'])}")


def validate_results(data, source: str = "results") -> Results:
    """Check a results document against schema fwedge.results/1 and build Results from it.

    The schema, strictly: the top-level keys written by Results.to_dict(), each of its type; a
    list of result objects with no unknown key; in each, bundle and device non-empty strings,
    status "ok"/"error", role "candidate"/"baseline", and the gated figures present (null where
    nothing was measured): accuracy and fidelity.top1_agreement finite in [0, 1], latency
    figures finite and > 0 with min <= p50 <= p95 and at least one iteration, latency_ratio
    finite and > 0, sizes finite and >= 0. The keys of schema 1's later additions may be absent:
    performance ("instructions" or "latency"), instructions (null, or whole counts in
    [0, 2**62] with per_inference >= 1 equal to the totals' difference over high - low, and
    non-empty emulator, cpu and counter), baseline_instructions (null or a whole count >= 1).
    No (bundle, device, role) appears twice.

    Args:
        data: the parsed JSON (or Results.to_dict()).
        source: names the file in messages.

    Returns:
        Results.

    Raises:
        GateError: the first violation, naming the entry and the key.
    """
    if not isinstance(data, dict):
        raise GateError(f"{source}: expected a JSON object with schema {RESULTS_SCHEMA!r}, got {_show(data)}")
    if data.get("schema") != RESULTS_SCHEMA:
        raise GateError(f"{source}: schema {_short(data.get('schema'))}, expected {RESULTS_SCHEMA!r}")
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise GateError(f"{source}: unknown top-level key(s) {', '.join(map(_short, unknown[:5]))}")
    for key, kind in _TOP_LEVEL.items():
        if key not in data:
            raise GateError(f"{source}: top-level key {key!r} is missing")
        if kind is int:
            _number(f"{source}: {key}", data[key], 0, integer=True)
        elif not isinstance(data[key], kind):
            expected = {dict: "an object", list: "an array", str: "a string"}[kind]
            raise GateError(f"{source}: {key} must be {expected}, got {_show(data[key])}")
    if not all(isinstance(note, str) for note in data["notes"]):
        raise GateError(f"{source}: notes must be a list of strings")
    known = {item.name for item in dataclasses.fields(DeviceResult)}
    seen: set[tuple[str, str, str]] = set()
    for index, entry in enumerate(data["results"]):
        _check_entry(f"{source}: results[{index}]", entry, known)
        key = (entry["bundle"], entry["device"], entry["role"])
        if key in seen:
            # Two verdicts for one pair: which one counts is a guess, so neither does.
            raise GateError(f"{source}: results[{index}]: {_short(key[0])} on {_short(key[1])} ({key[2]}) is listed "
                            "twice")
        seen.add(key)
    try:
        return Results(
            results=[DeviceResult.from_dict(item) for item in data["results"]],
            data=data["data"], samples=int(data["samples"]), repeats=int(data["repeats"]), created=data["created"],
            host=data["host"], notes=list(data["notes"]), fwedge_version=data["fwedge_version"])
    except (KeyError, TypeError, ValueError) as exc:  # pragma: no cover - the checks above cover these
        raise GateError(f"{source}: malformed result entry ({exc})") from exc


def check_results(results: Results, source: str = "results") -> None:
    """Validate Results built in memory against the same schema as a file (see validate_results).

    Raises:
        GateError: the first violation.
    """
    data = results.to_dict()
    for entry in data["results"]:
        if isinstance(entry.get("fidelity"), dict):
            # In memory an identical output's SQNR is float inf; in the file it is "inf".
            entry["fidelity"] = {key: value if key == "top1_agreement" else _finite(value)
                                 for key, value in entry["fidelity"].items()}
    validate_results(data, source)


def parse_json_strictly(raw: bytes, what: str) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity literals, no repeated keys, bounded nesting.

    Raises:
        GateError: anything else, in one line.
    """
    try:
        return strict_json.loads(raw)
    except RecursionError as exc:
        raise GateError(f"{what}: JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the int digit limit
        raise GateError(f"{what}: not valid JSON ({str(exc).splitlines()[0][:200]})") from exc


def read_json_file(path: str | os.PathLike, what: str) -> object:
    """Read a small JSON file strictly (see parse_json_strictly); size checked before reading.

    Raises:
        GateError: missing, not a regular file, too large, unreadable or not strict JSON.
    """
    path = Path(path)
    label = f"{what} '{path}'"
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:
        raise GateError(f"{label}: not found") from exc
    if not stat.S_ISREG(info.st_mode):
        raise GateError(f"{label}: not a regular file")
    if info.st_size > MAX_RESULTS_BYTES:
        raise GateError(f"{label}: {info.st_size} bytes, more than the {MAX_RESULTS_BYTES} a results file may have")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RESULTS_BYTES + 1)
    except OSError as exc:
        raise GateError(f"{label}: cannot read ({exc.strerror or exc})") from exc
    if len(raw) > MAX_RESULTS_BYTES:
        raise GateError(f"{label}: more than the {MAX_RESULTS_BYTES} bytes a results file may have")
    return parse_json_strictly(raw, label)


def load_results(path: str | os.PathLike, what: str = "results") -> Results:
    """Read a results (or baseline) JSON file and validate it (see validate_results).

    Raises:
        GateError: the file is missing, not strict JSON, of another schema, or fails validation.
    """
    return validate_results(read_json_file(path, what), f"{what} '{Path(path)}'")

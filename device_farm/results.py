"""Farm results: one DeviceResult per (bundle, device), saved as JSON with schema fwedge.results/1."""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fwedge import __version__
from fwedge.errors import GateError

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
    """

    outputs: dict[str, np.ndarray]
    latencies_ms: list[float]
    stderr: str = ""
    identity: dict = field(default_factory=dict)


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
        fidelity: Fidelity.to_dict() against the FP32 reference, None without a reference.
        latency: Latency of one inference on the device's clock.
        latency_ratio: candidate p50 / baseline p50 measured interleaved (A B A B) in the same
            job on the same device; None when no baseline bundle was run.
        sizes: the bundle's size figures (file_bytes, rom_bytes, ram_bytes, ...).
        identity: device and toolchain identity.
        error: a one-line reason when status is "error".
        stderr_tail: the end of the device's stderr when it failed.
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
    sizes: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    reference: str | None = None
    attempts: int = 1
    wall_seconds: float = 0.0
    error: str | None = None
    stderr_tail: str | None = None

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


def load_results(path: str | os.PathLike, what: str = "results") -> Results:
    """Read a results (or baseline) JSON file.

    Raises:
        GateError: the file is missing, not JSON, of another schema, or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{what} '{path}': not found")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise GateError(f"{what} '{path}': not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise GateError(f"{what} '{path}': schema {got!r}, expected {RESULTS_SCHEMA!r}")
    try:
        return Results(
            results=[DeviceResult.from_dict(item) for item in data["results"]],
            data=data.get("data", ""),
            samples=data.get("samples", 0),
            repeats=data.get("repeats", 0),
            created=data.get("created", ""),
            host=data.get("host", {}),
            notes=list(data.get("notes", [])),
            fwedge_version=data.get("fwedge_version", ""),
        )
    except (KeyError, TypeError) as exc:
        raise GateError(f"{what} '{path}': malformed result entry ({exc})") from exc

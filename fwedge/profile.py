"""Per-layer time of a bundle on a device, in the bundle's own runtime (`fwedge profile`), and its JSON.

How each runtime is profiled, and what its layer sum is compared with:

- C: the -DFW_PROFILE rebuild of the bundle's sources (fwedge.targets.c_profile) times every step
  of fwedge_run with the monotonic clock. Each timed iteration runs the sample twice in the same
  process, once plain and once profiled, so the layer sum is compared with the plain runs next
  to it; the bundle's own binary is timed the ordinary way (device.run) as well.
- onnx: onnxruntime's SessionOptions.enable_profiling; its trace's Node events ("<node>_kernel_time",
  microseconds) per node of the optimized graph, and its "model_run" events as the runtime's own
  whole-run time in the same runs.
- openvino: the PERF_COUNT property; each infer request's get_profiling_info(), executed layers
  only (fused and constant-folded ones report NOT_RUN or OPTIMIZED_OUT), summed over the runs,
  against the wall time of the same infer calls.
- tflite, ncnn: their Python modules expose no per-op profiler (LiteRT's Interpreter profiles
  only inside its C++ benchmark tool; ncnn's per-layer timer is the NCNN_BENCHMARK build option
  of its C++ library), so the profile says so and holds the whole-model time only.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fwedge.bundle import Bundle
from fwedge.errors import DataError, DeviceError
from fwedge.ir import write_atomic
from fwedge.strict_json import loads

PROFILE_SCHEMA = "fwedge.profile/1"
MAX_PROFILE_FILE_BYTES = 64 * 1024 * 1024
MAX_PROFILES = 1024
MAX_LAYERS = 100_000  # over all profiles of one file
MAX_TEXT = 4096  # characters of a name, kind or note
NO_OP_PROFILER = {
    "tflite": "LiteRT's Python Interpreter exposes no per-op profiler (its op profiler is in the C++ "
              "benchmark_model tool only): whole-model time around invoke() only, no per-layer numbers",
    "ncnn": "ncnn's Python module exposes no per-layer timer (its benchmark hook is the NCNN_BENCHMARK "
            "option of the C++ library build): whole-model time only, no per-layer numbers",
}


@dataclass
class Layer:
    """One layer's time per run (the mean over the faster half of the profiled runs, see
    faster_half) and its share of the layer sum."""

    name: str
    kind: str
    macs: int | None
    time_ms: float
    percent: float = 0.0


@dataclass
class BundleProfile:
    """The per-layer profile of one bundle on one device.

    Attributes:
        method: how the layers were timed (one line).
        runs: profiled runs; the layer times are the mean of the faster half of them.
        layers: in execution order; empty when the runtime has no per-layer profiler (note says so).
        layer_sum_ms: sum of the layers' times.
        total_ms: the whole run measured in the same runs as the layers (total_what says how), mean
            of the same faster half.
        ordinary_p50_ms: the bundle timed the ordinary way (as `fwedge bench`: its own binary or
            runtime, no profiling), median.
        plain_ms: C only: the profiling build with its clock off, each such run right before a
            profiled one in the same process (the pairs of the faster half by their sum): the
            ordinary time without a second process.
        note: why there are no layers, or what to know about the figures.
    """

    bundle: str
    device: str
    target: str
    arch: str
    method: str
    runs: int
    layers: list[Layer] = field(default_factory=list)
    layer_sum_ms: float | None = None
    total_ms: float | None = None
    total_what: str = ""
    ordinary_p50_ms: float | None = None
    plain_ms: float | None = None
    note: str = ""

    def finish(self) -> "BundleProfile":
        """Fill layer_sum_ms and each layer's percent from the layer times."""
        if self.layers:
            self.layer_sum_ms = float(sum(layer.time_ms for layer in self.layers))
            for layer in self.layers:
                layer.percent = 100.0 * layer.time_ms / self.layer_sum_ms if self.layer_sum_ms > 0 else 0.0
        return self

    @property
    def sum_over_total(self) -> float | None:
        return _ratio(self.layer_sum_ms, self.total_ms)

    @property
    def sum_over_ordinary(self) -> float | None:
        return _ratio(self.layer_sum_ms, self.ordinary_p50_ms)

    @property
    def sum_over_plain(self) -> float | None:
        return _ratio(self.layer_sum_ms, self.plain_ms)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sum_over_total"] = self.sum_over_total
        data["sum_over_ordinary_p50"] = self.sum_over_ordinary
        data["sum_over_plain"] = self.sum_over_plain
        return data


def faster_half(totals) -> np.ndarray:
    """Indices of the runs whose whole time is at most the median of `totals`.

    Layer times are means over these runs and compared with the same statistic of whole runs:
    on a shared host a run is interrupted now and then (a 2-core machine under load interrupts
    most runs of a few ms somewhere), which lengthens one layer of that run. A mean over all
    runs lets one such run dominate; a per-layer median drops the interruptions from every
    layer, so the layer medians add up to less than a typical run (measured: 57% under
    qemu-aarch64). Means over whole runs picked by their total keep the sum of the layers equal
    to the runs they come from, and drop the worst interrupted ones.
    """
    values = np.asarray(totals, dtype=np.float64)
    return np.flatnonzero(values <= np.median(values)) if values.size else np.zeros(0, dtype=np.int64)


def half_mean(totals) -> float | None:
    """The mean of the faster half of `totals` (faster_half)."""
    values = np.asarray(totals, dtype=np.float64)
    return float(values[faster_half(values)].mean()) if values.size else None


def half_layers(tables: list[dict[str, float]], totals: list[float]) -> dict[str, float]:
    """Layer -> its mean time over the faster half of the runs (by `totals`), from one table of
    layer -> time per run; a layer that a run did not list counts 0 there. Layers keep the order
    in which the runs first list them (execution order)."""
    kept = faster_half(totals)
    names = list(dict.fromkeys(name for table in tables for name in table))
    return {name: float(np.mean([tables[i].get(name, 0.0) for i in kept])) if len(kept) else 0.0 for name in names}


def _ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


# --------------------------------------------------------------------------------------------
# Profilers, one per runtime
# --------------------------------------------------------------------------------------------


def profile_c(bundle: Bundle, device, feeds: dict[str, np.ndarray], repeats: int) -> BundleProfile:
    """Profile a C bundle with its -DFW_PROFILE rebuild on `device` (the host or a qemu board)."""
    from fwedge.targets.c_profile import PROFILE_DEFINE, parse_profile, rebuild, step_facts

    names, kinds, macs = step_facts(bundle)
    with tempfile.TemporaryDirectory(prefix="fwedge-profile-") as temp:
        binary = rebuild(bundle, Path(temp), (PROFILE_DEFINE,))
        run = device.run_build(bundle, binary, feeds, repeats)
    times = parse_profile(run.stdout, len(names))
    # Each plain run and the profiled run right after it form a pair; the pairs are picked by
    # their sum, so both figures come from the same stretches of time on the device.
    plain, profiled = np.asarray(times.plain_ms), np.asarray(times.profiled_ms)
    kept = faster_half(plain + profiled)
    step_ms = np.maximum(times.step_ns[kept].mean(axis=0) - times.clock_ns, 0.0) / 1e6
    # MACs as the lowered graph counts them (op_macs: 0 for ops without weights, shown as none)
    layers = [Layer(name, kind, count or None, float(ms))
              for name, kind, count, ms in zip(names, kinds, macs, step_ms)]
    return BundleProfile(
        bundle=bundle.name, device=device.name, target=bundle.target, arch=bundle.arch,
        method=f"-DFW_PROFILE build: clock_gettime(CLOCK_MONOTONIC) after each of the {len(names)} steps of "
               f"fwedge_run, less one clock read ({times.clock_ns} ns)",
        runs=times.runs, layers=layers, total_ms=float(profiled[kept].mean()),
        total_what="the same runs' whole time (the harness's clock around fwedge_run)",
        plain_ms=float(plain[kept].mean()),
        note="emulated: qemu wall time" if device.performance() == "instructions" else "",
    ).finish()


def _onnx_macs(path: Path) -> dict[str, int]:
    """ONNX node name -> MACs (fwedge.op_info.node_macs) of the bundle's model, where known."""
    import onnx

    from fwedge.op_info import node_macs

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        # batch 1, as the profile runs (a dynamic batch dimension is the usual export)
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 1 if i == 0 else None
                              for i, d in enumerate(dims)]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    found = {}
    for node in model.graph.node:
        count = node_macs(node, shapes)
        if count is not None and node.name:
            found[node.name] = count
    return found


# Suffixes the runtimes add to the source node's name: onnxruntime's fused QDQ nodes
# ("<node>_token_51"), OpenVINO's convolution without its bias add ("<node>/WithoutBiases").
_RUNTIME_SUFFIX = re.compile(r"(_token_\d+|/WithoutBiases)$")


def source_name(name: str) -> str:
    """The source ONNX node's name behind a runtime's layer name, where its suffix is known."""
    return _RUNTIME_SUFFIX.sub("", name)


def profile_onnx(bundle: Bundle, device, feeds: dict[str, np.ndarray], repeats: int) -> BundleProfile:
    """Profile an onnx bundle with onnxruntime's enable_profiling, in this process."""
    import onnxruntime as ort

    from fwedge.targets.common import runtime_threads
    from fwedge.targets.onnx import MODEL_FILE

    with tempfile.TemporaryDirectory(prefix="fwedge-ort-profile-") as temp:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(temp) / "ort")
        if runtime_threads():
            options.intra_op_num_threads = runtime_threads()
        session = ort.InferenceSession(str(bundle.file(MODEL_FILE)), options, providers=["CPUExecutionProvider"])
        warmup = 2
        for _ in range(warmup + repeats):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warmup:]
    starts = [run["ts"] for run in runs]
    tables: list[dict[str, float]] = [{} for _ in runs]
    kinds: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e.get("ts", 0)):
        name = str(event.get("name", ""))
        index = bisect.bisect_right(starts, event.get("ts", 0)) - 1  # the model_run it falls in
        if event.get("cat") != "Node" or not name.endswith("_kernel_time") or index < 0:
            continue
        node = source_name(name[: -len("_kernel_time")])
        tables[index][node] = tables[index].get(node, 0.0) + float(event.get("dur", 0)) / 1000  # microseconds
        kinds[node] = str(event.get("args", {}).get("op_name", ""))
    macs = _onnx_macs(bundle.file(MODEL_FILE))
    totals = [run["dur"] / 1000 for run in runs]
    layers = [Layer(node, kinds[node], macs.get(node), ms) for node, ms in half_layers(tables, totals).items()]
    return BundleProfile(
        bundle=bundle.name, device=device.name, target=bundle.target, arch=bundle.arch,
        method=f"onnxruntime {ort.__version__} enable_profiling: Node kernel_time events of the optimized graph",
        runs=len(runs), layers=layers, total_ms=half_mean(totals),
        total_what="onnxruntime's own model_run events of the same runs",
        note="the profiler's per-node bookkeeping (memory and thread statistics) runs between the kernels: "
             "profiled runs take longer than ordinary ones; fused nodes carry the names onnxruntime gave them",
    ).finish()


def profile_openvino(bundle: Bundle, device, feeds: dict[str, np.ndarray], repeats: int) -> BundleProfile:
    """Profile an OpenVINO bundle with PERF_COUNT, in this process."""
    import openvino as ov

    from fwedge.targets.common import runtime_threads
    from fwedge.targets.openvino import BIN_FILE, XML_FILE

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    if runtime_threads():
        config["INFERENCE_NUM_THREADS"] = runtime_threads()
    compiled = core.compile_model(core.read_model(str(bundle.file(XML_FILE)), str(bundle.file(BIN_FILE))), "CPU", config)
    request = compiled.create_infer_request()
    inputs = {spec.name: np.ascontiguousarray(feeds[spec.name]) for spec in bundle.inputs}
    warmup = 2
    for _ in range(warmup):
        request.infer(inputs)
    # The CPU plugin reports each layer's mean real_time over every inference of the request so
    # far (checked: five runs in a row report the same microseconds, and the figures decay from
    # the cold first run like a running mean), so the timed runs' mean is taken from the running
    # totals after the warm-up and after the timed runs.
    before, _, _ = _openvino_layers(request, warmup)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        request.infer(inputs)
        walls.append((time.perf_counter_ns() - start) / 1e6)
    after, kinds, skipped = _openvino_layers(request, warmup + repeats)
    layers = [Layer(name, kinds[name], None, max(0.0, (total - before.get(name, 0.0)) / repeats))
              for name, total in after.items()]
    return BundleProfile(
        bundle=bundle.name, device=device.name, target=bundle.target, arch=bundle.arch,
        method=f"OpenVINO {ov.get_version()} PERF_COUNT: get_profiling_info() real_time of executed layers",
        runs=repeats, layers=layers, total_ms=float(np.mean(walls)),
        total_what="the mean wall time of the same infer() calls (OpenVINO gives means over the runs only)",
        note=f"{len(skipped)} layers fused or folded away (not executed) are left out; the layers are the "
             "compiled CPU graph's, named after the IR nodes they came from; the CPU plugin counts each layer's "
             "time per run in whole microseconds, so layers of a few microseconds are undercounted and the sum "
             "falls short of infer() on a small model",
    ).finish()


def _openvino_layers(request, count: int) -> tuple[dict[str, float], dict[str, str], set[str]]:
    """Executed layer -> real_time summed over `count` inferences (the plugin's running mean x
    count), layer -> kind, and the layers it did not execute (fused, folded away)."""
    totals: dict[str, float] = {}
    kinds: dict[str, str] = {}
    skipped = set()
    for info in request.profiling_info:
        status = str(info.status)
        if status.endswith("EXECUTED") and not status.endswith("NOT_EXECUTED"):
            node = source_name(info.node_name)
            totals[node] = totals.get(node, 0.0) + info.real_time.total_seconds() * 1000 * count
            kinds[node] = f"{info.node_type} ({info.exec_type})"
        else:
            skipped.add(info.node_name)
    return totals, kinds, skipped


def no_profiler(bundle: Bundle, device, feeds: dict[str, np.ndarray], repeats: int) -> BundleProfile:
    """A runtime with no per-layer profiler: the profile holds its note and the ordinary time only."""
    return BundleProfile(bundle=bundle.name, device=device.name, target=bundle.target, arch=bundle.arch,
                         method="none", runs=0, note=NO_OP_PROFILER[bundle.target])


PROFILERS = {"c": profile_c, "onnx": profile_onnx, "openvino": profile_openvino, "tflite": no_profiler,
             "ncnn": no_profiler}


def profile_bundle(bundle: Bundle, device, feeds: dict[str, np.ndarray], repeats: int, warmup: int = 5) -> BundleProfile:
    """The per-layer profile of `bundle` on `device`, and its ordinary p50 (device.run, as bench).

    Raises:
        DeviceError: no profiler for this target on this device, or a run failed.
    """
    profiler = PROFILERS.get(bundle.target)
    if profiler is None:
        raise DeviceError(f"bundle '{bundle.name}': no profiler for target {bundle.target!r}")
    if bundle.target != "c" and device.kind != "local":
        raise DeviceError(f"bundle '{bundle.name}': {bundle.target} bundles are profiled on the host only, "
                          f"not on {device.name!r} ({device.kind})")
    with device.hold():
        # the ordinary runs before and after the profiled ones: a machine that slows down or
        # speeds up during the profile moves both halves
        half = max(1, repeats // 2)
        ordinary = device.run(bundle, feeds, warmup + half).latencies_ms[warmup:]
        profile = profiler(bundle, device, feeds, repeats)
        ordinary += device.run(bundle, feeds, warmup + half).latencies_ms[warmup:]
    profile.ordinary_p50_ms = float(np.percentile(ordinary, 50)) if ordinary else None
    return profile


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def write_profiles(path: str | os.PathLike, profiles: list[BundleProfile]) -> Path:
    """Write profiles as fwedge.profile/1 JSON, atomically."""
    return write_atomic(path, json.dumps(profiles_payload(profiles), indent=2) + "\n")


def profiles_payload(profiles: list[BundleProfile]) -> dict:
    return {"schema": PROFILE_SCHEMA, "profiles": [profile.to_dict() for profile in profiles]}


_TEXT_KEYS = ("bundle", "device", "target", "arch", "method", "total_what", "note")
_NUMBER_KEYS = ("layer_sum_ms", "total_ms", "ordinary_p50_ms", "plain_ms", "sum_over_total",
                "sum_over_ordinary_p50", "sum_over_plain")


def _text(value, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise DataError(f"{where}: expected a string of at most {MAX_TEXT} characters, got {_show(value)}")
    return value


def _number(value, where: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(f"{where}: expected a finite number >= 0{' or null' if optional else ''}, got {_show(value)}")
    return float(value)


def _show(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text[:60]


def _layer(raw, where: str) -> Layer:
    if not isinstance(raw, dict) or set(raw) != {"name", "kind", "macs", "time_ms", "percent"}:
        raise DataError(f"{where}: expected an object with name, kind, macs, time_ms and percent")
    macs = raw["macs"]
    if macs is not None and (isinstance(macs, bool) or not isinstance(macs, int) or not 0 <= macs < 2 ** 63):
        raise DataError(f"{where}: macs must be an integer >= 0 or null, got {_show(macs)}")
    return Layer(_text(raw["name"], f"{where}: name"), _text(raw["kind"], f"{where}: kind"), macs,
                 _number(raw["time_ms"], f"{where}: time_ms", False), _number(raw["percent"], f"{where}: percent", False))


def _profile(raw, where: str, budget: list[int]) -> BundleProfile:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {_show(raw)}")
    expected = {*_TEXT_KEYS, *_NUMBER_KEYS, "runs", "layers"}
    if set(raw) != expected:
        raise DataError(f"{where}: expected the keys {sorted(expected)}, got {sorted(str(k)[:40] for k in raw)[:20]}")
    runs = raw["runs"]
    if isinstance(runs, bool) or not isinstance(runs, int) or not 0 <= runs <= 10 ** 9:
        raise DataError(f"{where}: runs must be an integer in [0, 1e9], got {_show(runs)}")
    layers = raw["layers"]
    if not isinstance(layers, list):
        raise DataError(f"{where}: layers must be a list, got {_show(layers)}")
    budget[0] -= len(layers)
    if budget[0] < 0:
        raise DataError(f"{where}: more than {MAX_LAYERS} layers in the file")
    texts = {key: _text(raw[key], f"{where}: {key}") for key in _TEXT_KEYS}
    numbers = {key: _number(raw[key], f"{where}: {key}") for key in _NUMBER_KEYS}
    parsed = [_layer(layer, f"{where}: layers[{index}]") for index, layer in enumerate(layers)]
    return BundleProfile(**texts, runs=runs, layers=parsed, layer_sum_ms=numbers["layer_sum_ms"],
                         total_ms=numbers["total_ms"], ordinary_p50_ms=numbers["ordinary_p50_ms"],
                         plain_ms=numbers["plain_ms"])


def load_profiles(path: str | os.PathLike) -> list[BundleProfile]:
    """Read and strictly check a fwedge.profile/1 file (`fwedge profile --json`).

    Raises:
        DataError: unreadable, too large, not strict JSON, another schema, or any field of the
            wrong type or range (the message names it).
    """
    where = f"profile '{path}'"
    try:
        size = os.path.getsize(path)
        if size > MAX_PROFILE_FILE_BYTES:
            raise DataError(f"{where}: {size:,} bytes, at most {MAX_PROFILE_FILE_BYTES:,} allowed")
        data = loads(Path(path).read_bytes())
    except OSError as exc:
        raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:200] if str(exc) else 'too deep'})") from exc
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{where}: schema {_show(got)}, expected {PROFILE_SCHEMA!r} (`fwedge profile --json` output)")
    if set(data) != {"schema", "profiles"} or not isinstance(data["profiles"], list):
        raise DataError(f"{where}: expected the keys schema and profiles (a list)")
    if len(data["profiles"]) > MAX_PROFILES:
        raise DataError(f"{where}: {len(data['profiles'])} profiles, at most {MAX_PROFILES} allowed")
    budget = [MAX_LAYERS]
    return [_profile(raw, f"{where}: profiles[{index}]", budget) for index, raw in enumerate(data["profiles"])]

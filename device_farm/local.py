"""The local device: the host, running bundles with every runtime installed in this Python."""
from __future__ import annotations

import importlib.util
import logging
import platform
import time
from dataclasses import dataclass, field

import numpy as np

from fwedge.bundle import Bundle, host_arch
from fwedge.device_farm import harness
from fwedge.device_farm.device import Device, DeviceRunError, device_kind
from fwedge.device_farm.results import DeviceRun

log = logging.getLogger(__name__)

# target -> Python modules that can run it on the host (any one is enough).
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "openvino": ("openvino",),
    "tflite": ("ai_edge_litert", "tflite_runtime"),
    "ncnn": ("ncnn",),
}
HOST_BATCH = 256
WARMUP_RUNS = 2


def installed_runtimes() -> list[str]:
    """Targets whose runtime module is importable here, plus "c" (native harness binaries)."""
    found = [target for target, modules in RUNTIME_MODULES.items()
             if any(importlib.util.find_spec(module) is not None for module in modules)]
    return found + ["c"]


@device_kind("local")
@dataclass
class LocalDevice(Device):
    """The host. Runs host-runtime bundles through their target's `run(bundle, feeds)`
    in a child interpreter (device_farm.host_child), and C bundles built for the host
    architecture natively.

    Attributes:
        runtimes: targets this device runs; empty means every runtime installed in Python.
        run_timeout: seconds for one C harness run or one host-runtime child.
    """

    runtimes: list[str] = field(default_factory=list)
    run_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.runtimes:
            self.runtimes = installed_runtimes()

    def why_not(self, bundle: Bundle) -> str | None:
        if bundle.target not in self.runtimes:
            return f"no {bundle.target} runtime on {self.name} (has {', '.join(self.runtimes)})"
        if bundle.target == "c" and bundle.arch != host_arch():
            return f"C bundle for {bundle.arch}; {self.name} is {host_arch()}"
        from fwedge.targets import TARGET_MODULES

        if bundle.target != "c" and importlib.util.find_spec(TARGET_MODULES.get(bundle.target, "-")) is None:
            return f"target module for {bundle.target!r} is not installed"
        return None

    def bundle_kinds(self) -> list[str]:
        return [f"c-{host_arch()}" if runtime == "c" else runtime for runtime in self.runtimes]

    def identity(self) -> dict:
        versions = {}
        for target, modules in RUNTIME_MODULES.items():
            if target in self.runtimes:
                for module in modules:
                    version = _module_version(module)
                    if version:
                        versions[module] = version
                        break
        return {"kind": self.kind, "name": self.name, "arch": host_arch(),
                "platform": platform.platform(), "runtimes": versions}

    def run(self, bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        reason = self.why_not(bundle)
        if reason:
            raise DeviceRunError(f"device {self.name!r} cannot run bundle '{bundle.name}': {reason}")
        if bundle.target == "c":
            return harness.run_native(bundle, inputs, repeats, timeout=self.run_timeout,
                                      what=f"C harness of '{bundle.name}' on {self.name}")
        from fwedge.device_farm.host_child import run_isolated

        # In a child interpreter, as the C harness is run: a runtime that crashes on a hostile
        # bundle then costs one error result, not the farm run and its results file.
        return run_isolated(bundle, inputs, repeats, timeout=self.run_timeout,
                            what=f"{bundle.target} runtime of '{bundle.name}' on {self.name}")


def _module_version(module: str) -> str | None:
    from importlib import metadata

    names = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
    try:
        return metadata.version(names.get(module, module))
    except metadata.PackageNotFoundError:
        return None


def _static_batch(bundle: Bundle) -> int | None:
    first = bundle.inputs[0].shape[0] if bundle.inputs and bundle.inputs[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def as_output_dict(bundle: Bundle, outputs) -> dict[str, np.ndarray]:
    """A target's run() result (a dict, or a list in manifest output order) as a dict by name."""
    if isinstance(outputs, dict):
        return {name: np.asarray(value) for name, value in outputs.items()}
    names = [info.name for info in bundle.outputs]
    return {name: np.asarray(value) for name, value in zip(names, outputs)}


def run_host_runtime(bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
    """Run a host-runtime bundle with its target's `run(bundle, feeds)`.

    All rows go through in batches (the static batch of the bundle, else HOST_BATCH). Latency
    is `repeats` single-sample calls timed with perf_counter_ns after WARMUP_RUNS untimed ones;
    targets cache their compiled runtime per bundle (targets.common.RunnerCache), so the
    warm-up absorbs loading and the timed calls measure inference plus the Python call.

    Raises:
        DeviceRunError: the target module raised.
    """
    from fwedge.targets import get_target

    target = get_target(bundle.target)
    try:
        call = lambda feeds: target.run(bundle, feeds)  # noqa: E731
        count = len(next(iter(inputs.values())))
        step = _static_batch(bundle) or HOST_BATCH
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, step):
            feeds = {name: value[start:start + step] for name, value in inputs.items()}
            rows = len(next(iter(feeds.values())))
            if rows < step and _static_batch(bundle):
                # A static batch: pad the last chunk with copies of its first row, drop them after.
                feeds = {name: np.concatenate([value, np.repeat(value[:1], step - rows, axis=0)])
                         for name, value in feeds.items()}
            for name, value in as_output_dict(bundle, call(feeds)).items():
                chunks.setdefault(name, []).append(value[:rows])
        outputs = {name: np.concatenate(parts) for name, parts in chunks.items()}
        one = {name: value[:1] for name, value in inputs.items()}
        if _static_batch(bundle) and _static_batch(bundle) > 1:
            one = {name: np.repeat(value[:1], _static_batch(bundle), axis=0) for name, value in inputs.items()}
        for _ in range(WARMUP_RUNS):
            call(one)
        latencies = []
        for _ in range(repeats):
            start_ns = time.perf_counter_ns()
            call(one)
            latencies.append((time.perf_counter_ns() - start_ns) / 1e6)
    except DeviceRunError:
        raise
    except Exception as exc:  # a runtime's own exception types: record, don't crash the farm
        raise DeviceRunError(f"{bundle.target} runtime failed on bundle '{bundle.name}': "
                             f"{type(exc).__name__}: {exc}") from exc
    identity = {"timer": "perf_counter_ns around the target's run()"}
    return DeviceRun(outputs=outputs, latencies_ms=latencies, identity=identity)

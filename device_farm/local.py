"""The local device: the host, running bundles with every runtime installed in this Python."""
from __future__ import annotations

import importlib.util
import logging
import platform
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
            return self.run_build(bundle, None, inputs, repeats)
        from fwedge.device_farm.host_child import run_isolated

        # In a child interpreter, as the C harness is run: a runtime that crashes on a hostile
        # bundle then costs one error result, not the farm run and its results file.
        return run_isolated(bundle, inputs, repeats, timeout=self.run_timeout,
                            what=f"{bundle.target} runtime of '{bundle.name}' on {self.name}")


    def run_build(self, bundle: Bundle, binary, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        reason = self.why_not(bundle) or (None if bundle.target == "c" else "not a C bundle")
        if reason:
            raise DeviceRunError(f"device {self.name!r} cannot run bundle '{bundle.name}': {reason}")
        return harness.run_native(bundle, inputs, repeats, timeout=self.run_timeout, binary=binary,
                                  what=f"C harness of '{bundle.name}' on {self.name}")


def _module_version(module: str) -> str | None:
    from importlib import metadata

    names = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
    try:
        return metadata.version(names.get(module, module))
    except metadata.PackageNotFoundError:
        return None

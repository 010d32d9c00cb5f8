"""QEMU user-mode boards: C bundles for aarch64, riscv64 or loongarch64 run under qemu-<arch>.

A qemu board runs C bundles only (other targets are refused by why_not), and its performance
figure is the number of executed guest instructions per inference (fwedge.device_farm.instructions),
exact and repeatable; the harness's wall time is recorded too but says little about a board.
"""
from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm import harness, instructions
from fwedge.device_farm.device import Device, DeviceRunError, device_kind
from fwedge.device_farm.results import INSTRUCTIONS, LATENCY, DeviceRun, Instructions
from fwedge.errors import DeviceError

log = logging.getLogger(__name__)

QEMU_ARCHES = ("aarch64", "riscv64", "loongarch64")


@device_kind("qemu")
@dataclass
class QemuDevice(Device):
    """A QEMU user-mode emulated board.

    Attributes:
        arch: aarch64, riscv64 or loongarch64.
        qemu: the emulator program (default qemu-<arch> on PATH); tests point it at fakes.
        cpu: optional `-cpu` model.
        run_timeout: seconds for one harness run before qemu is killed.
        instructions: count executed instructions per inference with the qemu plugin (the
            board's performance figure); false records wall time only, as on a real board.
    """

    arch: str = "aarch64"
    qemu: str = ""
    cpu: str = ""
    run_timeout: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    instructions: bool = True

    def __post_init__(self) -> None:
        if self.arch not in QEMU_ARCHES:
            raise DeviceError(f"qemu device {self.name!r}: arch must be one of {', '.join(QEMU_ARCHES)}, "
                              f"got {self.arch!r}")
        if not self.qemu:
            self.qemu = f"qemu-{self.arch}"

    def program(self) -> str | None:
        return shutil.which(self.qemu)

    def state(self) -> str:
        return "ready" if self.program() else f"missing {self.qemu}"

    def why_not(self, bundle: Bundle) -> str | None:
        if bundle.target != "c":
            return f"runs C bundles only, not {bundle.target}"
        if bundle.arch != self.arch:
            return f"C bundle for {bundle.arch}; {self.name} is {self.arch}"
        if not self.program():
            return f"{self.qemu} not found"
        return None

    def bundle_kinds(self) -> list[str]:
        return [f"c-{self.arch}"]

    def identity(self) -> dict:
        return {"kind": self.kind, "name": self.name, "arch": self.arch,
                "emulator": _qemu_version(self.program() or self.qemu), "cpu": self.cpu or "default"}

    def performance(self) -> str:
        return INSTRUCTIONS if self.instructions else LATENCY

    def _launcher(self, bundle: Bundle) -> list[str]:
        reason = self.why_not(bundle)
        if reason:
            raise DeviceRunError(f"device {self.name!r} cannot run bundle '{bundle.name}': {reason}")
        return [self.program()] + (["-cpu", self.cpu] if self.cpu else []) + list(self.extra_args)

    def count_instructions(self, bundle: Bundle, inputs: dict[str, np.ndarray]) -> Instructions | None:
        if not self.instructions:
            return None
        job = instructions.CountJob(
            launcher=self._launcher(bundle), emulator=_qemu_version(self.program() or self.qemu),
            cpu=self.cpu or "default", timeout=self.run_timeout,
            what=f"{self.qemu} counting the instructions of '{bundle.name}' on {self.name}")
        return instructions.count_instructions(bundle, inputs, job)

    def run(self, bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        return self.run_build(bundle, None, inputs, repeats)

    def run_build(self, bundle: Bundle, binary, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        launcher = self._launcher(bundle)
        return harness.run_native(bundle, inputs, repeats, timeout=self.run_timeout, launcher=launcher, binary=binary,
                                  what=f"{self.qemu} running '{bundle.name}' on {self.name}",
                                  identity={"emulated": True})


@functools.lru_cache(maxsize=None)
def _qemu_version(program: str) -> str:
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"

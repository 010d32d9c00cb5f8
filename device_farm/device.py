"""The common device interface, the DEVICE_KINDS registry, and a timed subprocess runner."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm.results import LATENCY, STDERR_TAIL_CHARS, DeviceRun, Instructions
from fwedge.errors import DeviceError

log = logging.getLogger(__name__)

# kind name ("local", "qemu", "ssh") -> Device subclass, filled by @device_kind.
DEVICE_KINDS: dict[str, type["Device"]] = {}


def device_kind(name: str) -> Callable[[type], type]:
    """Register a Device subclass under an inventory `kind`."""

    def register(cls: type) -> type:
        cls.kind = name
        DEVICE_KINDS[name] = cls
        return cls

    return register


@dataclass
class Device:
    """A place that runs bundles. Subclasses are dataclasses built from inventory entries.

    Every device answers `why_not(bundle)` (None when it can run it), `run(bundle, inputs,
    repeats) -> DeviceRun`, `state()` and `identity()`.
    """

    name: str
    kind: ClassVar[str] = ""

    def why_not(self, bundle: Bundle) -> str | None:
        """Why this device cannot run `bundle`, or None when it can."""
        raise NotImplementedError

    def can_run(self, bundle: Bundle) -> bool:
        """True when this device has the runtime and architecture `bundle` needs."""
        return self.why_not(bundle) is None

    def run(self, bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        """Run `bundle` on every input row and time `repeats` single inferences.

        Raises:
            DeviceError: the device failed, crashed or timed out; the message holds the
                stderr tail.
        """
        raise NotImplementedError

    def run_build(self, bundle: Bundle, binary: Path, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        """Run another build of a C bundle's sources (`binary`, fwedge profile's -DFW_PROFILE
        build) as `run` runs the bundle's own harness; DeviceRun.stdout holds what it printed.

        Raises:
            DeviceError: this kind of device does not run other builds, or the run failed.
        """
        raise DeviceRunError(f"device {self.name!r} ({self.kind}) runs only the bundle's own binary, "
                             "not a profiling build (profile C bundles on the host, a qemu board, an ssh board or a labgrid place)")

    def count_instructions(self, bundle: Bundle, inputs: dict[str, np.ndarray]) -> Instructions | None:
        """Executed instructions of one inference of `bundle` on the first input row, for devices
        whose performance figure is an instruction count (emulated boards); None elsewhere.

        Raises:
            DeviceError: the count failed.
        """
        return None

    def performance(self) -> str:
        """The authoritative performance figure of this device's results: "instructions" on
        emulated boards, "latency" (wall time on the device's clock) on real boards and the host."""
        return LATENCY

    def state(self) -> str:
        """A short state for `fwedge farm list`: "ready" or what is missing."""
        return "ready"

    def bundle_kinds(self) -> list[str]:
        """The bundle kinds (targets, with arch for C) this device can run."""
        raise NotImplementedError

    def identity(self) -> dict:
        """Device and toolchain identity recorded with every result."""
        return {"kind": self.kind, "name": self.name}

    @contextmanager
    def hold(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold the device for a series of runs. The farm runs all of a device's jobs inside one
        hold. A board that a lab shares (a labgrid place) is acquired here and released on the
        way out, whatever happens; other devices need nothing.

        Args:
            cancel: set when the farm run is interrupted; a hold that waits gives up then.

        Raises:
            DeviceError: the device cannot be held (held by someone else past a timeout,
                offline); the farm turns this into an error result for each of its jobs.
        """
        yield


@dataclass
class ProcessResult:
    """A finished child process."""

    returncode: int
    stdout: str
    stderr: str


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """The last `limit` characters of `text`."""
    return text if len(text) <= limit else "…" + text[-limit:]


def describe_exit(returncode: int) -> str:
    """'exit status 3' or 'killed by SIGSEGV' for a negative return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        # A shell (ssh's remote side) reports a signal death as 128 + signal.
        return f"exit status {returncode} ({signal.Signals(returncode - 128).name})"
    return f"exit status {returncode}"


def run_process(
    argv: list[str],
    *,
    timeout: float,
    what: str,
    cwd: str | os.PathLike | None = None,
    env: dict | None = None,
    check: bool = True,
    cancellable: bool = True,
) -> ProcessResult:
    """Run an argument list (never a shell) with a timeout that kills the whole process group.

    A child that forks (a shell script, qemu, ssh) could otherwise keep the pipes open after
    the direct child is killed, and `communicate` would hang past the timeout.

    Args:
        argv: the program and its arguments; no element is interpreted by a shell here.
        timeout: seconds before the process group is killed.
        what: names the step in error messages ("qemu-aarch64 harness on 'board'").
        cwd, env: passed to Popen.
        check: raise DeviceError on a non-zero exit.
        cancellable: False for clean-up steps, which still run after cancel_running().

    Returns:
        ProcessResult with decoded stdout and stderr.

    Raises:
        DeviceError: the program is missing, timed out, or (with check) exited non-zero or
            died from a signal; the message ends with the stderr tail.
    """
    if not all(isinstance(arg, str) for arg in argv):
        raise DeviceError(f"{what}: argv must be a list of strings, got {argv!r}")
    log.debug("%s: %s", what, argv)
    with _RUNNING_LOCK:
        if cancellable and CANCELLED.is_set():
            raise DeviceRunError(f"{what}: not started: the farm run was interrupted")
        try:
            child = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise DeviceRunError(f"{what}: cannot start {argv[0]!r} ({exc.strerror or exc})") from exc
        if cancellable:
            _RUNNING.add(child)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        stdout, stderr = child.communicate()
        text = stderr.decode(errors="replace")
        raise DeviceRunError(_with_stderr(f"{what}: timed out after {timeout:g} s", text), text)
    except BaseException:
        _kill_group(child)
        child.wait()
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(child)
    if cancellable and CANCELLED.is_set():
        raise DeviceRunError(f"{what}: stopped: the farm run was interrupted")
    result = ProcessResult(child.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        message = _with_stderr(f"{what}: {describe_exit(result.returncode)}", result.stderr)
        raise DeviceRunError(message, result.stderr)
    return result


# Device programs running now (every run_process child), so an interrupted farm run can stop
# them; once CANCELLED is set no new one starts.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()
CANCELLED = threading.Event()


def cancel_running() -> None:
    """Stop every device program now running and refuse new ones (an interrupted farm run).
    The device threads then see failed runs, leave their holds (releasing shared boards) and end."""
    with _RUNNING_LOCK:
        CANCELLED.set()
        running = list(_RUNNING)
    for child in running:
        _kill_group(child)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()


def _with_stderr(message: str, stderr: str) -> str:
    stderr = stderr.strip()
    return f"{message}; stderr: {tail(stderr, 300)}" if stderr else message


class DeviceRunError(DeviceError):
    """A device run failed; carries the stderr tail separately for the results file."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def bundle_kind(bundle: Bundle) -> str:
    """'onnx', 'openvino', ... for host-runtime bundles; 'c-<arch>' for C bundles."""
    return f"c-{bundle.arch}" if bundle.target == "c" else bundle.target


def check_within(base: Path, relative: str) -> Path:
    """Resolve a bundle-relative path and refuse one that escapes the bundle.

    Raises:
        DeviceError: the path is absolute or leaves `base`.
    """
    resolved = (base / relative).resolve()
    if os.path.isabs(relative) or not resolved.is_relative_to(base.resolve()):
        raise DeviceError(f"bundle '{base}': path {relative!r} points outside the bundle")
    return resolved

"""The C bundle harness protocol as the farm uses it: write inputs, build argv, parse outputs.

The C target (fwedge.targets.c) owns the protocol; this module only calls its documented
functions, so the local, qemu and ssh devices share one adapter.
"""
from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fwedge.bundle import Bundle
from fwedge.ir import sha256_file
from fwedge.device_farm.device import DeviceRunError, run_process
from fwedge.device_farm.results import DeviceRun

log = logging.getLogger(__name__)

INPUT_FILE = "fwedge_inputs.bin"
OUTPUT_FILE = "fwedge_outputs.bin"


def c_target():
    """The C target module.

    Raises:
        DeviceRunError: fwedge.targets.c is not installed.
    """
    try:
        return importlib.import_module("fwedge.targets.c")
    except ModuleNotFoundError as exc:
        raise DeviceRunError("running C bundles needs the C target (fwedge.targets.c), "
                             "which is not installed") from exc


@dataclass
class HarnessJob:
    """One harness invocation, with paths relative to a working directory.

    Attributes:
        executable: the harness binary, relative to the bundle directory.
        args: arguments after the executable; file arguments are relative to the work dir.
        input_file, output_file: names of the input file written and the output file read.
        count: number of samples in the input file.
    """

    executable: str
    args: list[str]
    input_file: str
    output_file: str
    count: int


def prepare(bundle: Bundle, inputs: dict[str, np.ndarray], work_dir: Path, repeats: int) -> HarnessJob:
    """Write the harness input file into `work_dir` and describe the invocation."""
    c = c_target()
    count = len(next(iter(inputs.values())))
    c.write_harness_input(bundle, inputs, work_dir / INPUT_FILE)
    return HarnessJob(
        executable=c.harness_executable(bundle),
        args=c.harness_args(bundle, INPUT_FILE, OUTPUT_FILE, count=count, iterations=repeats),
        input_file=INPUT_FILE,
        output_file=OUTPUT_FILE,
        count=count,
    )


def collect(bundle: Bundle, job: HarnessJob, stdout: str, output_path: Path) -> tuple[dict[str, np.ndarray], list[float]]:
    """Read the harness outputs and per-iteration latencies (ms).

    Raises:
        DeviceRunError: the output file is missing or malformed, or no latency was printed.
    """
    c = c_target()
    if not output_path.is_file():
        raise DeviceRunError(f"C harness of '{bundle.name}' wrote no output file {job.output_file!r}")
    try:
        outputs = c.read_harness_output(bundle, output_path, job.count)
        latencies = [float(v) for v in c.parse_harness_latencies(stdout)]
    except Exception as exc:  # the C target's parse errors, whatever their type
        raise DeviceRunError(f"C harness of '{bundle.name}': cannot read its results ({exc})",
                             stderr=stdout[-2000:]) from exc
    if not latencies:
        raise DeviceRunError(f"C harness of '{bundle.name}' printed no latency", stderr=stdout[-2000:])
    return outputs, latencies


def run_native(bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int, *, timeout: float,
               what: str, launcher: list[str] | None = None, identity: dict | None = None,
               binary: Path | None = None) -> DeviceRun:
    """Run a C bundle's harness on this machine, directly or under `launcher` (qemu-<arch>).

    The harness runs in a private temp dir holding a copy of the binary and the input file, so
    concurrent runs of the same bundle never share files; the copy is hashed before it runs.
    `binary` runs another build of the bundle's sources instead (the profiling build, which
    fwedge built itself from the verified sources, so no manifest lists it).
    """
    with tempfile.TemporaryDirectory(prefix="fwedge-harness-") as temp:
        work = Path(temp)
        job = prepare(bundle, inputs, work, repeats)
        copy = work / Path(job.executable).name
        shutil.copy2(binary or bundle.file(job.executable), copy)
        copy.chmod(0o755)
        # The binary that runs is this copy: check it is the one the manifest lists.
        if binary is None and sha256_file(copy) != bundle.files[job.executable]:
            raise DeviceRunError(f"C harness of '{bundle.name}': {job.executable!r} does not match the manifest; "
                                 "not running it")
        argv = (launcher or []) + [str(copy)] + job.args
        done = run_process(argv, timeout=timeout, what=what, cwd=work)
        outputs, latencies = collect(bundle, job, done.stdout, work / job.output_file)
    return DeviceRun(outputs=outputs, latencies_ms=latencies, stderr=done.stderr, stdout=done.stdout,
                     identity={"timer": "clock_gettime (harness)", **(identity or {})})

"""Executed guest instructions per inference on qemu boards: the TCG plugin, built on demand, and the differencing.

Wall time under emulation says little about a board and swings from run to run on a shared
machine; the number of guest instructions a run executes is exact and repeats. The plugin
(device_farm/qemu_plugin/insn.c, qemu TCG plugin API v1, which Debian's qemu-user 7.2 loads with
`-plugin`) adds each translation block's instruction count to one counter and writes the total at
exit. It is compiled with the host C compiler into fwedge's cache, keyed by the digest of its
sources and flags, on first use.

A C bundle's harness (`fwedge_model IN OUT COUNT 0`: read, run, write each sample) runs on one
sample repeated LOW and HIGH times; the difference of the two totals is the count of HIGH - LOW
inferences, so qemu's and the harness's start-up cancel out. The low run runs twice and must give
the same total. What keeps the counts repeatable (each of these changed them when it varied):
  * no timed iterations (ITERATIONS 0): each prints its clock reading, whose digits vary;
  * no output file before a run: the harness stats it, and its existence changes the count;
  * a fixed guest environment and relative argv of fixed length: their size moves the initial
    stack;
  * the same sample in every inference.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm import harness
from fwedge.device_farm.device import DeviceRunError, run_process
from fwedge.device_farm.results import Instructions
from fwedge.errors import DeviceError
from fwedge.ir import sha256_file

log = logging.getLogger(__name__)

PLUGIN_DIR = Path(__file__).resolve().parent / "qemu_plugin"
PLUGIN_SOURCES = ("insn.c", "qemu_plugin_api.h")
PLUGIN_FLAGS = ("-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-fvisibility=hidden")
TOTAL_PREFIX = "fwedge-insn-total "
# The guest's whole environment: its size moves the initial stack, so the host's must not leak in.
GUEST_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
# Inferences of the two differenced runs: single digits, so both argv have the same length.
LOW, HIGH = 1, 2
BUILD_TIMEOUT = 120.0

_build_lock = threading.Lock()


def host_compiler() -> str:
    """The host C compiler for the plugin: $FWEDGE_HOST_CC, else gcc, else cc on PATH.

    $CC is not used: it may name a cross compiler for the bundles.

    Raises:
        DeviceError: none is found.
    """
    for name in (os.environ.get("FWEDGE_HOST_CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise DeviceError("counting instructions on qemu boards needs a host C compiler to build the qemu plugin "
                      "(gcc or cc on PATH, or $FWEDGE_HOST_CC); `make setup` installs gcc")


def plugin_digest() -> str:
    """sha256 of the plugin's sources (names and bytes) and compiler flags."""
    digest = hashlib.sha256()
    for name in PLUGIN_SOURCES:
        data = (PLUGIN_DIR / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    digest.update("\0".join(PLUGIN_FLAGS).encode())
    return digest.hexdigest()


def build_plugin(cache: Path | None = None) -> Path:
    """The plugin library, compiled on first use into `<cache>/qemu-plugin/libinsn-<digest>.so`.

    Args:
        cache: the cache folder; default fwedge's (targets.c_build.cache_dir()).

    Returns:
        The path of the shared library.

    Raises:
        DeviceError: no host C compiler, or the compiler failed.
    """
    from fwedge.targets.c_build import cache_dir

    folder = Path(cache or cache_dir()) / "qemu-plugin"
    target = folder / f"libinsn-{plugin_digest()[:16]}.so"
    if target.is_file():
        return target
    with _build_lock:  # device threads share one build
        if target.is_file():
            return target
        compiler = host_compiler()
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".libinsn-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            run_process([compiler, *PLUGIN_FLAGS, "-o", temp, str(PLUGIN_DIR / "insn.c")], timeout=BUILD_TIMEOUT,
                        what=f"building the qemu instruction-count plugin with {compiler}")
            os.replace(temp, target)  # atomic: a reader sees the whole library or none
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        log.info("built %s", target)
    return target


@dataclass
class CountJob:
    """How to run one harness under the plugin: the emulator argv before `-plugin`, and names."""

    launcher: list[str]
    emulator: str
    cpu: str
    timeout: float
    what: str


def _total(report: Path, what: str) -> int:
    try:
        first = report.read_text().splitlines()[:1]
    except OSError as exc:
        raise DeviceRunError(f"{what}: the qemu plugin wrote no report ({exc.strerror or exc}); does this qemu "
                             "support -plugin?") from exc
    finally:
        report.unlink(missing_ok=True)
    text = first[0] if first else ""
    if not text.startswith(TOTAL_PREFIX) or not text[len(TOTAL_PREFIX):].isdigit():
        raise DeviceRunError(f"{what}: the qemu plugin's report starts with {text[:60]!r}, expected "
                             f"'{TOTAL_PREFIX}N'")
    return int(text[len(TOTAL_PREFIX):])


def count_instructions(bundle: Bundle, inputs: dict[str, np.ndarray], job: CountJob,
                       plugin: Path | None = None) -> Instructions:
    """Executed guest instructions of one inference of a C bundle under qemu (exact, by differencing).

    Args:
        bundle: a verified C bundle; its harness binary is copied and checked against the manifest.
        inputs: name -> [N, ...] arrays; the first sample of each is the one counted.
        job: the emulator argv (qemu-<arch> [-cpu CPU] [extra]) and what to name in messages.
        plugin: the plugin library (default: build_plugin()).

    Returns:
        Instructions with the totals of both runs.

    Raises:
        DeviceError: no compiler, a failed run, a missing report, totals that differ between two
            identical runs, or fewer instructions in the longer run.
    """
    c = harness.c_target()
    plugin = plugin or build_plugin()
    first = {name: np.asarray(value)[:1] for name, value in inputs.items()}
    with tempfile.TemporaryDirectory(prefix="fwedge-insn-") as temp:
        work = Path(temp)
        executable = c.harness_executable(bundle)
        binary = work / "fwedge_model"
        shutil.copy2(bundle.file(executable), binary)
        binary.chmod(0o755)
        if sha256_file(binary) != bundle.files[executable]:
            raise DeviceRunError(f"{job.what}: {executable!r} does not match the manifest; not running it")
        for count in (LOW, HIGH):
            c.write_harness_input(bundle, {name: np.repeat(x, count, axis=0) for name, x in first.items()},
                                  work / f"input-{count}.bin")
        report = work / "insn-report.txt"

        def run(count: int) -> int:
            (work / "output.bin").unlink(missing_ok=True)  # its existence changes the count
            argv = job.launcher + ["-plugin", f"{plugin},out={report}", "./fwedge_model",
                                   *c.harness_args(bundle, f"input-{count}.bin", "output.bin", count=count,
                                                   iterations=0)]
            run_process(argv, timeout=job.timeout, what=job.what, cwd=work, env=GUEST_ENV)
            return _total(report, job.what)

        low_total, low_again, high_total = run(LOW), run(LOW), run(HIGH)
        c.read_harness_output(bundle, work / "output.bin", HIGH)  # the runs did the work: outputs of the right size
    if low_again != low_total:
        raise DeviceRunError(f"{job.what}: two identical runs executed {low_total} and {low_again} instructions; "
                             "the count is not deterministic here")
    if high_total <= low_total:
        raise DeviceRunError(f"{job.what}: {HIGH} inferences executed {high_total} instructions, {LOW} executed "
                             f"{low_total}; expected more")
    per_inference, remainder = divmod(high_total - low_total, HIGH - LOW)
    if remainder:
        raise DeviceRunError(f"{job.what}: {high_total - low_total} instructions over {HIGH - LOW} inferences "
                             "is not a whole number per inference")
    return Instructions(per_inference=per_inference, low=LOW, high=HIGH, low_total=low_total, high_total=high_total,
                        emulator=job.emulator, cpu=job.cpu, counter=f"fwedge qemu plugin {plugin_digest()[:16]}")

"""The C bundle's opt-in profiling build: its sources rebuilt with -DFW_PROFILE, and its output read.

The generated fwedge_run marks every step (the input copy, each op, the output copy) with
FW_STEP(i), which is empty unless FW_PROFILE is defined (targets/c_codegen.py): the bundle's own
binary has no clock in it. `rebuild` compiles a copy of the bundle's sources with the flags its
manifest records, plus any defines given; without defines it gives the bundle's binary again,
byte for byte (tests/test_profile.py checks this), so the profiled build differs from the
shipped one by the profiling only.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fwedge.bundle import Bundle
from fwedge.errors import ExportError
from fwedge.targets.base import COptions
from fwedge.targets.c import LATENCY_PREFIX, _BuildPlan
from fwedge.targets.c_build import BINARY, C_FLAGS, DISPATCH, build_binary

PROFILE_DEFINE = "-DFW_PROFILE"
PROFILED_PREFIX = "fwedge-profiled-ns"
RUN_PREFIX = "fwedge-profile-run"
CLOCK_PREFIX = "fwedge-profile-clock-ns"
# Source files a rebuild copies: C sources and headers only (the manifest lists them all).
SOURCE_SUFFIXES = (".c", ".h")


def step_facts(bundle: Bundle) -> tuple[list[str], list[str], list[int]]:
    """(names, kinds, MACs) of every step of the bundle's fwedge_run: "(inputs)", each op as the
    lowered graph names it (op_names, op_kinds, op_macs in the manifest), "(outputs)".

    Raises:
        ExportError: the manifest has no op_kinds/op_macs (exported by an older fwedge).
    """
    names, kinds, macs = (bundle.extra.get(key) for key in ("op_names", "op_kinds", "op_macs"))
    if not (isinstance(names, list) and isinstance(kinds, list) and isinstance(macs, list)):
        raise ExportError(f"bundle '{bundle.name}': its manifest has no op_names, op_kinds and op_macs "
                          "(exported by an older fwedge? export it again to profile it)")
    return ["(inputs)", *names, "(outputs)"], ["copy", *kinds, "copy"], [0, *macs, 0]


def rebuild(bundle: Bundle, folder: Path, defines: tuple[str, ...] = ()) -> Path:
    """Compile a copy of the bundle's sources in `folder` with the manifest's flags plus `defines`.

    Returns:
        The harness binary built (folder/bin/fwedge_model).

    Raises:
        ExportError: the bundle holds no sources or binary, or the compiler failed.
    """
    cflags = bundle.extra.get("cflags")
    kernels = bundle.extra.get("kernels")
    if BINARY not in bundle.files or not isinstance(cflags, list) or not isinstance(kernels, list):
        raise ExportError(f"bundle '{bundle.name}': not a built C bundle (no {BINARY}, cflags or kernels in its manifest)")
    for relative in bundle.files:
        if relative.endswith(SOURCE_SUFFIXES):
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.file(relative), target)
    # The manifest's cflags are C_FLAGS, the export's own flags, then the dispatch define, which
    # the plan adds again.
    defined = {spec.define for spec in DISPATCH.values()}
    own = [flag for flag in cflags[len(C_FLAGS):] if flag not in defined]
    plan = _BuildPlan.make(bundle.arch, COptions(cflags=tuple(own)), [str(k) for k in kernels])
    source_flags = {name: plan.dispatch.variants[suffix] for suffix, files in plan.by_level.items() for name in files}
    build_binary(folder, plan.sources + plan.variants, bundle.arch, extra_flags=plan.cflags + list(defines),
                 source_flags=source_flags)
    return folder / BINARY


@dataclass
class StepTimes:
    """What a profiling build printed.

    Attributes:
        plain_ms: each plain run's time (the harness's ordinary clock around fwedge_run).
        profiled_ms: each profiled run's time, clock reads included.
        step_ns: per profiled run, the nanoseconds of every step, as measured.
        clock_ns: the cost of one clock read; each step's time holds one.
    """

    plain_ms: list[float]
    profiled_ms: list[float]
    step_ns: np.ndarray
    clock_ns: int = 0

    @property
    def runs(self) -> int:
        return len(self.step_ns)


def parse_profile(stdout: str, steps: int) -> StepTimes:
    """Read a profiling build's output.

    Raises:
        ExportError: a line is malformed, or the steps or runs do not match.
    """
    plain, profiled, rows, clock = [], [], [], 0
    for line in stdout.splitlines():
        parts = line.split()
        if not parts or parts[0] not in (LATENCY_PREFIX, PROFILED_PREFIX, RUN_PREFIX, CLOCK_PREFIX):
            continue
        try:
            values = [int(part) for part in parts[1:]]
        except ValueError as exc:
            raise ExportError(f"profiling build printed a malformed line {line[:80]!r}") from exc
        if any(value < 0 for value in values):
            raise ExportError(f"profiling build printed a negative time {line[:80]!r}")
        if parts[0] == RUN_PREFIX and len(values) == steps:
            rows.append(values)
        elif parts[0] == CLOCK_PREFIX and len(values) == 1:
            clock = values[0]
        elif parts[0] in (LATENCY_PREFIX, PROFILED_PREFIX) and len(values) == 1:
            (plain if parts[0] == LATENCY_PREFIX else profiled).append(values[0] / 1e6)
        else:
            raise ExportError(f"profiling build printed an unexpected line {line[:80]!r} ({steps} steps expected)")
    if not rows or len(rows) != len(profiled) or len(rows) != len(plain):
        raise ExportError(f"profiling build: {len(rows)} step lines for {len(plain)} plain and {len(profiled)} "
                          "profiled runs (a bundle exported before fwedge profile? export it again)")
    return StepTimes(plain, profiled, np.asarray(rows, dtype=np.int64), clock)

"""C target: generated C sources plus runtime_c kernels, cross-compiled per architecture (zig cc), run natively or under qemu.

Bundle layout (sources rebuild with the bundled Makefile or CMakeLists.txt):
    model.c, model.h        generated: weights as const arrays, a static arena, fwedge_run()
    main.c                  the harness (runtime_c/harness_main.c): file in, file out, timings
    fwedge_rt.h, *.h, *.c   the runtime headers and only the runtime kernels the model uses
    Makefile, CMakeLists.txt
    bin/fwedge_model        the static binary for the bundle's architecture (when built)

Harness protocol (also used by the device farm): `fwedge_model IN OUT COUNT ITERATIONS`, IN holds
COUNT samples of every input as raw little-endian NCHW arrays (float32 for float inputs), OUT
receives COUNT samples of every output, and each timed iteration prints
`fwedge-latency-ns <ns>` (clock_gettime). A wrong-sized IN makes it exit 2 with a message.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from fwedge.bundle import Bundle, TensorInfo, host_arch, write_bundle
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.ir import opset_version
from fwedge.lowered.graph import LoweredGraph
from fwedge.runtime_c import HARNESS, HEADERS, source_dir
from fwedge.targets.base import ByOpTypeOnly, C_ARCHES, COptions, ExportOptions, Target, target
from fwedge.targets.c_build import (
    BINARY, C_FLAGS, Dispatch, build_binary, cmakelists_text, compiler_command, dispatch_build, makefile_text,
    recorded_command,
)
from fwedge.targets.c_codegen import CProgram, generate
from fwedge.targets.c_pad import pad_depthwise_inputs
from fwedge.targets.common import check_feeds, resolve_precision

log = logging.getLogger(__name__)

TARGET = "c"
LATENCY_PREFIX = "fwedge-latency-ns"


# --------------------------------------------------------------------------------------------
# The target: check (lower + generate in memory), export (write, compile), run (the harness)
# --------------------------------------------------------------------------------------------


def _emitter_refusals(graph: LoweredGraph, quads: bool) -> list[tuple[str, str, str]]:
    """(op name, op kind, reason) of every lowered op whose C emitter refuses it.

    generate() stops at the first refusal; here every emitter runs on its own against one
    scratch emitter state. An emitter reads tensors and arena offsets from the graph and its
    memory plan, not from what earlier ops emitted, so one refusal does not cause the next.
    """
    from fwedge.targets.c_codegen import ALIGNMENT, EMITTERS, _Emitter, lifetimes
    from fwedge.targets.memory_plan import plan_memory

    scratch = _Emitter(graph, plan_memory(lifetimes(graph), ALIGNMENT), quads)
    found = []
    for scratch.op_index, op in enumerate(graph.ops):
        if op.kind not in EMITTERS:
            found.append((op.name, op.kind, f"no C emitter for {op.kind}"))
            continue
        try:
            EMITTERS[op.kind](scratch, op)
        except ExportError as error:
            found.append((op.name, op.kind, str(error).removeprefix("C target: ")))
    return found


def generate_checked(model: onnx.ModelProto, arch: str, options: ExportOptions) -> tuple[LoweredGraph, CProgram]:
    """Lower the model and generate its C program in memory: the check and the build are one step.

    Raises:
        UnsupportedOpError: every node the lowering cannot take (int8 nodes without an int8 form
            too, unless options.allow_float_fallback), else every node whose C emitter refuses
            its layout or attributes (all listed; nothing is written yet).
        ModelError: dynamic shapes or malformed Q/DQ parameters.
        ExportError: a failure that is not a node's (a graph input name that is not text).
    """
    from fwedge.lowered.lower import lower

    graph = lower(model, target=arch, float_fallback=options.allow_float_fallback)
    if arch == "aarch64":
        graph = pad_depthwise_inputs(graph)
    # The quad layout of the conv weights is read by x86's VNNI kernels and by both aarch64 NEON
    # kernels (ARMv8.0 and dotprod: one ROM copy); other builds read the pairs only.
    quads = arch in ("x86_64", "aarch64")
    try:
        return graph, generate(graph, options.source_sha256, quads=quads, prepare_neon=arch == "aarch64")
    except ExportError as error:
        refused = _emitter_refusals(graph, quads)
        if not refused:
            raise
        op_types = {node.name: node.op_type for node in model.graph.node}
        opset = opset_version(model)
        raise UnsupportedOpError(arch, [(name, op_types.get(name, kind), opset) for name, kind, _ in refused],
                                 detail="; ".join(f"{name!r}: {why}" for name, _, why in refused)) from error


@dataclass
class _BuildPlan:
    """How a bundle's sources are compiled: the compiler, the flags, the run-time dispatch variants."""

    arch: str
    options: COptions
    compiler: list[str]
    cflags: list[str]
    sources: list[str]
    by_level: dict[str, list[str]]
    dispatch: Dispatch | None = None

    @property
    def variants(self) -> list[str]:
        return [name for files in self.by_level.values() for name in files]

    @classmethod
    def make(cls, arch: str, options: COptions, kernels: list[str]) -> _BuildPlan:
        compiler = compiler_command(arch, options.cc) if options.build else []
        cflags = [str(flag) for flag in options.cflags]
        # The default build of an architecture with variants (DISPATCH): baseline kernels plus
        # their variants, picked at run time; a model that uses none of them gets no dispatch.
        dispatch = dispatch_build(arch, cflags)
        by_level = dispatch.sources(kernels) if dispatch is not None else {}
        if any(by_level.values()):
            cflags = cflags + [dispatch.define]
        else:
            by_level, dispatch = {}, None
        return cls(arch, options, compiler, cflags, ["main.c", "model.c", *kernels], by_level, dispatch)


def _write_sources(folder: Path, program: CProgram, plan: _BuildPlan) -> None:
    runtime = source_dir()
    (folder / "model.c").write_text(program.model_c)
    (folder / "model.h").write_text(program.model_h)
    shutil.copyfile(runtime / HARNESS, folder / "main.c")
    for header in HEADERS:
        shutil.copyfile(runtime / header, folder / header)
    for kernel in program.kernels:
        shutil.copyfile(runtime / kernel, folder / kernel)
    for variant in plan.variants:
        shutil.copyfile(runtime / "variants" / variant, folder / variant)
    (folder / "Makefile").write_text(makefile_text(program, plan.arch, plan.compiler or ["cc"], plan.sources,
                                               plan.cflags, plan.variants, plan.dispatch))
    (folder / "CMakeLists.txt").write_text(cmakelists_text(plan.sources, plan.by_level, plan.dispatch))


def _compile(folder: Path, plan: _BuildPlan, facts: dict) -> dict:
    """Build the harness binary; returns its size figures and records the compiler in `facts`."""
    result = build_binary(folder, plan.sources + plan.variants, plan.arch, plan.options.cc, extra_flags=plan.cflags,
                          source_flags={name: plan.dispatch.variants[suffix] for suffix, files in plan.by_level.items()
                                        for name in files})
    whole, model_part = result.sections, result.model_sections
    stack = result.stack_estimate_bytes or 0
    facts["compiler"] = result.command
    facts["compiler_version"] = result.compiler_version
    return {
        # The model (model.c + kernels): ROM = text + rodata + data of their objects;
        # RAM = their data + bss (the arena) + the stack estimate.
        "rom_bytes": model_part["text"] + model_part["rodata"] + model_part["data"],
        "ram_bytes": model_part["data"] + model_part["bss"] + stack,
        "text_bytes": model_part["text"], "rodata_bytes": model_part["rodata"],
        "stack_estimate_bytes": result.stack_estimate_bytes,
        # The whole static harness binary (libc and stdio included).
        "binary_bytes": (folder / BINARY).stat().st_size,
        "binary_rom_bytes": whole["text"] + whole["rodata"] + whole["data"],
        "binary_ram_bytes": whole["data"] + whole["bss"] + stack,
    }


def _conv_weights(plan: _BuildPlan, program: CProgram) -> dict | None:
    """The packed groups == 1 conv weight layouts the build compiles in and their bytes (ROM):
    aarch64 NEON builds hold the quads only, which its ARMv8.0 and dotprod kernels both read; an
    x86-64 dispatch build both layouts. None for builds that chose their own -m flags, and for
    models without such a conv."""
    sizes = program.conv_layout_bytes
    if not sizes.get("pairs"):
        return None
    portable = "-DFW_NO_INTRINSICS" in plan.cflags
    if plan.arch == "aarch64" and not portable:
        layouts = {"quads": "[out_c/8][k/4][8][4] int8, read by the ARMv8.0 NEON and the dotprod (sdot) kernels"}
    elif plan.arch == "x86_64" and plan.by_level:
        layouts = {"pairs": "[out_c/8][k/2][8][2] int8", "quads": "[out_c/8][k/4][8][4] int8, the VNNI kernels"}
    elif plan.arch != "x86_64" or portable:
        layouts = {"pairs": "[out_c/8][k/2][8][2] int8"}
    else:
        return None
    return {name: {"layout": text, "bytes": sizes[name]} for name, text in layouts.items()}


def _manifest_extra(graph: LoweredGraph, program: CProgram, plan: _BuildPlan) -> dict:
    extra = {
        "kernels": program.kernels,
        # run-time dispatch: these kernels also built for wider instruction sets, chosen at run time
        "kernel_variants": {plan.dispatch.names[suffix]: files for suffix, files in plan.by_level.items() if files},
        "binary": BINARY if plan.options.build else None,
        "ops": len(graph.ops),
        # model.c's comments name ops by index only; these are their names, in that order
        "op_names": program.op_names,
        # and their lowered kinds and multiply-accumulates (fwedge profile's table)
        "op_kinds": program.op_kinds,
        "op_macs": program.op_macs,
        "float_ops": list(graph.float_ops),
        "storage_layout": "NHWC",
        "memory_plan": program.plan.to_dict(),
        "harness": "fwedge_model INPUT OUTPUT COUNT ITERATIONS",
        "cflags": C_FLAGS + plan.cflags,
    }
    conv_weights = _conv_weights(plan, program)
    if conv_weights:
        extra["conv_weights"] = conv_weights
    if graph.float_fallback:  # only with allow_float_fallback: the decision is reported
        extra["float_fallback"] = [{"node": name, "reason": why} for name, why in graph.float_fallback]
    return extra


@target("c")
class CTarget(Target):
    """Generated C plus runtime_c kernels for one architecture (CTarget("aarch64")), run natively or under qemu.

    run() takes the architecture from the bundle, so CTarget() (this host's) runs a bundle of any.
    """

    lowers = True
    options_type = COptions

    def __init__(self, arch: str | None = None):
        if arch is not None and arch not in C_ARCHES:
            raise ExportError(f"C target: unknown architecture {arch!r}; choose from {', '.join(C_ARCHES)}")
        self.arch = arch or host_arch()

    @property
    def label(self) -> str:
        return self.arch

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Every (node, op, opset) export() refuses: the lowering's and the C emitters' refusals
        (generate_checked, the same step export() runs). Dynamic shapes: judged by op type only."""
        from fwedge.errors import ModelError
        from fwedge.lowered.lower import unsupported_nodes as lowering_gaps

        try:
            generate_checked(model, self.arch, options or ExportOptions())
        except UnsupportedOpError as error:
            return error.nodes
        except ModelError as error:
            return ByOpTypeOnly(lowering_gaps(model), str(error))
        return []

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Lower the model, generate C, compile it for this architecture and write the bundle.

        Args:
            model: a loaded float or QDQ model (fwedge.ir.load).
            out_dir: the bundle directory to create or replace (atomically).
            options: ExportOptions; COptions.cc overrides the compiler, build False writes sources
                only, cflags adds compiler flags (e.g. ("-march=native",) for a host-only build;
                the default is the portable baseline of the architecture).

        Returns:
            The written Bundle. sizes holds ROM (text + rodata + data of the ELF), RAM (arena +
            .data/.bss of the model + stack estimate), the arena and its live-tensor lower bound.

        Raises:
            UnsupportedOpError: nodes the lowering or the C emitters cannot take (all listed,
                nothing written).
            ExportError: precision mismatch, other options' type, a failed compilation.
        """
        options = options or ExportOptions()
        own = self.own_options(options)
        if self.arch not in C_ARCHES:
            raise ExportError(f"C target: unknown architecture {self.arch!r}; choose from {', '.join(C_ARCHES)}")
        precision = resolve_precision(model, options.precision, TARGET)
        if precision == "fp16":
            raise ExportError(f"target {self.label!r}: --fp16 is not offered for C: the generated runtime has no "
                              "float16 arithmetic, and int8 (`fwedge quantize`) is its compressed form")
        graph, program = generate_checked(model, self.arch, options)
        plan = _BuildPlan.make(self.arch, own, program.kernels)
        extra = _manifest_extra(graph, program, plan)

        def write_files(folder: Path) -> dict:
            _write_sources(folder, program, plan)
            sizes = {
                "arena_bytes": program.plan.arena_bytes,
                "arena_lower_bound_bytes": program.plan.lower_bound_bytes,
                "arena_ratio": round(program.plan.ratio, 4),
                "weights_bytes": program.weights_bytes,
                "io_buffer_bytes": sum(int(np.prod(s)) * np.dtype(d).itemsize
                                       for _, s, d in program.inputs + program.outputs),
            }
            if own.build:
                sizes.update(_compile(folder, plan, extra))  # compiler argv and version into extra
                if extra.get("compiler_version"):
                    toolchain["compiler_version"] = extra["compiler_version"]
            return sizes

        specs = [[TensorInfo(name, list(shape), dtype, "NHWC", source_layout="NHWC") if name in program.nhwc_io
                  else TensorInfo(name, list(shape), dtype, "NCHW" if len(shape) == 4 else "")
                  for name, shape, dtype in tensors] for tensors in (program.inputs, program.outputs)]
        compiler = plan.compiler
        # The versions the report's toolchain table shows; write_files adds the compiler's version.
        toolchain = {"compiler": " ".join(recorded_command(compiler)[:4]) if compiler else "none"}
        bundle = write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision, source_sha256=options.source_sha256,
            inputs=specs[0], outputs=specs[1], write_files=write_files, preprocess=options.preprocess, reference=options.reference, kept_float=options.kept_float,
            toolchain=toolchain, extra=extra,
        )
        log.info("C bundle %s (%s): arena %d bytes (lower bound %d), weights %d bytes", bundle.path, self.arch,
                 program.plan.arena_bytes, program.plan.lower_bound_bytes, program.weights_bytes)
        return bundle

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run a C bundle on a batch (natively, or under qemu-<bundle arch>); outputs as numpy arrays.

        Outputs have the bundle's output dtypes (float32 for float and float-I/O int8 bundles,
        which end in a dequantize), in NCHW order like onnxruntime's.

        Raises:
            ExportError: missing feeds, shape mismatch, or a harness failure.
        """
        self.require_exact(bundle, exact_int8)
        outputs, _ = run_harness(bundle, feeds)
        return outputs


# --------------------------------------------------------------------------------------------
# Harness protocol (the device farm calls these too)
# --------------------------------------------------------------------------------------------


def harness_executable(bundle: Bundle) -> str:
    """The harness binary's path relative to the bundle.

    Raises:
        ExportError: the bundle was written without building.
    """
    if BINARY not in bundle.files:
        raise ExportError(f"bundle '{bundle.path}': no {BINARY}; it was exported with build=False "
                          "(rebuild it with its Makefile)")
    return BINARY


def harness_args(bundle: Bundle, input_file: str, output_file: str, count: int, iterations: int = 0) -> list[str]:
    """Arguments after the executable: input file, output file, sample count, timed iterations."""
    return [str(input_file), str(output_file), str(int(count)), str(int(iterations))]


def write_harness_input(bundle: Bundle, inputs: dict[str, np.ndarray], path) -> int:
    """Write a batch of inputs (name -> [N, ...] NCHW arrays) as the harness input file.

    Returns:
        The number of samples N.

    Raises:
        ExportError: a missing input, a shape that does not fit, or differing batch sizes.
    """
    check_feeds(bundle, inputs)
    arrays = []
    count = None
    for spec in bundle.inputs:
        array = np.asarray(inputs[spec.name])
        if count is None:
            count = array.shape[0]
        elif array.shape[0] != count:
            raise ExportError(f"bundle '{bundle.path}': inputs have different batch sizes ({count} and {array.shape[0]})")
        arrays.append(np.ascontiguousarray(array.astype(np.dtype(spec.dtype).newbyteorder("<"))).reshape(count, -1))
    interleaved = np.concatenate([a.view(np.uint8).reshape(count, -1) for a in arrays], axis=1)
    Path(path).write_bytes(interleaved.tobytes())
    return int(count or 0)


def read_harness_output(bundle: Bundle, path, count: int) -> dict[str, np.ndarray]:
    """Read the harness output file into name -> [count, ...] arrays (the bundle's output dtypes).

    Raises:
        ExportError: the file size does not match count samples.
    """
    raw = Path(path).read_bytes()
    specs = [(spec, int(np.prod(spec.shape[1:])) * np.dtype(spec.dtype).itemsize) for spec in bundle.outputs]
    per_sample = sum(size for _, size in specs)
    if len(raw) != per_sample * count:
        raise ExportError(f"bundle '{bundle.path}': output file has {len(raw)} bytes, expected {per_sample * count} "
                          f"({count} samples x {per_sample} bytes)")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(count, per_sample)
    outputs, offset = {}, 0
    for spec, size in specs:
        block = np.ascontiguousarray(table[:, offset:offset + size])
        outputs[spec.name] = block.view(np.dtype(spec.dtype).newbyteorder("<")).astype(spec.dtype).reshape(
            [count] + list(spec.shape[1:]))
        offset += size
    return outputs


def parse_harness_latencies(stdout: str) -> list[float]:
    """Per-iteration latencies in milliseconds from the harness's `fwedge-latency-ns` lines."""
    values = []
    for line in stdout.splitlines():
        if line.startswith(LATENCY_PREFIX + " "):
            values.append(int(line.split()[1]) / 1e6)
    return values


KERNELS_PREFIX = "fwedge-kernels"


def parse_harness_kernels(stdout: str) -> str | None:
    """The kernels a run-time dispatch build picked (fw_kernels_name in fwedge_rt.h: on x86-64
    "avx512-vnni", "avx2" or "baseline"), from its `fwedge-kernels` line; None for other builds."""
    for line in stdout.splitlines():
        if line.startswith(KERNELS_PREFIX + " "):
            return line.split()[1]
    return None


def launcher(arch: str, cpu: str = "") -> list[str]:
    """[] on the host architecture, else [qemu-<arch>] (with `-cpu <cpu>` when given: an emulated
    CPU model, e.g. cortex-a53, whose features a dispatch build's kernels follow).

    Raises:
        ExportError: qemu-<arch> is not installed.
    """
    if arch == host_arch():
        return []
    qemu = shutil.which(f"qemu-{arch}")
    if not qemu:
        raise ExportError(f"running a {arch} bundle on {host_arch()} needs qemu-{arch} (Debian qemu-user)")
    return [qemu] + (["-cpu", cpu] if cpu else [])


def run_harness(bundle: Bundle, inputs: dict[str, np.ndarray], iterations: int = 0,
                timeout: float | None = None, cpu: str = "") -> tuple[dict[str, np.ndarray], list[float]]:
    """Run the bundle's harness on this machine (under qemu-<arch> when the arch differs).

    Args:
        bundle: a built C bundle.
        inputs: name -> [N, ...] arrays in NCHW order.
        iterations: timed runs after the outputs are written (0: none).
        timeout: seconds; default grows with N and iterations (qemu is slow).
        cpu: the qemu -cpu model of an emulated run ("": qemu's default).

    Returns:
        (outputs name -> [N, ...] arrays, per-iteration latencies in ms).

    Raises:
        ExportError: the harness failed or timed out (its stderr is in the message).
    """
    executable = bundle.file(harness_executable(bundle))
    with tempfile.TemporaryDirectory(prefix="fwedge-c-run-") as temp:
        work = Path(temp)
        count = write_harness_input(bundle, inputs, work / "inputs.bin")
        argv = launcher(bundle.arch, "" if bundle.arch == host_arch() else cpu) + [str(executable)] + harness_args(bundle, "inputs.bin", "outputs.bin", count, iterations)
        # Emulation is 10-50x slower than native and the host may be busy: generous defaults.
        emulated = bundle.arch != host_arch()
        limit = timeout or (300 + 1.0 * count + 0.1 * iterations if emulated else 120 + 0.05 * count + 0.01 * iterations)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=work)
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"bundle '{bundle.path}': harness timed out after {limit:.0f} s") from exc
        if done.returncode != 0:
            raise ExportError(f"bundle '{bundle.path}': harness exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        outputs = read_harness_output(bundle, work / "outputs.bin", count)
    return outputs, parse_harness_latencies(done.stdout)


@dataclass
class LatencyStats:
    """Latency of a bundle from its on-device clock_gettime timer, in milliseconds."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    iterations: int

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(latencies_ms: list[float]) -> LatencyStats:
    """p50/p95/mean/min of per-iteration latencies (as parse_harness_latencies returns them).

    Raises:
        ExportError: no latencies.
    """
    if not latencies_ms:
        raise ExportError("no latency measurements")
    values = np.asarray(latencies_ms, dtype=np.float64)
    return LatencyStats(float(np.percentile(values, 50)), float(np.percentile(values, 95)), float(values.mean()),
                        float(values.min()), int(values.size))


def measure_latency(bundle: Bundle, feeds: dict[str, np.ndarray] | None = None, iterations: int = 200,
                    timeout: float | None = None) -> LatencyStats:
    """Latency of one inference measured by the harness itself (no process start-up in it).

    Args:
        bundle: a built C bundle (run under qemu-<arch> when not the host's: emulated timings).
        feeds: one sample (name -> [1, ...]); zeros of the input shapes when None.
        iterations: timed runs after one warm-up.

    Returns:
        LatencyStats from the harness's clock_gettime per-iteration times.
    """
    if feeds is None:
        feeds = {spec.name: np.zeros([1] + list(spec.shape[1:]), dtype=spec.dtype) for spec in bundle.inputs}
    _, latencies = run_harness(bundle, feeds, iterations=iterations, timeout=timeout)
    return latency_stats(latencies)

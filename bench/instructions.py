#!/usr/bin/env python
"""Executed guest instructions per inference under qemu-user: fwedge's C bundles against LiteRT.

    .venv/bin/python bench/instructions.py [--models cnn_small mobilenet_v2_tiny | ppocr_cls ppocr_det ppocr_rec yolov8n magika]
        [--aarch64-cpus cortex-a53 cortex-a76 max,sme=off] [--riscv64-cpus rv64 rv64,v=true,vlen=128 rv64,v=true,vlen=256]
        [--iterations 5 45] [--split 12] [--json build/bench/instructions.json]

Wall time under emulation says little about a board; the number of guest instructions a run
executes is exact and repeatable. The farm's qemu plugin counts them
(fwedge/device_farm/qemu_plugin/, built on first use into fwedge's cache by
fwedge.device_farm.instructions.build_plugin, as `fwedge farm run` does on qemu boards); the arm64
LiteRT sysroot comes from bench/setup_instructions.sh (`make bench-setup`, which this script runs first).

For each example model, quantized as `fwedge quantize --data fashion-mnist:train
--num-samples 256` does it, or real model (--models ppocr_cls ppocr_det ppocr_rec yolov8n magika:
bench/real_models.py quantizes each as its test does, and its first held-out input is the sample):
  * the C bundle (`fwedge export -t aarch64`, `-t riscv64`) runs its harness under
    `qemu-<arch> -cpu CPU -plugin libinsn.so` on one Fashion-MNIST test image repeated LOW and
    HIGH times (`fwedge_model IN OUT COUNT 0`: read, run, write each sample); the difference of
    the two totals over HIGH - LOW is the count per inference (reading the 3 KB sample and
    writing the logits included, a few hundred instructions: see --split), so start-up cancels
    out. The low count runs twice: the same total both times. (No output file exists before a
    run: the harness stats it, and whether it exists changes the count by 9.)
  * the peer, LiteRT (XNNPACK, one thread) running fwedge's own tflite bundle of the same QDQ
    model, under qemu-aarch64 with an arm64 Python sysroot and the same -cpu, plugin and
    differencing (bench/guest/litert_invoke.py). With a fixed hash seed and no .pyc written its
    totals repeat exactly as well (a .pyc written by the first run changes the count of later ones).
  * instructions per MAC, with the MACs of the float model (`fwedge inspect`), and the ratio
    C / LiteRT per -cpu.
  * riscv64: the default bundle picks its kernels at run time (RVV 1.0 variants when the CPU has
    V, fwedge_rt.h), so `-cpu rv64` runs the portable kernels and `-cpu rv64,v=true,vlen=N` the
    rvv ones, in one binary; "riscv64 V vs portable" prints the ratio of the two counts.
  * --split N: where the C bundle's instructions go, by function: the bundle's own sources rebuilt
    unstripped (its Makefile with LDFLAGS=-static; the shipped binary is linked with -s), run
    with the plugin's mode=pcs, the per-block counts of the two runs differenced and binned by
    the symbol table; for LiteRT by library and function, with the guest's /proc/self/maps. The
    unstripped binary must execute exactly the shipped binary's count for the inferences.

Under qemu 7.2 the guest reads the host's x86 /proc/cpuinfo and XNNPACK's CPU detection crashes
on it (SIGSEGV). qemu-user looks absolute paths up under its -L root first, /proc and /sys
included, so each -cpu gets a root of its own (symlinks to the sysroot) holding a /proc/cpuinfo
written from what bench/guest/cpu_probe.c reads under that -cpu (MIDR_EL1, HWCAP, HWCAP2) and a
one-CPU /sys/devices/system/cpu. `-cpu max` alone makes XNNPACK pick SME kernels that qemu 7.2
computes wrongly: use max,sme=off.
"""
from __future__ import annotations

import argparse
import bisect
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fwedge.device_farm.instructions import GUEST_ENV, TOTAL_PREFIX

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples" / "fashion_mnist"
EXAMPLE_MODELS = ("cnn_small", "mobilenet_v2_tiny")
sys.path.insert(0, str(HERE))  # bench/real_models.py: the real models, as their tests quantize them
DEFAULT_CACHE = Path(os.environ.get("FWEDGE_BENCH_CACHE", Path.home() / ".cache" / "fwedge" / "bench"))
TIMEOUT = 900
# LiteRT's Python: the same hash seed every run, and no .pyc written into the sysroot (a .pyc
# written by one run changes the count of the next).
PYTHON_ENV = {**GUEST_ENV, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}

log = logging.getLogger("bench.instructions")

# Linux arm64 HWCAP / HWCAP2 bits, in bit order, by the names /proc/cpuinfo's Features line uses.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 "
                "smef16f32 smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16").split()


@dataclass
class Difference:
    """Totals of two runs that differ only in the number of inferences, and their difference.

    Attributes:
        low, high: inferences beyond the common part in each run.
        low_total, high_total: executed guest instructions of each whole run.
        low_repeat_total: the low run once more (determinism check).
        per_inference: (high_total - low_total) / (high - low).
    """

    low: int
    high: int
    low_total: int
    high_total: int
    low_repeat_total: int
    per_inference: float

    @property
    def jitter(self) -> int:
        return abs(self.low_repeat_total - self.low_total)


@dataclass
class CpuResult:
    """One model on one -cpu: the C bundle and, on aarch64, LiteRT."""

    arch: str
    cpu: str
    c: Difference
    litert: Difference | None = None
    litert_error: str | None = None
    outputs_agree: bool | None = None  # same top-1 class from LiteRT and the C bundle
    max_logit_difference: float | None = None  # max |LiteRT - C| over the output logits
    split: list[dict] = field(default_factory=list)
    litert_split: list[dict] = field(default_factory=list)


def run_setup(cache: Path) -> tuple[Path, Path]:
    """The plugin (the farm's builder, fwedge's cache) and the arm64 sysroot (cached under `cache`)."""
    from fwedge.device_farm.instructions import build_plugin

    subprocess.run(["bash", str(HERE / "setup_instructions.sh"), str(cache)], check=True,
                   env={**os.environ, "PYTHON": sys.executable}, stdout=subprocess.DEVNULL)
    return build_plugin(), cache / "sysroot-arm64"


def qemu_count(arch: str, cpu: str, plugin: Path, command: list[str], *, root: Path | None = None,
               cwd: Path, env: dict | None = None, mode: str = "total") -> tuple[int, list[str]]:
    """Run `command` under qemu-<arch> with the plugin.

    Returns:
        The executed guest instructions and, with mode="pcs", the plugin's per-block lines.
    """
    report = cwd / "insn-report.txt"
    argv = [f"qemu-{arch}", "-cpu", cpu]
    if root is not None:
        argv += ["-L", str(root)]
    argv += ["-plugin", f"{plugin},mode={mode},out={report}"] + command
    done = subprocess.run(argv, cwd=cwd, env=env or GUEST_ENV, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    lines = report.read_text().splitlines()
    report.unlink()
    if not lines or not lines[0].startswith(TOTAL_PREFIX):
        raise RuntimeError(f"the plugin wrote no total for {' '.join(argv)}")
    return int(lines[0][len(TOTAL_PREFIX):]), lines[1:]


def difference(run, low: int, high: int) -> Difference:
    """Run `run(inferences) -> total` for low (twice) and high inferences and difference them."""
    low_total = run(low)
    low_repeat = run(low)
    high_total = run(high)
    return Difference(low, high, low_total, high_total, low_repeat, (high_total - low_total) / (high - low))


# --------------------------------------------------------------------------------------------
# The models and bundles
# --------------------------------------------------------------------------------------------


def quantize(model: Path, out: Path) -> Path:
    """`fwedge quantize MODEL --data fashion-mnist:train --num-samples 256 -o OUT`."""
    subprocess.run([sys.executable, "-m", "fwedge", "quantize", str(model), "--data", "fashion-mnist:train",
                    "--num-samples", "256", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def model_macs(model: Path, input_shapes: dict | None = None) -> int | None:
    """MACs of one inference of the float model at `input_shapes`, as `fwedge inspect --input-shape` counts them."""
    from fwedge import ir
    from fwedge.summary import summarize

    loaded = ir.load(model)
    if input_shapes:
        loaded = ir.set_input_shapes(loaded, input_shapes)
    return summarize(loaded, with_support=False).total_macs


def test_image() -> np.ndarray:
    """The first Fashion-MNIST test image, [1, 1, 28, 28] float32 as the bundles' preprocessing gives it."""
    from fwedge.data import Preprocess, open_dataset

    batch = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                            batch_size=1, limit=1, seed=0))
    return np.ascontiguousarray(batch.x[:1], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# fwedge's C bundle
# --------------------------------------------------------------------------------------------


def c_difference(bundle, binary: Path, arch: str, cpu: str, plugin: Path, x: np.ndarray, work: Path,
                 low: int, high: int) -> tuple[Difference, np.ndarray]:
    """Instructions per inference of a C bundle's harness, from `BINARY IN OUT COUNT 0` at two counts.

    The harness reads, runs and writes COUNT samples (the same image each time). Its timed
    iterations would not do: each prints its clock reading, whose digits vary from run to run.
    """
    from fwedge.targets import c as c_target

    name = bundle.inputs[0].name
    for count in (low, high):
        c_target.write_harness_input(bundle, {name: np.repeat(x, count, axis=0)}, work / f"input-{count}.bin")

    def run(count: int) -> int:
        # no output file before any run: the harness stats it first, and its existence changes the count
        (work / "output.bin").unlink(missing_ok=True)
        total, _ = qemu_count(arch, cpu, plugin, [str(binary), f"input-{count}.bin", "output.bin", str(count), "0"],
                              cwd=work)
        return total

    result = difference(run, low, high)
    output = c_target.read_harness_output(bundle, work / "output.bin", high)
    return result, next(iter(output.values()))[0]


def unstripped_binary(bundle, work: Path) -> Path:
    """The bundle's sources rebuilt by its own Makefile without -s (same code, with a symbol table)."""
    source = work / f"{bundle.path.name}-unstripped"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(bundle.path, source)
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": os.environ.get("ZIG_GLOBAL_CACHE_DIR", str(ROOT / ".cache" / "zig"))}
    env["ZIG_LOCAL_CACHE_DIR"] = env["ZIG_GLOBAL_CACHE_DIR"]
    subprocess.run(["make", "-B", "-s", "-C", str(source), f"PYTHON={sys.executable}", "LDFLAGS=-static"],
                   check=True, env=env, capture_output=True, timeout=TIMEOUT)
    return source / "bin" / "fwedge_model"


@functools.lru_cache(maxsize=None)
def function_symbols(binary: Path) -> tuple[list[int], list[str]]:
    """Start addresses (sorted) and names of the code symbols of an ELF file (host binutils nm).

    The symbol table when there is one, else the dynamic symbols (a stripped shared library).
    """
    for dynamic in ([], ["-D"]):
        listing = subprocess.run(["nm", "-n", "--defined-only", *dynamic, str(binary)], capture_output=True,
                                 text=True).stdout
        starts, names = [], []
        for line in listing.splitlines():
            parts = line.split()
            # text symbols only: "$x"/"$d" (aarch64 mapping symbols) and ".L..." (riscv64 local labels) are no functions
            if len(parts) == 3 and parts[1] in "TtWw" and not parts[2].startswith(("$", ".L")):
                starts.append(int(parts[0], 16))
                names.append(parts[2])
        if starts:
            return starts, names
    return [], []


def symbol_at(binary: Path, address: int) -> str:
    """The function of `binary` holding `address` (an address of the ELF file's own layout)."""
    starts, names = function_symbols(binary)
    index = bisect.bisect_right(starts, address) - 1
    return names[index] if index >= 0 else "?"


@dataclass
class Mapping:
    """One file-backed executable mapping of a guest process (/proc/self/maps)."""

    start: int
    end: int
    path: Path
    base: int  # where the file's offset 0 was mapped: address in the file = vaddr - base


def executable_mappings(maps: str) -> list[Mapping]:
    """The executable file mappings of a /proc/self/maps text, with each file's load base."""
    rows = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            start, end = (int(v, 16) for v in parts[0].split("-"))
            rows.append((start, end, parts[1], int(parts[2], 16), parts[5].strip()))
    bases: dict[str, int] = {}
    for start, _, _, offset, path in rows:
        bases[path] = min(bases.get(path, start - offset), start - offset)
    return sorted((Mapping(start, end, Path(path), bases[path]) for start, end, perms, _, path in rows if "x" in perms),
                  key=lambda m: m.start)


def block_counts(lines: list[str]) -> dict[int, int]:
    """Instructions executed per block start address, from the plugin's "pcs" lines."""
    counts: dict[int, int] = {}
    for line in lines:
        tag, vaddr, n_insns, executions = line.split()
        if tag != "pcs":
            raise RuntimeError(f"unexpected plugin line {line!r}")
        counts[int(vaddr, 16)] = counts.get(int(vaddr, 16), 0) + int(n_insns) * int(executions)
    return counts


def by_function(blocks: dict[int, int], resolve) -> dict[str, int]:
    """Sum block counts by the function name `resolve(vaddr)` gives."""
    totals: dict[str, int] = {}
    for vaddr, count in blocks.items():
        name = resolve(vaddr)
        totals[name] = totals.get(name, 0) + count
    return totals


def split_difference(low: dict[str, int], high: dict[str, int], inferences: int) -> list[dict]:
    """Per-function instructions per inference of two binned runs, largest first."""
    delta = {name: high.get(name, 0) - low.get(name, 0) for name in set(low) | set(high)}
    total = sum(delta.values())
    return [{"function": name, "per_inference": count / inferences, "share": count / total}
            for name, count in sorted(delta.items(), key=lambda item: -item[1]) if count]


def c_split(bundle, arch: str, cpu: str, plugin: Path, work: Path, low: int, high: int,
            expected: Difference) -> list[dict]:
    """Instructions per inference by function of the C bundle, largest first.

    Raises:
        RuntimeError: the rebuilt binary does not execute the shipped binary's count per inference.
    """
    binary = unstripped_binary(bundle, work)

    def run(count: int) -> tuple[int, dict[int, int]]:
        (work / "output.bin").unlink(missing_ok=True)
        total, lines = qemu_count(arch, cpu, plugin, [str(binary), f"input-{count}.bin", "output.bin", str(count), "0"],
                                  cwd=work, mode="pcs")
        return total, block_counts(lines)

    (low_total, low_blocks), (high_total, high_blocks) = run(low), run(high)
    # The Makefile links the objects in another order than fwedge's build: the start-up moves by a
    # few dozen instructions (55 on aarch64), the difference of the two runs must not move at all.
    if high_total - low_total != expected.high_total - expected.low_total:
        raise RuntimeError(f"{bundle.path.name}: the unstripped rebuild executes {high_total - low_total} instructions "
                           f"for {high - low} inferences, the shipped binary {expected.high_total - expected.low_total}: "
                           "not the same code")
    resolve = functools.partial(symbol_at, binary)  # a static, non-PIE executable: vaddr = ELF address
    return split_difference(by_function(low_blocks, resolve), by_function(high_blocks, resolve), high - low)


# --------------------------------------------------------------------------------------------
# The peer: LiteRT under qemu-aarch64
# --------------------------------------------------------------------------------------------


def compile_probe(work: Path) -> Path:
    """bench/guest/cpu_probe.c as a static aarch64 binary (zig cc, as the C target uses)."""
    probe = work / "cpu_probe"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl", "-static", "-O1",
                    str(HERE / "guest" / "cpu_probe.c"), "-o", str(probe)], check=True, capture_output=True)
    return probe


def cpuinfo_text(probe_output: str) -> str:
    """A one-CPU arm64 /proc/cpuinfo for what cpu_probe printed (MIDR_EL1, HWCAP, HWCAP2)."""
    values = dict(line.split() for line in probe_output.splitlines())
    midr, hwcap, hwcap2 = (int(values[key], 16) for key in ("midr", "hwcap", "hwcap2"))
    features = [name for bit, name in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
    features += [name for bit, name in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1]
    # MIDR_EL1: implementer [31:24], variant [23:20], architecture [19:16], part [15:4], revision [3:0]
    return (f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\n"
            f"CPU implementer\t: {midr >> 24 & 0xff:#x}\nCPU architecture: 8\nCPU variant\t: {midr >> 20 & 0xf:#x}\n"
            f"CPU part\t: {midr >> 4 & 0xfff:#05x}\nCPU revision\t: {midr & 0xf}\n\n")


def cpu_root(cache: Path, sysroot: Path, cpu: str, probe: Path) -> Path:
    """The -L root for one -cpu: the sysroot's folders by symlink, its own /proc/cpuinfo and /sys."""
    probe_output = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(probe)], check=True, capture_output=True,
                                  text=True).stdout
    root = cache / "roots" / re.sub(r"[^A-Za-z0-9.-]+", "_", cpu)
    shutil.rmtree(root, ignore_errors=True)
    (root / "proc").mkdir(parents=True)
    for entry in sysroot.iterdir():
        if not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(probe_output))
    cpus = root / "sys" / "devices" / "system" / "cpu"
    (cpus / "cpu0").mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text("0\n")
    return root


def litert_difference(bundle, cpu: str, plugin: Path, sysroot: Path, root: Path, x: np.ndarray, work: Path,
                      low: int, high: int) -> tuple[Difference, np.ndarray]:
    """Instructions per inference of LiteRT running the tflite bundle under qemu-aarch64."""
    spec = bundle.inputs[0]
    if spec.layout == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    np.save(work / "litert_input.npy", np.ascontiguousarray(x))
    model = bundle.file("model.tflite")
    python = sysroot / "usr" / "bin" / "python3.11"

    def run(repeats: int) -> int:
        total, _ = qemu_count("aarch64", cpu, plugin, [str(python), str(HERE / "guest" / "litert_invoke.py"), str(model),
                                                       "litert_input.npy", "litert_output.npy", str(repeats)],
                              root=root, cwd=work, env=PYTHON_ENV)
        return total

    result = difference(run, low, high)
    return result, np.load(work / "litert_output.npy")


def litert_split(bundle, cpu: str, plugin: Path, sysroot: Path, root: Path, work: Path, low: int, high: int) -> list[dict]:
    """Instructions per inference by library and function of LiteRT (the x from litert_difference).

    Each run is binned with its own /proc/self/maps, so the two runs need not load the
    libraries at the same addresses.
    """
    python = sysroot / "usr" / "bin" / "python3.11"

    def run(repeats: int) -> dict[str, int]:
        maps_file = work / "litert_maps.txt"
        _, lines = qemu_count("aarch64", cpu, plugin, [str(python), str(HERE / "guest" / "litert_invoke.py"),
                                                       str(bundle.file("model.tflite")), "litert_input.npy",
                                                       "litert_output.npy", str(repeats), str(maps_file)],
                              root=root, cwd=work, env=PYTHON_ENV, mode="pcs")
        mappings = executable_mappings(maps_file.read_text())
        starts = [m.start for m in mappings]

        def resolve(vaddr: int) -> str:
            index = bisect.bisect_right(starts, vaddr) - 1
            if index < 0 or vaddr >= mappings[index].end:
                return "(no file)"
            mapping = mappings[index]
            return f"{mapping.path.name}:{symbol_at(mapping.path, vaddr - mapping.base)}"

        return by_function(block_counts(lines), resolve)

    return split_difference(run(low), run(high), high - low)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def measure_model(name: str, args, plugin: Path, sysroot: Path, roots: dict[str, Path], work: Path) -> dict:
    from fwedge.export import export_bundle

    model_work = work / name
    model_work.mkdir(parents=True, exist_ok=True)
    if name in EXAMPLE_MODELS:
        source, shapes = EXAMPLES / f"{name}.onnx", None
        qdq = quantize(source, model_work / f"{name}-int8.onnx")
        x = test_image()
    else:  # a real model, quantized as its test does (bench/real_models.py); its first held-out input
        from real_models import load_source

        real = load_source(name, model_work)
        source, shapes, qdq, x = real.float_path, real.input_shapes, real.qdq_path, real.x[:1]
    macs = model_macs(source, shapes)
    results = []
    tflite = export_bundle(qdq, "tflite", model_work / "tflite", input_shapes=shapes) if args.aarch64_cpus else None
    for arch, cpus in (("aarch64", args.aarch64_cpus), ("riscv64", args.riscv64_cpus)):
        if not cpus:
            continue
        bundle = export_bundle(qdq, arch, model_work / arch, input_shapes=shapes)
        for cpu in cpus:
            log.info("%s: C bundle on qemu-%s -cpu %s", name, arch, cpu)
            c_result, c_output = c_difference(bundle, bundle.file("bin/fwedge_model"), arch, cpu, plugin, x,
                                              model_work, *args.iterations)
            result = CpuResult(arch, cpu, c_result)
            if arch == "aarch64":
                log.info("%s: LiteRT on qemu-aarch64 -cpu %s", name, cpu)
                try:
                    result.litert, litert_output = litert_difference(tflite, cpu, plugin, sysroot, roots[cpu], x,
                                                                     model_work, *args.iterations)
                    result.outputs_agree = bool(np.argmax(litert_output) == np.argmax(c_output))
                    result.max_logit_difference = float(np.abs(litert_output.ravel() - c_output.ravel()).max())
                    if args.split:
                        result.litert_split = litert_split(tflite, cpu, plugin, sysroot, roots[cpu], model_work,
                                                           *args.iterations)[: args.split]
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    result.litert_error = str(exc)
            if args.split:
                result.split = c_split(bundle, arch, cpu, plugin, model_work, *args.iterations,
                                       expected=c_result)[: args.split]
            results.append(result)
    return {"model": name, "macs": macs, "runs": [asdict(r) | {"c_jitter": r.c.jitter} for r in results]}


def per_mac(count: float, macs: int | None) -> str:
    return f"{count / macs:.3f}" if macs else "?"


def print_table(measured: list[dict]) -> None:
    header = ["model", "arch", "-cpu", "MACs", "fwedge C insns (insns/MAC)", "LiteRT insns (insns/MAC)", "C / LiteRT"]
    rows = []
    for entry in measured:
        for run in entry["runs"]:
            c = run["c"]["per_inference"]
            litert = run["litert"]["per_inference"] if run["litert"] else None
            rows.append([entry["model"], run["arch"], run["cpu"], f"{entry['macs']:,}" if entry["macs"] else "?",
                         f"{c:,.0f} ({per_mac(c, entry['macs'])})",
                         f"{litert:,.0f} ({per_mac(litert, entry['macs'])})" if litert else
                         ("failed" if run["litert_error"] else "-"),
                         f"{c / litert:.2f}x" if litert else "-"])
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    runs = [run for entry in measured for run in entry["runs"]]

    def agreement(differences: list[dict]) -> str:
        jitter = max(abs(d["low_repeat_total"] - d["low_total"]) for d in differences)
        return "identical" if jitter == 0 else f"differ by up to {jitter:,} instructions"

    litert_runs = [run["litert"] for run in runs if run["litert"]]
    print(f"\nrepeats of the low run: C totals {agreement([run['c'] for run in runs])}"
          + (f"; LiteRT totals {agreement(litert_runs)}" if litert_runs else ""))
    for entry in measured:
        for run in entry["runs"]:
            if run["litert_error"]:
                print(f"LiteRT {entry['model']} -cpu {run['cpu']}: {run['litert_error']}")
        shown: dict[tuple, str] = {}  # an aarch64 C bundle runs the same code on every -cpu: print it once
        for run in entry["runs"]:
            for key, who in (("split", "C"), ("litert_split", "LiteRT")):
                if not run[key]:
                    continue
                title = f"{entry['model']} {who} on {run['arch']} -cpu {run['cpu']}"
                same_as = shown.setdefault((who, run["arch"], json.dumps(run[key])), run["cpu"])
                if same_as != run["cpu"]:
                    print(f"\n{title}: the same as -cpu {same_as}")
                    continue
                print(f"\n{title}, by function (per inference):")
                for item in run[key]:
                    print(f"  {item['per_inference']:>12,.0f}  {item['share'] * 100:5.1f}%  {item['function']}")


def print_riscv_ratios(measured: list[dict]) -> None:
    """The riscv64 bundle's count with V against its count under -cpu rv64 (no V: the portable
    kernels of the same binary), per model and V cpu; nothing without an rv64 run."""
    lines = []
    for entry in measured:
        runs = {run["cpu"]: run["c"]["per_inference"] for run in entry["runs"] if run["arch"] == "riscv64"}
        portable = runs.get("rv64")
        for cpu, count in runs.items():
            if portable and "v=true" in cpu:
                lines.append(f"  {entry['model']} -cpu {cpu}: {count:,.0f} vs {portable:,.0f} insns: "
                             f"{portable / count:.2f}x fewer")
    if lines:
        print("\nriscv64 V vs portable (the same bundle under -cpu rv64):")
        print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from real_models import SOURCES

    parser.add_argument("--models", nargs="+", default=list(EXAMPLE_MODELS), choices=list(SOURCES),
                        help="the examples (default) or real models of bench/real_models.py")
    parser.add_argument("--aarch64-cpus", nargs="*", default=["cortex-a53", "cortex-a76", "max,sme=off"])
    parser.add_argument("--riscv64-cpus", nargs="*", default=["rv64", "rv64,v=true,vlen=128", "rv64,v=true,vlen=256"])
    parser.add_argument("--iterations", nargs=2, type=int, default=[5, 45], metavar=("LOW", "HIGH"),
                        help="inferences of the two differenced runs")
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="also print the N functions of the C bundle with the most instructions")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "instructions.json")
    args = parser.parse_args()
    if not 0 < args.iterations[0] < args.iterations[1]:
        parser.error("--iterations: expected 0 < LOW < HIGH")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # the bench's own progress lines, not every compiler command
    plugin, sysroot = run_setup(args.cache)
    with tempfile.TemporaryDirectory(prefix="fwedge-insn-") as temp:
        work = Path(temp)
        roots = {}
        if args.aarch64_cpus:
            probe = compile_probe(work)
            roots = {cpu: cpu_root(args.cache, sysroot, cpu, probe) for cpu in args.aarch64_cpus}
        measured = [measure_model(name, args, plugin, sysroot, roots, work) for name in args.models]
    print_table(measured)
    print_riscv_ratios(measured)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": "fwedge.bench.instructions/1", "qemu": qemu_version(), "iterations": args.iterations,
               "models": measured}
    temp_json = args.json.with_suffix(".json.part")
    temp_json.write_text(json.dumps(payload, indent=2) + "\n")
    temp_json.replace(args.json)
    print(f"\nwrote {args.json}")


def qemu_version() -> str:
    return subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


if __name__ == "__main__":
    main()

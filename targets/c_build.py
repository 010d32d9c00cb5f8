"""C target builds: the compilers (zig cc per architecture, the host cc, a CC override), the kernel object cache, ELF size figures, and the bundle's Makefile and CMakeLists.txt."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fwedge.bundle import host_arch
from fwedge.errors import ExportError
from fwedge.ir import write_atomic
from fwedge.runtime_c import HEADERS
from fwedge.targets.base import C_ARCHES
from fwedge.targets.c_codegen import CProgram

log = logging.getLogger(__name__)

BINARY = "bin/fwedge_model"
# zig target triples; static musl binaries run under qemu-user without a sysroot.
ZIG_TRIPLES = {
    "x86_64": "x86_64-linux-musl",
    "aarch64": "aarch64-linux-musl",
    "riscv64": "riscv64-linux-musl",
    "loongarch64": "loongarch64-linux-musl",
}
# QEMU 7.2's LoongArch emulation lacks LSX/LASX: zig's default CPU for the triple emits them and
# the binary dies with SIGILL (checked); the base ISA with hardware float runs.
ZIG_CPU_FLAGS = {"loongarch64": ["-mcpu=generic_la64+f+d"]}
# ELF e_machine of each architecture, to catch a CC override that builds for the wrong one.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "riscv64": 243, "loongarch64": 258}
# -ffp-contract=off: no fused multiply-add, so float results do not depend on the FMA units of
# the CPU; -fno-strict-aliasing: tensors of several types share the byte arena.
C_FLAGS = ["-std=c99", "-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-Wall"]
# The link strips symbols and debug information: zig's musl objects carry debug information with
# the paths of the machine's zig installation and of the temporary build folder, so unstripped
# cross-compiled binaries differed from build to build (and were 1.7 MB instead of 190 KB).
# Stripped, the same sources give the same binary bytes on every machine.
LINK_FLAGS = ["-s"]
# Run-time dispatch builds (fwedge_rt.h): an architecture's kernel sources compiled again for
# wider instruction sets, by the wrapper files runtime_c/variants/<kernel>_<suffix>.c, and
# linked beside the baseline kernels; the generated model calls *_dispatch entries that pick
# the widest variant the CPU runs. One entry per architecture that has variants.


@dataclass(frozen=True)
class Dispatch:
    """The kernel variants of one architecture's dispatch build."""

    define: str                      # the -D flag every source of the build gets
    kernels: tuple[str, ...]         # the runtime sources that have variants
    variants: dict[str, list[str]]   # wrapper suffix -> the flags its wrappers are compiled with
    names: dict[str, str]            # wrapper suffix -> its name in the manifest's kernel_variants
    describe: str                    # one line for the bundle's Makefile and CMakeLists

    def sources(self, kernels: list[str]) -> dict[str, list[str]]:
        """The variant wrapper files of the dispatched kernels among `kernels`, by suffix."""
        return {suffix: [variant_file(kernel, suffix) for kernel in kernels if kernel in self.kernels]
                for suffix in self.variants}


DISPATCH = {
    "x86_64": Dispatch("-DFW_X86_DISPATCH", ("conv2d_s8.c", "depthwise_s8.c", "elementwise_s8.c"),
                       {"avx2": ["-march=x86-64-v3"], "vnni": ["-march=x86-64-v4", "-mavx512vnni"]},
                       {"avx2": "avx2", "vnni": "avx512_vnni"},
                       "x86-64 dispatch: kernels compiled again for AVX2 and AVX-512 VNNI, picked at run time"),
    # the int8 conv compiled again with sdot; both aarch64 conv kernels read the quads (fwedge_rt.h)
    "aarch64": Dispatch("-DFW_ARM_DISPATCH", ("conv2d_s8.c",), {"dotprod": ["-mcpu=generic+dotprod"]},
                        {"dotprod": "dotprod"},
                        "aarch64 dispatch: the int8 conv compiled again for ARMv8 dotprod (sdot), picked at run time"),
    # RVV 1.0, picked when AT_HWCAP has the V bit (fw_riscv_level in data.c); FW_RVV_CFLAGS
    "riscv64": Dispatch("-DFW_RISCV_DISPATCH", ("conv2d_s8.c", "depthwise_s8.c", "elementwise_s8.c"),
                        {"rvv": ["-march=rv64gcv"]}, {"rvv": "rvv"},
                        "riscv64 dispatch: kernels compiled again with the V extension (RVV 1.0; zig cc's "
                        "-mcpu=baseline_rv64+v is -march=rv64gcv), picked at run time"),
}
# Flags zig cc spells its own way: it reads -march=<name> as a CPU name, so the ISA string of
# gcc and clang becomes zig's CPU plus features. Applied to the variant flags whenever the
# compiler is zig (build_binary, the bundle's Makefile); CMakeLists.txt keeps the gcc spelling.
ZIG_SPELLINGS = {"-march=rv64gcv": "-mcpu=baseline_rv64+v"}


def spelled_for(compiler: list[str], flags: list[str]) -> list[str]:
    """`flags` as `compiler` takes them: ZIG_SPELLINGS applied when it is `python -m ziglang cc`."""
    if compiler[1:3] != ["-m", "ziglang"]:
        return list(flags)
    return [ZIG_SPELLINGS.get(flag, flag) for flag in flags]

# The x86_64 variant flags (FW_AVX2_CFLAGS, FW_VNNI_CFLAGS in fwedge_rt.h).
VARIANT_CFLAGS = DISPATCH["x86_64"].variants


def variant_file(kernel: str, suffix: str) -> str:
    """The wrapper file that compiles `kernel` (e.g. conv2d_s8.c) for one level: conv2d_s8_vnni.c."""
    return f"{kernel[:-2]}_{suffix}.c"


# wrapper file -> the kernel source it includes (every architecture's)
VARIANT_KERNELS = {variant_file(kernel, suffix): kernel for spec in DISPATCH.values() for kernel in spec.kernels
                   for suffix in spec.variants}

# Stack the kernels need beyond the frames -fstack-usage reports (libm calls, alignment).
STACK_MARGIN = 512


def dispatch_build(arch: str, cflags: list[str]) -> Dispatch | None:
    """The kernel variants a build carries and picks at run time, or None: the default build of an
    architecture with variants (DISPATCH), whose flags choose no instruction set (no -m... other
    than -mtune=), keep the intrinsics and do not opt out with -DFW_NO_DISPATCH (the baseline
    kernels only: less ROM)."""
    if any((flag.startswith("-m") and not flag.startswith("-mtune="))
           or flag in ("-DFW_NO_INTRINSICS", "-DFW_NO_DISPATCH") for flag in cflags):
        return None
    return DISPATCH.get(arch)


# --------------------------------------------------------------------------------------------
# Compilers
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """fwedge's cache folder: $FWEDGE_CACHE, else ~/.cache/fwedge."""
    return Path(os.environ["FWEDGE_CACHE"]) if os.environ.get("FWEDGE_CACHE") else Path.home() / ".cache" / "fwedge"


def zig_cache_dir() -> Path:
    """ZIG_GLOBAL_CACHE_DIR: the caller's if set, else inside fwedge's cache (<cache>/zig)."""
    if os.environ.get("ZIG_GLOBAL_CACHE_DIR"):
        return Path(os.environ["ZIG_GLOBAL_CACHE_DIR"])
    return cache_dir() / "zig"


def compiler_command(arch: str, cc: str | None = None) -> list[str]:
    """The compiler argv (without flags or files) for an architecture.

    Order: `cc` (ExportOptions.cc, a vendor toolchain), then $CC, then the system `cc` for the
    host architecture and `python -m ziglang cc -target <arch>-linux-musl` for the others.

    Raises:
        ExportError: an unknown architecture, or no compiler available.
    """
    if arch not in C_ARCHES:
        raise ExportError(f"C target: unknown architecture {arch!r}; choose from {', '.join(C_ARCHES)}")
    override = cc or os.environ.get("CC")
    if override:
        return shlex.split(override)
    if arch == host_arch():
        for name in ("cc", "gcc", "clang"):
            if shutil.which(name):
                return [name]
    if importlib.util.find_spec("ziglang") is None:
        raise ExportError(f"C target: building for {arch} needs zig (pip install ziglang, the cross extra) "
                          "or a cross compiler given with --cc / $CC")
    return [sys.executable, "-m", "ziglang", "cc", "-target", ZIG_TRIPLES[arch], *ZIG_CPU_FLAGS.get(arch, [])]


def recorded_command(compiler: list[str]) -> list[str]:
    """The compiler argv as a manifest records it: this machine's Python interpreter (the one
    that runs zig) is written `python3`, as in the bundle's Makefile, so that the same sources
    give the same manifest on every machine."""
    return ["python3" if part == sys.executable else part for part in compiler]


def zig_lib_key(version: str, record: str) -> str:
    """<ziglang version>-<digest of its lib files' lines in RECORD (path, sha256, size)>. Only
    those lines: the console script's differs per venv (its shebang names the venv's python)."""
    lines = sorted(line for line in record.splitlines() if line.startswith("ziglang/lib/"))
    return f"{version}-{hashlib.sha256(chr(10).join(lines).encode()).hexdigest()[:16]}"


@functools.lru_cache(maxsize=None)
def shared_zig_lib() -> Path | None:
    """One copy of the installed zig's lib folder per zig version, under fwedge's cache, for
    ZIG_LIB_DIR; None when ziglang is not installed or the copy cannot be made.

    zig rebuilds musl and compiler-rt (about a minute per architecture) whenever the lib files it
    reads are new files, even with the same contents at the same path, so every fresh venv (a CI
    job, a second worktree) would rebuild them. With every venv's zig reading the same lib files,
    those builds are made once per machine and zig version. The copy is keyed by the ziglang
    version and a digest of its lib files' sha256 (from RECORD), and appears whole or not at all.
    """
    spec = importlib.util.find_spec("ziglang")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not source.is_dir():
        return None
    dist = importlib.metadata.distribution("ziglang")
    target = cache_dir() / "zig-lib" / zig_lib_key(dist.version, dist.read_text("RECORD") or "")
    if target.is_dir():
        return target
    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        shutil.copytree(source, partial / "lib")
        try:
            os.rename(partial / "lib", target)
        except OSError:  # another process finished its copy first
            if not target.is_dir():
                raise
    except OSError as exc:
        log.debug("zig's lib folder not shared (%s); this venv's zig builds its own libc", exc)
        return None
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _compiler_env() -> dict:
    env = dict(os.environ)
    cache = zig_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(cache)
    env.setdefault("ZIG_LOCAL_CACHE_DIR", str(cache))
    if "ZIG_LIB_DIR" not in env:
        lib = shared_zig_lib()
        if lib is not None:
            env["ZIG_LIB_DIR"] = str(lib)
    return env


def _compiler_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=60, env=_compiler_env())
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass
class BuildResult:
    """A compiled harness binary.

    Attributes:
        command: the compiler argv of the link step (paths relative to the bundle folder).
        compiler_version: first line of `<cc> --version`.
        sections: ELF section totals of the whole static binary (machine, text, rodata, data, bss).
        model_sections: the same totals summed over the objects of model.c and the kernels (the
            harness and libc excluded): what the model adds to a firmware image.
        stack_estimate_bytes: fwedge_run's frame plus the deepest kernel frame (host gcc
            -fstack-usage) plus a margin; None when no gcc is available.
    """

    command: list[str]
    compiler_version: str
    sections: dict
    model_sections: dict
    stack_estimate_bytes: int | None


def _run_compiler(argv: list[str], arch: str, cwd: str, timeout: float) -> subprocess.CompletedProcess:
    log.info("compiling: %s", " ".join(argv))
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_compiler_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"C target: cannot run the compiler {argv[0]!r} for {arch}: {exc}") from exc


def _compile_object(compiler: list[str], flags: list[str], folder: Path, source: str, obj: Path, arch: str,
                    timeout: float) -> None:
    """Compile one source to `obj`. Runtime kernels (not model.c or main.c) are cached in
    <cache>/c-objects keyed by the compiler argv, flags and the source and header bytes, since
    every bundle of an architecture compiles the same kernel files. (Every runtime header counts:
    a kernel may include more than fwedge_rt.h; model.h is the model's, and no kernel reads it.)"""
    key = None
    if source not in ("model.c", "main.c"):
        digest = hashlib.sha256(json.dumps([compiler, flags, source]).encode())
        digest.update((folder / source).read_bytes())
        for header in HEADERS:
            digest.update((folder / header).read_bytes())
        if source in VARIANT_KERNELS:  # a variant wrapper includes its kernel source
            digest.update((folder / VARIANT_KERNELS[source]).read_bytes())
        key = cache_dir() / "c-objects" / f"{digest.hexdigest()}.o"
        if key.is_file():
            shutil.copyfile(key, obj)
            return
    done = _run_compiler(compiler + flags + ["-I", str(folder), "-c", str(folder / source), "-o", str(obj)],
                         arch, str(obj.parent), timeout)
    if done.returncode != 0:
        raise ExportError(f"C target: compiling {source} for {arch} failed (exit {done.returncode}):\n"
                          f"{done.stderr.strip()[-4000:]}")
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(key, obj.read_bytes())


def build_binary(folder: Path, sources: list[str], arch: str, cc: str | None = None,
                 extra_flags: list[str] | None = None, static: bool = True, timeout: float = 600,
                 source_flags: dict[str, list[str]] | None = None) -> BuildResult:
    """Compile `sources` (relative to `folder`) one object each, then link folder/bin/fwedge_model.
    source_flags adds flags for single sources (the AVX2 and VNNI variants of a dispatch build).

    Raises:
        ExportError: the compiler failed (its stderr is in the message), or built for another
            architecture than `arch`.
    """
    compiler = compiler_command(arch, cc)
    output = folder / BINARY
    output.parent.mkdir(parents=True, exist_ok=True)
    flags = C_FLAGS + (extra_flags or [])
    model_sections = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    with tempfile.TemporaryDirectory(prefix="fwedge-cc-") as build_dir:
        objects = []
        for source in sources:
            obj = Path(build_dir) / (Path(source).stem + ".o")
            _compile_object(compiler, flags + spelled_for(compiler, (source_flags or {}).get(source, [])), folder,
                            source, obj, arch, timeout)
            objects.append(str(obj))
            if source != "main.c":
                for key, value in elf_sections(obj).items():
                    if key in model_sections:
                        model_sections[key] += value
        link = compiler + flags + LINK_FLAGS + (["-static"] if static else []) + objects + ["-o", str(output), "-lm"]
        done = _run_compiler(link, arch, build_dir, timeout)
        if done.returncode != 0 and static and arch == host_arch() and not (cc or os.environ.get("CC")):
            # Some hosts lack a static libc; a dynamic host binary is still a working bundle.
            log.warning("static host link failed, linking dynamically: %s", done.stderr.strip()[-300:])
            done = _run_compiler([a for a in link if a != "-static"], arch, build_dir, timeout)
        if done.returncode != 0:
            raise ExportError(f"C target: linking for {arch} failed (exit {done.returncode}):\n{done.stderr.strip()[-4000:]}")
    sections = elf_sections(output)
    if sections["machine"] != ELF_MACHINES[arch]:
        raise ExportError(f"C target: the compiler {' '.join(compiler)!r} built for ELF machine {sections['machine']}, "
                          f"expected {ELF_MACHINES[arch]} ({arch}); set --cc / $CC to a {arch} compiler")
    command = (recorded_command(compiler) + flags + LINK_FLAGS + (["-static"] if static else []) + ["-I."] + sources
               + ["-o", BINARY, "-lm"])
    for source, added in (source_flags or {}).items():  # how the per-source flags were given
        command += [f"({source}: {' '.join(spelled_for(compiler, added))})"]
    return BuildResult(command, _compiler_version(compiler), sections, model_sections,
                       stack_estimate(folder, [source for source in sources if source not in (source_flags or {})]))


def stack_estimate(folder: Path, sources: list[str]) -> int | None:
    """fwedge_run's frame plus the largest kernel frame, from host gcc -fstack-usage, plus a margin.

    Frames are close across 64-bit targets (same C, int32 accumulators on the stack); this is an
    estimate, recorded as such in the manifest. The harness's stdio is not counted. Frame sizes
    are cached like the kernel objects, model.c's too (keyed by it and model.h): every
    architecture's bundle of a model that writes the same model.c then compiles it once with gcc
    here (YOLOv8n's 28 MB model.c takes ~5 s).
    """
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    frames: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fwedge-su-") as temp:
        for source in sources:
            if source == "main.c":
                continue
            digest = hashlib.sha256(json.dumps([gcc, C_FLAGS, source]).encode())
            digest.update((folder / source).read_bytes())
            for header in [*HEADERS, *(["model.h"] if source == "model.c" else [])]:
                digest.update((folder / header).read_bytes())
            key = cache_dir() / "c-objects" / f"{digest.hexdigest()}.su"
            if key.is_file():
                text = key.read_text()
            else:
                obj = Path(temp) / (Path(source).stem + ".o")
                done = subprocess.run([gcc, *C_FLAGS, "-fstack-usage", "-I", str(folder), "-c", str(folder / source),
                                       "-o", str(obj)], capture_output=True, text=True, timeout=300, cwd=temp)
                if done.returncode != 0:
                    return None
                usage = obj.with_suffix(".su")
                text = usage.read_text() if usage.is_file() else ""
                key.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(key, text)
            for line in text.splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1].strip().isdigit():
                    frames[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    run_frame = frames.pop("fwedge_run", 0)
    return run_frame + max(frames.values(), default=0) + STACK_MARGIN


def elf_sections(path: Path) -> dict:
    """Section totals of an ELF file, read from its section headers.

    Returns:
        {"machine", "text", "rodata", "data", "bss"} in bytes: text = allocated executable
        sections, rodata = allocated read-only data, data = allocated writable initialised
        data, bss = allocated NOBITS.

    Raises:
        ExportError: not a little-endian 64-bit ELF file.
    """
    blob = Path(path).read_bytes()
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ExportError(f"'{path}': not a little-endian 64-bit ELF file")
    machine = struct.unpack_from("<H", blob, 0x12)[0]
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", blob, 0x3A)
    totals = {"machine": machine, "text": 0, "rodata": 0, "data": 0, "bss": 0}
    for index in range(shnum):
        sh_type, sh_flags = struct.unpack_from("<IQ", blob, shoff + index * shentsize + 4)
        size = struct.unpack_from("<Q", blob, shoff + index * shentsize + 0x20)[0]
        if not sh_flags & 0x2:  # SHF_ALLOC
            continue
        if sh_type == 8:  # SHT_NOBITS
            totals["bss"] += size
        elif sh_flags & 0x4:  # SHF_EXECINSTR
            totals["text"] += size
        elif sh_flags & 0x1:  # SHF_WRITE
            totals["data"] += size
        else:
            totals["rodata"] += size
    return totals


# --------------------------------------------------------------------------------------------
# Bundle files
# --------------------------------------------------------------------------------------------


def makefile_text(program: CProgram, arch: str, compiler: list[str], sources: list[str], cflags: list[str],
                  variants: list[str], dispatch: Dispatch | None = None) -> str:
    if compiler[:3] == [sys.executable, "-m", "ziglang"]:
        default_cc = "$(PYTHON) -m ziglang cc " + " ".join(compiler[3 + 1:])
    else:
        default_cc = " ".join(shlex.quote(part) for part in compiler)
    levels = rules = ""
    if dispatch is not None:
        levels = f"# {dispatch.describe} (fwedge_rt.h)\n" + "".join(
            f"{suffix.upper()}_CFLAGS = {' '.join(spelled_for(compiler, flags))}\n"
            for suffix, flags in dispatch.variants.items())
        rules = "".join(f"""bin/%_{suffix}.o: %_{suffix}.c %.c $(HEADERS)
\tmkdir -p bin
\t$(CC) $(CFLAGS) $({suffix.upper()}_CFLAGS) -I. -c $< -o $@

""" for suffix in dispatch.variants)
    return f"""# Rebuild this fwedge C bundle ({arch}). With a vendor toolchain: make CC=aarch64-linux-gnu-gcc
# Generated by fwedge; the default compiler is the one fwedge used.
PYTHON ?= python3
ifeq ($(origin CC),default)
CC = {default_cc}
endif
CFLAGS ?= {' '.join(C_FLAGS + cflags)}
LDFLAGS ?= -static {' '.join(LINK_FLAGS)}
export ZIG_GLOBAL_CACHE_DIR ?= .cache/zig
export ZIG_LOCAL_CACHE_DIR ?= .cache/zig
SOURCES = {' '.join(sources)}
HEADERS = {' '.join(HEADERS)}
{levels}VARIANTS = {' '.join(variants)}
VARIANT_OBJECTS = $(VARIANTS:%.c=bin/%.o)

{BINARY}: $(SOURCES) $(VARIANT_OBJECTS) model.h $(HEADERS)
\tmkdir -p bin
\t$(CC) $(CFLAGS) $(LDFLAGS) -I. $(SOURCES) $(VARIANT_OBJECTS) -o $@ -lm

{rules}clean:
\trm -f {BINARY} $(VARIANT_OBJECTS)

.PHONY: clean
"""


def cmakelists_text(sources: list[str], variants: dict[str, list[str]], dispatch: Dispatch | None = None) -> str:
    lines = ""
    if dispatch is not None and any(variants.values()):
        lines = (f"# {dispatch.describe} (fwedge_rt.h)\n"
                 f"target_compile_definitions(fwedge_model PRIVATE {dispatch.define[2:]})\n")
        for suffix, files in variants.items():
            lines += (f"set_source_files_properties({' '.join(files)} PROPERTIES COMPILE_OPTIONS "
                      f"\"{';'.join(dispatch.variants[suffix])}\")\n")
    all_variants = [name for files in variants.values() for name in files]
    return f"""# Rebuild this fwedge C bundle with CMake; cross-compile with -DCMAKE_TOOLCHAIN_FILE=<vendor file>.
cmake_minimum_required(VERSION 3.10)
project(fwedge_model C)
set(CMAKE_C_STANDARD 99)
set(CMAKE_C_STANDARD_REQUIRED ON)
add_executable(fwedge_model {' '.join(sources + all_variants)})
target_include_directories(fwedge_model PRIVATE ${{CMAKE_CURRENT_SOURCE_DIR}})
target_compile_options(fwedge_model PRIVATE -O3 -ffp-contract=off -fno-strict-aliasing)
{lines}target_link_libraries(fwedge_model m)
"""

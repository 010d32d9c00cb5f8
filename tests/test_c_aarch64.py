"""aarch64 C bundles on each emulated CPU: the NEON (ARMv8.0) and dotprod kernels give the host's bytes."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from channel_models import flatten_gemm, mobilenet_like
from fwedge.bundle import host_arch, load_bundle
from fwedge.lowered.interp import run_lowered
from fwedge.lowered.lower import lower
from fwedge.runtime_c import TESTS, kernel_sources, source_dir
from fwedge.targets import COptions, ExportOptions, get_target
from op_matrix import OP_CASES, qdq_model, random_feeds
from qdq_helpers import ort_qdq

# qemu-aarch64 CPU models and the conv kernels an aarch64 dispatch build runs on each: the
# Cortex-A53 is ARMv8.0 (NEON only), the Cortex-A76 has dotprod, `max` every extension qemu has.
AARCH64_CPUS = {"cortex-a53": "baseline", "cortex-a76": "dotprod", "max": "dotprod"}
INT8_CASES = [case for case in OP_CASES if case.int8]

pytestmark = [pytest.mark.zig, pytest.mark.qemu("aarch64")]


def _c():
    from fwedge.targets import c

    return c


def _export(model, folder, arch: str, cflags: list[str] | None = None):
    bundle = get_target(arch).export(model, folder, ExportOptions(source_sha256="0" * 64,
                                                                  target_options=COptions(cflags=cflags or [])))
    return load_bundle(bundle.path)


def _unit_test_binary(tmp_path, name: str, flags: list[str], dispatch: bool):
    """The runtime unit tests built with zig for aarch64; with `dispatch`, as the default aarch64
    bundle builds its kernels (FW_ARM_DISPATCH plus the dotprod variant objects)."""
    from fwedge.targets import c_build

    folder = source_dir()
    compiler = c_build.compiler_command("aarch64") + ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", *flags,
                                                      "-I", str(folder)]
    objects = []
    if dispatch:
        spec = c_build.DISPATCH["aarch64"]
        compiler.append(spec.define)
        for suffix, variant_flags in spec.variants.items():
            for variant in sorted((folder / "variants").glob(f"*_{suffix}.c")):
                obj = tmp_path / f"{variant.stem}.o"
                done = subprocess.run(compiler + variant_flags + ["-c", str(variant), "-o", str(obj)],
                                      capture_output=True, text=True, timeout=600, env=c_build._compiler_env())
                assert done.returncode == 0, f"compiling {variant.name}:\n{done.stderr[-3000:]}"
                objects.append(str(obj))
        assert objects, "no aarch64 kernel variants"
    binary = tmp_path / name
    sources = [str(folder / source) for source in kernel_sources()] + [str(folder / test) for test in TESTS]
    done = subprocess.run(compiler + ["-static"] + sources + objects + ["-o", str(binary), "-lm"], capture_output=True,
                          text=True, timeout=600, env=c_build._compiler_env())
    assert done.returncode == 0, f"compiling the runtime unit tests ({name}):\n{done.stderr[-3000:]}"
    return binary


@pytest.mark.parametrize("build", ["neon", "dispatch", "dotprod_everywhere"])
def test_runtime_unit_tests_pass_on_each_aarch64_cpu(build, tmp_path):
    """The baseline NEON kernels (every CPU: also on the dotprod CPUs, which a -DFW_NO_DISPATCH
    bundle runs them on), the dispatch build (the dotprod conv where the CPU has it, which it
    says), and a whole build for dotprod (its CPUs only)."""
    flags = {"neon": [], "dispatch": [], "dotprod_everywhere": ["-mcpu=generic+dotprod"]}[build]
    binary = _unit_test_binary(tmp_path, build, flags, dispatch=build == "dispatch")
    for cpu, kernels in AARCH64_CPUS.items():
        if build == "dotprod_everywhere" and kernels != "dotprod":
            continue
        done = subprocess.run([*_c().launcher("aarch64", cpu), str(binary)], capture_output=True, text=True,
                              timeout=300)
        tally = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        assert done.returncode == 0 and tally.endswith(" 0 failed"), (build, cpu, done.stdout[-3000:],
                                                                      done.stderr[-2000:])
        if build == "dispatch":
            assert f"the {kernels} kernels run" in done.stdout, (cpu, done.stdout[:300])


@pytest.mark.parametrize("case", INT8_CASES, ids=[case.id for case in INT8_CASES])
def test_int8_op_matrix_on_each_aarch64_cpu_matches_the_host_bytes(case, tmp_path):
    """Every int8 op of the matrix: the default aarch64 bundle's bytes on every CPU model are the
    host build's and the lowering's interpreter's."""
    qdq = qdq_model(case)
    feeds = random_feeds(case, batch=4)
    c = _c()
    host = get_target("c").run(_export(qdq, tmp_path / "host", host_arch()), feeds)["y"]
    np.testing.assert_array_equal(host, run_lowered(lower(qdq), feeds)["y"], err_msg=f"{case.id}: host vs interpreter")
    bundle = _export(qdq, tmp_path / "aarch64", "aarch64")
    for cpu in AARCH64_CPUS:
        emulated, _ = c.run_harness(bundle, feeds, cpu=cpu)
        assert emulated["y"].tobytes() == host.tobytes(), f"{case.id}: aarch64 -cpu {cpu} output 'y' bytes differ"


@pytest.mark.parametrize("builder", [mobilenet_like, flatten_gemm], ids=["mobilenet_like", "flatten_gemm"])
def test_int8_model_is_byte_identical_on_each_aarch64_cpu(builder, tmp_path):
    """The default aarch64 bundle carries the dotprod conv (and fully connected) variant and one copy of the conv
    weights (quads, named in the manifest) and says which kernels it ran; on every CPU model its
    output bytes are the host's, and so are those of the -DFW_NO_DISPATCH (baseline NEON only)
    and the -DFW_NO_INTRINSICS (portable loops, pair layout) builds."""
    from fwedge.passes.fold_bn import fold_batchnorm

    model = builder()
    shape = [6] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(1).uniform(0.0, 1.0, shape).astype(np.float32)
    qdq = ort_qdq(fold_batchnorm(model), x)
    name = model.graph.output[0].name
    c = _c()
    host = get_target("c").run(_export(qdq, tmp_path / "host", host_arch()), {"input": x})[name].tobytes()
    bundle = _export(qdq, tmp_path / "default", "aarch64")
    has_gemm = any(node.op_type in ("Gemm", "MatMul") for node in model.graph.node)
    assert bundle.extra["kernel_variants"] == {"dotprod": ["conv2d_s8_dotprod.c"]
                                               + (["fully_connected_s8_dotprod.c"] if has_gemm else [])}
    assert "-DFW_ARM_DISPATCH" in bundle.extra["cflags"]
    assert list(bundle.extra["conv_weights"]) == ["quads"] and bundle.extra["conv_weights"]["quads"]["bytes"] > 0
    c.write_harness_input(bundle, {"input": x}, tmp_path / "in.bin")
    for cpu, kernels in AARCH64_CPUS.items():
        done = subprocess.run([*c.launcher("aarch64", cpu), str(bundle.file("bin/fwedge_model")), "in.bin", "out.bin",
                               "6", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (cpu, done.stderr)
        assert c.parse_harness_kernels(done.stdout) == kernels, (cpu, done.stdout[:200])
        got = c.read_harness_output(bundle, tmp_path / "out.bin", 6)[name].tobytes()
        assert got == host, f"aarch64 -cpu {cpu} ({kernels} kernels): '{name}' bytes differ from the host's"
    for flag, layout in (("-DFW_NO_DISPATCH", "quads"), ("-DFW_NO_INTRINSICS", "pairs")):
        other = _export(qdq, tmp_path / flag[5:].lower(), "aarch64", [flag])
        assert other.extra["kernel_variants"] == {} and list(other.extra["conv_weights"]) == [layout], flag
        assert other.sizes["rom_bytes"] < bundle.sizes["rom_bytes"], flag
        for cpu in ("cortex-a53", "max"):
            got = c.run_harness(other, {"input": x}, cpu=cpu)[0][name].tobytes()
            assert got == host, f"aarch64 {flag} -cpu {cpu}: '{name}' bytes differ from the host's"

"""riscv64 dispatch build: RVV 1.0 kernel variants picked at run time, under qemu-riscv64 with and without V."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from channel_models import mobilenet_like
from fwedge.bundle import load_bundle
from fwedge.lowered.interp import run_lowered
from fwedge.lowered.lower import lower
from fwedge.runtime_c import TESTS, kernel_sources, source_dir
from fwedge.targets import COptions, ExportOptions, get_target
from op_matrix import OP_CASES, qdq_model, random_feeds

pytestmark = [pytest.mark.zig, pytest.mark.qemu("riscv64")]

INT8_CASES = [case for case in OP_CASES if case.int8]
# qemu-riscv64 -cpu -> the kernels the dispatch must pick there. Without V, then V at three
# vector lengths: the rvv kernels are vector-length agnostic, so every VLEN gives the same bytes.
# (vext_spec=v1.0 is qemu 7.2's default; spelled out, qemu does not print a note about it.)
CPUS = {
    "rv64": "baseline",
    "rv64,v=true,vext_spec=v1.0,vlen=128": "rvv",
    "rv64,v=true,vext_spec=v1.0,vlen=256": "rvv",
    "rv64,v=true,vext_spec=v1.0,vlen=512": "rvv",
}


def _export(model, folder, cflags=()):
    bundle = get_target("riscv64").export(
        model, folder, ExportOptions(source_sha256="0" * 64, target_options=COptions(cflags=list(cflags))))
    return load_bundle(bundle.path)


def test_riscv64_dispatch_is_the_default_riscv64_build_only():
    from fwedge.targets.c_build import DISPATCH, dispatch_build, spelled_for

    assert dispatch_build("riscv64", []) is DISPATCH["riscv64"]
    for flags in (["-march=rv64gcv"], ["-mcpu=baseline_rv64+v"], ["-DFW_NO_INTRINSICS"], ["-DFW_NO_DISPATCH"]):
        assert dispatch_build("riscv64", flags) is None, flags
    flags = DISPATCH["riscv64"].variants["rvv"]
    header = (source_dir() / "fwedge_rt.h").read_text()
    assert f'#define FW_RVV_CFLAGS "{" ".join(flags)}"' in header
    # zig cc takes -march=<name> for a CPU name: the variant gets zig's spelling, gcc keeps its own
    assert spelled_for(["python3", "-m", "ziglang", "cc"], flags) == ["-mcpu=baseline_rv64+v"]
    assert spelled_for(["riscv64-linux-gnu-gcc"], flags) == flags


def test_runtime_unit_tests_pass_in_the_riscv64_dispatch_build_with_and_without_v(tmp_path):
    """runtime_c/tests/test_kernels.c in a -DFW_RISCV_DISPATCH build with the *_rvv variants: all
    checks pass on a CPU without V (the baseline runs) and with V at each vector length (the
    rvv kernels run)."""
    from fwedge.targets import c_build

    compiler = c_build.compiler_command("riscv64")
    env = c_build._compiler_env()
    common = compiler + ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-DFW_RISCV_DISPATCH",
                         "-I", str(source_dir())]
    rvv_flags = c_build.spelled_for(compiler, c_build.DISPATCH["riscv64"].variants["rvv"])
    objects = []
    for variant in sorted((source_dir() / "variants").glob("*_rvv.c")):
        obj = tmp_path / f"{variant.stem}.o"
        done = subprocess.run(common + rvv_flags + ["-c", str(variant), "-o", str(obj)], capture_output=True,
                              text=True, timeout=600, env=env)
        assert done.returncode == 0, f"compiling {variant.name}:\n{done.stderr[-3000:]}"
        objects.append(str(obj))
    assert len(objects) == 3, objects
    binary = tmp_path / "test_kernels"
    sources = [str(source_dir() / name) for name in kernel_sources() + list(TESTS)]
    done = subprocess.run(common + ["-static"] + sources + objects + ["-o", str(binary), "-lm"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, f"compiling the runtime unit tests failed:\n{done.stderr[-3000:]}"
    for cpu, kernels in CPUS.items():
        run = subprocess.run(["qemu-riscv64", "-cpu", cpu, str(binary)], capture_output=True, text=True, timeout=300)
        closing = re.search(r"(\d+) passed, (\d+) failed\s*$", run.stdout)
        assert closing and run.returncode == 0 and closing.group(2) == "0", (cpu, run.stdout[-3000:], run.stderr[-2000:])
        assert int(closing.group(1)) >= 60, (cpu, closing.group(0))
        assert f"riscv64 dispatch build: the {kernels} kernels run" in run.stdout, (cpu, run.stdout[:300])


@pytest.mark.parametrize("case", INT8_CASES, ids=[case.id for case in INT8_CASES])
def test_int8_op_matrix_under_every_riscv64_cpu_is_bit_exact_with_the_interpreter(case, tmp_path, monkeypatch):
    """The default riscv64 int8 bundle of each op gives the lowering interpreter's bytes (those of
    every other architecture) with and without V, at each vector length."""
    qdq = qdq_model(case)
    feeds = random_feeds(case, batch=4)
    expected = run_lowered(lower(qdq), feeds)["y"]
    bundle = _export(qdq, tmp_path / "b")
    for cpu in CPUS:
        monkeypatch.setenv("QEMU_CPU", cpu)  # qemu-user reads the CPU model from its environment
        got = get_target("c").run(bundle, feeds)["y"]
        assert got.tobytes() == expected.tobytes(), f"{case.id} under -cpu {cpu}: output 'y' bytes differ"


def test_default_riscv64_bundle_picks_rvv_kernels_when_the_cpu_has_v_with_the_portable_bytes(tmp_path):
    """A MobileNet-like int8 model: the default bundle carries the rvv variants of its conv,
    depthwise and add kernels, and its harness names the kernels it ran (baseline without V, rvv
    with it); the outputs are the bytes of the baseline-only build (-DFW_NO_DISPATCH)."""
    from fwedge.targets import c
    from test_c_target import _calibration, int8_model

    model = mobilenet_like()
    qdq = int8_model(model)
    x = _calibration(model, 6)
    bundle = _export(qdq, tmp_path / "default")
    assert bundle.extra["kernel_variants"] == {
        "rvv": ["conv2d_s8_rvv.c", "depthwise_s8_rvv.c", "elementwise_s8_rvv.c"]}
    assert "-DFW_RISCV_DISPATCH" in bundle.extra["cflags"]
    baseline_only = _export(qdq, tmp_path / "opt-out", ["-DFW_NO_DISPATCH"])
    assert baseline_only.extra["kernel_variants"] == {}
    assert baseline_only.sizes["rom_bytes"] < bundle.sizes["rom_bytes"]
    c.write_harness_input(bundle, {"input": x}, tmp_path / "in.bin")
    expected = None
    for build in (baseline_only, bundle):
        binary = str(build.file("bin/fwedge_model"))
        for cpu, kernels in CPUS.items():
            done = subprocess.run(["qemu-riscv64", "-cpu", cpu, binary, "in.bin", "out.bin", "6", "1"], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (cpu, done.stderr[-2000:])
            picked = c.parse_harness_kernels(done.stdout)
            assert picked == (kernels if build is bundle else None), (cpu, done.stdout[:200])
            output = (tmp_path / "out.bin").read_bytes()
            expected = expected or output
            assert output == expected, f"-cpu {cpu} ({picked or 'no dispatch'}): 'logits' bytes differ"
    interpreted = run_lowered(lower(qdq), {"input": x})["logits"]
    got = c.read_harness_output(bundle, tmp_path / "out.bin", 6)["logits"]
    np.testing.assert_array_equal(got, interpreted, err_msg="riscv64 rvv 'logits' against the interpreter")

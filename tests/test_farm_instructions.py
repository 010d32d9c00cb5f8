"""Executed instructions on qemu boards: the plugin build, real counts in the farm, and their determinism."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.bundle import load_bundle
from fwedge.cli import cli
from fwedge.device_farm import instructions
from fwedge.device_farm import inventory
from fwedge.device_farm.qemu import QemuDevice
from fwedge.device_farm.results import load_results
from fwedge.device_farm.runner import FarmOptions, run_farm
from fwedge.errors import DeviceError
from tests import farm_helpers as fh

LIMIT = 40


@pytest.mark.cc
def test_the_plugin_is_built_once_per_source_digest_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FWEDGE_CACHE", str(tmp_path / "cache"))
    first = instructions.build_plugin()
    assert first.parent == tmp_path / "cache" / "qemu-plugin" and first.stat().st_size > 0
    stamp = first.stat().st_mtime_ns
    assert instructions.build_plugin() == first and first.stat().st_mtime_ns == stamp  # reused
    # Another source is another library; no temp file is left behind.
    sources = tmp_path / "sources"
    shutil.copytree(instructions.PLUGIN_DIR, sources)
    with open(sources / "insn.c", "a") as handle:
        handle.write("\n/* changed */\n")
    monkeypatch.setattr(instructions, "PLUGIN_DIR", sources)
    second = instructions.build_plugin()
    assert second != first and second.is_file()
    assert sorted(path.name for path in second.parent.iterdir()) == sorted([first.name, second.name])


def test_without_a_host_compiler_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FWEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FWEDGE_HOST_CC", raising=False)
    with pytest.raises(DeviceError, match="host C compiler.*make setup"):
        instructions.build_plugin()


def test_a_qemu_board_counts_instructions_unless_told_not_to():
    assert QemuDevice(name="q", arch="riscv64").performance() == "instructions"
    assert QemuDevice(name="q", arch="riscv64", instructions=False).performance() == "latency"


@pytest.fixture(scope="module")
def aarch64_bundle(tmp_path_factory):
    """The small Fashion-MNIST MLP, INT8, as a C bundle for aarch64, plus its float model."""
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("insn")
    model = fh.fashion_mlp(train_samples=500)
    onnx.save(model, folder / "mlp.onnx")
    onnx.save(quantize(model, "fashion-mnist:train", method="minmax", num_samples=64).model, folder / "mlp_int8.onnx")
    [path] = fh.c_bundles(folder / "mlp_int8.onnx", ["aarch64"], folder / "candidate")
    return folder, path


@pytest.mark.qemu("aarch64")
@pytest.mark.zig
@pytest.mark.cc
@pytest.mark.fashion_mnist
def test_the_farm_records_exact_instructions_for_a_qemu_board(aarch64_bundle):
    folder, path = aarch64_bundle
    devices = inventory.select(inventory.auto_detect(), ["host", "qemu-aarch64"])
    options = FarmOptions(data="fashion-mnist:test", limit=LIMIT, repeats=2, reference=str(folder / "mlp.onnx"))
    runs = [run_farm([path], devices, options).results for _ in range(2)]
    for [result] in runs:
        assert result.ok, result.error
        assert result.device == "qemu-aarch64" and result.performance == "instructions"
        count = result.instructions
        assert count.per_inference > 1000 and count.high_total - count.low_total == count.per_inference
        assert count.emulator.startswith("qemu-aarch64 version") and count.cpu == "default"
        assert result.latency is not None  # still recorded, not gated
    # Deterministic: two farm runs, the same count to the instruction.
    assert runs[0][0].instructions == runs[1][0].instructions
    # The count of one inference does not depend on how many the differenced runs hold.
    bundle = load_bundle(path)
    sample = {bundle.inputs[0].name: np.zeros([1, 1, 28, 28], np.float32)}
    job = instructions.CountJob(["qemu-aarch64"], "qemu-aarch64", "default", 60.0, "test")
    one = instructions.count_instructions(bundle, sample, job)
    again = instructions.count_instructions(bundle, sample, job)
    assert one == again


@pytest.mark.qemu("aarch64")
@pytest.mark.zig
@pytest.mark.cc
@pytest.mark.fashion_mnist
def test_identical_bundles_gate_at_exactly_one_on_instructions(aarch64_bundle, tmp_path):
    """The same bundle as candidate and interleaved baseline: ratio 1.000, gate passes; the wall
    time, however it swings, is not what decides."""
    folder, path = aarch64_bundle
    shutil.copytree(path, tmp_path / "baseline" / path.name)
    output = tmp_path / "results.json"
    run = CliRunner().invoke(cli, ["farm", "run", str(path), "--devices", "qemu-aarch64", "--data",
                                   "fashion-mnist:test", "--limit", str(LIMIT), "--repeats", "2", "--rounds", "2",
                                   "--reference", str(folder / "mlp.onnx"), "--baseline-bundles",
                                   str(tmp_path / "baseline"), "-o", str(output)])
    assert run.exit_code == 0, run.output
    assert "instructions per inference" in run.output
    candidate = load_results(output).find(path.name, "qemu-aarch64")
    assert candidate.baseline_instructions == candidate.instructions.per_inference
    verdict = CliRunner().invoke(cli, ["gate", str(output), "--baseline", str(output), "--json",
                                       str(tmp_path / "gate.json")])
    assert verdict.exit_code == 0, verdict.output
    [row] = json.loads((tmp_path / "gate.json").read_text())["rows"]
    [check] = [c for c in row["checks"] if c["metric"] == "instructions"]
    assert check["change"].startswith("x1.000 (+0) vs baseline bundle, same run") and check["passed"]
    assert not [c for c in row["checks"] if c["metric"].startswith("latency")]

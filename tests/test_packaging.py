"""Packaging: the wheel holds every fwedge.* package and the C runtime sources, and its CLI runs."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("fwedge-*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("fwedge", "fwedge/commands", "fwedge/passes", "fwedge/calibration", "fwedge/targets",
                    "fwedge/runtime_c", "fwedge/device_farm"):
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel"
    sources = sorted(p.relative_to(ROOT / "runtime_c").as_posix() for p in (ROOT / "runtime_c").rglob("*")
                     if p.suffix in (".c", ".h"))
    for source in sources:
        assert f"fwedge/runtime_c/{source}" in names, f"runtime_c/{source} missing from the wheel"
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "fwedge = fwedge.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_wheel_cli_runs_from_the_wheel(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fwedge, fwedge.cli; "
            "assert fwedge.__file__.startswith(sys.argv[1]), fwedge.__file__; "
            "fwedge.cli.cli.main(['--help'], prog_name='fwedge')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inspect" in done.stdout and "eval" in done.stdout

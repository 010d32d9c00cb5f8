"""Every venv's zig reads one copy of its lib folder (ZIG_LIB_DIR), so zig's libc builds are made once per machine."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from fwedge.targets import c_build

LIB_LINE = "ziglang/lib/std/std.zig,sha256=AAAA,100"


def test_key_reads_only_the_lib_files():
    """The console script's RECORD line names the venv's python: two venvs get one key."""
    one = c_build.zig_lib_key("0.17.1", f"../../../bin/python-zig,sha256=x,229\n{LIB_LINE}\n")
    other = c_build.zig_lib_key("0.17.1", f"{LIB_LINE}\n../../../bin/python-zig,sha256=y,294\n")
    assert one == other
    assert c_build.zig_lib_key("0.17.1", LIB_LINE.replace("AAAA", "BBBB")) != one
    assert c_build.zig_lib_key("0.17.2", LIB_LINE) != c_build.zig_lib_key("0.17.1", LIB_LINE)


@pytest.mark.zig
def test_compilers_get_the_shared_lib_folder(monkeypatch):
    monkeypatch.delenv("ZIG_LIB_DIR", raising=False)
    shared = c_build.shared_zig_lib()
    assert shared is not None and shared.parent == c_build.cache_dir() / "zig-lib"
    assert c_build._compiler_env()["ZIG_LIB_DIR"] == str(shared)
    installed = Path(importlib.metadata.distribution("ziglang").locate_file("ziglang/lib"))
    names = lambda root: sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert names(shared) == names(installed), "the shared copy is not the installed lib folder"
    monkeypatch.setenv("ZIG_LIB_DIR", "/somewhere/else")
    assert c_build._compiler_env()["ZIG_LIB_DIR"] == "/somewhere/else"

"""Portable C99 kernels and headers, shipped as package data; paths to them for the C target."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

HEADER = "fwedge_rt.h"
HARNESS = "harness_main.c"
TESTS = ("tests/test_kernels.c",)


def source_dir() -> Path:
    """The folder holding fwedge_rt.h, the kernel sources, the harness and tests/."""
    return Path(str(importlib.resources.files(__name__)))


def kernel_sources() -> list[str]:
    """File names of every kernel source (each defines one op family for one dtype)."""
    return sorted(p.name for p in source_dir().glob("*.c") if p.name != HARNESS)

"""Portable C99 kernels and headers, shipped as package data; paths to them for the C target."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

HEADER = "fwedge_rt.h"
# Every header a bundle gets: fwedge_rt.h and the helpers kernels include (requant_neon.h: the
# aarch64 NEON requantization of depthwise_s8.c, pool_s8.c and elementwise_s8.c;
# conv2d_s8_neon.h: the aarch64 tile gather and GEMM of conv2d_s8.c).
HEADERS = (HEADER, "requant_neon.h", "conv2d_s8_neon.h")
HARNESS = "harness_main.c"
TESTS = ("tests/test_kernels.c",)


def source_dir() -> Path:
    """The folder holding fwedge_rt.h, the kernel sources, the harness and tests/."""
    return Path(str(importlib.resources.files(__name__)))


def kernel_sources() -> list[str]:
    """File names of every kernel source (each defines one op family for one dtype)."""
    return sorted(p.name for p in source_dir().glob("*.c") if p.name != HARNESS)

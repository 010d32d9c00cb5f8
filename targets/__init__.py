"""Export targets: one module per target with export(model, out_dir, options) and run(bundle, feeds).

Every target module also exposes `unsupported_nodes(model) -> list[(node, op, opset)]`, which
`fwedge inspect` and the exporters use to check a whole model before writing anything.
Importing a target module must stay cheap: heavy toolchains are imported inside functions.
"""
from __future__ import annotations

import importlib
import importlib.util

import onnx

# target name -> module. C targets share one module, parameterised by architecture.
# A target whose module is not installed yet is not listed.
TARGETS: dict[str, str] = {
    "onnx": "fwedge.targets.onnx",
    "openvino": "fwedge.targets.openvino",
    "tflite": "fwedge.targets.tflite",
    "ncnn": "fwedge.targets.ncnn",
    "c": "fwedge.targets.c",
}

# C targets are named by architecture on the command line (`--target aarch64`).
C_ARCHES = ("x86_64", "aarch64", "riscv64", "loongarch64")


def available_targets() -> list[str]:
    """Targets whose module exists in this installation."""
    return [name for name, module in TARGETS.items() if importlib.util.find_spec(module) is not None]


def target_module(name: str):
    """Import and return the module of a target.

    Raises:
        ExportError: the target name is unknown.
    """
    from fwedge.errors import ExportError

    if name not in TARGETS:
        raise ExportError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}")
    return importlib.import_module(TARGETS[name])


def support_matrix(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, int]]]:
    """For every target, the (node, op, opset) triples it cannot take (empty: all supported)."""
    return {name: target_module(name).unsupported_nodes(model) for name in available_targets()}

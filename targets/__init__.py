"""Export targets: one class per target, registered with @target(name) (fwedge.targets.base).

A target implements check(model, options) -> [(node, op, opset)], export(model, out_dir,
options) -> Bundle and run(bundle, feeds), and declares its capabilities as class attributes
(exact_int8, supports_intermediates, lowers, options_type). The C architectures share one class
parameterised by architecture. Target modules are imported when first asked for, and importing
one must stay cheap: heavy toolchains are imported inside methods.
"""
from __future__ import annotations

import importlib
import importlib.util

import onnx

from fwedge.targets.base import (
    C_ARCHES, REGISTRY, COptions, ExportOptions, Target, TfliteOptions, target,
)

__all__ = ["C_ARCHES", "COptions", "ExportOptions", "TARGET_MODULES", "Target", "TfliteOptions", "available_targets",
           "export_names", "get_target", "support_matrix", "target", "target_class"]

# target name -> the module whose import registers its class. A target whose module is not
# installed is not listed by available_targets().
TARGET_MODULES: dict[str, str] = {
    "onnx": "fwedge.targets.onnx",
    "openvino": "fwedge.targets.openvino",
    "tflite": "fwedge.targets.tflite",
    "ncnn": "fwedge.targets.ncnn",
    "c": "fwedge.targets.c",
}


def export_names() -> tuple[str, ...]:
    """What `--target` accepts: the host-runtime targets plus one C target per architecture."""
    return tuple(name for name in TARGET_MODULES if name != "c") + C_ARCHES


def available_targets() -> list[str]:
    """Targets whose module exists in this installation (C counted once, as "c")."""
    return [name for name, module in TARGET_MODULES.items() if importlib.util.find_spec(module) is not None]


def target_class(name: str) -> type[Target]:
    """The registered class of a target ("c" for every C architecture), importing its module.

    Raises:
        ExportError: the name is unknown.
        ModuleNotFoundError: the target's module or a module it imports is not installed.
    """
    from fwedge.errors import ExportError

    if name not in TARGET_MODULES:
        raise ExportError(f"unknown target {name!r}; choose from {', '.join(export_names())}")
    if name not in REGISTRY:
        importlib.import_module(TARGET_MODULES[name])
    return REGISTRY[name]


def get_target(name: str) -> Target:
    """The target for a command-line name or a manifest's target field.

    Args:
        name: onnx, openvino, tflite, ncnn, a C architecture (x86_64, aarch64, riscv64,
            loongarch64), or "c" (the C target for this host's architecture).

    Raises:
        ExportError: an unknown name, or a target module that is not part of this installation.
    """
    from fwedge.errors import ExportError

    family = "c" if name in C_ARCHES else name
    if family in TARGET_MODULES and importlib.util.find_spec(TARGET_MODULES[family]) is None:
        raise ExportError(f"target {name!r}: its module {TARGET_MODULES[family]} is not part of this installation")
    cls = target_class(family)
    return cls(name) if name in C_ARCHES else cls()


def support_matrix(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, int]]]:
    """For every target, the (node, op, opset) triples its check() reports (empty: all supported)."""
    return {name: get_target(name).check(model) for name in available_targets()}

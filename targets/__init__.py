"""Export targets: one module per target with export(model, out_dir, options) and run(bundle, feeds).

Every target module also exposes `unsupported_nodes(model) -> list[(node, op, opset)]`, which
`fwedge inspect` and the exporters use to check a whole model before writing anything.
Importing a target module must stay cheap: heavy toolchains are imported inside functions.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

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


@dataclass
class ExportOptions:
    """What every target's `export(model, out_dir, options) -> Bundle` receives.

    Attributes:
        arch: the architecture the bundle is for ("x86_64" for host runtimes; a C_ARCHES value
            for C bundles).
        precision: "fp32" or "int8"; "auto" means int8 when the model holds QDQ nodes.
        preprocess: the preprocessing spec (fwedge.data.Preprocess.to_dict()) for the manifest.
        source_sha256: sha256 of the source model file, recorded in the manifest.
        float_io: int8 bundles take and return float32 (QUANTIZE/DEQUANTIZE at the edges);
            False gives int8 in/out where the target supports it.
        allow_float_fallback: keep nodes the target cannot quantize in float and report them,
            instead of raising UnsupportedOpError.
        cc: a C compiler command overriding the default (zig cc / host cc) for C targets.
        build: compile C bundles (False writes sources only).
        extra: target-specific settings.
    """

    arch: str = "x86_64"
    precision: str = "auto"
    preprocess: dict = field(default_factory=dict)
    source_sha256: str = ""
    float_io: bool = True
    allow_float_fallback: bool = False
    cc: str | None = None
    build: bool = True
    extra: dict = field(default_factory=dict)


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

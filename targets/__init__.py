"""Export targets: one module per target with export(model, out_dir, options) and run(bundle, feeds).

Every target module also exposes `unsupported_nodes(model) -> list[(node, op, opset)]`, which
`fwedge inspect` and the exporters use to check a whole model before writing anything.
Importing a target module must stay cheap: heavy toolchains are imported inside functions.
"""
from __future__ import annotations

import importlib

import onnx

# target name -> module. C targets share one module, parameterised by architecture.
TARGETS: dict[str, str] = {
    "onnx": "fwedge.targets.onnx",
}


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
    return {name: target_module(name).unsupported_nodes(model) for name in TARGETS}

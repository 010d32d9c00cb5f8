"""Named exceptions: every user-facing failure in fwedge is a FwEdgeError subclass."""
from __future__ import annotations


class FwEdgeError(Exception):
    """Base class. The CLI prints the message on one line and exits with code 2."""


class ModelError(FwEdgeError):
    """A model file is missing, corrupt, not ONNX, or structurally unusable."""


class UnsupportedOpError(FwEdgeError):
    """A target cannot take one or more nodes; the message lists every (node, op, opset).

    Attributes:
        target: the target name.
        nodes: list of (node name, op type, opset) tuples that are unsupported.
    """

    def __init__(self, target: str, nodes: list[tuple[str, str, int]], detail: str = ""):
        self.target = target
        self.nodes = list(nodes)
        listed = "; ".join(f"{name!r} ({op}, opset {opset})" for name, op, opset in self.nodes)
        message = f"target {target!r} cannot take {len(self.nodes)} node(s): {listed}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class DataError(FwEdgeError):
    """Input data is missing, empty, of the wrong shape or dtype, or holds NaN/Inf."""


class CalibrationError(FwEdgeError):
    """Calibration cannot produce ranges: nothing to quantize, too little data, bad options."""


class QuantizeRequestError(CalibrationError):
    """A QuantizeRequest field is out of range or of the wrong kind; the message names the field.

    Attributes:
        field: the QuantizeRequest field name.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"quantize request field '{field}': {message}")


class ExportError(FwEdgeError):
    """A bundle could not be written, or an existing bundle is invalid or tampered with."""


class DeviceError(FwEdgeError):
    """A device is unreachable, misconfigured, or failed to run a bundle."""


class GateError(FwEdgeError):
    """Gate inputs are unusable: a missing or malformed results or baseline file."""


class PruneError(FwEdgeError):
    """A pruning request cannot be carried out on this model (bad ratio, unprunable graph)."""


class DistillError(FwEdgeError):
    """Distillation cannot run: missing torch, mismatched teacher/student, unsupported op."""


class PipelineError(FwEdgeError):
    """A pipeline.toml is malformed, or a stage cannot run (its library is missing or it failed)."""


class MissingDependencyError(FwEdgeError):
    """An optional toolchain is not installed; the message names the fwedge extra that brings it.

    Attributes:
        module: the missing top-level module.
        extra: the fwedge extra to install.
        install: the pip command that installs it.
    """

    def __init__(self, module: str, extra: str, what: str = ""):
        self.module, self.extra = module, extra
        self.install = f"pip install 'fwedge[{extra}]'"
        super().__init__(f"{what or module} is not installed: {self.install}")


# Optional top-level modules -> the fwedge extra (pyproject.toml) that installs them.
OPTIONAL_MODULES = {
    "ai_edge_litert": "tflite", "tflite_runtime": "tflite", "flatbuffers": "tflite",
    "openvino": "openvino", "ncnn": "ncnn", "torch": "distill", "ziglang": "cross",
    "labgrid": "labgrid", "grpc": "labgrid",
}


def missing_dependency(exc: ModuleNotFoundError) -> MissingDependencyError | None:
    """The MissingDependencyError for a ModuleNotFoundError of an optional toolchain, else None
    (a missing module that is not optional is a broken installation: a bug, not user error)."""
    root = (exc.name or "").split(".")[0]
    if root not in OPTIONAL_MODULES:
        return None
    return MissingDependencyError(root, OPTIONAL_MODULES[root], f"the optional module '{root}'")

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

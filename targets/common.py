"""Helpers every target shares: precision resolution, I/O specs, feed checks, runner caches."""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import onnx

from fwedge import ir
from fwedge.bundle import Bundle, TensorInfo
from fwedge.errors import ExportError
from fwedge.shape_proposal import give_input_shape
from fwedge.passes.layout import absorb_io_transposes, fold_transposes, io_layouts

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.FLOAT16: "float16",
}


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the model holds QuantizeLinear/DequantizeLinear nodes (a QDQ int8 model)."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def resolve_precision(model: onnx.ModelProto, requested: str, target: str) -> str:
    """The bundle precision: "int8" for a QDQ model, "fp32" (or "fp16" when asked) for a float model.

    Args:
        model: the loaded source model.
        requested: ExportOptions.precision ("auto", "int8", "fp32" or "fp16").
        target: target name, for messages.

    Returns:
        "int8", "fp32" or "fp16".

    Raises:
        ExportError: the request contradicts the model (int8 asked of a float model, or fp32 or
            fp16 of a QDQ model); fwedge never quantizes or dequantizes silently during export.
    """
    quantized = has_qdq(model)
    if requested == "auto":
        return "int8" if quantized else "fp32"
    if requested == "int8" and not quantized:
        raise ExportError(
            f"target {target!r}: --int8 needs a QDQ model (run `fwedge quantize` first); "
            "the given model has no QuantizeLinear/DequantizeLinear nodes"
        )
    if requested in ("fp32", "fp16") and quantized:
        raise ExportError(
            f"target {target!r}: --{requested} needs the float model; the given model is a QDQ int8 model"
        )
    if requested not in ("int8", "fp32", "fp16"):
        raise ExportError(f"target {target!r}: precision must be auto, int8, fp32 or fp16, got {requested!r}")
    return requested


def _static_shape(value: onnx.ValueInfoProto, batch: int | None) -> list[int]:
    shape = ir.shape_of(value)
    out = []
    for index, dim in enumerate(shape):
        if isinstance(dim, int):
            out.append(dim)
        elif index == 0 and batch is not None:
            out.append(batch)
        else:
            out.append(-1)
    return out


def io_specs(model: onnx.ModelProto, batch: int | None = None, layout: str = "NCHW") -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Graph inputs and outputs as TensorInfo (dynamic dims are -1 unless `batch` fixes dim 0).

    A 4-D input that the model turns from NHWC to NCHW with a Transpose (a TF-converted model),
    and a 4-D output it turns back, are NHWC tensors of the source model that the bundle takes
    as they are: layout and source_layout "NHWC". Other 4-D tensors get `layout`.
    """
    nhwc = set(io_layouts(absorb_io_transposes(fold_transposes(model))))

    def info(value: onnx.ValueInfoProto) -> TensorInfo:
        elem = value.type.tensor_type.elem_type
        shape = _static_shape(value, batch)
        own = value.name in nhwc and len(shape) == 4
        return TensorInfo(
            name=value.name,
            shape=shape,
            dtype=_ONNX_TO_NUMPY.get(elem, onnx.TensorProto.DataType.Name(elem).lower()),
            layout="NHWC" if own else layout if len(shape) == 4 else "",
            source_layout="NHWC" if own else "",
        )

    return [info(v) for v in ir.graph_inputs(model)], [info(v) for v in model.graph.output]


def require_static(model: onnx.ModelProto, target: str) -> None:
    """Refuse dynamic dimensions other than the batch (lowered targets need static shapes).

    Raises:
        ExportError: naming the input and its shape, and how to fix it.
    """
    for value in ir.graph_inputs(model):
        shape = ir.shape_of(value)
        if any(not isinstance(dim, int) for dim in shape[1:]):
            raise ExportError(
                f"target {target!r}: input '{value.name}' has dynamic shape {shape}; {give_input_shape(model, value)}"
            )


def check_feeds(bundle: Bundle, feeds: dict[str, np.ndarray]) -> None:
    """Check a runner's feeds against the bundle inputs (names, rank, static dims).

    Raises:
        ExportError: a missing input, or a shape that does not fit.
    """
    for spec in bundle.inputs:
        if spec.name not in feeds:
            raise ExportError(f"bundle '{bundle.path}': input '{spec.name}' not fed; got {sorted(feeds)}")
        array = feeds[spec.name]
        if array.ndim != len(spec.shape) or any(
            want > 0 and want != have for want, have in list(zip(spec.shape, array.shape))[1:]
        ):
            raise ExportError(
                f"bundle '{bundle.path}': input '{spec.name}' expects shape {spec.shape} "
                f"(batch free), got {list(array.shape)}"
            )


def runtime_threads() -> int | None:
    """Threads a host runtime may use: FWEDGE_THREADS if set (bench/ pins 1), else None (runtime default)."""
    value = os.environ.get("FWEDGE_THREADS")
    return int(value) if value else None


class RunnerCache:
    """Compiled runtimes keyed by bundle path, file hashes and manifest digest, so repeated run() calls are cheap."""

    def __init__(self, build: Callable[[Bundle], object], size: int = 8):
        self.build = build
        self.size = size
        self.entries: dict[tuple, object] = {}

    def get(self, bundle: Bundle):
        # The manifest digest too: an edited manifest (a new input name or scale) at the same path
        # must not reuse a runtime built from the old one.
        key = (str(bundle.path.resolve()), tuple(sorted(bundle.files.items())), bundle.manifest_sha256)
        if key not in self.entries:
            if len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = self.build(bundle)
        return self.entries[key]

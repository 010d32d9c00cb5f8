"""The concrete `--input-shape` a dynamic-shape error proposes: from the samples fwedge quantize calibrated on, or the model's fwedge.preprocess resize."""
from __future__ import annotations

import json
import logging

import numpy as np
import onnx

from fwedge import ir
from fwedge.errors import DataError
from fwedge.preprocess import preprocess_from_metadata

# {"input": name, "shape": [1, ...], "data": file name}: the shape of one calibration sample
# (after preprocessing) of a model input quantize left dynamic. Only ever proposed, never applied.
SAMPLE_SHAPE_METADATA = "fwedge.sample_shape"
_MAX_DIM = 2**31 - 1
log = logging.getLogger(__name__)
_MAX_SHOWN = 120  # characters of a data file name shown from a model's metadata


def _dynamic(shape: list) -> bool:
    return any(not isinstance(dim, int) for dim in shape[1:])


def record_sample_shape(model: onnx.ModelProto, sample: np.ndarray, data_name: str) -> None:
    """Record in `model`'s metadata the shape of a sample [1, ...] of its first input, if that
    input has dynamic dimensions other than the batch (a later export proposes it)."""
    first = ir.graph_inputs(model)[0]
    if _dynamic(ir.shape_of(first)):
        shape = [1, *map(int, sample.shape[1:])]
        log.info("input '%s' stays dynamic %s; its calibration samples are %s (%s)", first.name,
                 ir.shape_of(first), shape, SAMPLE_SHAPE_METADATA)
        ir.set_metadata(model, SAMPLE_SHAPE_METADATA, json.dumps({"input": first.name, "shape": shape, "data": data_name}))


def _fits(shape: list, proposal: list) -> bool:
    """Whether `proposal` has the rank of `shape` and agrees with every fixed dim but the batch."""
    return len(proposal) == len(shape) and all(
        not isinstance(want, int) or want == have for want, have in list(zip(shape, proposal))[1:])


def _recorded(model: onnx.ModelProto, name: str) -> tuple[list[int], str] | None:
    """The recorded sample shape of input `name` and where it came from (malformed: None)."""
    text = next((prop.value for prop in model.metadata_props if prop.key == SAMPLE_SHAPE_METADATA), None)
    try:
        entry = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("input") != name:
        return None
    shape, data = entry.get("shape"), entry.get("data")
    if not isinstance(shape, list) or not all(type(d) is int and 1 <= d <= _MAX_DIM for d in shape):
        return None
    shown = data if isinstance(data, str) and len(data) <= _MAX_SHOWN and data.isprintable() else "the data"
    return shape, f"the shape of the calibration samples in {shown}"


def _from_resize(model: onnx.ModelProto, shape: list) -> tuple[list[int], str] | None:
    """An image input [N,C,H,W] (or NHWC) whose H and W the model's fwedge.preprocess resize fixes."""
    try:
        spec = preprocess_from_metadata(model)
    except DataError:
        return None
    if spec is None or spec.resize is None or len(shape) != 4:
        return None
    height, width = (2, 3) if spec.layout == "NCHW" else (1, 2)
    proposal = [1, *shape[1:]]
    proposal[height], proposal[width] = spec.resize
    return proposal, "the resize in the model's fwedge.preprocess metadata"


def proposed_shape(model: onnx.ModelProto, value: onnx.ValueInfoProto) -> tuple[list[int], str] | None:
    """A static shape for the dynamic input `value`, and why: its recorded calibration sample
    shape, else its preprocessing resize; only the unknown dims are filled (batch 1), and a
    source that contradicts a fixed dim is not used.

    Returns:
        (dims, reason), or None when nothing fixes every unknown dim.
    """
    shape = ir.shape_of(value)
    for found in (_recorded(model, value.name), _from_resize(model, shape)):
        if found is not None and _fits(shape, found[0]) and all(isinstance(d, int) for d in found[0]):
            return [1] + [dim if isinstance(dim, int) else want for dim, want in zip(shape[1:], found[0][1:])], found[1]
    return None


def give_input_shape(model: onnx.ModelProto, value: onnx.ValueInfoProto) -> str:
    """The advice of a dynamic-shape error: `give --input-shape x=1,3,48,192 (why)` where the
    model fixes a shape, else `x=1,3,H,W` with the unknown dims named."""
    found = proposed_shape(model, value)
    if found is not None:
        return f"give --input-shape {value.name}={','.join(map(str, found[0]))} ({found[1]})"
    shape = ir.shape_of(value)
    names = ["N", "C", "H", "W"] if len(shape) == 4 else [f"D{i}" for i in range(len(shape))]
    wanted = ",".join("1" if i == 0 else str(d) if isinstance(d, int) else names[i] for i, d in enumerate(shape))
    return f"give --input-shape {value.name}={wanted} with the size the model runs at"

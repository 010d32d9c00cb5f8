"""NumPy reference interpreter of a LoweredGraph: integer-exact int8 semantics (TFLite reference).

Each op runs its kind's kernel, registered by the op card that defines the kind (fwedge/ops/);
the fixed-point primitives they share are in fwedge/lowered/arith.py.
"""
from __future__ import annotations

import logging

import numpy as np

from fwedge.errors import DataError
from fwedge.lowered.graph import LoweredGraph
from fwedge.ops.registry import kind

log = logging.getLogger(__name__)


def run_lowered(graph: LoweredGraph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run a LoweredGraph on a batch.

    Args:
        graph: the lowered graph.
        feeds: input name -> array of shape [N, ...] in the source model's layout (NHWC for
            the inputs in graph.io_layouts, whose lowered tensor is NCHW), float32 for float
            inputs, int8 for int8 inputs, int32 for int32 ones (indices); N may exceed the
            graph's batch of 1.
        keep_all: return every intermediate tensor too (for bisection), not just the outputs.

    Returns:
        Output name (or every tensor name) -> array with leading dimension N.

    Raises:
        DataError: a feed is missing or has the wrong shape.
    """
    values: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in feeds:
            raise DataError(f"lowered graph: no feed for input '{name}'")
        tensor = graph.tensors[name]
        array = np.asarray(feeds[name])
        if graph.io_layouts.get(name) == "NHWC" and array.ndim == 4:
            array = array.transpose(0, 3, 1, 2)
        if tuple(array.shape[1:]) != tuple(tensor.shape[1:]):
            raise DataError(
                f"input '{name}': expected shape [N, {', '.join(map(str, tensor.shape[1:]))}], "
                f"got {list(array.shape)}"
            )
        values[name] = array.astype({"float32": np.float32, "int32": np.int32}.get(tensor.dtype, np.int8))
    for tensor in graph.tensors.values():
        if tensor.is_constant:
            values[tensor.name] = tensor.data
    for op in graph.ops:
        values[op.outputs[0]] = kind(op.kind).run(op, values, graph.tensors)
    if keep_all:
        return values
    return {name: values[name].transpose(0, 2, 3, 1) if graph.io_layouts.get(name) == "NHWC" else values[name]
            for name in graph.outputs}

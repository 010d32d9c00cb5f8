"""Calibration for quantization: the calibration set, the statistics the plan needs, the QuantTable."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.calibration import CalibrationStats, Method, MethodOptions, QuantTable, collect, compute
from fwedge.calibration.collect import with_outputs
from fwedge.calibration.table import NcnnLayer
from fwedge.data import Dataset, Preprocess, check_batch_shape, open_dataset
from fwedge.errors import DataError
from fwedge.op_info import OP_INFO
from fwedge.eval import ort_session, resolve_preprocess
from fwedge.quantization.plan import (
    QuantizeOptions, QuantPlan, candidate_tensors, plan_quantization, tied_concat_inputs, weight_axis,
)
from fwedge.quantization.prepare import batch_limit, load_prepared
from fwedge.quantization.request import DEFAULT_BATCH_SIZE, DEFAULT_BINS, DEFAULT_NUM_SAMPLES

log = logging.getLogger(__name__)

# Bytes of activations calibration may hold at once. The histogram pass keeps every calibrated
# tensor of two batches in flight (onnxruntime fills one while numpy bins the other) beside
# onnxruntime's own buffers for a third, and the extremes pass keeps every tensor of one batch
# alive until its ReduceMin/ReduceMax: about ACTIVATION_COPIES batches of activations. The batch
# is cut so that these stay within the budget (a 320x320 detector holds ~100 MB per sample).
CALIBRATION_MEMORY_BUDGET = 1 << 30
ACTIVATION_COPIES = 3


@dataclass
class CalibrationData:
    """A dataset selection for calibration: what to read and how to preprocess it."""

    dataset: Dataset
    preprocess: Preprocess
    num_samples: int
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE

    def batches(self) -> Callable[[], object]:
        """A callable returning a fresh batch iterator (collect iterates twice)."""
        return lambda: (batch.x for batch in self.dataset.batches(
            self.preprocess, self.batch_size, self.num_samples, self.seed))

    def fingerprint(self) -> dict:
        indices = self.dataset.select(self.num_samples, self.seed)
        return {
            "fingerprint": self.dataset.fingerprint(indices),
            "source": str(self.dataset.path),
            "num_samples": int(len(indices)),
            "seed": self.seed,
            "preprocess": self.preprocess.to_dict(),
        }


def calibration_count(data: str | os.PathLike | Dataset, num_samples: int | None) -> int:
    """How many samples calibration uses: `num_samples`, at most all the data holds (None: all).

    Raises:
        DataError: the data cannot be opened, or holds no sample.
    """
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    if dataset.num_samples == 0:
        raise DataError(f"data '{dataset.path}': holds no sample to calibrate on")
    return dataset.num_samples if num_samples is None else min(num_samples, dataset.num_samples)


def calibration_data(
    model: onnx.ModelProto,
    data: str | os.PathLike | Dataset,
    num_samples: int | None = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    preprocess: Preprocess | None = None,
) -> CalibrationData:
    """Open and select the calibration set: `num_samples` seeded samples, or all of them when
    the data holds fewer (as the 512 of the default from a 256-sample file), with a warning.

    Raises:
        DataError: the data cannot be opened, or holds no sample.
    """
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    count = calibration_count(dataset, num_samples)
    if num_samples is not None and num_samples > count:
        log.warning("data '%s' holds %d samples, fewer than the %d asked for: calibrating on all %d",
                    dataset.path, count, num_samples, count)
    return CalibrationData(dataset, resolve_preprocess(model, preprocess), count, seed,
                           batch_limit(model, batch_size))


def activation_bytes_per_sample(model: onnx.ModelProto, sample: np.ndarray, tensors: list[str]) -> int:
    """Bytes of `tensors` for one sample, measured: `model` run once on `sample` ([1, ...])
    with every tensor as an output (shapes may depend on the input, so none is guessed)."""
    first = ir.graph_inputs(model)[0].name
    outputs = [name for name in tensors if name != first]
    if not outputs:
        return int(sample.nbytes)
    values = ort_session(with_outputs(model, outputs), threads=1).run(outputs, {first: sample})
    return int(sample.nbytes + sum(value.nbytes for value in values))


def one_sample(model: onnx.ModelProto, calib: CalibrationData) -> np.ndarray:
    """The first calibration sample [1, ...], preprocessed, checked against the model's first input.

    Raises:
        DataError: its rank or a static dimension differs from the model input's.
    """
    first = ir.graph_inputs(model)[0]
    sample = np.ascontiguousarray(next(iter(calib.dataset.batches(calib.preprocess, 1, 1, calib.seed))).x,
                                  dtype=ir.input_dtype(first))
    check_batch_shape(sample, ir.shape_of(first), str(calib.dataset.path), first.name)
    return sample


def memory_batch(model: onnx.ModelProto, calib: CalibrationData, tensors: list[str],
                 budget: int | None = None) -> int:
    """calib.batch_size, cut so that ACTIVATION_COPIES batches of `tensors` fit in `budget` bytes
    (default CALIBRATION_MEMORY_BUDGET; at least 1): calibration memory then depends on the
    model, not on a batch size chosen for small models. The samples and their order stay the
    same; only how many run at once changes."""
    inputs = [value.name for value in ir.graph_inputs(model)]
    if len(inputs) != 1:
        # A dataset's samples are one array each (fwedge.data); the sizing run below would
        # otherwise feed only the first input and onnxruntime raise its own ValueError.
        raise DataError(f"data '{calib.dataset.path}': the model has {len(inputs)} inputs {inputs}; "
                        "calibration data feeds one (give collect() dict batches from Python)")
    if calib.batch_size <= 1:
        return calib.batch_size
    budget = CALIBRATION_MEMORY_BUDGET if budget is None else budget
    sample = one_sample(model, calib)
    per_sample = activation_bytes_per_sample(model, sample, tensors)
    fits = max(1, budget // max(1, ACTIVATION_COPIES * per_sample))
    if fits < calib.batch_size:
        log.info("calibration batch %d instead of %d: the calibrated tensors take %.1f MB per sample, "
                 "and %d copies of a batch must fit in %d MB", fits, calib.batch_size, per_sample / 1e6,
                 ACTIVATION_COPIES, budget >> 20)
        return int(fits)
    return calib.batch_size


def collect_stats(
    prepared: onnx.ModelProto,
    calib: CalibrationData,
    options: QuantizeOptions | None = None,
    bins: int = DEFAULT_BINS,
    model_sha256: str = "",
    progress: Callable[[int], None] | None = None,
    all_candidates: bool = False,
    histograms: bool = True,
) -> tuple[CalibrationStats, QuantPlan]:
    """Histograms of every tensor the quantization plan needs a range for.

    With `all_candidates`, of every tensor any exclusion set could need (the accuracy budget).
    """
    plan = plan_quantization(prepared, options or QuantizeOptions())
    # Concat inputs tied to the output's scale get their own ranges too: mixed_range_concats
    # reads them to keep a Concat of very different ranges (boxes and scores) in float.
    # So do the tensors a plan without those Concats reads (what follows a float Concat).
    concats = tied_concat_inputs(prepared, plan)
    tied = [name for inputs in concats.values() for name in inputs]
    if concats:
        options = options or QuantizeOptions()
        tied += plan_quantization(prepared, replace(options, exclude_nodes=options.exclude_nodes | set(concats))
                                  ).calibrated
    tensors = list(dict.fromkeys(plan.calibrated + tied))
    if all_candidates:
        tensors = list(dict.fromkeys(tensors + candidate_tensors(prepared)))
    calib = replace(calib, batch_size=memory_batch(prepared, calib, tensors))
    stats = collect(
        prepared, calib.batches(), tensors, bins=bins, source=str(calib.dataset.path),
        progress=progress, model_sha256=model_sha256, dataset=calib.fingerprint(), histograms=histograms,
    )
    return stats, plan


def calibrate(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | Dataset,
    method: Method | str = Method.KL,
    num_samples: int | None = DEFAULT_NUM_SAMPLES,
    method_options: MethodOptions | None = None,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    preprocess: Preprocess | None = None,
    input_shapes: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> QuantTable:
    """Calibrate a model and compute its QuantTable (what `fwedge calibrate` writes).

    Raises:
        CalibrationError, DataError: see collect() and calibration_data().
    """
    prepared, sha = load_prepared(model, input_shapes)
    calib = calibration_data(prepared, data, num_samples, seed, batch_size, preprocess)
    stats, _ = collect_stats(prepared, calib, bins=bins, model_sha256=sha, progress=progress,
                             histograms=Method(method) is not Method.MINMAX)
    return compute(stats, method, method_options)


def ncnn_layers(prepared: onnx.ModelProto) -> list:
    """Layers with constant weights as ncnn's table lists them: name, input, per-channel absmax.

    The input is the tensor whose calibrated range the layer's input uses (data-movement and
    Concat inputs resolve to the tensor they share parameters with).
    """
    inits = ir.initializer_map(prepared)
    plan = plan_quantization(prepared)
    layers = []
    for node in prepared.graph.node:
        info = OP_INFO.get(node.op_type)
        if info is None or info.weight_input != 1 or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        axis = weight_axis(node)
        absmax = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
        layers.append(NcnnLayer(node.name, plan.resolve(node.input[0]), tuple(float(v) for v in absmax)))
    return layers

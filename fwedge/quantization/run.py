"""One-call INT8 quantization: prepare, calibrate, compute ranges, insert QDQ (+ accuracy budget)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from fwedge import ir
from fwedge.calibration import CalibrationStats, Method, MethodOptions, QuantTable, collect, compute
from fwedge.data import Dataset, Preprocess, open_dataset
from fwedge.errors import CalibrationError, DataError
from fwedge.passes.fold_bn import fold_batchnorm
from fwedge.quantization.plan import (
    KeptFloat, QuantizeOptions, QuantPlan, candidate_tensors, float_units, name_nodes, plan_quantization, weight_axis,
)
from fwedge.quantization.qdq import quantize_model

log = logging.getLogger(__name__)

DEFAULT_NUM_SAMPLES = 512
DEFAULT_BATCH_SIZE = 64


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float model that calibration and QDQ insertion work on.

    Constant folding / shape simplification (when the input shapes are static), BatchNorm
    folding, and names for unnamed nodes. Tensor names of the source model are kept.
    """
    from fwedge.passes.simplify import simplify

    return name_nodes(fold_batchnorm(simplify(model)))


def load_prepared(model: str | os.PathLike | onnx.ModelProto, input_shapes: dict | None = None) -> tuple[onnx.ModelProto, str]:
    """(prepared model, source sha256) from a path or a loaded model."""
    if isinstance(model, onnx.ModelProto):
        loaded, sha = model, ir.model_sha256(model)
    else:
        loaded, sha = ir.load(model), ir.sha256_file(model)
    if input_shapes:
        loaded = ir.set_input_shapes(loaded, input_shapes)
    return prepare(loaded), sha


def batch_limit(model: onnx.ModelProto, batch_size: int) -> int:
    """`batch_size`, capped by a static batch dimension of the model's first input (e.g. 1)."""
    shape = ir.shape_of(ir.graph_inputs(model)[0])
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return min(batch_size, shape[0])
    return batch_size


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


def calibration_data(
    model: onnx.ModelProto,
    data: str | os.PathLike | Dataset,
    num_samples: int | None = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    preprocess: Preprocess | None = None,
) -> CalibrationData:
    """Open and select the calibration set.

    Raises:
        DataError: the data set holds fewer samples than requested.
    """
    from fwedge.eval import resolve_preprocess

    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    count = dataset.num_samples if num_samples is None else num_samples
    if count > dataset.num_samples:
        raise DataError(
            f"data '{dataset.path}': {count} calibration samples requested, "
            f"but it holds only {dataset.num_samples}"
        )
    return CalibrationData(dataset, resolve_preprocess(model, preprocess), count, seed,
                           batch_limit(model, batch_size))


def collect_stats(
    prepared: onnx.ModelProto,
    calib: CalibrationData,
    options: QuantizeOptions | None = None,
    bins: int = 2048,
    model_sha256: str = "",
    progress: Callable[[int], None] | None = None,
    all_candidates: bool = False,
    histograms: bool = True,
) -> tuple[CalibrationStats, QuantPlan]:
    """Histograms of every tensor the quantization plan needs a range for.

    With `all_candidates`, of every tensor any exclusion set could need (the accuracy budget).
    """
    plan = plan_quantization(prepared, options or QuantizeOptions())
    tensors = plan.calibrated
    if all_candidates:
        tensors = list(dict.fromkeys(plan.calibrated + candidate_tensors(prepared)))
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
    bins: int = 2048,
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


@dataclass
class QuantizeResult:
    """What `quantize` produced.

    Attributes:
        model: the QDQ model.
        float_model: the prepared float model (BN folded) the QDQ model was built from.
        table: the QuantTable used.
        plan: the quantization plan (tensors and nodes touched).
        kept_float: nodes left in float by the accuracy budget, with reasons.
        budget: the budget search log (metric per step), empty without a budget.
    """

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    table: QuantTable
    plan: QuantPlan
    kept_float: list[KeptFloat] = field(default_factory=list)
    budget: dict = field(default_factory=dict)


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | Dataset | None = None,
    method: Method | str = Method.KL,
    num_samples: int | None = DEFAULT_NUM_SAMPLES,
    table: QuantTable | str | os.PathLike | None = None,
    per_channel: bool = True,
    symmetric: bool = False,
    method_options: MethodOptions | None = None,
    bins: int = 2048,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    preprocess: Preprocess | None = None,
    input_shapes: dict | None = None,
    max_accuracy_drop: float | None = None,
    min_agreement: float | None = None,
    eval_data: str | os.PathLike | Dataset | None = None,
    eval_samples: int | None = 1000,
    progress: Callable[[int], None] | None = None,
    keep_float: tuple[str, ...] | list[str] = (),
    float_stem: bool = False,
) -> QuantizeResult:
    """Calibrate (or take a table) and write an INT8 QDQ model; optionally within a budget.

    Args:
        model: float ONNX model (path or ModelProto).
        data: calibration data (not needed when `table` is given).
        method: kl, percentile, minmax or mse.
        num_samples: calibration samples (seeded random subset); None = all.
        table: a QuantTable (or its JSON path) to use instead of calibrating.
        per_channel: per-channel weight scales.
        symmetric: symmetric activations (zero point 0).
        max_accuracy_drop: labelled budget in percentage points on `eval_data`.
        min_agreement: fidelity budget: top-1 agreement with the float model on `eval_data`.
        eval_data, eval_samples: data for the budget.
        progress: called with sample counts during calibration.
        keep_float: node names of layers to keep in float (float_units); the budget, if any,
            works on top of them.
        float_stem: keep the layers that read the model input in float (float_units).

    Returns:
        QuantizeResult.

    Raises:
        CalibrationError: nothing to quantize, table mismatch, or an unmet budget setup.
        DataError: bad or too little data.
    """
    method_options = method_options or MethodOptions(symmetric=symmetric)
    if method_options.symmetric != symmetric:
        method_options = MethodOptions(**{**method_options.__dict__, "symmetric": symmetric})
    prepared, sha = load_prepared(model, input_shapes)
    requested = float_units(prepared, tuple(keep_float), float_stem) if keep_float or float_stem else []
    excluded = frozenset(name for unit in requested for name in unit.node.split("+"))
    options = QuantizeOptions(per_channel=per_channel, symmetric=symmetric, exclude_nodes=excluded,
                              method=str(Method(method).value))
    if table is not None:
        table = table if isinstance(table, QuantTable) else QuantTable.load(table)
        if table.model_sha256 and table.model_sha256 != sha:
            log.warning("quant table was calibrated on model sha256 %s, this model is %s",
                        table.model_sha256[:12], sha[:12])
        options = QuantizeOptions(per_channel=per_channel, symmetric=symmetric, exclude_nodes=excluded,
                                  method=table.method)
        plan = plan_quantization(prepared, options)
    else:
        if data is None:
            raise CalibrationError("quantize needs calibration data or a quant table")
        calib = calibration_data(prepared, data, num_samples, seed, batch_size, preprocess)
        budget = max_accuracy_drop is not None or min_agreement is not None
        stats, plan = collect_stats(prepared, calib, options, bins, sha, progress, all_candidates=budget,
                                    histograms=Method(method) is not Method.MINMAX)
        table = compute(stats, method, method_options)
    qdq = quantize_model(prepared, table, options, plan)
    result = QuantizeResult(qdq, prepared, table, plan, kept_float=list(requested))
    if max_accuracy_drop is not None or min_agreement is not None:
        from fwedge.quantization.budget import apply_budget

        if eval_data is None:
            raise CalibrationError("an accuracy budget needs --eval-data")
        apply_budget(result, options, eval_data, eval_samples, max_accuracy_drop, min_agreement,
                     preprocess, batch_size=256)
        result.kept_float = list(requested) + result.kept_float
        used = set(result.plan.calibrated)
        result.table.tensors = {name: q for name, q in result.table.tensors.items() if name in used}
    return result


def ncnn_layers(prepared: onnx.ModelProto) -> list:
    """Layers with constant weights as ncnn's table lists them: name, input, per-channel absmax.

    The input is the tensor whose calibrated range the layer's input uses (data-movement and
    Concat inputs resolve to the tensor they share parameters with).
    """
    from onnx import numpy_helper

    from fwedge.calibration.table import NcnnLayer

    inits = ir.initializer_map(prepared)
    plan = plan_quantization(prepared)
    layers = []
    for node in prepared.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        axis = weight_axis(node)
        absmax = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
        layers.append(NcnnLayer(node.name, plan.resolve(node.input[0]), tuple(float(v) for v in absmax)))
    return layers

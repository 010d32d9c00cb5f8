"""One quantize run: float model -> QuantTable -> plan -> QDQ model (+ accuracy budget, activation dtype)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Callable

import onnx

from fwedge.calibration import Method, QuantTable, compute
from fwedge.data import Dataset
from fwedge.errors import CalibrationError, QuantizeRequestError
from fwedge.eval import Fidelity
from fwedge.passes.equalize import equalize, find_pairs
from fwedge.shape_proposal import record_sample_shape
from fwedge.quantization.activation_dtype import uint8_activations
from fwedge.quantization.bias_correction import SAMPLES, correct_biases
from fwedge.quantization.budget import BudgetResult, search_budget
from fwedge.quantization.calibrate import calibration_data, collect_stats, one_sample
from fwedge.quantization.check import output_check, output_task, warning_for
from fwedge.quantization.plan import (
    KeptFloat, QuantizeOptions, QuantPlan, float_islands, float_units, mixed_range_concats, plan_quantization,
    post_processing, record_kept_float,
)
from fwedge.quantization.prepare import load_prepared
from fwedge.quantization.qdq import quantize_model
from fwedge.quantization.request import DEFAULT_NUM_SAMPLES, QuantizeRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` produced.

    Attributes:
        model: the final QDQ model (activation dtype applied).
        float_model: the prepared float model (BN folded) the QDQ model was built from.
        table: the QuantTable used (with a budget: only the tensors the final plan reads).
        plan: the final quantization plan (tensors and nodes touched, layers kept float and why).
        budget_result: the accuracy budget's decision and measurements, None without a budget.
        check: the final model's output against float on calibration samples
            (quantization.check), None when quantized from a table without data.
        options: the options the final model was written with (the layers kept float by
            request, by the detector rules or by the budget excluded), so that quantize_model
            with `float_model`'s weights changed, `table`, `options` and `plan` writes the same
            layout again (QAT, passes/qat.py).
        equalized_pairs: layer pairs cross-layer equalization scaled (passes/equalize.py), None
            when not asked for.
        relu6_replaced: the Clip (ReLU6) nodes equalization replaced by Relu (relu6_as_relu): the
            float model changed there; `check` compares against the model before that.
    """

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    table: QuantTable
    plan: QuantPlan
    budget_result: BudgetResult | None = None
    check: Fidelity | None = None
    options: QuantizeOptions | None = None
    equalized_pairs: int | None = None
    relu6_replaced: tuple[str, ...] = ()

    @property
    def kept_float(self) -> list[KeptFloat]:
        """Layers left in float, requested ones first, with reasons."""
        return self.plan.kept_float

    @property
    def budget(self) -> dict:
        """The budget search log (metric per step), empty without a budget."""
        return self.budget_result.to_dict() if self.budget_result is not None else {}


def _table_and_plan(request: QuantizeRequest, prepared: onnx.ModelProto, sha: str, excluded: frozenset[str],
                    progress: Callable[[int], None] | None) -> tuple[QuantTable, QuantizeOptions, QuantPlan]:
    """The QuantTable (given or calibrated), the options it is written with, and the plan."""
    if request.table is not None:
        table = request.table if isinstance(request.table, QuantTable) else QuantTable.load(request.table)
        if table.model_sha256 and table.model_sha256 != sha:
            log.warning("quant table was calibrated on model sha256 %s, this model is %s",
                        table.model_sha256[:12], sha[:12])
        options = request.plan_options(excluded, method=table.method)
        return table, options, plan_quantization(prepared, options)
    options = request.plan_options(excluded)
    calib = calibration_data(prepared, request.data, request.num_samples, request.seed, request.batch_size,
                             request.preprocess)
    stats, plan = collect_stats(prepared, calib, options, request.bins, sha, progress,
                                all_candidates=request.has_budget,
                                histograms=request.method is not Method.MINMAX)
    return compute(stats, request.method, request.range_options()), options, plan


def _split_mixed_concats(prepared: onnx.ModelProto, table: QuantTable, options: QuantizeOptions,
                         plan: QuantPlan) -> tuple[QuantizeOptions, QuantPlan, list[KeptFloat]]:
    """Keep in float every Concat whose inputs' ranges differ too much for one scale
    (plan.mixed_range_concats), and plan again without them; a warning names each."""
    chosen = []
    for unit in mixed_range_concats(prepared, plan, table.tensors):
        trial = replace(options, exclude_nodes=options.exclude_nodes | {unit.node})
        trial_plan = plan_quantization(prepared, trial)
        missing = [name for name in trial_plan.calibrated if name not in table.tensors]
        if missing:  # a table calibrated without the ranges a float Concat needs after it
            log.warning("Concat '%s' keeps one int8 scale though its %s: the table has no range for '%s'",
                        unit.node, unit.reason.split(":")[0], missing[0])
            continue
        # What becomes of each input once the Concat is float: its own int8 scale, or float where
        # no int8 op reads it any more (YOLOv8n's class Sigmoid, whose KL range says little then).
        inputs = [name for name in dict.fromkeys(
            next(node.input for node in prepared.graph.node if node.name == unit.node)) if name]
        floated = [name for name in inputs if name not in trial_plan.activations]
        if not floated:
            outcome = "its inputs keep their own scales"
        elif len(floated) == len(inputs):
            outcome = "its inputs stay float too (no int8 op reads them)"
        else:
            outcome = (f"{', '.join(repr(name) for name in floated)} stay float (no int8 op reads them), "
                       "the other inputs keep their own scales")
        unit = replace(unit, reason=f"{unit.reason}; {outcome}")
        log.warning("Concat '%s' kept in float: %s", unit.node, unit.reason)
        options, plan = trial, trial_plan
        chosen.append(unit)
    return options, plan, chosen


def _after_budget(prepared: onnx.ModelProto, table: QuantTable, options: QuantizeOptions, plan: QuantPlan,
                  budget: BudgetResult) -> tuple[QuantTable, QuantPlan]:
    """The plan of the budget's model, and the table narrowed to the tensors that plan reads."""
    if budget.float_nodes:
        try:
            plan = plan_quantization(prepared,
                                     replace(options, exclude_nodes=options.exclude_nodes | budget.float_nodes))
        except CalibrationError:
            plan = QuantPlan()  # every layer is in float
    used = set(plan.calibrated)
    return replace(table, tensors={name: q for name, q in table.tensors.items() if name in used}), plan


def _bias_corrected(request: QuantizeRequest, prepared: onnx.ModelProto, table: QuantTable, options: QuantizeOptions,
                    plan: QuantPlan, budget: BudgetResult | None) -> onnx.ModelProto:
    """The final plan's QDQ model written from biases corrected on calibration samples
    (quantization.bias_correction); the reference float model stays the uncorrected one."""
    if budget is not None and budget.float_nodes:
        options = replace(options, exclude_nodes=options.exclude_nodes | budget.float_nodes)
    count = min(request.num_samples or SAMPLES, SAMPLES)
    calib = calibration_data(prepared, request.data, count, request.seed, SAMPLES, request.preprocess)
    x = next(iter(calib.batches()()))
    model, moved = correct_biases(prepared, table, options, plan, x)
    log.info("bias correction on %d samples: %d layers corrected", len(x), len(moved))
    return model


def _equalized(prepared: onnx.ModelProto, relu6_as_relu: bool) -> tuple[onnx.ModelProto, int, tuple[str, ...]]:
    """(the equalized model, pairs, the Clips replaced by Relu); the replacement is a warning: it
    changes the float model."""
    replaced = tuple(clip for pair in find_pairs(prepared, relu6_as_relu) for clip in pair.clips)
    model, pairs = equalize(prepared, relu6_as_relu=relu6_as_relu)
    if replaced:
        log.warning("cross-layer equalization replaced %d ReLU6 (Clip) by Relu: the float model differs where "
                    "a value exceeded the Clip's bound (first: '%s')", len(replaced), replaced[0])
    return model, pairs, replaced


def run_quantization(request: QuantizeRequest, progress: Callable[[int], None] | None = None) -> QuantizeResult:
    """Calibrate (or take a table) and write an INT8 QDQ model; optionally within a budget.

    The data flows one way: the prepared float model (cross-layer equalized on request) gives
    the QuantTable (calibrated on the tensors the plan needs), the plan and the table give the
    QDQ model, the budget (if any)
    measures QDQ models and says which layers stay float, and the activation dtype is applied
    to the final model.

    Args:
        request: what to quantize and how (checked when it was built).
        progress: called with sample counts during calibration.

    Returns:
        QuantizeResult.

    Raises:
        CalibrationError: nothing to quantize, table mismatch, or a bad keep-float name.
        DataError: bad or too little data.
        ModelError: the model cannot be loaded or QDQ-written.
    """
    prepared, sha = load_prepared(request.model, request.input_shapes)
    reference, pairs, relu6 = prepared, None, ()
    if request.equalize:
        prepared, pairs, relu6 = _equalized(prepared, request.relu6_as_relu)
    requested = (float_units(prepared, request.keep_float, request.float_stem)
                 if request.keep_float or request.float_stem else [])
    excluded = frozenset(name for unit in requested for name in unit.node.split("+"))
    decode = [unit for unit in post_processing(prepared) if unit.node not in excluded]
    excluded |= {unit.node for unit in decode}
    table, options, plan = _table_and_plan(request, prepared, sha, excluded, progress)
    options, plan, mixed = _split_mixed_concats(prepared, table, options, plan)
    model = quantize_model(prepared, table, options, plan)
    budget = None
    kept_float = list(requested) + decode + mixed + float_islands(prepared, excluded)
    spec = request.budget()
    if spec is not None:
        budget = search_budget(prepared, model, table, options, plan, spec)
        table, plan = _after_budget(prepared, table, options, plan, budget)
        model = budget.model
        kept_float += budget.kept_float
    if request.bias_correction:
        model = _bias_corrected(request, prepared, table, options, plan, budget)
    if request.activation_dtype == "uint8":
        model = uint8_activations(model)
    record_kept_float(model, kept_float)  # what QAT writes from this result's plan, too
    check = None
    if request.data is not None:
        # A dynamic input stays dynamic; the export that needs it static proposes this sample's shape.
        calib = calibration_data(prepared, request.data, 1, request.seed, 1, request.preprocess)
        record_sample_shape(model, one_sample(prepared, calib), calib.dataset.path.name)
        check = output_check(reference, model, request.data, request.preprocess, request.seed)
        warning = warning_for(check, output_task(prepared))
        if warning:
            log.warning("%s", warning)
    if budget is not None and budget.float_nodes:
        options = replace(options, exclude_nodes=options.exclude_nodes | budget.float_nodes)
    return QuantizeResult(model, prepared, table, replace(plan, kept_float=kept_float), budget, check, options,
                          pairs, relu6)


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | Dataset | None = None,
    method: Method | str = Method.KL,
    num_samples: int | None = DEFAULT_NUM_SAMPLES,
    progress: Callable[[int], None] | None = None,
    **settings,
) -> QuantizeResult:
    """Shorthand for run_quantization(QuantizeRequest(model, data, method, num_samples, **settings)).

    Args:
        model, data, method, num_samples: as in QuantizeRequest.
        progress: called with sample counts during calibration.
        settings: any other QuantizeRequest field by name (table, keep_float, min_agreement, ...).

    Returns:
        QuantizeResult.

    Raises:
        QuantizeRequestError: a setting out of range, or one QuantizeRequest does not have.
        CalibrationError, DataError, ModelError: as run_quantization.
    """
    unknown = sorted(set(settings) - {f.name for f in fields(QuantizeRequest)})
    if unknown:
        raise QuantizeRequestError(unknown[0], f"no such setting; QuantizeRequest has "
                                               f"{[f.name for f in fields(QuantizeRequest)]}")
    return run_quantization(QuantizeRequest(model, data, method, num_samples, **settings), progress)

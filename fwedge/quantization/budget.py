"""Accuracy budget: keep the most sensitive layers in float until the int8 model is within budget."""
from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import onnx

from fwedge.data import Dataset, Preprocess, check_batch_shape, open_dataset
from fwedge.errors import CalibrationError, DataError
from fwedge.quantization.plan import KeptFloat, QuantizeOptions, QuantPlan, layer_groups, plan_quantization
from fwedge.quantization.qdq import quantize_model

log = logging.getLogger(__name__)


class _Evaluator:
    """Scores candidate QDQ models on a fixed in-memory evaluation subset."""

    def __init__(self, float_model, dataset: Dataset, preprocess: Preprocess, samples: int | None,
                 labelled: bool, batch_size: int):
        from fwedge.eval import ort_session

        self.labelled = labelled
        session = ort_session(float_model)
        first = session.get_inputs()[0]
        self.input_name = first.name
        self.batches, self.labels, self.reference = [], [], []
        for batch in dataset.batches(preprocess, batch_size, samples, seed=0):
            check_batch_shape(batch.x, list(first.shape), str(dataset.path), first.name)
            self.batches.append(batch.x)
            self.labels.append(batch.y)
            self.reference.append(session.run(None, {self.input_name: batch.x})[0].reshape(len(batch.x), -1).argmax(1))
        self.total = sum(len(x) for x in self.batches)
        self.float_score = self._score(self.reference)

    def _score(self, predictions) -> float:
        if self.labelled:
            return float(sum(np.sum(p == y) for p, y in zip(predictions, self.labels)) / self.total)
        return float(sum(np.sum(p == r) for p, r in zip(predictions, self.reference)) / self.total)

    def __call__(self, model: onnx.ModelProto) -> float:
        from fwedge.eval import ort_session

        session = ort_session(model)
        predictions = [session.run(None, {self.input_name: x})[0].reshape(len(x), -1).argmax(1) for x in self.batches]
        return self._score(predictions)


def apply_budget(result, options: QuantizeOptions, eval_data: str | os.PathLike | Dataset,
                 eval_samples: int | None, max_accuracy_drop: float | None, min_agreement: float | None,
                 preprocess: Preprocess | None = None, batch_size: int = 256) -> None:
    """Keep layers in float, most sensitive first, until the budget holds; updates `result`.

    Sensitivity of a layer = the metric of the model with only that layer kept in float, minus
    the metric of the all-int8 model. Layers are then added to the float set in decreasing
    sensitivity, re-measuring after each, until the labelled drop (percentage points against
    the float model) is within `max_accuracy_drop`, or top-1 agreement with the float model
    reaches `min_agreement`. Every layer kept in float is reported with its measured effect.

    Raises:
        CalibrationError: both or neither budget given, or a bad value.
        DataError: --max-accuracy-drop with unlabelled data.
    """
    from fwedge.eval import resolve_preprocess

    if (max_accuracy_drop is None) == (min_agreement is None):
        raise CalibrationError("give exactly one budget: --max-accuracy-drop or --min-agreement")
    if min_agreement is not None and not 0 < min_agreement <= 1:
        raise CalibrationError(f"--min-agreement must be a fraction in (0, 1], got {min_agreement}")
    dataset = eval_data if isinstance(eval_data, Dataset) else open_dataset(eval_data)
    labelled = max_accuracy_drop is not None
    if labelled and not dataset.has_labels:
        raise DataError(f"data '{dataset.path}': --max-accuracy-drop needs labels; use --min-agreement")
    if eval_samples is not None:
        eval_samples = min(eval_samples, dataset.num_samples)
    spec = resolve_preprocess(result.float_model, preprocess)
    from fwedge.quantization.run import batch_limit

    evaluate = _Evaluator(result.float_model, dataset, spec, eval_samples, labelled,
                          batch_limit(result.float_model, batch_size))

    def within(score: float) -> bool:
        if labelled:
            return 100.0 * (evaluate.float_score - score) <= max_accuracy_drop + 1e-9
        return score >= min_agreement

    def describe(score: float) -> str:
        if labelled:
            return f"accuracy {100 * score:.2f}% (drop {100 * (evaluate.float_score - score):.2f} pp)"
        return f"agreement {100 * score:.2f}%"

    full_score = evaluate(result.model)
    steps = [{"float_nodes": [], "score": full_score}]
    kept: list[KeptFloat] = []
    excluded: set[str] = set()
    model = result.model
    score = full_score
    if not within(full_score):
        groups = [list(group.nodes) for group in layer_groups(result.float_model, options)]
        sensitivity = []
        for group in groups:
            trial = quantize_model(result.float_model, result.table,
                                   replace(options, exclude_nodes=options.exclude_nodes | frozenset(group)))
            sensitivity.append((evaluate(trial) - full_score, group))
        sensitivity.sort(key=lambda item: -item[0])
        ops = {node.name: node.op_type for node in result.float_model.graph.node}
        for gain, group in sensitivity:
            excluded |= set(group)
            current = replace(options, exclude_nodes=options.exclude_nodes | frozenset(excluded))
            try:
                model = quantize_model(result.float_model, result.table, current)
            except CalibrationError:
                model = result.float_model  # every layer is in float now: nothing left to quantize
            score = evaluate(model)
            steps.append({"float_nodes": sorted(excluded), "score": score})
            kept.append(KeptFloat(
                node="+".join(group), op="+".join(ops[n] for n in group),
                reason=(f"sensitivity rank {len(kept) + 1}: float alone recovers {100 * gain:+.2f} pp; "
                        f"model now at {describe(score)}"),
            ))
            log.info("budget: %s kept in float -> %s", group, describe(score))
            if within(score):
                break
        if within(score) and len(kept) > 1:
            # Backward pass: re-quantize any float layer the budget turns out not to need.
            for entry, (gain, group) in reversed(list(zip(list(kept), sensitivity))):
                trial_set = excluded - set(group)
                trial = quantize_model(result.float_model, result.table,
                                       replace(options, exclude_nodes=options.exclude_nodes | frozenset(trial_set)))
                trial_score = evaluate(trial)
                if within(trial_score):
                    excluded, model, score = trial_set, trial, trial_score
                    kept.remove(entry)
                    steps.append({"float_nodes": sorted(excluded), "score": score, "requantized": group})
            kept = [replace(entry, reason=f"sensitivity rank {rank}: "
                                          f"{entry.reason.split(': ', 1)[1].split('; model now')[0]}; needed for the budget")
                    for rank, entry in enumerate(kept, start=1)]
        result.model = model
        try:
            result.plan = plan_quantization(result.float_model, replace(options, exclude_nodes=options.exclude_nodes | frozenset(excluded)))
        except CalibrationError:
            result.plan = QuantPlan()
    target = (f"drop <= {max_accuracy_drop} pp" if labelled else f"agreement >= {100 * min_agreement:.2f}%")
    met = within(score)
    result.kept_float = kept
    result.budget = {
        "metric": "accuracy" if labelled else "agreement",
        "eval_samples": evaluate.total,
        "float": evaluate.float_score,
        "all_int8": full_score,
        "final": score,
        "target": target,
        "met": met,
        "steps": steps,
        "summary": (f"{target} on {evaluate.total} samples: all-int8 {describe(full_score)}, final "
                    f"{describe(score)} with {len(kept)} layer(s) in float"
                    + ("" if met else " -- NOT met")),
    }

"""Accuracy budget: keep the most sensitive layers in float until the int8 model is within budget."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx

from fwedge.calibration import QuantTable
from fwedge.console import progress
from fwedge.data import Dataset, Preprocess, check_batch_shape, open_dataset
from fwedge.errors import CalibrationError, DataError
from fwedge.eval import ort_session, resolve_preprocess
from fwedge.quantization.plan import KeptFloat, LayerGroup, QuantizeOptions, QuantPlan
from fwedge.quantization.prepare import batch_limit
from fwedge.quantization.qdq import quantize_model
from fwedge.quantization.request import BudgetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetStep:
    """One measurement of the search: the float set and the metric it gave."""

    float_nodes: tuple[str, ...]
    score: float
    requantized: tuple[str, ...] | None = None  # the layer the backward pass put back in int8

    def to_dict(self) -> dict:
        step = {"float_nodes": list(self.float_nodes), "score": self.score}
        if self.requantized is not None:
            step["requantized"] = list(self.requantized)
        return step


@dataclass(frozen=True)
class BudgetResult:
    """What the budget decided and measured; the inputs of search_budget are left as they were.

    Attributes:
        model: the chosen model: the QDQ model with `float_nodes` in float (the float model when
            every layer is float; the all-int8 model when it meets the budget as it is).
        float_nodes: node names the budget keeps in float (on top of the requested ones).
        kept_float: one entry per layer in `float_nodes`, with its measured effect.
        metric: "accuracy" (labelled) or "agreement" (top-1 with the float model).
        eval_samples: samples measured.
        float_score, all_int8, final: the metric of the float, the all-int8 and the chosen model.
        target: the budget in words.
        met: whether the chosen model is within the budget.
        steps: every float set measured, in order.
        summary: one line for reports.
    """

    model: onnx.ModelProto
    float_nodes: frozenset[str]
    kept_float: tuple[KeptFloat, ...]
    metric: str
    eval_samples: int
    float_score: float
    all_int8: float
    final: float
    target: str
    met: bool
    steps: tuple[BudgetStep, ...]
    summary: str

    def to_dict(self) -> dict:
        """The budget report (QuantizeResult.budget, the CLI's JSON)."""
        return {
            "metric": self.metric, "eval_samples": self.eval_samples, "float": self.float_score,
            "all_int8": self.all_int8, "final": self.final, "target": self.target, "met": self.met,
            "steps": [step.to_dict() for step in self.steps], "summary": self.summary,
        }


class _Evaluator:
    """Scores candidate QDQ models on a fixed in-memory evaluation subset."""

    def __init__(self, float_model, dataset: Dataset, preprocess: Preprocess, samples: int | None,
                 labelled: bool, batch_size: int):
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
        session = ort_session(model)
        predictions = [session.run(None, {self.input_name: x})[0].reshape(len(x), -1).argmax(1) for x in self.batches]
        return self._score(predictions)


def _evaluator(float_model: onnx.ModelProto, spec: BudgetSpec) -> _Evaluator:
    """Open the evaluation data and score the float model on it.

    Raises:
        DataError: a labelled budget on unlabelled data.
    """
    dataset = spec.eval_data if isinstance(spec.eval_data, Dataset) else open_dataset(spec.eval_data)
    if spec.labelled and not dataset.has_labels:
        raise DataError(f"data '{dataset.path}': --max-accuracy-drop needs labels; use --min-agreement")
    samples = spec.eval_samples if spec.eval_samples is None else min(spec.eval_samples, dataset.num_samples)
    return _Evaluator(float_model, dataset, resolve_preprocess(float_model, spec.preprocess), samples,
                      spec.labelled, batch_limit(float_model, spec.batch_size))


def accuracy_change(float_score: float, score: float) -> str:
    """'drop 0.30 pp vs float', or 'gain 0.30 pp vs float' when the quantized model scores higher."""
    delta = 100 * (float_score - score)
    if round(delta, 2) == 0:
        return "same as float"
    return f"{'drop' if delta > 0 else 'gain'} {abs(delta):.2f} pp vs float"


class _Search:
    """The greedy search: rank layers by how much float alone recovers, add them, then prune back."""

    def __init__(self, float_model: onnx.ModelProto, table: QuantTable, options: QuantizeOptions,
                 spec: BudgetSpec, evaluate: _Evaluator):
        self.float_model, self.table, self.options, self.spec, self.evaluate = (
            float_model, table, options, spec, evaluate)
        self.ops = {node.name: node.op_type for node in float_model.graph.node}

    def within(self, score: float) -> bool:
        if self.spec.labelled:
            return 100.0 * (self.evaluate.float_score - score) <= self.spec.max_accuracy_drop + 1e-9
        return score >= self.spec.min_agreement

    def describe(self, score: float) -> str:
        if self.spec.labelled:
            return f"accuracy {100 * score:.2f}% ({accuracy_change(self.evaluate.float_score, score)})"
        return f"agreement {100 * score:.2f}%"

    def without(self, float_nodes) -> onnx.ModelProto:
        """The QDQ model with `float_nodes` (on top of the requested ones) in float."""
        return quantize_model(self.float_model, self.table,
                              replace(self.options, exclude_nodes=self.options.exclude_nodes | frozenset(float_nodes)))

    def rank(self, groups: list[LayerGroup], full_score: float) -> list[tuple[float, LayerGroup]]:
        """(gain, layer), most sensitive first: gain = metric with only that layer in float - all-int8 metric.

        One evaluation per layer, the long part of the search: a bar counts them (with the time
        left), and each is logged at INFO.
        """
        sensitivity = []
        with progress(len(groups), f"budget: {len(groups)} layers, each alone in float") as advance:
            for number, group in enumerate(groups, start=1):
                score = self.evaluate(self.without(group.nodes))
                sensitivity.append((score - full_score, group))
                log.info("budget: layer %d of %d, %s alone in float -> %s", number, len(groups), group.name,
                         self.describe(score))
                advance(1)
        sensitivity.sort(key=lambda item: -item[0])
        return sensitivity

    def forward(self, ranked, model: onnx.ModelProto, score: float, steps: list[BudgetStep]):
        """Add layers to the float set in ranked order until the budget holds.

        Returns:
            (float set, model, score, [(KeptFloat, layer)]).
        """
        excluded: set[str] = set()
        kept: list[tuple[KeptFloat, LayerGroup]] = []
        with progress(len(ranked), "budget: adding layers in float, most sensitive first") as advance:
            return self._add(ranked, model, score, steps, excluded, kept, advance)

    def _add(self, ranked, model, score, steps, excluded, kept, advance):
        for gain, group in ranked:
            advance(1)
            excluded |= set(group.nodes)
            try:
                model = self.without(excluded)
            except CalibrationError:
                model = self.float_model  # every layer is in float now: nothing left to quantize
            score = self.evaluate(model)
            steps.append(BudgetStep(tuple(sorted(excluded)), score))
            kept.append((KeptFloat(
                node=group.name, op="+".join(self.ops[n] for n in group.nodes),
                reason=(f"sensitivity rank {len(kept) + 1}: float alone recovers {100 * gain:+.2f} pp; "
                        f"model now at {self.describe(score)}"),
            ), group))
            log.info("budget: %s kept in float -> %s", list(group.nodes), self.describe(score))
            if self.within(score):
                break
        return excluded, model, score, kept

    def backward(self, excluded: set[str], model, score: float, kept, steps: list[BudgetStep]):
        """Re-quantize any float layer the budget turns out not to need, least sensitive first."""
        for entry in reversed(list(kept)):
            group = entry[1]
            trial_set = excluded - set(group.nodes)
            trial = self.without(trial_set)
            trial_score = self.evaluate(trial)
            if self.within(trial_score):
                excluded, model, score = trial_set, trial, trial_score
                kept.remove(entry)
                steps.append(BudgetStep(tuple(sorted(excluded)), score, requantized=group.nodes))
        return excluded, model, score, kept


def _reranked(kept: list[KeptFloat]) -> list[KeptFloat]:
    """After the backward pass: ranks among the layers that stayed, and no stale "model now at"."""
    return [replace(entry, reason=f"sensitivity rank {rank}: "
                                  f"{entry.reason.split(': ', 1)[1].split('; model now')[0]}; needed for the budget")
            for rank, entry in enumerate(kept, start=1)]


def search_budget(float_model: onnx.ModelProto, int8_model: onnx.ModelProto, table: QuantTable,
                  options: QuantizeOptions, plan: QuantPlan, spec: BudgetSpec) -> BudgetResult:
    """Keep layers in float, most sensitive first, until the budget holds. A pure function.

    Sensitivity of a layer = the metric of the model with only that layer kept in float, minus
    the metric of the all-int8 model. Layers are then added to the float set in decreasing
    sensitivity, re-measuring after each, until the labelled drop (percentage points against
    the float model) is within `max_accuracy_drop`, or top-1 agreement with the float model
    reaches `min_agreement`. A backward pass then re-quantizes any layer the budget does not
    need. Every layer kept in float is reported with its measured effect.

    Args:
        float_model: the prepared float model the QDQ models are built from.
        int8_model: the QDQ model of `plan` (every layer int8 but the requested ones).
        table: the QuantTable; it must hold a range for every candidate tensor.
        options: the options `int8_model` was written with (requested exclusions included).
        plan: the plan of `int8_model`; its layer groups are the units kept in float.
        spec: the budget and its evaluation data.

    Returns:
        BudgetResult. None of the arguments is modified.

    Raises:
        DataError: a labelled budget (max_accuracy_drop) on unlabelled data.
    """
    evaluate = _evaluator(float_model, spec)
    search = _Search(float_model, table, options, spec, evaluate)
    full_score = evaluate(int8_model)
    steps = [BudgetStep((), full_score)]
    excluded: set[str] = set()
    model, score, kept_float = int8_model, full_score, []
    if not search.within(full_score):
        ranked = search.rank(plan.groups, full_score)
        excluded, model, score, kept = search.forward(ranked, model, score, steps)
        if search.within(score) and len(kept) > 1:
            excluded, model, score, kept = search.backward(excluded, model, score, kept, steps)
            kept_float = _reranked([entry for entry, _ in kept])
        else:
            kept_float = [entry for entry, _ in kept]
    labelled = spec.labelled
    target = (f"drop <= {spec.max_accuracy_drop} pp" if labelled else f"agreement >= {100 * spec.min_agreement:.2f}%")
    met = search.within(score)
    return BudgetResult(
        model=model, float_nodes=frozenset(excluded), kept_float=tuple(kept_float),
        metric="accuracy" if labelled else "agreement", eval_samples=evaluate.total,
        float_score=evaluate.float_score, all_int8=full_score, final=score, target=target, met=met,
        steps=tuple(steps),
        summary=(f"{target} on {evaluate.total} samples: all-int8 {search.describe(full_score)}, final "
                 f"{search.describe(score)} with {len(kept_float)} layer(s) in float"
                 + ("" if met else " -- NOT met")),
    )

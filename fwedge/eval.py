"""Evaluation: top-1 accuracy on labelled data and fidelity of one model against another."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Protocol

import numpy as np
import onnx

from fwedge import ir
from fwedge.data import Batch, Dataset, Preprocess, check_batch_shape, preprocess_from_metadata
from fwedge.detection import decode, map50
from fwedge.errors import DataError, ModelError
from fwedge.shape_proposal import give_input_shape
from fwedge.tasks import CLASSIFICATION, DETECTION, task_of

log = logging.getLogger(__name__)

# An element is "more than one step off" past 1.5 steps: two outputs on the same int8 grid
# differ by whole steps, so this counts those two or more steps apart, with room for the float
# rounding of the division (tests/helpers.py runtime_int8_problems and bench/real_model_steps.py
# count with it too).
FAR_STEPS = 1.5


def dequantized_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Tensor -> the quantization step of the DequantizeLinear that produces it, where its scale
    is one constant (per tensor): the grid an int8 output's values lie on. Per-channel
    DequantizeLinears (weights) have no single step and are left out."""
    inits = {init.name: init for init in model.graph.initializer}
    steps = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
            if scale.size == 1 and np.isfinite(scale[0]) and scale[0] > 0:
                steps.setdefault(node.output[0], float(scale[0]))
    return steps


class Runner(Protocol):
    """Anything that maps a batch of model input to its chosen output (the first by default: the
    logits). Runners that also have `output` (that name) and `outputs(x)` (every output by name)
    get every shared output compared by evaluate()."""

    input_name: str
    input_shape: list

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def _ort_errors() -> tuple[type[Exception], ...]:
    """The exception types onnxruntime raises (Fail, RuntimeException, InvalidArgument, ...)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(kind for kind in vars(state).values() if isinstance(kind, type) and issubclass(kind, Exception))


class CheckedSession:
    """An onnxruntime session whose runs raise ModelError instead of onnxruntime's own errors.

    A model can fail only at run time, e.g. a tensor whose shape depends on the input is too
    large to allocate; that is bad input, reported on one line, not a crash.
    """

    def __init__(self, session):
        self._session = session
        self._errors = _ort_errors()

    def _failed(self, exc: Exception) -> ModelError:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return ModelError(f"onnxruntime failed running the model: {first[:600]}")

    def run(self, *args, **kwargs):
        try:
            return self._session.run(*args, **kwargs)
        except self._errors as exc:
            raise self._failed(exc) from exc

    def run_with_iobinding(self, *args, **kwargs):
        try:
            return self._session.run_with_iobinding(*args, **kwargs)
        except self._errors as exc:
            raise self._failed(exc) from exc

    def __getattr__(self, name):
        return getattr(self._session, name)


# onnxruntime's session option that keeps QuantizeLinear/DequantizeLinear as separate nodes.
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"


def ort_session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None, *,
                exact_qdq: bool = True):
    """An onnxruntime CPU session (a CheckedSession) with all graph optimizations, from a model or path.

    Args:
        model: a ModelProto or a path.
        threads: intra-op threads (None: onnxruntime's default).
        exact_qdq: run a QDQ model as the ONNX operators define it (DequantizeLinear, the float
            op, QuantizeLinear) instead of fusing it into onnxruntime's integer kernels. Those
            kernels depend on the CPU: on x86 CPUs without VNNI, MLAS's u8s8 convolution and
            GEMM kernels add pairs of u8 x s8 products in saturating int16 (pmaddubsw), so a
            layer with full-range int8 weights comes out tens of steps off on such a CPU and
            exact on a VNNI one. The reference every target is compared against must not
            depend on the host, so it is exact; the onnx target runs the fused kernels, which
            is what a deployed onnxruntime runs. No effect on float models.

    Raises:
        ModelError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors are raised (ModelError) with their message, not logged too
    if exact_qdq:
        options.add_session_config_entry(DISABLE_QDQ_FUSION, "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return CheckedSession(ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc


def chosen_output(names: list[str], output: str | None, where: str) -> str:
    """`output` when it is one of `names`, the first name when it is None.

    Raises:
        DataError: an output the model or bundle does not have.
    """
    if output is None:
        return names[0]
    if output not in names:
        raise DataError(f"{where}: no output {output!r}; its outputs are {names[:20]}")
    return output


class OrtRunner:
    """Runs a model in onnxruntime. Called with a batch it returns `output` (default the first
    output); `outputs` returns all of them by name."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, threads: int | None = None,
                 output: str | None = None):
        self.model = model if isinstance(model, onnx.ModelProto) else ir.load(model)
        self.session = ort_session(self.model, threads)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)
        self.output_names = [value.name for value in self.session.get_outputs()]
        self.output = chosen_output(self.output_names, output, "model")
        produced = dequantized_steps(self.model)
        self.output_steps = {name: produced[name] for name in self.output_names if name in produced}

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name."""
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs of one batch by name."""
        return self.run_all({self.input_name: x})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input_name: x})[0]


class BatchedOrtRunner:
    """An OrtRunner that takes any batch: a model whose batch is fixed (to 1, say)
    runs the batch in slices of that size."""

    def __init__(self, model: onnx.ModelProto, output: str | None = None):
        self.runner = OrtRunner(model, output=output)
        self.input_name = self.runner.input_name
        self.output = self.runner.output
        self.output_steps = self.runner.output_steps
        first = self.runner.input_shape[0] if self.runner.input_shape else None
        self.step = first if isinstance(first, int) and first > 0 else None
        self.input_shape = [None] + list(self.runner.input_shape[1:]) if self.step else self.runner.input_shape

    def _slices(self, x: np.ndarray) -> list[np.ndarray]:
        return [x] if self.step is None or len(x) == self.step else [x[i:i + self.step] for i in range(0, len(x), self.step)]

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs of one batch by name."""
        parts = [self.runner.outputs(part) for part in self._slices(x)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.runner(part) for part in self._slices(x)])


@dataclass
class AccuracyResult:
    """Top-1 accuracy over `total` labelled samples."""

    top1: float
    correct: int
    total: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fidelity:
    """How closely `candidate` outputs follow `reference` outputs on the same inputs.

    Attributes:
        top1_agreement: fraction of samples whose argmax agrees.
        cosine: mean per-sample cosine similarity of the flattened outputs.
        max_abs_error: largest absolute element difference.
        sqnr_db: 10·log10(Σ ref² / Σ (ref − cand)²); inf when identical.
        samples: number of samples compared.
        step: the output's quantization step (eval.output_step), None for a float output.
        max_steps: max_abs_error / step; None without a step.
        far_fraction: share of elements more than one step off (> FAR_STEPS steps); None
            without a step.
    """

    top1_agreement: float
    cosine: float
    max_abs_error: float
    sqnr_db: float
    samples: int
    step: float | None = None
    max_steps: float | None = None
    far_fraction: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class FidelityAccumulator:
    """Streams fidelity statistics batch by batch, so memory stays bounded. With `step` (the
    output's quantization step) the differences are also counted in steps."""

    def __init__(self, step: float | None = None) -> None:
        self.step = step
        self.far = 0
        self.elements = 0
        self.agree = 0
        self.samples = 0
        self.cosine_sum = 0.0
        self.max_abs = 0.0
        self.signal = 0.0
        self.noise = 0.0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if reference.shape != candidate.shape:
            raise DataError(
                f"fidelity: reference output shape {list(reference.shape)} differs from "
                f"candidate {list(candidate.shape)}"
            )
        ref = reference.reshape(len(reference), -1).astype(np.float64)
        cand = candidate.reshape(len(candidate), -1).astype(np.float64)
        self.agree += int(np.sum(ref.argmax(axis=1) == cand.argmax(axis=1)))
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        dots = np.sum(ref * cand, axis=1)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)
        self.cosine_sum += float(cosine.sum())
        diff = ref - cand
        self.max_abs = max(self.max_abs, float(np.abs(diff).max(initial=0.0)))
        if self.step is not None:
            self.far += int(np.count_nonzero(np.abs(diff) / self.step > FAR_STEPS))
            self.elements += diff.size
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        self.samples += len(ref)

    def result(self) -> Fidelity:
        if self.samples == 0:
            raise DataError("fidelity: no samples were compared")
        sqnr = float("inf") if self.noise == 0 else 10.0 * np.log10(max(self.signal, 1e-30) / self.noise)
        return Fidelity(
            top1_agreement=self.agree / self.samples,
            cosine=self.cosine_sum / self.samples,
            max_abs_error=self.max_abs,
            sqnr_db=float(sqnr),
            samples=self.samples,
            step=self.step,
            max_steps=self.max_abs / self.step if self.step is not None else None,
            far_fraction=self.far / max(self.elements, 1) if self.step is not None else None,
        )


def output_step(runners: list[tuple[object, str | None]]) -> float | None:
    """The quantization step of a compared output: the first of (runner, output name) whose
    runner knows one (its `output_steps`: a QDQ model's DequantizeLinear, a bundle manifest's
    int8 output scale). None when none does: a float output has no step, and none is made up."""
    for runner, name in runners:
        step = (getattr(runner, "output_steps", None) or {}).get(name)
        if step is not None:
            return step
    return None


def resolve_preprocess(model: onnx.ModelProto, override: Preprocess | None = None) -> Preprocess:
    """The preprocessing to use: an explicit override, the model's metadata, or a guess from its input."""
    if override is not None:
        return override
    stored = preprocess_from_metadata(model)
    if stored is not None:
        return stored
    first = ir.graph_inputs(model)[0]
    guess = Preprocess.for_input_shape(ir.shape_of(first))
    dtype = ir.input_dtype(first)
    return guess if dtype == np.float32 else replace(guess, dtype=dtype.name)


def iterate_checked(
    dataset: Dataset,
    runner: Runner,
    preprocess: Preprocess,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
) -> Iterable[Batch]:
    """Batches from `dataset`, each checked against the runner's input shape."""
    for batch in dataset.batches(preprocess, batch_size=batch_size, limit=limit, seed=seed):
        check_batch_shape(batch.x, runner.input_shape, str(dataset.path), runner.input_name)
        yield batch


def accuracy(
    runner: Runner,
    dataset: Dataset,
    preprocess: Preprocess,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> AccuracyResult:
    """Top-1 accuracy of `runner` on a labelled dataset.

    Raises:
        DataError: the dataset has no labels, or its shape does not fit the model.
    """
    if not dataset.has_labels:
        raise DataError(f"data '{dataset.path}': accuracy needs labels, and this source has none")
    return evaluate(runner, dataset, preprocess, None, batch_size, limit, progress, seed)["accuracy"]


def fidelity(
    reference: Runner,
    candidate: Runner,
    dataset: Dataset,
    preprocess: Preprocess,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Fidelity:
    """Fidelity of `candidate` against `reference` on the same preprocessed inputs."""
    return evaluate(candidate, dataset, preprocess, reference, batch_size, limit, progress, seed)["fidelity"]


def evaluate(
    runner: Runner,
    dataset: Dataset,
    preprocess: Preprocess,
    reference: Runner | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    task: str = "auto",
) -> dict:
    """Accuracy (when the data is labelled) and fidelity against `reference` in one pass.

    `task` (fwedge.tasks): accuracy is counted for classification only; for detection the
    candidate's boxes are scored against the reference's as mAP@0.5 ("map50"). "auto" decides
    from the first batch's output shape.

    The candidate runs once per batch for both figures. Accuracy and the top-1 figures read
    each runner's chosen output (`output`, default the first). When both runners give all their
    outputs (`outputs`), every output they share is compared too: "outputs" maps its name to
    its Fidelity (a detector's boxes, an OCR model's sequence: SQNR, cosine and max error are
    the figures that mean something there). An output with a quantization step (output_step:
    the reference's, else the candidate's) is also counted in steps; a float output is not.

    Returns:
        {"samples": int, "task": str, "accuracy": AccuracyResult | None, "fidelity": Fidelity | None,
        "outputs": {name: Fidelity} | None, "map50": float | None}

    Raises:
        DataError: unlabelled data and no reference (nothing to evaluate), or a shape mismatch.
    """
    if not dataset.has_labels and reference is None:
        raise DataError(
            f"data '{dataset.path}': has no labels and no reference model was given: nothing to evaluate"
        )
    correct = total = 0
    # The reference's step first: the grid the candidate is measured against.
    accumulator = FidelityAccumulator(output_step([(reference, getattr(reference, "output", None)),
                                                   (runner, getattr(runner, "output", None))]))
    every = reference is not None and hasattr(runner, "outputs") and hasattr(reference, "outputs")
    per_output: dict[str, FidelityAccumulator] = {}
    found: tuple[list, list] = ([], [])  # detection: (reference's, candidate's) per image
    for batch in iterate_checked(dataset, runner, preprocess, batch_size, limit, seed):
        if every:
            candidate_all, reference_all = runner.outputs(batch.x), reference.outputs(batch.x)
            logits, expected = candidate_all[runner.output], reference_all[reference.output]
            for name in [name for name in reference_all if name in candidate_all]:
                if name not in per_output:
                    per_output[name] = FidelityAccumulator(output_step([(reference, name), (runner, name)]))
                per_output[name].update(reference_all[name], candidate_all[name])
        else:
            logits = runner(batch.x)
            expected = reference(batch.x) if reference is not None else None
        task = task_of(task, logits.shape)
        if batch.y is not None and task == CLASSIFICATION:
            correct += int(np.sum(logits.reshape(len(logits), -1).argmax(axis=1) == batch.y))
        if expected is not None:
            accumulator.update(expected, logits)
            if task == DETECTION:
                name = getattr(runner, "output", None) or "output"
                found[0].extend(decode(np.asarray(expected).reshape(np.shape(logits)), name=name))
                found[1].extend(decode(logits, name=name))
        total += len(batch.x)
        if progress:
            progress(len(batch.x))
    boxes_map50 = map50(*found) if task == DETECTION and reference is not None else None
    return {
        "samples": total,
        "task": task,
        "accuracy": (AccuracyResult(correct / total, correct, total)
                     if dataset.has_labels and task == CLASSIFICATION else None),
        "fidelity": accumulator.result() if reference is not None else None,
        "outputs": {name: acc.result() for name, acc in per_output.items()} if every else None,
        "map50": boxes_map50,
    }


def evaluate_model(
    model_path: str | os.PathLike,
    data: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    output: str | None = None,
    task: str = "auto",
) -> dict:
    """Accuracy (when labelled) and fidelity (when a reference is given) of an ONNX model in ORT.

    `output` names the output that accuracy and top-1 agreement read (default the first); every
    output the two models share is compared too ("outputs").

    `input_shapes` fixes dynamic inputs of the model and of the reference (the preprocessing
    guess reads the fixed shape); a fixed batch runs the data in slices of that batch.

    Returns:
        {"model", "data", "samples", "accuracy": AccuracyResult | None, "fidelity": Fidelity | None}
    """
    from fwedge.data import open_dataset

    def load(path: str | os.PathLike) -> onnx.ModelProto:
        model = ir.load(path)
        return ir.set_input_shapes(model, input_shapes) if input_shapes else model

    loaded = load(model_path)
    runner = BatchedOrtRunner(loaded, output)
    dataset = open_dataset(data)
    spec = resolve_preprocess(loaded, preprocess)
    reference_runner = BatchedOrtRunner(load(reference), output) if reference is not None else None
    try:
        scores = evaluate(runner, dataset, spec, reference_runner, batch_size, limit, progress, task=task)
    except ModelError as exc:
        first = ir.graph_inputs(loaded)[0]
        shape = ir.shape_of(first)
        if input_shapes or all(isinstance(d, int) for d in shape[1:]):
            raise
        shown = ",".join(str(d) if isinstance(d, int) else "?" for d in shape)
        raise ModelError(f"model '{model_path}': {exc}; its input '{first.name}' [{shown}] is dynamic, so the "
                         f"data went in at its own size: {give_input_shape(loaded, first)}") from exc
    return {"model": str(model_path), "data": str(data), "output": runner.output, "preprocess": spec.to_dict(),
            **scores}

"""Knowledge distillation: train an ONNX student's weights against an ONNX teacher with torch ops."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from fwedge import ir
from fwedge.data import Dataset, Preprocess
from fwedge.errors import DistillError

# The student runs as its own ONNX graph with torch ops (passes/distill_torch.py, which also
# explains bn_mode); the registry and TorchGraph are re-exported here under their old names.
from fwedge.passes.distill_torch import (  # noqa: F401
    BN_MODES, TORCH_OPS, TorchGraph, _Context, _torch, torch_op, trainable_initializers,
)

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "distill_checkpoint.pt"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class DistillOptions:
    """Options of `distill`.

    Attributes:
        epochs: passes over the training data.
        temperature: softmax temperature T of the soft targets (Hinton et al. 2015); the KL term
            is scaled by T² so its gradients keep their size as T changes.
        alpha: weight of the hard-label cross-entropy; the soft-target term gets 1 − alpha. With
            no labels (or use_labels False) the loss is the soft-target term alone.
        use_labels: use the dataset's labels when it has them.
        lr: peak learning rate of Adam, decayed to 0 by a cosine schedule over all steps.
        weight_decay: decoupled weight decay (AdamW) when > 0.
        batch_size: training batch size.
        limit: use a seeded random subset of this many training samples.
        seed: fixes the initial shuffle order and all torch randomness.
        bn_mode: "train" or "frozen" BatchNormalization (module comment).
        feature_pairs: (student tensor, teacher tensor) pairs for an MSE feature-map loss.
        feature_weight: weight of the feature-map loss.
        flip: random horizontal flip of each training sample (NCHW inputs), drawn per epoch.
        shift: random translation of each training sample by up to this many pixels in H and W,
            the uncovered border filled with 0 (random crop of the zero-padded input), drawn per
            epoch. With flip or shift the teacher sees the same augmented batch as the student, so
            its soft targets are computed per batch instead of once.
        threads: torch intra-op threads (the result is reproducible for a fixed thread count).
        checkpoint_dir: where to write a checkpoint after every epoch.
        resume: continue from the checkpoint in checkpoint_dir if there is one.
    """

    epochs: int = 5
    temperature: float = 4.0
    alpha: float = 0.5
    use_labels: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    limit: int | None = None
    seed: int = 0
    bn_mode: str = "train"
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    flip: bool = False
    shift: int = 0
    threads: int | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False

    def fingerprint(self) -> dict:
        """The options that decide the training trajectory (checked on resume)."""
        data = asdict(self)
        for key in ("checkpoint_dir", "resume", "threads"):
            data.pop(key)
        data["feature_pairs"] = [list(pair) for pair in self.feature_pairs]
        return data


@dataclass
class EpochStats:
    """One epoch: mean losses over the training samples, training and validation accuracy."""

    epoch: int
    epochs: int
    loss: float
    soft_loss: float
    hard_loss: float
    feature_loss: float
    train_accuracy: float | None
    val_accuracy: float | None
    seconds: float
    resumed: bool = False


@dataclass
class DistillResult:
    """The trained student and how the training went."""

    model: onnx.ModelProto
    history: list[EpochStats]
    samples: int
    resumed_from_epoch: int = 0
    options: DistillOptions = field(default_factory=DistillOptions)


def augment_batch(torch, x, generator, flip: bool, shift: int):
    """Random horizontal flip and random translation (zero fill) per sample of an NCHW batch.

    Args:
        torch: the torch module.
        x: [N, C, H, W] tensor.
        generator: torch.Generator that draws the flips and offsets.
        flip: flip each sample left-right with probability 1/2.
        shift: offsets in [-shift, shift] pixels, drawn independently for H and W.

    Returns:
        A new [N, C, H, W] tensor.

    Raises:
        DistillError: the batch is not 4-D or shift is negative.
    """
    if x.dim() != 4:
        raise DistillError(f"flip/shift augmentation needs NCHW input, got shape {list(x.shape)}")
    if shift < 0:
        raise DistillError(f"shift must be >= 0, got {shift}")
    n, _, h, w = x.shape
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if shift:
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        out = torch.empty_like(x)
        offsets = dy * (2 * shift + 1) + dx
        for offset in torch.unique(offsets).tolist():
            rows = offsets == offset
            oy, ox = divmod(offset, 2 * shift + 1)
            out[rows] = padded[rows, :, oy: oy + h, ox: ox + w]
        x = out
    return x


def _load_arrays(dataset: Dataset, preprocess: Preprocess, limit: int | None, seed: int):
    xs, ys = [], []
    for batch in dataset.batches(preprocess, batch_size=1024, limit=limit, seed=seed):
        xs.append(batch.x)
        if batch.y is not None:
            ys.append(batch.y)
    if not xs:
        raise DistillError(f"data '{dataset.path}': no samples")
    x = np.concatenate(xs)
    y = np.concatenate(ys) if ys and len(ys) == len(xs) else None
    return x, y


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named intermediate tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {value.name for value in out.graph.output}
    produced = {name for node in out.graph.node for name in node.output}
    for name in names:
        if name not in produced:
            raise DistillError(f"teacher has no tensor named '{name}'")
        if name not in existing:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def _model_sha(model: onnx.ModelProto) -> str:
    return ir.model_sha256(model)


def _save_checkpoint(path: Path, payload: dict) -> None:
    torch = _torch()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    ir.write_atomic(path, buffer.getvalue())


def check_options(options: DistillOptions, teacher: onnx.ModelProto | None) -> None:
    """Reject options that cannot train, before any data is read.

    Raises:
        DistillError: epochs, temperature, alpha or shift out of range, or feature pairs without a teacher.
    """
    if options.epochs < 1:
        raise DistillError(f"epochs must be at least 1, got {options.epochs}")
    if options.temperature <= 0:
        raise DistillError(f"temperature must be positive, got {options.temperature}")
    if not 0.0 <= options.alpha <= 1.0:
        raise DistillError(f"alpha must be in [0, 1], got {options.alpha}")
    if options.feature_pairs and teacher is None:
        raise DistillError("feature-map loss needs a teacher")
    if options.shift < 0:
        raise DistillError(f"shift must be >= 0, got {options.shift}")


def _prepare_teacher(torch, graph: TorchGraph, teacher: onnx.ModelProto | None, x_all: np.ndarray,
                     options: DistillOptions, augmenting: bool):
    """An onnxruntime runner for the teacher (None without one) and its precomputed logits.

    The teacher and student are probed on two samples first: their outputs and every feature
    pair must have the same shapes. The soft targets are computed once for all samples when
    neither feature maps nor augmentation need them per batch; otherwise the logits are None.

    Raises:
        DistillError: output or feature-pair shapes differ, or a feature tensor is missing.
    """
    from fwedge.eval import OrtRunner

    if teacher is None:
        return None, None
    student_name = graph.output_names[0]
    feature_names = [pair[1] for pair in options.feature_pairs]
    teacher_runner = OrtRunner(_with_outputs(teacher, feature_names) if feature_names else teacher)
    probe = x_all[: min(2, len(x_all))]
    teacher_out = teacher_runner.run_all({teacher_runner.input_name: probe})
    teacher_name = teacher_runner.output_names[0]
    student_out = graph(probe)
    if teacher_out[teacher_name].shape[1:] != student_out.shape[1:]:
        raise DistillError(
            f"teacher output '{teacher_name}' has shape {['N', *teacher_out[teacher_name].shape[1:]]} but "
            f"student output '{student_name}' has shape {['N', *student_out.shape[1:]]}: they must match")
    with torch.no_grad():
        captured = graph.forward(torch.from_numpy(probe), capture=tuple(p[0] for p in options.feature_pairs))
    for student_tensor, teacher_tensor in options.feature_pairs:
        s_shape, t_shape = list(captured[student_tensor].shape[1:]), list(teacher_out[teacher_tensor].shape[1:])
        if s_shape != t_shape:
            raise DistillError(f"feature pair: student '{student_tensor}' has shape ['N', *{s_shape}] "
                               f"but teacher '{teacher_tensor}' has ['N', *{t_shape}]")
    teacher_logits = None
    if not feature_names and not augmenting:
        # No augmentation, so the soft targets are the same every epoch: compute them once.
        teacher_logits = np.concatenate([teacher_runner(x_all[i: i + 1024])
                                         for i in range(0, len(x_all), 1024)])
    return teacher_runner, teacher_logits


def _make_optimizer(torch, graph: TorchGraph, options: DistillOptions):
    """Adam over the student's parameters, AdamW when weight_decay > 0."""
    parameters = list(graph.parameters.values())
    if options.weight_decay > 0:
        return torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.Adam(parameters, lr=options.lr)


def _run_fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto | None, dataset: Dataset,
                     options: DistillOptions, run_tag: dict | None = None) -> dict:
    """What decides the training trajectory: both models, the selected data, the options and the
    caller's tag (QAT's scales), when there is one."""
    fingerprint = {
        "student": _model_sha(student),
        "teacher": _model_sha(teacher) if teacher is not None else None,
        "data": dataset.fingerprint(dataset.select(options.limit, options.seed)),
        "options": options.fingerprint(),
    }
    if run_tag is not None:
        fingerprint["tag"] = run_tag
    return fingerprint


def _resume(torch, checkpoint: Path | None, fingerprint_text: str, graph: TorchGraph, optimizer,
            options: DistillOptions, on_epoch: Callable[[EpochStats], None] | None):
    """Restore weights, optimizer and history from the checkpoint when resuming.

    Returns:
        (epochs already done, their EpochStats marked resumed); (0, []) without a checkpoint.
        on_epoch is called for every resumed epoch.

    Raises:
        DistillError: the checkpoint comes from another run.
    """
    if checkpoint is not None and options.resume and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        if state["fingerprint"] != fingerprint_text:
            raise DistillError(f"checkpoint '{checkpoint}' comes from another run (different models, "
                               "data or options); remove it or drop --resume")
        with torch.no_grad():
            for name, value in graph.state().items():
                value.copy_(state["weights"][name])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = [EpochStats(**{**item, "resumed": True}) for item in state["history"]]
        log.info("resumed from '%s' after epoch %d", checkpoint, start_epoch)
        if on_epoch:
            for stats in history:
                on_epoch(stats)
        return start_epoch, history
    if options.resume:
        log.info("no checkpoint to resume from in '%s': starting at epoch 1", options.checkpoint_dir)
    return 0, []


def _load_validation(val_dataset: Dataset | None, preprocess: Preprocess, val_limit: int | None):
    """Validation inputs and labels, (None, None) without validation data.

    Raises:
        DistillError: the validation data has no labels.
    """
    if val_dataset is None:
        return None, None
    if not val_dataset.has_labels:
        raise DistillError(f"validation data '{val_dataset.path}' has no labels")
    return _load_arrays(val_dataset, preprocess, val_limit, 0)


@dataclass
class _Training:
    """What every training step reads: the student, its optimizer, the data and the loss setup."""

    torch: object
    graph: TorchGraph
    optimizer: object
    options: DistillOptions
    x: object  # all training inputs, one tensor
    y: object | None  # their labels, a tensor, or None
    teacher_logits: object | None  # precomputed soft targets, a tensor, or None (computed per batch)
    teacher_runner: object | None  # OrtRunner of the teacher, or None (fine-tuning)
    use_labels: bool
    alpha: float
    augmenting: bool
    steps_per_epoch: int
    total_steps: int


def _batch_loss(run: _Training, xb, index, sums: dict[str, float]):
    """The loss of one batch; adds the batch's terms to sums and returns (loss, correct predictions)."""
    torch, options = run.torch, run.options
    F = torch.nn.functional
    T = float(options.temperature)
    outputs = run.graph.forward(xb, training=True, capture=tuple(pair[0] for pair in options.feature_pairs))
    logits = outputs[run.graph.output_names[0]]
    loss = torch.zeros(())
    correct = 0
    if run.use_labels:
        yb = run.y[index]
        hard = F.cross_entropy(logits, yb)
        sums["hard"] += float(hard.detach()) * len(index)
        correct += int((logits.argmax(1) == yb).sum())
        if run.alpha > 0:
            loss = loss + run.alpha * hard
    if run.teacher_runner is not None:
        if run.teacher_logits is not None:
            tb = run.teacher_logits[index]
        else:
            teacher_out = run.teacher_runner.run_all({run.teacher_runner.input_name: xb.numpy()})
            tb = torch.from_numpy(teacher_out[run.teacher_runner.output_names[0]])
        soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.log_softmax(tb / T, dim=1),
                        reduction="batchmean", log_target=True) * (T * T)
        sums["soft"] += float(soft.detach()) * len(index)
        loss = loss + (1.0 - run.alpha) * soft
        # Feature pairs imply per-batch teacher outputs (no precomputed logits), so teacher_out is set.
        for student_tensor, teacher_tensor in options.feature_pairs:
            target = torch.from_numpy(teacher_out[teacher_tensor])
            feature = F.mse_loss(outputs[student_tensor], target)
            sums["feature"] += float(feature.detach()) * len(index)
            loss = loss + options.feature_weight * feature
    return loss, correct


def _train_epoch(run: _Training, epoch: int, on_batch: Callable[[int], None] | None):
    """One pass over the training data; returns (summed losses by term, correct predictions)."""
    torch, options = run.torch, run.options
    n = len(run.x)
    # The order of epoch e depends on (seed, e) only, so a resumed run sees the same batches.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed * 100003 + epoch))
    augment_generator = torch.Generator().manual_seed(options.seed * 100003 + epoch + 50021)
    sums = {"loss": 0.0, "soft": 0.0, "hard": 0.0, "feature": 0.0}
    correct = 0
    for step in range(run.steps_per_epoch):
        global_step = epoch * run.steps_per_epoch + step
        for group in run.optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1.0 + math.cos(math.pi * global_step / run.total_steps))
        index = order[step * options.batch_size: (step + 1) * options.batch_size]
        xb = run.x[index]
        if run.augmenting:
            xb = augment_batch(torch, xb, augment_generator, options.flip, options.shift)
        loss, batch_correct = _batch_loss(run, xb, index, sums)
        correct += batch_correct
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        sums["loss"] += float(loss.detach()) * len(index)
        if on_batch:
            on_batch(len(index))
    return sums, correct


def _accuracy(graph: TorchGraph, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the student on labelled data, in batches of 1024."""
    predictions = np.concatenate([graph(x[i: i + 1024]).argmax(1) for i in range(0, len(x), 1024)])
    return float(np.mean(predictions == y))


def _checkpoint_payload(epoch: int, run: _Training, history: list[EpochStats], fingerprint_text: str) -> dict:
    """What a checkpoint after `epoch` holds (weights, optimizer, history and the run's fingerprint)."""
    return {
        "epoch": epoch + 1,
        "weights": {name: value.detach().clone() for name, value in run.graph.state().items()},
        "optimizer": run.optimizer.state_dict(),
        "history": [{k: v for k, v in asdict(h).items() if k != "resumed"} for h in history],
        "fingerprint": fingerprint_text,
    }


def _trained_model(graph: TorchGraph, fingerprint: dict, options: DistillOptions, samples: int,
                   history: list[EpochStats]) -> onnx.ModelProto:
    """The student with the trained weights and a fresh `fwedge.distill` metadata entry, checked."""
    trained = graph.to_onnx()
    kept = [prop for prop in trained.metadata_props if prop.key != "fwedge.distill"]
    del trained.metadata_props[:]
    trained.metadata_props.extend(kept)
    entry = trained.metadata_props.add()
    entry.key = "fwedge.distill"
    entry.value = json.dumps({
        "teacher_sha256": fingerprint["teacher"], "student_sha256": fingerprint["student"],
        "options": options.fingerprint(), "samples": samples,
        "final": asdict(history[-1]) if history else None,
    })
    onnx.checker.check_model(trained)
    return trained


def distill(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto | None,
    dataset: Dataset,
    options: DistillOptions | None = None,
    preprocess: Preprocess | None = None,
    val_dataset: Dataset | None = None,
    val_limit: int | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    graph_factory: Callable[[onnx.ModelProto, str], TorchGraph] = TorchGraph,
    run_tag: dict | None = None,
) -> DistillResult:
    """Train the student's weights against a teacher (knowledge distillation).

    Loss = alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))
    + feature_weight · Σ MSE(student feature, teacher feature). With teacher None this is plain
    fine-tuning on hard labels (alpha is taken as 1), the baseline distillation is compared with.

    Args:
        student: the model to train (loaded ONNX; names and graph are kept).
        teacher: any ONNX model with the same output shape, run by onnxruntime; or None.
        dataset: training data (fwedge.data.open_dataset).
        options: DistillOptions.
        preprocess: input preprocessing; default the student's metadata.
        val_dataset: labelled data to report accuracy on after every epoch.
        val_limit: a seeded subset of the validation data.
        on_epoch: called with the EpochStats after every epoch (also for resumed epochs).
        on_batch: called with the number of samples after every training batch.
        graph_factory: builds the student's torch graph from (student, bn_mode) (QAT: passes/qat.py).
        run_tag: more of what decides the trajectory (QAT: its scales) for the checkpoint's fingerprint.

    Returns:
        DistillResult with the trained ONNX model.

    Raises:
        DistillError: torch missing, an op without a torch implementation, teacher and student
            outputs of different shapes, no labels and no teacher, a checkpoint from another run.
    """
    options = options or DistillOptions()
    torch = _torch()
    from fwedge.eval import resolve_preprocess

    check_options(options, teacher)
    augmenting = options.flip or options.shift > 0
    spec = resolve_preprocess(student, preprocess)
    x_all, y_all = _load_arrays(dataset, spec, options.limit, options.seed)
    use_labels = options.use_labels and y_all is not None
    if teacher is None and not use_labels:
        raise DistillError(f"data '{dataset.path}': fine-tuning without a teacher needs labels")
    alpha = 1.0 if teacher is None else (options.alpha if use_labels else 0.0)

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(options.seed)
        graph = graph_factory(student, options.bn_mode)
        teacher_runner, teacher_logits = _prepare_teacher(torch, graph, teacher, x_all, options, augmenting)
        optimizer = _make_optimizer(torch, graph, options)
        fingerprint = _run_fingerprint(student, teacher, dataset, options, run_tag)
        fingerprint_text = json.dumps(fingerprint, sort_keys=True)
        checkpoint = Path(options.checkpoint_dir) / CHECKPOINT_NAME if options.checkpoint_dir else None
        start_epoch, history = _resume(torch, checkpoint, fingerprint_text, graph, optimizer, options, on_epoch)
        val_x, val_y = _load_validation(val_dataset, spec, val_limit)

        n = len(x_all)
        steps_per_epoch = math.ceil(n / options.batch_size)
        run = _Training(
            torch=torch, graph=graph, optimizer=optimizer, options=options, x=torch.from_numpy(x_all),
            y=torch.from_numpy(y_all) if y_all is not None else None,
            teacher_logits=torch.from_numpy(teacher_logits) if teacher_logits is not None else None,
            teacher_runner=teacher_runner, use_labels=use_labels, alpha=alpha, augmenting=augmenting,
            steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * options.epochs,
        )
        for epoch in range(start_epoch, options.epochs):
            started = time.perf_counter()
            sums, correct = _train_epoch(run, epoch, on_batch)
            val_accuracy = _accuracy(graph, val_x, val_y) if val_x is not None else None
            stats = EpochStats(
                epoch=epoch + 1, epochs=options.epochs, loss=sums["loss"] / n, soft_loss=sums["soft"] / n,
                hard_loss=sums["hard"] / n, feature_loss=sums["feature"] / n,
                train_accuracy=correct / n if use_labels else None, val_accuracy=val_accuracy,
                seconds=time.perf_counter() - started,
            )
            history.append(stats)
            log.info("epoch %d/%d loss %.4f train acc %s val acc %s", stats.epoch, options.epochs, stats.loss,
                     stats.train_accuracy, stats.val_accuracy)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, _checkpoint_payload(epoch, run, history, fingerprint_text))
            if on_epoch:
                on_epoch(stats)
        trained = _trained_model(graph, fingerprint, options, n, history)
        return DistillResult(trained, history, n, start_epoch, options)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def finetune(student: onnx.ModelProto, dataset: Dataset, options: DistillOptions | None = None,
             **kwargs) -> DistillResult:
    """Fine-tune on hard labels only (no teacher): the baseline that distillation is compared with."""
    return distill(student, None, dataset, options, **kwargs)


def fingerprint_digest(result: DistillResult) -> str:
    """A sha256 over the trained weights (for comparing runs)."""
    digest = hashlib.sha256()
    for init in result.model.graph.initializer:
        digest.update(init.name.encode())
        digest.update(init.SerializeToString())
    return digest.hexdigest()

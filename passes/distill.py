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
from onnx import numpy_helper

from fwedge import ir
from fwedge.data import Dataset, Preprocess
from fwedge.errors import DistillError
from fwedge.op_info import OP_INFO, attribute

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "distill_checkpoint.pt"
BN_MODES = ("train", "frozen")

# The student runs as its own ONNX graph, node by node, with torch functions from TORCH_OPS;
# its float weights become torch Parameters and are written back into the same initializers,
# so node and tensor names survive for calibration and reports (no export round trip).
#
# BatchNormalization: bn_mode "train" (default) normalises with batch statistics while training
# and updates the running mean/var with the node's momentum, as torch.nn.BatchNorm2d does; the
# updated running statistics are written back, so the inference graph matches what was trained.
# bn_mode "frozen" keeps the running statistics fixed (eval-mode BN) and trains only gamma/beta:
# safer for tiny batches or few samples, and batch-size independent.
# Dropout runs as Identity (it is an inference graph; distillation adds its own regularisation).


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise DistillError("distillation needs torch: pip install 'fwedge[distill]'") from exc
    return torch


# --------------------------------------------------------------------------------------------
# The op table
# --------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What an op function may need besides its inputs."""

    torch: object
    training: bool
    bn_mode: str


TORCH_OPS: dict[str, Callable] = {}


def torch_op(*op_types: str):
    """Register `function(ctx, node, inputs) -> list of outputs` for ONNX op types."""

    def register(function):
        for op_type in op_types:
            TORCH_OPS[op_type] = function
        return function

    return register


def _spatial_pads(node: onnx.NodeProto, rank: int) -> list[int]:
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise DistillError(f"{node.op_type} '{node.name}': auto_pad {auto_pad} is not supported")
    return list(attribute(node, "pads", [0] * (2 * rank)))


def _pad_input(ctx: _Context, x, pads: list[int], value: float = 0.0):
    """Asymmetric ONNX pads [b1, b2, ..., e1, e2, ...] as an explicit pad; returns (x, symmetric pads)."""
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if begins == ends:
        return x, begins
    torch_pads = []
    for b, e in zip(reversed(begins), reversed(ends)):
        torch_pads += [b, e]
    return ctx.torch.nn.functional.pad(x, torch_pads, value=value), [0] * rank


@torch_op("Conv")
def _conv(ctx, node, inputs):
    F = ctx.torch.nn.functional
    X, W = inputs[0], inputs[1]
    B = inputs[2] if len(inputs) > 2 else None
    rank = W.dim() - 2
    X, pads = _pad_input(ctx, X, _spatial_pads(node, rank))
    function = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return [function(X, W, B, stride=attribute(node, "strides", [1] * rank), padding=pads,
                     dilation=attribute(node, "dilations", [1] * rank), groups=attribute(node, "group", 1))]


@torch_op("BatchNormalization")
def _batch_norm(ctx, node, inputs):
    X, scale, B, mean, var = inputs[:5]
    training = ctx.training and ctx.bn_mode == "train"
    momentum = 1.0 - attribute(node, "momentum", 0.9)  # ONNX: running*m + batch*(1-m)
    return [ctx.torch.nn.functional.batch_norm(X, mean, var, scale, B, training=training,
                                               momentum=momentum, eps=attribute(node, "epsilon", 1e-5))]


@torch_op("Relu")
def _relu(ctx, node, inputs):
    return [ctx.torch.relu(inputs[0])]


@torch_op("Clip")
def _clip(ctx, node, inputs):
    X = inputs[0]
    bounds = [inputs[i] if len(inputs) > i else None for i in (1, 2)]
    if all(b is not None and b.dim() == 0 and not b.requires_grad for b in bounds):
        # Constant bounds (ReLU6): hardtanh has a fused backward, several times cheaper than
        # clamp with tensor bounds.
        return [ctx.torch.nn.functional.hardtanh(X, float(bounds[0]), float(bounds[1]))]
    return [ctx.torch.clamp(X, *bounds)]


@torch_op("LeakyRelu")
def _leaky_relu(ctx, node, inputs):
    return [ctx.torch.nn.functional.leaky_relu(inputs[0], attribute(node, "alpha", 0.01))]


@torch_op("Sigmoid")
def _sigmoid(ctx, node, inputs):
    return [ctx.torch.sigmoid(inputs[0])]


@torch_op("Tanh")
def _tanh(ctx, node, inputs):
    return [ctx.torch.tanh(inputs[0])]


@torch_op("HardSigmoid")
def _hard_sigmoid(ctx, node, inputs):
    alpha, beta = attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)
    return [ctx.torch.clamp(inputs[0] * alpha + beta, 0.0, 1.0)]


@torch_op("HardSwish")
def _hard_swish(ctx, node, inputs):
    X = inputs[0]
    return [X * ctx.torch.clamp(X / 6.0 + 0.5, 0.0, 1.0)]


@torch_op("Add", "Sub", "Mul", "Div")
def _arithmetic(ctx, node, inputs):
    A, B = inputs
    return [_ARITHMETIC[node.op_type](A, B)]


_ARITHMETIC = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
}


def _pool_args(node, rank):
    kernel = attribute(node, "kernel_shape")
    strides = attribute(node, "strides", [1] * rank)
    return kernel, strides, _spatial_pads(node, rank), bool(attribute(node, "ceil_mode", 0))


@torch_op("MaxPool")
def _max_pool(ctx, node, inputs):
    X = inputs[0]
    rank = X.dim() - 2
    kernel, strides, pads, ceil = _pool_args(node, rank)
    X, pads = _pad_input(ctx, X, pads, value=float("-inf"))
    function = {1: ctx.torch.nn.functional.max_pool1d, 2: ctx.torch.nn.functional.max_pool2d}[rank]
    return [function(X, kernel, strides, pads, dilation=attribute(node, "dilations", [1] * rank), ceil_mode=ceil)]


@torch_op("AveragePool")
def _average_pool(ctx, node, inputs):
    X = inputs[0]
    rank = X.dim() - 2
    kernel, strides, pads, ceil = _pool_args(node, rank)
    include = bool(attribute(node, "count_include_pad", 0))
    if pads[:rank] != pads[rank:]:
        raise DistillError(f"AveragePool '{node.name}': asymmetric pads {pads} are not supported")
    function = {1: ctx.torch.nn.functional.avg_pool1d, 2: ctx.torch.nn.functional.avg_pool2d}[rank]
    return [function(X, kernel, strides, pads[:rank], ceil_mode=ceil, count_include_pad=include)]


@torch_op("GlobalAveragePool")
def _global_average_pool(ctx, node, inputs):
    X = inputs[0]
    return [X.mean(dim=tuple(range(2, X.dim())), keepdim=True)]


@torch_op("GlobalMaxPool")
def _global_max_pool(ctx, node, inputs):
    X = inputs[0]
    return [X.amax(dim=tuple(range(2, X.dim())), keepdim=True)]


@torch_op("Flatten")
def _flatten(ctx, node, inputs):
    X = inputs[0]
    axis = attribute(node, "axis", 1)
    axis = axis + X.dim() if axis < 0 else axis
    return [X.reshape(int(np.prod(X.shape[:axis], dtype=np.int64)), -1)]


@torch_op("Reshape")
def _reshape(ctx, node, inputs):
    X, shape = inputs
    dims = [int(d) for d in shape.tolist()]
    if not attribute(node, "allowzero", 0):
        dims = [X.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return [X.reshape(dims)]


@torch_op("Gemm")
def _gemm(ctx, node, inputs):
    A, B = inputs[0], inputs[1]
    C = inputs[2] if len(inputs) > 2 else None
    if attribute(node, "transA", 0):
        A = A.t()
    if attribute(node, "transB", 0):
        B = B.t()
    Y = (A @ B) * attribute(node, "alpha", 1.0)
    if C is not None:
        Y = Y + C * attribute(node, "beta", 1.0)
    return [Y]


@torch_op("MatMul")
def _matmul(ctx, node, inputs):
    return [ctx.torch.matmul(inputs[0], inputs[1])]


@torch_op("Concat")
def _concat(ctx, node, inputs):
    return [ctx.torch.cat(list(inputs), dim=attribute(node, "axis"))]


@torch_op("Identity", "Dropout")
def _identity(ctx, node, inputs):
    return [inputs[0]]


@torch_op("Softmax")
def _softmax(ctx, node, inputs):
    return [ctx.torch.softmax(inputs[0], dim=attribute(node, "axis", -1))]


@torch_op("Transpose")
def _transpose(ctx, node, inputs):
    X = inputs[0]
    perm = attribute(node, "perm", list(reversed(range(X.dim()))))
    return [X.permute(*perm)]


def _axes(node, inputs, index=1):
    axes = attribute(node, "axes")
    if axes is None and len(inputs) > index and inputs[index] is not None:
        axes = [int(a) for a in inputs[index].tolist()]
    return axes


@torch_op("Squeeze")
def _squeeze(ctx, node, inputs):
    X = inputs[0]
    axes = _axes(node, inputs)
    if axes is None:
        return [X.squeeze()]
    axes = sorted((a + X.dim()) % X.dim() for a in axes)
    for a in reversed(axes):
        X = X.squeeze(a)
    return [X]


@torch_op("Unsqueeze")
def _unsqueeze(ctx, node, inputs):
    X = inputs[0]
    axes = _axes(node, inputs)
    rank = X.dim() + len(axes)
    for a in sorted((a + rank) % rank for a in axes):
        X = X.unsqueeze(a)
    return [X]


@torch_op("ReduceMean")
def _reduce_mean(ctx, node, inputs):
    X = inputs[0]
    axes = _axes(node, inputs) or list(range(X.dim()))
    return [X.mean(dim=tuple(axes), keepdim=bool(attribute(node, "keepdims", 1)))]


@torch_op("Pad")
def _pad(ctx, node, inputs):
    X, pads = inputs[0], [int(p) for p in inputs[1].tolist()]
    mode = attribute(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(inputs[2].item()) if len(inputs) > 2 and inputs[2] is not None else 0.0
    rank = len(pads) // 2
    torch_pads = []
    for b, e in zip(reversed(pads[:rank]), reversed(pads[rank:])):
        torch_pads += [b, e]
    if mode != "constant":
        return [ctx.torch.nn.functional.pad(X, torch_pads[: 2 * (X.dim() - 2)], mode=mode)]
    return [ctx.torch.nn.functional.pad(X, torch_pads, value=value)]


# --------------------------------------------------------------------------------------------
# The ONNX graph as a torch computation
# --------------------------------------------------------------------------------------------


def trainable_initializers(model: onnx.ModelProto) -> list[str]:
    """Float initializers that distillation trains: layer weights and biases (OP_INFO weight_input
    and bias_input) and BatchNormalization scale and B. Running statistics are not trained."""
    inits = ir.initializer_map(model)
    names: list[str] = []
    for node in model.graph.node:
        info = OP_INFO.get(node.op_type)
        if info is None:
            continue
        indices = [i for i in (info.weight_input, info.bias_input) if i is not None]
        if node.op_type == "BatchNormalization":
            indices = [1, 2]
        for index in indices:
            if index < len(node.input) and node.input[index] in inits:
                name = node.input[index]
                if inits[name].data_type == onnx.TensorProto.FLOAT and name not in names:
                    names.append(name)
    return names


class TorchGraph:
    """Runs an ONNX graph with torch ops; its trainable initializers are torch Parameters.

    Args:
        model: a loaded ONNX model (fwedge.ir.load).
        bn_mode: "train" or "frozen" (see the module comment).

    Raises:
        DistillError: torch missing, or ops without a torch implementation (all listed).
    """

    def __init__(self, model: onnx.ModelProto, bn_mode: str = "train"):
        torch = _torch()
        if bn_mode not in BN_MODES:
            raise DistillError(f"bn_mode must be one of {list(BN_MODES)}, got {bn_mode!r}")
        missing = [(node.name, node.op_type) for node in model.graph.node if node.op_type not in TORCH_OPS
                   or node.domain not in ("", "ai.onnx")]
        if missing:
            listed = "; ".join(f"'{name}' ({op})" for name, op in missing)
            raise DistillError(f"distillation cannot execute {len(missing)} node(s): {listed}; "
                               f"supported ops: {sorted(TORCH_OPS)}")
        self.torch = torch
        self.model = model
        self.bn_mode = bn_mode
        self.input_name = ir.graph_inputs(model)[0].name
        self.output_names = [value.name for value in model.graph.output]
        trainable = set(trainable_initializers(model))
        running = {node.input[i] for node in model.graph.node if node.op_type == "BatchNormalization"
                   for i in (3, 4) if len(node.input) > i}
        self.parameters: dict[str, object] = {}
        self.buffers: dict[str, object] = {}
        self.constants: dict[str, object] = {}
        for init in model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if init.name in trainable:
                self.parameters[init.name] = torch.nn.Parameter(value)
            elif init.name in running:
                self.buffers[init.name] = value
            else:
                self.constants[init.name] = value

    def state(self) -> dict[str, object]:
        """Trainable parameters and running statistics by initializer name."""
        return {**self.parameters, **self.buffers}

    def forward(self, x, training: bool = False, capture: tuple[str, ...] = ()) -> dict[str, object]:
        """Run the graph on a torch tensor; returns the graph outputs and the `capture` tensors."""
        ctx = _Context(self.torch, training, self.bn_mode)
        values: dict[str, object] = {**self.constants, **self.buffers, **self.parameters, self.input_name: x}
        for node in self.model.graph.node:
            inputs = [values[name] if name else None for name in node.input]
            outputs = TORCH_OPS[node.op_type](ctx, node, inputs)
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = value
        wanted = list(self.output_names) + [name for name in capture if name not in self.output_names]
        missing = [name for name in wanted if name not in values]
        if missing:
            raise DistillError(f"student has no tensor named {missing}")
        return {name: values[name] for name in wanted}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Inference on a numpy batch (eval-mode BN, no gradients): the first output."""
        with self.torch.no_grad():
            out = self.forward(self.torch.from_numpy(np.ascontiguousarray(x)), training=False)
        return out[self.output_names[0]].numpy()

    def to_onnx(self) -> onnx.ModelProto:
        """The source model with the current parameters and running statistics written back
        into the same initializers (names, order and graph unchanged)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        state = self.state()
        for init in out.graph.initializer:
            if init.name in state:
                value = state[init.name].detach().cpu().numpy().astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(value, init.name))
        return out


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

    Returns:
        DistillResult with the trained ONNX model.

    Raises:
        DistillError: torch missing, an op without a torch implementation, teacher and student
            outputs of different shapes, no labels and no teacher, a checkpoint from another run.
    """
    options = options or DistillOptions()
    torch = _torch()
    from fwedge.eval import OrtRunner, resolve_preprocess

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
        graph = TorchGraph(student, options.bn_mode)
        student_name = graph.output_names[0]
        teacher_logits = None
        teacher_runner = None
        feature_names = [pair[1] for pair in options.feature_pairs]
        if teacher is not None:
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
            if not feature_names and not augmenting:
                # No augmentation, so the soft targets are the same every epoch: compute them once.
                teacher_logits = np.concatenate([teacher_runner(x_all[i: i + 1024])
                                                 for i in range(0, len(x_all), 1024)])
        parameters = list(graph.parameters.values())
        if options.weight_decay > 0:
            optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
        else:
            optimizer = torch.optim.Adam(parameters, lr=options.lr)
        fingerprint = {
            "student": _model_sha(student),
            "teacher": _model_sha(teacher) if teacher is not None else None,
            "data": dataset.fingerprint(dataset.select(options.limit, options.seed)),
            "options": options.fingerprint(),
        }
        fingerprint_text = json.dumps(fingerprint, sort_keys=True)
        history: list[EpochStats] = []
        start_epoch = 0
        checkpoint = Path(options.checkpoint_dir) / CHECKPOINT_NAME if options.checkpoint_dir else None
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
        elif options.resume:
            log.info("no checkpoint to resume from in '%s': starting at epoch 1", options.checkpoint_dir)

        val_x = val_y = None
        if val_dataset is not None:
            if not val_dataset.has_labels:
                raise DistillError(f"validation data '{val_dataset.path}' has no labels")
            val_x, val_y = _load_arrays(val_dataset, spec, val_limit, 0)

        n = len(x_all)
        steps_per_epoch = math.ceil(n / options.batch_size)
        total_steps = steps_per_epoch * options.epochs
        T = float(options.temperature)
        F = torch.nn.functional
        x_tensor = torch.from_numpy(x_all)
        y_tensor = torch.from_numpy(y_all) if y_all is not None else None
        t_tensor = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
        capture = tuple(pair[0] for pair in options.feature_pairs)
        for epoch in range(start_epoch, options.epochs):
            started = time.perf_counter()
            # The order of epoch e depends on (seed, e) only, so a resumed run sees the same batches.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed * 100003 + epoch))
            augment_generator = torch.Generator().manual_seed(options.seed * 100003 + epoch + 50021)
            sums = {"loss": 0.0, "soft": 0.0, "hard": 0.0, "feature": 0.0}
            correct = 0
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = options.lr * 0.5 * (1.0 + math.cos(math.pi * global_step / total_steps))
                index = order[step * options.batch_size: (step + 1) * options.batch_size]
                xb = x_tensor[index]
                if augmenting:
                    xb = augment_batch(torch, xb, augment_generator, options.flip, options.shift)
                outputs = graph.forward(xb, training=True, capture=capture)
                logits = outputs[student_name]
                loss = torch.zeros(())
                if use_labels:
                    yb = y_tensor[index]
                    hard = F.cross_entropy(logits, yb)
                    sums["hard"] += float(hard.detach()) * len(index)
                    correct += int((logits.argmax(1) == yb).sum())
                    if alpha > 0:
                        loss = loss + alpha * hard
                if teacher_runner is not None:
                    if t_tensor is not None:
                        tb = t_tensor[index]
                    else:
                        teacher_out = teacher_runner.run_all({teacher_runner.input_name: xb.numpy()})
                        tb = torch.from_numpy(teacher_out[teacher_runner.output_names[0]])
                    soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.log_softmax(tb / T, dim=1),
                                    reduction="batchmean", log_target=True) * (T * T)
                    sums["soft"] += float(soft.detach()) * len(index)
                    loss = loss + (1.0 - alpha) * soft
                    for student_tensor, teacher_tensor in options.feature_pairs:
                        target = torch.from_numpy(teacher_out[teacher_tensor])
                        feature = F.mse_loss(outputs[student_tensor], target)
                        sums["feature"] += float(feature.detach()) * len(index)
                        loss = loss + options.feature_weight * feature
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += float(loss.detach()) * len(index)
                if on_batch:
                    on_batch(len(index))
            val_accuracy = None
            if val_x is not None:
                predictions = np.concatenate([graph(val_x[i: i + 1024]).argmax(1) for i in range(0, len(val_x), 1024)])
                val_accuracy = float(np.mean(predictions == val_y))
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
                _save_checkpoint(checkpoint, {
                    "epoch": epoch + 1,
                    "weights": {name: value.detach().clone() for name, value in graph.state().items()},
                    "optimizer": optimizer.state_dict(),
                    "history": [{k: v for k, v in asdict(h).items() if k != "resumed"} for h in history],
                    "fingerprint": fingerprint_text,
                })
            if on_epoch:
                on_epoch(stats)
        trained = graph.to_onnx()
        kept = [prop for prop in trained.metadata_props if prop.key != "fwedge.distill"]
        del trained.metadata_props[:]
        trained.metadata_props.extend(kept)
        entry = trained.metadata_props.add()
        entry.key = "fwedge.distill"
        entry.value = json.dumps({
            "teacher_sha256": fingerprint["teacher"], "student_sha256": fingerprint["student"],
            "options": options.fingerprint(), "samples": n,
            "final": asdict(history[-1]) if history else None,
        })
        onnx.checker.check_model(trained)
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

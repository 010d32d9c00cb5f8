"""Distillation's torch execution of ONNX graphs: the TORCH_OPS registry (@torch_op) and TorchGraph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from fwedge import ir
from fwedge.errors import DistillError
from fwedge.op_info import OP_INFO, attribute

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
    """The torch module, or a DistillError naming the extra that installs it."""
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
        values: dict[str, object] = {**self.constants, **self.buffers, **self.parameters,
                                     self.input_name: self.produced(self.input_name, x)}
        for node in self.model.graph.node:
            inputs = [self.read(node, index, values[name]) if name else None for index, name in enumerate(node.input)]
            outputs = TORCH_OPS[node.op_type](ctx, node, inputs)
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = self.produced(name, value)
        wanted = list(self.output_names) + [name for name in capture if name not in self.output_names]
        missing = [name for name in wanted if name not in values]
        if missing:
            raise DistillError(f"student has no tensor named {missing}")
        return {name: values[name] for name in wanted}

    def read(self, node: onnx.NodeProto, index: int, value):
        """The value input `index` of `node` computes with; a subclass may transform it (QAT's
        fake-quantized weights). Here: the value itself."""
        return value

    def produced(self, name: str, value):
        """The value tensor `name` holds once produced (the graph input included); a subclass may
        transform it (QAT's fake-quantized activations). Here: the value itself."""
        return value

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


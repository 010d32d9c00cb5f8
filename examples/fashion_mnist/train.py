#!/usr/bin/env python
"""Train the two Fashion-MNIST example models and export them to ONNX for fwedge.

    .venv/bin/python examples/fashion_mnist/train.py --model all

Models:
    cnn_small          Conv/BN/ReLU/MaxPool blocks, Flatten, two Linear layers.
    mobilenet_v2_tiny  MobileNetV2-style: stem conv, inverted residual blocks (1x1 expand,
                       3x3 depthwise, 1x1 linear projection, residual Add), 1x1 head conv,
                       global average pool, Linear classifier.

Input is the raw pixels scaled to [0, 1] (pixels / 255, float32, NCHW [N,1,28,28], no mean/std),
which is fwedge's default Preprocess(resize=(28,28), color="grayscale", layout="NCHW",
scale=1/255). The exported graphs keep BatchNormalization as separate nodes (fwedge folds
BN itself and prunes by BN gamma), use opset 13, a dynamic batch dim "N", input "input"
[N,1,28,28] float32 and output "logits" [N,10] (raw logits, no softmax).

Training is deterministic for a fixed --seed (single process, deterministic algorithms,
fixed thread count); the ONNX model is checked with onnx.checker, shape inference, and its
ONNX Runtime top-1 on the 10,000 test images is compared with the torch model's.
"""
from __future__ import annotations

import os

# On a shared, oversubscribed machine, spinning OpenMP workers make 2-thread training many
# times slower; sleeping workers cost little when the machine is idle. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from fwedge.data import FASHION_MNIST_DIR, FASHION_MNIST_FILES, read_idx

HERE = Path(__file__).resolve().parent
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
PREPROCESS = {
    "resize": [28, 28],
    "color": "grayscale",
    "layout": "NCHW",
    "scale": 1 / 255,
    "mean": [0.0],
    "std": [1.0],
    "dtype": "float32",
}
OPSET = 13


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class CnnSmall(nn.Module):
    """Three Conv-BN-ReLU(-MaxPool) stages: 28x28 -> 14x14 -> 7x7 -> 3x3, then FC-ReLU-FC."""

    def __init__(self, num_classes: int = 10, width: tuple[int, int, int] = (32, 64, 64), hidden: int = 128):
        super().__init__()
        c1, c2, c3 = width
        self.features = nn.Sequential(
            *conv_bn(1, c1), nn.ReLU(inplace=True), nn.MaxPool2d(2),    # 28 -> 14
            *conv_bn(c1, c2), nn.ReLU(inplace=True), nn.MaxPool2d(2),   # 14 -> 7
            *conv_bn(c2, c3), nn.ReLU(inplace=True), nn.MaxPool2d(2),   # 7 -> 3
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(c3 * 3 * 3, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += conv_bn(hidden, cout, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Tiny(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
    # The stem runs at 28x28; the first block (t=1: depthwise + project) downsamples to 14x14
    # so that no expanded (t=4) tensor is ever 28x28, which keeps CPU training fast.
    SETTINGS = [
        (1, 24, 1, 2),   # 28x28 -> 14x14
        (4, 24, 1, 1),   # 14x14, residual
        (4, 32, 3, 2),   # 14x14 -> 7x7, then 2 residual blocks
        (4, 48, 2, 1),   # 7x7, then 1 residual block
    ]

    def __init__(self, num_classes: int = 10, stem: int = 16, head: int = 192):
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(1, stem, 3, 1), nn.ReLU6(inplace=True)]
        cin = stem
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*conv_bn(cin, head, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# name -> (constructor, default epochs, peak lr, weight decay, augment)
MODELS = {
    "cnn_small": (CnnSmall, 10, 3e-3, 5e-4, True),
    "mobilenet_v2_tiny": (MobileNetV2Tiny, 10, 4e-3, 5e-4, True),
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one 1x28x28 input."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * kernel
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return total


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images = read_idx(FASHION_MNIST_DIR / images_name)
    labels = read_idx(FASHION_MNIST_DIR / labels_name)
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flip and random crop (zero padding `pad`), per sample."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    batch = torch.arange(n)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train(name: str, epochs: int, batch_size: int, seed: int, data) -> tuple[nn.Module, dict]:
    ctor, _, lr, weight_decay, use_aug = MODELS[name]
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = ctor()
    init_weights(model)
    params, macs = count_params(model), count_macs(model)
    model = model.to(memory_format=torch.channels_last)   # faster CPU convolutions (oneDNN)
    print(f"[{name}] params={params:,} MACs={macs:,} epochs={epochs} batch={batch_size} "
          f"lr={lr} wd={weight_decay} augment={use_aug}", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    gen = torch.Generator().manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total_loss, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if use_aug:
                xb = augment(xb, gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
        acc = (predict(model, x_test) == y_test).float().mean().item()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        history.append({"epoch": epoch, "loss": total_loss / seen, "test_acc": acc,
                        "elapsed_s": elapsed, "cpu_s": cpu})
        # cpu: CPU seconds of this process over all threads (on a busy machine, wall time
        # grows with the other load; cpu / threads approximates the wall time when idle).
        print(f"[{name}] epoch {epoch:2d}/{epochs}  loss {total_loss / seen:.4f}  "
              f"test acc {100 * acc:.2f}%  elapsed {elapsed:.1f}s  cpu {cpu:.1f}s", flush=True)
    train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model, {"params": params, "macs": macs, "train_time_s": train_time,
                   "train_cpu_s": train_cpu, "history": history}


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------


def _clean_graph(model: onnx.ModelProto) -> None:
    """Make every weight a plain initializer.

    The TorchScript exporter emits Constant nodes (Clip bounds) and, when two parameters hold
    identical values, an Identity from one shared initializer. Turn both into initializers so
    that Conv/BatchNormalization/Gemm/Clip read their parameters straight from initializers.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        elif node.op_type == "Identity" and node.input[0] in inits:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[node.input[0]])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits[tensor.name] = tensor
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def export_onnx(model: nn.Module, name: str, path: Path) -> onnx.ModelProto:
    model.eval()
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(tmp),
        dynamo=False,                                  # TorchScript exporter: plain op-level graph
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,    # eval() model: inference BN, not folded
        do_constant_folding=False,                     # keep BatchNormalization separate
        export_params=True,
        keep_initializers_as_inputs=False,
    )
    proto = onnx.load(str(tmp))
    tmp.unlink()
    _clean_graph(proto)
    proto.graph.name = name
    proto.producer_name = "fwedge-examples"
    proto.doc_string = f"Fashion-MNIST {name}; input pixels/255 NCHW [N,1,28,28]; output raw logits [N,10]"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {
        "fwedge.preprocess": json.dumps(PREPROCESS),
        "fwedge.classes": json.dumps(CLASSES),
    })
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(proto, full_check=True)
    verify_graph(proto)
    onnx.save(proto, str(path))                       # single self-contained file
    return proto


def verify_graph(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" in ops, "BatchNormalization was folded away"
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            assert len(node.output) == 1, f"{node.name}: training-mode BN outputs"
    assert [i.name for i in graph.input] == ["input"], [i.name for i in graph.input]
    assert [o.name for o in graph.output] == ["logits"], [o.name for o in graph.output]
    in_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert in_dims == ["N", 1, 28, 28], in_dims
    assert out_dims == ["N", 10], out_dims
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for init in graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, f"{init.name}: external data"
    assert proto.opset_import[0].version == OPSET


def onnx_predict(path: Path, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run(["logits"], {"input": x[i : i + batch_size]})[0].argmax(1)
        for i in range(0, len(x), batch_size)
    ])


def op_summary(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="default: per model (10)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    args.out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    print(f"data: train {tuple(x_train.shape)}, test {tuple(x_test.shape)} "
          f"loaded in {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    data = (x_train, y_train, x_test, y_test)
    labels = y_test.numpy()

    names = list(MODELS) if args.model == "all" else [args.model]
    summary = {}
    for name in names:
        epochs = args.epochs or MODELS[name][1]
        model, info = train(name, epochs, args.batch_size, args.seed, data)
        torch_pred = predict(model, x_test).numpy()
        path = args.out_dir / f"{name}.onnx"
        proto = export_onnx(model, name, path)
        ort_pred = onnx_predict(path, x_test.numpy())
        info.update({
            "onnx": str(path),
            "onnx_bytes": path.stat().st_size,
            "torch_top1": float((torch_pred == labels).mean()),
            "onnx_top1": float((ort_pred == labels).mean()),
            "prediction_agreement": float((torch_pred == ort_pred).mean()),
            "ops": op_summary(proto),
        })
        summary[name] = info
        print(f"[{name}] torch top-1 {100 * info['torch_top1']:.2f}%  "
              f"onnxruntime top-1 {100 * info['onnx_top1']:.2f}%  "
              f"agreement {100 * info['prediction_agreement']:.2f}%  "
              f"train {info['train_time_s']:.1f}s (cpu {info['train_cpu_s']:.1f}s)  {path} ({info['onnx_bytes']:,} bytes)", flush=True)
        print(f"[{name}] ops: {info['ops']}", flush=True)
        if (torch_pred != ort_pred).sum() > 5:
            print(f"[{name}] ERROR: torch and onnxruntime disagree on "
                  f"{int((torch_pred != ort_pred).sum())} test images", file=sys.stderr)
            return 1

    print("summary: " + json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in summary.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

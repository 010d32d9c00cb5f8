"""Knowledge distillation: torch execution of ONNX graphs, losses, determinism, checkpoints."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from channel_models import GraphBuilder, flatten_gemm, mobilenet_like
from fwedge import ir
from fwedge.data import open_dataset
from fwedge.errors import DistillError
from fwedge.eval import ort_session
from fwedge.passes import distill as kd
from helpers import tiny_conv_model
from tolerances import FP32_ATOL, FP32_RTOL

pytestmark = pytest.mark.torch


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def op_zoo(rng: np.random.Generator | None = None) -> onnx.ModelProto:
    """The remaining table ops in one graph: HardSigmoid/HardSwish SE-style Mul, AveragePool
    with asymmetric-free pads, MaxPool with pads, Pad, Sub/Div, Reshape, Transpose, MatMul,
    Squeeze/Unsqueeze, ReduceMean, LeakyRelu, Sigmoid, Tanh, Softmax."""
    g = GraphBuilder(rng or np.random.default_rng(1), ["N", 3, 10, 10])
    x = g.node("LeakyRelu", [g.conv("input", 3, 6, "c0", kernel=3, bias=True)], "lrelu", alpha=0.1)
    se = g.node("ReduceMean", [x], "se_pool", axes=[2, 3], keepdims=1)
    se = g.node("HardSigmoid", [g.conv(se, 6, 6, "se_fc", bias=True)], "se_gate", alpha=0.2, beta=0.5)
    x = g.node("Mul", [x, se], "se_mul")
    x = g.node("HardSwish", [x], "hswish")
    x = g.node("AveragePool", [x], "avg", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = g.node("MaxPool", [x], "max", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = g.node("Pad", [x, g.const("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64))], "pad")
    x = g.node("Sub", [x, g.const("quarter", np.full((6, 1, 1), 0.25, dtype=np.float32))], "sub")
    x = g.node("Div", [x, g.const("two", np.array(2.0, dtype=np.float32))], "div")
    x = g.node("Tanh", [x], "tanh")
    x = g.node("Reshape", [x, g.const("shape", np.array([0, 6, -1], dtype=np.int64))], "reshape")
    x = g.node("Transpose", [x], "transpose", perm=[0, 2, 1])
    x = g.node("MatMul", [x, g.const("proj", rng_proj(6, 4))], "matmul")
    x = g.node("Sigmoid", [x], "sigmoid")
    x = g.node("ReduceMean", [x], "mean_tokens", axes=[1], keepdims=0)
    x = g.node("Unsqueeze", [x, g.const("ax", np.array([1], dtype=np.int64))], "unsq")
    x = g.node("Squeeze", [x, g.const("ax2", np.array([1], dtype=np.int64))], "sq")
    x = g.node("Softmax", [g.gemm(x, 4, 3, "fc")], "softmax", axis=1)
    return g.model("softmax", ["N", 3], opset=14)


def rng_proj(k: int, n: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((k, n)).astype(np.float32)


@pytest.mark.parametrize("builder", [mobilenet_like, flatten_gemm, tiny_conv_model, op_zoo])
def test_torch_graph_matches_onnxruntime(builder, rng):
    model = builder()
    shape = [4 if not isinstance(d, int) else d for d in ir.shape_of(ir.graph_inputs(model)[0])]
    x = rng.standard_normal(shape).astype(np.float32)
    graph = kd.TorchGraph(model)
    np.testing.assert_allclose(graph(x), run(model, x), rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=model.graph.output[0].name)


def test_unsupported_ops_are_listed():
    model = tiny_conv_model()
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Erf"
    with pytest.raises(DistillError, match=r"'relu' \(Erf\)"):
        kd.TorchGraph(model)


def test_missing_torch_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(DistillError, match=r"pip install 'fwedge\[distill\]'"):
        kd.TorchGraph(tiny_conv_model())


def _teacher_and_data(tmp_path, samples: int = 256):
    """A teacher, a noisy copy of it as the student, and npz data labelled by the teacher."""
    teacher = mobilenet_like(np.random.default_rng(0))
    student = onnx.ModelProto()
    student.CopyFrom(teacher)
    noise = np.random.default_rng(5)
    for init in student.graph.initializer:
        if init.name.endswith(".weight"):
            value = numpy_helper.to_array(init)
            value = value + 0.3 * np.abs(value).mean() * noise.standard_normal(value.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    x = np.random.default_rng(1).standard_normal((samples, 1, 12, 12)).astype(np.float32)
    y = run(teacher, x).argmax(1)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return teacher, student, open_dataset(path), x


OPTIONS = dict(epochs=2, batch_size=64, threads=1, bn_mode="frozen", lr=2e-3)


def test_distillation_moves_student_towards_teacher(tmp_path):
    teacher, student, data, x = _teacher_and_data(tmp_path)
    result = kd.distill(student, teacher, data, kd.DistillOptions(alpha=0.0, **OPTIONS))
    reference = run(teacher, x)
    before = np.mean((run(student, x) - reference) ** 2)
    after = np.mean((run(result.model, x) - reference) ** 2)
    assert after < 0.7 * before, (before, after)
    assert result.history[-1].soft_loss < result.history[0].soft_loss
    # Names survive: same nodes, same initializer names in the same order; only values change.
    assert [n.name for n in result.model.graph.node] == [n.name for n in student.graph.node]
    assert [i.name for i in result.model.graph.initializer] == [i.name for i in student.graph.initializer]
    trained = kd.TorchGraph(result.model)
    np.testing.assert_allclose(trained(x[:8]), run(result.model, x[:8]), rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg="logits")


def test_mismatched_output_shapes_rejected(tmp_path):
    teacher, _, data, _ = _teacher_and_data(tmp_path, samples=64)
    g = GraphBuilder(np.random.default_rng(0), ["N", 1, 12, 12])
    x = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv("input", 1, 4, "c")], "p")], "f")
    g.gemm(x, 4, 7, "out")
    student = g.model("out", ["N", 7])
    with pytest.raises(DistillError) as info:
        kd.distill(student, teacher, data, kd.DistillOptions(**OPTIONS))
    assert "['N', 5]" in str(info.value) and "['N', 7]" in str(info.value)
    assert "teacher output 'logits'" in str(info.value) and "student output 'out'" in str(info.value)


def test_fixed_seed_is_deterministic(tmp_path):
    teacher, student, data, _ = _teacher_and_data(tmp_path, samples=128)
    runs = [kd.distill(student, teacher, data, kd.DistillOptions(seed=seed, **OPTIONS)) for seed in (3, 3, 4)]
    digests = [kd.fingerprint_digest(r) for r in runs]
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


@pytest.mark.parametrize("bn_mode", ["train", "frozen"])
def test_resume_matches_uninterrupted_run(tmp_path, bn_mode):
    teacher, student, data, _ = _teacher_and_data(tmp_path, samples=128)
    options = {**OPTIONS, "epochs": 3, "bn_mode": bn_mode}
    straight = kd.distill(student, teacher, data, kd.DistillOptions(**options))

    class Stop(Exception):
        pass

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise Stop

    checkpoints = tmp_path / "ckpt"
    with pytest.raises(Stop):
        kd.distill(student, teacher, data, kd.DistillOptions(checkpoint_dir=checkpoints, **options),
                   on_epoch=stop_after_first)
    assert (checkpoints / kd.CHECKPOINT_NAME).is_file()
    resumed = kd.distill(student, teacher, data,
                         kd.DistillOptions(checkpoint_dir=checkpoints, resume=True, **options))
    assert resumed.resumed_from_epoch == 1
    assert kd.fingerprint_digest(resumed) == kd.fingerprint_digest(straight)
    assert [h.loss for h in resumed.history] == [h.loss for h in straight.history]
    # A checkpoint from other options is refused rather than silently mixed in.
    with pytest.raises(DistillError, match="another run"):
        kd.distill(student, teacher, data, kd.DistillOptions(checkpoint_dir=checkpoints, resume=True,
                                                             **{**options, "lr": 0.1}))


def test_finetune_needs_labels_and_feature_loss_checks_shapes(tmp_path):
    teacher, student, data, x = _teacher_and_data(tmp_path, samples=64)
    unlabelled = tmp_path / "x.npy"
    np.save(unlabelled, x)
    with pytest.raises(DistillError, match="needs labels"):
        kd.finetune(student, open_dataset(unlabelled), kd.DistillOptions(**OPTIONS))
    with pytest.raises(DistillError, match="feature pair"):
        kd.distill(student, teacher, data, kd.DistillOptions(feature_pairs=(("head_act", "stem_act"),), **OPTIONS))
    result = kd.distill(student, teacher, data, kd.DistillOptions(feature_pairs=(("head_act", "head_act"),), **OPTIONS))
    assert result.history[0].feature_loss > 0


def test_distill_cli(tmp_path):
    from click.testing import CliRunner

    from fwedge.cli import cli

    teacher, student, _, _ = _teacher_and_data(tmp_path, samples=64)
    onnx.save(teacher, tmp_path / "t.onnx")
    onnx.save(student, tmp_path / "s.onnx")
    args = ["distill", "--teacher", str(tmp_path / "t.onnx"), "--student", str(tmp_path / "s.onnx"),
            "--data", str(tmp_path / "data.npz"), "--epochs", "1", "--bn", "frozen", "--threads", "1",
            "--flip", "--shift", "1", "--checkpoint", str(tmp_path / "ck"), "-o", str(tmp_path / "out.onnx")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output
    options = json.loads({p.key: p.value for p in ir.load(tmp_path / "out.onnx").metadata_props}["fwedge.distill"])
    assert options["options"]["flip"] is True and options["options"]["shift"] == 1
    assert ir.load(tmp_path / "out.onnx")


def test_augment_batch_flips_and_shifts_with_zero_fill():
    import torch
    x = torch.from_numpy(np.random.default_rng(0).random((16, 2, 6, 7)).astype(np.float32))
    same = kd.augment_batch(torch, x, torch.Generator().manual_seed(0), flip=False, shift=0)
    assert torch.equal(same, x)
    flipped = kd.augment_batch(torch, x, torch.Generator().manual_seed(0), flip=True, shift=0)
    is_flipped = [bool(torch.equal(flipped[i], x[i].flip(-1))) for i in range(16)]
    assert all(is_flipped[i] or torch.equal(flipped[i], x[i]) for i in range(16))
    assert 0 < sum(is_flipped) < 16, "about half the samples flip"
    shifted = kd.augment_batch(torch, x, torch.Generator().manual_seed(1), flip=False, shift=2)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(16):
        # Each sample is one of the 25 windows of its zero-padded self.
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(shifted[i].numpy(), padded[i, :, dy:dy + 6, dx:dx + 7])]
        assert found, f"sample {i} is no shifted window of itself"
        offsets.add(found[0])
    assert len(offsets) > 3, "offsets vary per sample"
    again = kd.augment_batch(torch, x, torch.Generator().manual_seed(1), flip=False, shift=2)
    assert torch.equal(again, shifted), "the generator alone decides the augmentation"
    with pytest.raises(DistillError, match="NCHW"):
        kd.augment_batch(torch, x[0], torch.Generator(), flip=True, shift=0)


def test_augmented_distillation_is_deterministic_and_resumable(tmp_path):
    teacher, student, data, x = _teacher_and_data(tmp_path, samples=128)
    options = {**OPTIONS, "epochs": 2, "flip": True, "shift": 2}
    first = kd.distill(student, teacher, data, kd.DistillOptions(**options))
    second = kd.distill(student, teacher, data, kd.DistillOptions(**options))
    plain = kd.distill(student, teacher, data, kd.DistillOptions(**OPTIONS))
    assert kd.fingerprint_digest(first) == kd.fingerprint_digest(second)
    assert kd.fingerprint_digest(first) != kd.fingerprint_digest(plain), "augmentation must change training"
    tuned = kd.finetune(student, data, kd.DistillOptions(**options))
    assert tuned.history[-1].soft_loss == 0 and tuned.history[-1].hard_loss > 0

    class Stop(Exception):
        pass

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        kd.distill(student, teacher, data, kd.DistillOptions(checkpoint_dir=tmp_path / "ck", **options),
                   on_epoch=stop_after_first)
    resumed = kd.distill(student, teacher, data,
                         kd.DistillOptions(checkpoint_dir=tmp_path / "ck", resume=True, **options))
    assert resumed.resumed_from_epoch == 1
    assert kd.fingerprint_digest(resumed) == kd.fingerprint_digest(first)
    with pytest.raises(DistillError, match="shift must be >= 0"):
        kd.distill(student, teacher, data, kd.DistillOptions(**{**OPTIONS, "shift": -1}))

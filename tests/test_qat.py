"""Quantization-aware training: the fake-quantized forward is the QDQ model's, training lowers the
loss, runs repeat byte for byte and resume, and the output is quantize's QDQ layout."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from fwedge import ir
from fwedge.cli import cli
from fwedge.data import open_dataset
from fwedge.errors import DistillError
from fwedge.eval import ort_session, resolve_preprocess
from fwedge.passes.distill import DistillOptions
from fwedge.passes.qat import METADATA_KEY, FakeQuantGraph, fake_quant_outputs, qat
from fwedge.quantization import QuantizeRequest
from tolerances import QAT_FAKE_QUANT_MAX_OFF_FRACTION, QAT_FAKE_QUANT_MAX_STEPS

pytestmark = [pytest.mark.torch, pytest.mark.fashion_mnist]

# Per-tensor weights and symmetric activations on the depthwise example: the setting where
# post-training quantization hurts (bench/qat.py). Tiny: 512 images, 2 epochs of 8 steps.
TRAINING = {"epochs": 2, "limit": 512, "batch_size": 64, "lr": 3e-4, "seed": 0, "threads": 1}


def _request(model) -> QuantizeRequest:
    return QuantizeRequest(str(model), "fashion-mnist:train", "minmax", 64, per_channel=False, symmetric=True)


def _qat(model, **options):
    return qat(_request(model), open_dataset("fashion-mnist:train"), DistillOptions(**{**TRAINING, **options}))


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def trained(mobilenet_path):
    return _qat(mobilenet_path)


def _test_images(model: onnx.ModelProto, count: int = 128) -> np.ndarray:
    spec = resolve_preprocess(model)
    return next(open_dataset("fashion-mnist:test").batches(spec, batch_size=count, limit=count)).x


def _output_scale(qdq: onnx.ModelProto) -> float:
    inits = ir.initializer_map(qdq)
    name = qdq.graph.output[0].name
    dq = next(node for node in qdq.graph.node if name in node.output)
    assert dq.op_type == "DequantizeLinear"
    return float(numpy_helper.to_array(inits[dq.input[1]]))


@pytest.mark.parametrize("which", ["before training", "after training"])
def test_fake_quant_forward_is_the_written_qdq_model(trained, which):
    """The forward QAT trains is what onnxruntime's exact QDQ run of the written model computes,
    within QAT_FAKE_QUANT_MAX_STEPS output steps."""
    float_model, qdq = ((trained.ptq.float_model, trained.ptq.model) if which == "before training"
                        else (trained.float_model, trained.model))
    x = _test_images(qdq)
    session = ort_session(qdq)
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    got = fake_quant_outputs(trained.ptq, float_model, x)
    steps = np.abs(got - expected) / _output_scale(qdq)
    off = float(np.mean(steps > 0.5))
    assert steps.max() <= QAT_FAKE_QUANT_MAX_STEPS + 1e-3, f"logits up to {steps.max():.2f} steps off"
    assert off <= QAT_FAKE_QUANT_MAX_OFF_FRACTION, f"{off:.2%} of the logits a step off"
    # Not the float model's forward: the fake quantization is really there.
    plain = trained.ptq.float_model
    session_float = ort_session(plain)
    float_out = session_float.run(None, {session_float.get_inputs()[0].name: x})[0]
    assert np.abs(float_out - expected).max() / _output_scale(qdq) > 4 * QAT_FAKE_QUANT_MAX_STEPS


def test_training_lowers_the_fake_quantized_loss(trained):
    import torch

    dataset = open_dataset("fashion-mnist:train")
    spec = resolve_preprocess(trained.float_model)
    subset = dataset.batches(spec, batch_size=1024, limit=TRAINING["limit"], seed=TRAINING["seed"])
    batch = next(subset)
    losses = {}
    for name, model in (("before", trained.ptq.float_model), ("after", trained.float_model)):
        graph = FakeQuantGraph(model, trained.ptq.table, trained.ptq.options, trained.ptq.plan)
        logits = torch.from_numpy(graph(batch.x))
        losses[name] = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch.y)))
    assert losses["after"] < 0.97 * losses["before"], losses
    assert trained.history[-1].loss < trained.history[0].loss


def test_same_seed_same_bytes(trained, mobilenet_path):
    """Two runs with one seed write the same bytes (and training did move the weights)."""
    again = _qat(mobilenet_path)
    assert _bytes(again.model) == _bytes(trained.model)
    weights = [[init.SerializeToString() for init in model.graph.initializer] for model in (again.model, again.ptq.model)]
    assert weights[0] != weights[1]


def test_resume_after_epoch_one_matches_the_uninterrupted_run(trained, mobilenet_path, tmp_path):
    def interrupt(stats):  # Ctrl-C once epoch 1 is checkpointed
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qat(_request(mobilenet_path), open_dataset("fashion-mnist:train"),
            DistillOptions(**TRAINING, checkpoint_dir=tmp_path), on_epoch=interrupt)
    resumed = qat(_request(mobilenet_path), open_dataset("fashion-mnist:train"),
                  DistillOptions(**TRAINING, checkpoint_dir=tmp_path, resume=True))
    assert resumed.resumed_from_epoch == 1
    assert _bytes(resumed.model) == _bytes(trained.model)
    # A checkpoint trained under other scales is refused, not mixed in.
    other = QuantizeRequest(str(mobilenet_path), "fashion-mnist:train", "minmax", 64)
    with pytest.raises(DistillError, match="another run"):
        qat(other, open_dataset("fashion-mnist:train"), DistillOptions(**TRAINING, checkpoint_dir=tmp_path,
                                                                       resume=True))


def test_untrained_qat_writes_quantize_s_model_byte_for_byte(trained, mobilenet_path):
    """With a zero learning rate the weights stay, and the written model is quantize's own: QAT's
    output is the standard QDQ model, not a look-alike."""
    still = _qat(mobilenet_path, epochs=1, lr=0.0)
    written = onnx.ModelProto()
    written.CopyFrom(still.model)
    entries = [prop for prop in written.metadata_props if prop.key != METADATA_KEY]
    assert len(entries) == len(written.metadata_props) - 1
    del written.metadata_props[:]
    written.metadata_props.extend(entries)
    assert _bytes(written) == _bytes(still.ptq.model)
    entry = next(prop.value for prop in still.model.metadata_props if prop.key == METADATA_KEY)
    assert json.loads(entry)["samples"] == TRAINING["limit"]


def test_a_budget_or_bias_correction_is_refused(mobilenet_path):
    train = open_dataset("fashion-mnist:train")
    budget = QuantizeRequest(str(mobilenet_path), "fashion-mnist:train", min_agreement=0.99,
                             eval_data="fashion-mnist:test")
    with pytest.raises(DistillError, match="budget"):
        qat(budget, train, DistillOptions(**TRAINING))
    with pytest.raises(DistillError, match="bias_correction"):
        qat(QuantizeRequest(str(mobilenet_path), "fashion-mnist:train", bias_correction=True), train,
            DistillOptions(**TRAINING))


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.cc
def test_cli_from_a_qdq_model_keeps_its_scales_and_exports_to_c(mobilenet_path, tmp_path):
    """`fwedge qat` on a QDQ model written by quantize: same Q/DQ nodes and activation scales,
    trained weights; export takes it for the C target and the bundle runs."""
    qdq = tmp_path / "m.int8.onnx"
    done = _invoke("quantize", mobilenet_path, "--data", "fashion-mnist:train", "--num-samples", "64",
                   "--method", "minmax", "--per-tensor", "--symmetric", "-o", qdq)
    assert done.exit_code == 0, done.output
    out = tmp_path / "m.qat.onnx"
    done = _invoke("qat", qdq, "--data", "fashion-mnist:train", "--limit", "256", "--epochs", "1",
                   "--batch-size", "64", "--threads", "1", "--teacher", mobilenet_path, "--temperature", "2",
                   "-o", out)
    assert done.exit_code == 0, done.output
    assert "scales from the QDQ model" in done.output
    before, after = ir.load(qdq), ir.load(out)

    def activation_scales(model):
        inits = ir.initializer_map(model)
        return {node.name: numpy_helper.to_array(inits[node.input[1]]).tolist()
                for node in model.graph.node if node.op_type == "QuantizeLinear"}

    assert activation_scales(after) == activation_scales(before)
    weights = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer if i.name.endswith("_quantized")}
    changed = [name for name, init in ((i.name, numpy_helper.to_array(i)) for i in after.graph.initializer)
               if name in weights and not np.array_equal(init, weights[name])]
    assert changed, "no weight changed"
    bundles = tmp_path / "bundles"
    done = _invoke("export", out, "-t", "x86_64", "-o", bundles)
    assert done.exit_code == 0, done.output
    done = _invoke("run", bundles / "m.qat-x86_64-int8", "--data", "fashion-mnist:test", "--limit", "64")
    assert done.exit_code == 0, done.output
    assert "top-1 accuracy" in done.output


def test_cli_refuses_layout_options_on_a_qdq_model_and_one_that_names_no_float_model(mobilenet_path, tmp_path):
    qdq = tmp_path / "m.int8.onnx"
    done = _invoke("quantize", mobilenet_path, "--data", "fashion-mnist:train", "--num-samples", "16",
                   "--method", "minmax", "-o", qdq)
    assert done.exit_code == 0, done.output
    done = _invoke("qat", qdq, "--data", "fashion-mnist:train", "--per-tensor", "-o", tmp_path / "o.onnx")
    assert done.exit_code == 2 and "brings its own scales and layout: --per-tensor" in done.output, done.output
    model = ir.load(qdq)
    kept = [prop for prop in model.metadata_props if prop.key != "fwedge.float_model"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    ir.save(model, qdq)
    done = _invoke("qat", qdq, "--data", "fashion-mnist:train", "--limit", "64", "-o", tmp_path / "o.onnx")
    assert done.exit_code == 2, done.output
    assert "names none" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("flags", [["--per-tensor", "--symmetric"], ["--activation-dtype", "uint8"]])
def test_a_qdq_model_is_read_back_as_the_request_that_wrote_it(mobilenet_path, tmp_path, flags):
    """request_from_qdq recovers the table, weight granularity and activation dtype: quantizing its
    float model with them writes the same nodes, activation pairs and int8 weights bit for bit. The
    int32 biases alone may move: quantize computes their scale s_in * s_w from the table's float64
    s_in, and the QDQ model keeps only s_in's float32 rounding, so a bias scale can be one float32
    ulp off and a bias one step."""
    from fwedge.passes.qat import request_from_qdq
    from fwedge.quantization import run_quantization

    qdq = tmp_path / "m.int8.onnx"
    done = _invoke("quantize", mobilenet_path, "--data", "fashion-mnist:train", "--num-samples", "32",
                   "--method", "minmax", *flags, "-o", qdq)
    assert done.exit_code == 0, done.output
    given = ir.load(qdq)
    again = run_quantization(request_from_qdq(given, qdq)).model
    assert [n.SerializeToString() for n in again.graph.node] == [n.SerializeToString() for n in given.graph.node]
    before = {init.name: numpy_helper.to_array(init) for init in given.graph.initializer}
    after = {init.name: numpy_helper.to_array(init) for init in again.graph.initializer}
    assert list(after) == list(before)
    biases = {name for node in given.graph.node if node.op_type == "DequantizeLinear"
              and before.get(node.input[0], np.zeros(1)).dtype == np.int32 for name in node.input[:2]}
    for name, value in before.items():
        assert after[name].dtype == value.dtype, name
        if name in biases:
            tolerance = 1 if value.dtype == np.int32 else 2e-7 * np.abs(value)
            assert np.all(np.abs(after[name].astype(np.float64) - value) <= tolerance), name
        else:
            assert np.array_equal(after[name], value), name

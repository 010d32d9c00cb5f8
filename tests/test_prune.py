"""Structured channel pruning and unstructured magnitude pruning against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from channel_models import flatten_gemm, hardcoded_reshape, mobilenet_like
from fwedge import ir
from fwedge.errors import PruneError
from fwedge.eval import ort_session
from fwedge.passes import prune
from tolerances import FP32_ATOL, FP32_RTOL


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def input_for(model: onnx.ModelProto, rng: np.random.Generator, batch: int = 3) -> np.ndarray:
    shape = ir.shape_of(ir.graph_inputs(model)[0])
    dims = [batch if not isinstance(d, int) else d for d in shape]
    return rng.standard_normal(dims).astype(np.float32)


def zero_components(model: onnx.ModelProto, graph: prune.DependencyGraph, roots: set[int],
                    with_inputs: bool = False) -> onnx.ModelProto:
    """Make the chosen coupled channels provably zero: their weights, biases and BN gamma/beta/
    mean/var are 0, so after BN and ReLU/Clip every element of those channels is exactly 0."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = ir.initializer_map(out)
    for piece in graph.params.values():
        if piece.role == "in" and not with_inputs:
            continue
        values = numpy_helper.to_array(inits[piece.name]).copy()
        hit = np.isin(graph.roots(piece.ids), list(roots))
        index = [slice(None)] * values.ndim
        index[piece.axis] = hit
        values[tuple(index)] = 0.0
        inits[piece.name].CopyFrom(numpy_helper.from_array(values, piece.name))
    return out


@pytest.mark.parametrize("builder", [mobilenet_like, flatten_gemm])
def test_ratio_zero_leaves_outputs_identical(builder, rng):
    model = builder()
    pruned, report = prune.prune_channels(model, 0.0)
    x = input_for(model, rng)
    np.testing.assert_array_equal(run(pruned, x), run(model, x), err_msg=model.graph.output[0].name)
    assert report.params_after == report.params_before
    assert report.macs_after == report.macs_before


def test_dependency_groups_of_mobilenet_like():
    graph = prune.analyze(mobilenet_like())
    groups = {group.name: group for group in graph.groups}
    # The residual Add ties block1.project to the stem, and block3.project to block2.project.
    assert groups["stem"].sources == ["stem", "block1.project"]
    assert groups["block2.project"].sources == ["block2.project", "block3.project"]
    # The depthwise conv creates no channels of its own: it belongs to its expand conv's group.
    assert "block1.dw" not in groups and groups["block1.expand"].channels == 24
    assert not groups["stem"].prunable and "first conv 'stem' is protected" in groups["stem"].blocked_by
    assert not groups["logits"].prunable
    assert groups["head"].prunable and groups["branch_a"].prunable


@pytest.mark.parametrize("builder", [mobilenet_like, flatten_gemm])
def test_dropping_zero_channels_keeps_outputs(builder, rng):
    """Channels whose producing weights are all zero carry zeros: removing them everywhere (convs,
    BN, depthwise, residual Add, Concat offsets, Flatten blocks) must not change the output."""
    model = builder()
    graph = prune.analyze(model)
    remove = set()
    for group in graph.groups:
        free = [root for root in group.components if not graph.is_blocked(root)]
        remove.update(free[1::2])  # every other prunable channel, offsets inside Concat included
    assert remove
    zeroed = zero_components(model, graph, remove)
    pruned = prune.apply_pruning(zeroed, graph, remove)
    onnx.checker.check_model(pruned, full_check=True)
    x = input_for(model, rng)
    expected = run(zeroed, x)
    np.testing.assert_allclose(run(pruned, x), expected, rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg=model.graph.output[0].name)
    assert np.abs(expected - run(model, x)).max() > 1e-3  # the zeroing really changed the model
    before = sum(numpy_helper.to_array(t).size for t in zeroed.graph.initializer)
    after = sum(numpy_helper.to_array(t).size for t in pruned.graph.initializer)
    assert after < before


def test_l1_ranking_picks_the_zero_channels(rng):
    """With per-layer l1, the channels whose whole group slice is zero go first."""
    model = flatten_gemm()
    graph = prune.analyze(model)
    conv1 = next(g for g in graph.groups if g.name == "conv1")
    zero = {conv1.components[0], conv1.components[3], conv1.components[4]}
    zeroed = zero_components(model, graph, zero, with_inputs=True)
    pruned, report = prune.prune_channels(zeroed, 0.5, criterion="l1", scope="per-layer")
    kept = {g.name: g.kept for g in report.groups}
    assert kept["conv1"] == 3
    assert numpy_helper.to_array(ir.initializer_map(pruned)["conv1.weight"]).shape[0] == 3
    assert numpy_helper.to_array(ir.initializer_map(pruned)["fc1.weight"]).shape[1] == 3 * 16
    x = input_for(model, rng)
    # fc1 also lost half its outputs, so compare only what conv1 alone changes: prune conv1 only.
    only_conv1, _ = prune.prune_channels(zeroed, 0.5, criterion="l1", scope="per-layer", exclude=["fc1"])
    np.testing.assert_allclose(run(only_conv1, x), run(zeroed, x), rtol=FP32_RTOL, atol=FP32_ATOL,
                               err_msg="fc2")


def test_mobilenet_like_pruned_is_smaller_and_runs(rng):
    model = mobilenet_like()
    pruned, report = prune.prune_to_macs(model, 0.5)
    onnx.checker.check_model(pruned, full_check=True)
    assert report.macs_after <= 0.5 * report.macs_before
    assert report.params_after < report.params_before
    x = input_for(model, rng)
    assert run(pruned, x).shape == run(model, x).shape
    names = {node.name for node in pruned.graph.node}
    assert names == {node.name for node in model.graph.node}  # node names survive
    dw = next(node for node in pruned.graph.node if node.name == "block2.dw")
    weight = ir.initializer_map(pruned)["block2.dw.weight"]
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == weight.dims[0]


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_criteria_and_scopes_give_valid_models(criterion, scope, rng):
    model = mobilenet_like()
    pruned, report = prune.prune_channels(model, 0.3, criterion=criterion, scope=scope)
    onnx.checker.check_model(pruned, full_check=True)
    assert report.macs_after < report.macs_before
    assert run(pruned, input_for(model, rng)).shape == (3, 5)


def test_exclude_keeps_named_layer():
    _, report = prune.prune_channels(mobilenet_like(), 0.5, exclude=["head"])
    head = next(g for g in report.groups if g.name == "head")
    assert head.kept == head.channels
    assert any("excluded by name" in reason for reason in head.blocked_by)
    with pytest.raises(PruneError, match="no node named"):
        prune.prune_channels(mobilenet_like(), 0.5, exclude=["nope"])


def test_hardcoded_reshape_explains_why():
    with pytest.raises(PruneError) as info:
        prune.prune_channels(hardcoded_reshape(), 0.5)
    message = str(info.value)
    assert "Reshape 'reshape1'" in message and "[2, 288]" in message and "group 'conv1'" in message
    assert "first conv 'conv0' is protected" in message


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan")])
def test_bad_ratio_rejected(ratio):
    with pytest.raises(PruneError, match=r"ratio must be in \[0, 1\)"):
        prune.prune_channels(mobilenet_like(), ratio)
    with pytest.raises(PruneError, match=r"ratio must be in \[0, 1\)"):
        prune.sparsify(mobilenet_like(), ratio)


@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_sparsify_zeroes_smallest_weights(scope):
    model = mobilenet_like()
    sparse, report = prune.sparsify(model, 0.8, scope=scope)
    assert abs(report.sparsity - 0.8) < 0.01
    assert report.sparse_gzip_bytes < 0.6 * report.dense_gzip_bytes
    before, after = ir.initializer_map(model), ir.initializer_map(sparse)
    weight = "head.weight"
    w0, w1 = numpy_helper.to_array(before[weight]), numpy_helper.to_array(after[weight])
    kept = w1 != 0
    np.testing.assert_array_equal(w1[kept], w0[kept], err_msg=weight)
    if kept.any() and (~kept).any():
        assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min()
    if scope == "per-layer":
        assert all(abs(value - 0.8) < 0.02 for value in report.layers.values())
    # Biases and BN parameters are untouched.
    np.testing.assert_array_equal(numpy_helper.to_array(after["head_bn.scale"]),
                                  numpy_helper.to_array(before["head_bn.scale"]), err_msg="head_bn.scale")


def test_prune_cli(tmp_path):
    from click.testing import CliRunner

    from fwedge.cli import cli

    source = tmp_path / "model.onnx"
    onnx.save(mobilenet_like(), source)
    result = CliRunner().invoke(cli, ["prune", str(source), "--macs", "0.5", "-o", str(tmp_path / "p.onnx"), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert '"macs_fraction"' in result.output
    assert ir.load(tmp_path / "p.onnx")
    result = CliRunner().invoke(cli, ["prune", str(source), "--ratio", "1", "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 2 and "ratio must be in [0, 1)" in result.output
    assert not (tmp_path / "q.onnx").exists()


def test_round_to_keeps_multiples(rng):
    model = mobilenet_like()
    pruned, report = prune.prune_channels(model, 0.4, round_to=4)
    for group in report.groups:
        if group.kept != group.channels:
            assert group.kept % 4 == 0, (group.name, group.kept)
    onnx.checker.check_model(pruned, full_check=True)
    assert run(pruned, input_for(model, rng)).shape == (3, 5)
    with pytest.raises(PruneError, match="round_to"):
        prune.prune_channels(model, 0.4, round_to=0)


@pytest.fixture(scope="module")
def mobilenet_v2_tiny_graph(tmp_path_factory):
    """The example's MobileNetV2-tiny architecture, exported by examples/fashion_mnist/train.py
    with seeded random weights (the graph the trained example has: depthwise convs, residual
    Adds, Clip 0..6, kept BN, GlobalAveragePool, Gemm)."""
    import importlib.util
    import sys

    import torch

    from conftest import EXAMPLES

    spec = importlib.util.spec_from_file_location("fwedge_example_train", EXAMPLES / "train.py")
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train
    spec.loader.exec_module(train)
    torch.manual_seed(0)
    net = train.MobileNetV2Tiny()
    train.init_weights(net)
    with torch.no_grad():  # non-trivial BN statistics, as a trained model has
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("mbv2") / "mobilenet_v2_tiny.onnx"
    train.export_onnx(net, "mobilenet_v2_tiny", path)
    return ir.load(path)


@pytest.mark.torch
def test_mobilenet_v2_tiny_prunes_to_half_the_macs(mobilenet_v2_tiny_graph, rng):
    model = mobilenet_v2_tiny_graph
    pruned, report = prune.prune_to_macs(model, 0.5, round_to=8)
    onnx.checker.check_model(pruned, full_check=True)
    assert report.macs_after <= 0.5 * report.macs_before
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    assert run(pruned, x).shape == (4, 10)
    kinds = {g.name: len(g.sources) for g in report.groups}
    assert max(kinds.values()) >= 3  # a residual chain couples several project convs
    for group in report.groups:
        if group.kept != group.channels:
            assert group.kept % 8 == 0, group.name


@pytest.mark.torch
def test_mobilenet_v2_tiny_zero_channels_drop_exactly(mobilenet_v2_tiny_graph, rng):
    model = mobilenet_v2_tiny_graph
    graph = prune.analyze(model)
    remove = set()
    for group in graph.groups:
        free = [root for root in group.components if not graph.is_blocked(root)]
        remove.update(free[::3])
    zeroed = zero_components(model, graph, remove)
    pruned = prune.apply_pruning(zeroed, graph, remove)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run(pruned, x), run(zeroed, x), rtol=FP32_RTOL, atol=FP32_ATOL, err_msg="logits")


@pytest.mark.rapidocr
def test_ppocr_classifier_with_se_blocks(ppocr_cls_path):
    """A real exported model (opset 11, SE blocks with HardSigmoid, biases reshaped at run time):
    constant folding makes its groups prunable; zeroed channels drop exactly."""
    model = ir.load(ppocr_cls_path)
    pruned, report = prune.prune_channels(model, 0.3, round_to=8)
    onnx.checker.check_model(pruned, full_check=True)
    assert report.params_after < 0.8 * report.params_before
    assert sum(group.prunable for group in report.groups) >= 10
    from fwedge.passes.simplify import simplify

    folded = simplify(model)
    graph = prune.analyze(folded)
    remove = set()
    for group in graph.groups:
        remove.update([root for root in group.components if not graph.is_blocked(root)][::4])
    zeroed = zero_components(folded, graph, remove)
    x = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
    np.testing.assert_allclose(run(prune.apply_pruning(zeroed, graph, remove), x), run(zeroed, x),
                               rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=model.graph.output[0].name)

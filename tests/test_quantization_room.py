"""The quantization room: QuantizeRequest checks, a pure budget, one-way imports, activation dtype inside."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

import fwedge.quantization
from fwedge.calibration import MethodOptions, QuantTable, compute, params_from_range
from fwedge.errors import CalibrationError, FwEdgeError, QuantizeRequestError
from fwedge.quantization import (
    BudgetResult, BudgetSpec, QuantizeOptions, QuantizeRequest, activation_dtypes, calibration_data, collect_stats,
    prepare, quantize, quantize_model, run_quantization, search_budget,
)
from tests.test_quantize import block, block_data  # noqa: F401  (pytest fixtures shared with test_quantize)

ROOM = Path(fwedge.quantization.__file__).parent


@pytest.mark.parametrize("field, value", [
    ("num_samples", 0), ("bins", 4), ("seed", -1), ("batch_size", 0), ("eval_samples", 0),
    ("method", "entropy"), ("activation_dtype", "int4"), ("keep_float", "conv1"),
    ("max_accuracy_drop", -1.0), ("max_accuracy_drop", float("nan")), ("min_agreement", 0.0),
    ("min_agreement", 1.5), ("num_samples", 2.5), ("batch_size", True),
])
def test_request_rejects_a_bad_field_by_name(field, value):
    settings = {field: value}
    if field in ("max_accuracy_drop", "min_agreement"):
        settings["eval_data"] = "eval.npy"
    with pytest.raises(QuantizeRequestError, match=f"field '{field}'") as error:
        QuantizeRequest("model.onnx", "x.npy", **settings)
    assert error.value.field == field
    assert isinstance(error.value, CalibrationError) and isinstance(error.value, FwEdgeError)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("settings, field", [
    ({"data": None}, "data"),
    ({"min_agreement": 0.99}, "eval_data"),
    ({"min_agreement": 0.99, "max_accuracy_drop": 1.0, "eval_data": "e.npy"}, "min_agreement"),
])
def test_request_rejects_an_incomplete_setup_by_name(settings, field):
    with pytest.raises(QuantizeRequestError, match=f"field '{field}'"):
        QuantizeRequest("model.onnx", **{"data": "x.npy", **settings})


def test_request_defaults_are_normalised_and_frozen():
    request = QuantizeRequest("model.onnx", "x.npy", "minmax", keep_float=["conv1"])
    assert request.method.value == "minmax" and request.keep_float == ("conv1",)
    assert request.budget() is None and request.range_options().symmetric is False
    with pytest.raises(AttributeError):
        request.bins = 16  # frozen
    with pytest.raises(QuantizeRequestError, match="field 'bogus'"):
        quantize("model.onnx", "x.npy", bogus=1)


def _budget_inputs(block_model, data_path):
    """Prepared model, a table of every candidate tensor, options, plan and the all-int8 model."""
    prepared = prepare(block_model)
    options = QuantizeOptions(method="minmax")
    calib = calibration_data(prepared, data_path, 64)
    stats, plan = collect_stats(prepared, calib, options, all_candidates=True, histograms=False)
    table = compute(stats, "minmax")
    return prepared, table, options, plan


def _snapshot(*objects) -> list:
    out = []
    for item in objects:
        if hasattr(item, "SerializeToString"):
            out.append(item.SerializeToString())
        elif isinstance(item, QuantTable):
            out.append(json.dumps(item.to_dict(), sort_keys=True))
        else:
            out.append(copy.deepcopy(item))
    return out


def test_budget_search_is_pure(block, block_data):  # noqa: F811
    prepared, table, options, plan = _budget_inputs(block, block_data)
    # Ranges far too narrow: the all-int8 model misses any budget, so the search runs its forward
    # and backward passes (and may end with every layer in float).
    narrow = QuantTable(table.model_sha256, table.method, dict(table.parameters), dict(table.dataset),
                        {name: params_from_range(-1e-3, 1e-3) for name in table.tensors})
    int8 = quantize_model(prepared, narrow, options, plan)
    spec = BudgetSpec(max_accuracy_drop=None, min_agreement=1.0, eval_data=block_data, eval_samples=96)
    before = _snapshot(prepared, int8, narrow, options, plan, spec)
    result = search_budget(prepared, int8, narrow, options, plan, spec)
    assert _snapshot(prepared, int8, narrow, options, plan, spec) == before, "search_budget changed its inputs"
    assert isinstance(result, BudgetResult) and result.met and result.all_int8 < 1.0
    assert result.kept_float and {n for k in result.kept_float for n in k.node.split("+")} == result.float_nodes
    assert result.to_dict()["steps"][0] == {"float_nodes": [], "score": result.all_int8}


def test_quantize_result_comes_from_the_budget_result(block, block_data):  # noqa: F811
    request = QuantizeRequest(block, block_data, "kl", 64, min_agreement=1.0, eval_data=block_data,
                              eval_samples=96, float_stem=True, activation_dtype="uint8")
    result = run_quantization(request)
    assert result.budget == result.budget_result.to_dict() and result.budget["met"]
    assert result.kept_float[0].reason == "float stem: reads the model input"
    assert list(result.kept_float[1:]) == list(result.budget_result.kept_float)
    assert set(result.table.tensors) == set(result.plan.calibrated)
    assert activation_dtypes(result.model) == {"uint8"}, "the activation dtype is applied inside the room"
    with pytest.raises(AttributeError):
        result.model = None  # frozen: nothing patches a result after the fact


def _room_modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(ROOM.glob("*.py"))}


def test_room_modules_import_nothing_inside_functions():
    hidden = []
    for name, tree in _room_modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fwedge"):
                    hidden.append(f"{name}.{function.name}: from {node.module} import ...")
                elif isinstance(node, ast.Import) and any(a.name.startswith("fwedge") for a in node.names):
                    hidden.append(f"{name}.{function.name}: import {', '.join(a.name for a in node.names)}")
    assert hidden == [], f"function-level fwedge imports in the quantization room: {hidden}"


def test_room_imports_flow_one_way():
    """The room's modules import each other without a circle (a topological order exists)."""
    imports = {}
    for name, tree in _room_modules().items():
        if name == "__init__":
            continue
        imports[name] = {node.module.rsplit(".", 1)[1] for node in tree.body
                         if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fwedge.quantization.")}
    order, done = [], set()
    while len(done) < len(imports):
        ready = sorted(name for name, deps in imports.items() if name not in done and deps <= done)
        assert ready, f"import circle among {sorted(set(imports) - done)}: {imports}"
        order += ready
        done |= set(ready)
    assert order.index("plan") < order.index("qdq") < order.index("budget") < order.index("run")


@pytest.mark.parametrize("float_score, score, expected", [
    (0.90, 0.897, "drop 0.30 pp vs float"),
    (0.90, 0.903, "gain 0.30 pp vs float"),
    (0.90, 0.90, "same as float"),
])
def test_budget_line_says_drop_or_gain(float_score, score, expected):
    """A quantized model scoring above float is a gain, never a negative drop."""
    from fwedge.quantization.budget import accuracy_change

    assert accuracy_change(float_score, score) == expected


def test_a_bar_opened_inside_a_bar_is_a_line_of_it():
    """The terminal has one live display: the budget's bars join quantize's calibration bar."""
    from fwedge import console

    with console.progress(10, "outer") as outer_advance:
        outer = console._ACTIVE[-1]
        with console.progress(5, "inner") as inner_advance:
            inner_advance(5)
        outer_advance(2)
    assert [(t.description, t.total, t.completed) for t in outer.tasks] == [("outer", 10, 2), ("inner", 5, 5)]
    assert not console._ACTIVE


@pytest.mark.fashion_mnist
def test_the_budget_search_shows_its_progress(mobilenet_path, monkeypatch):
    """One step per layer measured alone in float (the long part: it has a bar with the time left),
    then one per layer added, up to the budget."""
    import contextlib

    from fwedge.quantization import budget as budget_module

    bars = []

    @contextlib.contextmanager
    def recording(total, description):
        bar = {"description": description, "total": total, "done": 0}
        bars.append(bar)
        yield lambda amount=1: bar.update(done=bar["done"] + amount)

    monkeypatch.setattr(budget_module, "progress", recording)
    clipped = MethodOptions(percentile=50.0)  # a range that clips most activations: int8 far from float
    groups = len(quantize(mobilenet_path, "fashion-mnist:train", "percentile", 128, method_options=clipped).plan.groups)
    result = quantize(mobilenet_path, "fashion-mnist:train", "percentile", 128, method_options=clipped,
                      min_agreement=0.9, eval_data="fashion-mnist:test", eval_samples=64)
    ranking, adding = bars
    assert ranking == {"description": f"budget: {groups} layers, each alone in float", "total": groups, "done": groups}
    added = sum(1 for step in result.budget["steps"][1:] if "requantized" not in step)
    assert adding["total"] == groups and adding["done"] == added >= 1

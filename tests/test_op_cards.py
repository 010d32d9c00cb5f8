"""The op cards are whole: every quantizable op lowers, every lowered kind is defined, run by
the interpreter, emitted by C and TFLite, exercised by the op matrix, and every op that lowers
is written by ncnn. A card registered by halves fails here, not in a user's export."""
from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from fwedge.ops.base import KindSpec, OpCard, OpInfo, UnaryFunction
from fwedge.ops.registry import all_cards, all_kinds
from op_matrix import OP_CASES

ROOT = Path(__file__).resolve().parents[1]
# Kinds the op matrix reaches only inside other cases: relu6 is a Clip(0, 6) fused into a conv
# (conv_relu6); quantize and dequantize wrap every int8 case.
MATRIX_EXEMPT = {"relu6", "quantize", "dequantize"}
# Unary kinds whose float C code is not fw_<kind>_f32: relu and relu6 are a clamp.
C_CLAMPS = {"relu", "relu6"}


def _runtime_functions() -> set[str]:
    header = (ROOT / "runtime_c" / "fwedge_rt.h").read_text()
    return set(re.findall(r"\b(fw_\w+)\s*\(", header))


def card_problems(cards: dict[str, OpCard], kinds: dict[str, KindSpec], c_emitters: set[str],
                  tflite_emitters: set[str], ncnn_ops: set[str], matrix_kinds: set[str],
                  runtime_functions: set[str], ncnn_refused: frozenset = frozenset()) -> list[str]:
    """Every way in which the registry is half-registered, as sentences."""
    problems = []
    for op, card in cards.items():
        if card.info is not None and card.info.quantizable and card.lower is None:
            problems.append(f"{op}: marked quantizable but has no lowering")
        if card.lower is not None and op not in ncnn_ops and op not in ncnn_refused:
            problems.append(f"{op}: lowers but ncnn does not write it")
        for name in card.kinds:
            if name not in kinds:
                problems.append(f"{op}: lowers to {name!r}, which no card registers as a kind")
        if card.kinds and card.lower is None:
            problems.append(f"{op}: names kinds {card.kinds} but has no lowering")
    produced = {name for card in cards.values() for name in card.kinds}
    for name, spec in kinds.items():
        if name not in produced:
            problems.append(f"kind {name!r}: no ONNX op lowers to it")
        if not callable(spec.run):
            problems.append(f"kind {name!r}: no interpreter kernel")
        if name not in c_emitters:
            problems.append(f"kind {name!r}: no C emitter")
        if name not in tflite_emitters:
            problems.append(f"kind {name!r}: no TFLite emitter")
        if name not in matrix_kinds and name not in MATRIX_EXEMPT:
            problems.append(f"kind {name!r}: no op-matrix case")
        if spec.unary is not None and name not in C_CLAMPS and f"fw_{name}_f32" not in runtime_functions:
            problems.append(f"kind {name!r}: runtime_c/fwedge_rt.h declares no fw_{name}_f32 for float models")
    return problems


def _actual() -> dict:
    from fwedge.targets import c_codegen, ncnn, tflite

    return {
        "cards": all_cards(), "kinds": all_kinds(), "c_emitters": set(c_codegen.EMITTERS),
        "tflite_emitters": set(tflite.TFLITE_OPS), "ncnn_ops": set(ncnn.WRITTEN_OPS),
        "matrix_kinds": {kind for case in OP_CASES for kind in case.kinds},
        "runtime_functions": _runtime_functions(), "ncnn_refused": frozenset(ncnn.REFUSED_OPS),
    }


def test_every_card_is_whole():
    assert card_problems(**_actual()) == []


def _half(mutate) -> list[str]:
    registry = _actual()
    registry["cards"] = dict(registry["cards"])
    registry["kinds"] = dict(registry["kinds"])
    mutate(registry)
    return card_problems(**registry)


def _run(op, values, tensors):
    return values[op.inputs[0]]


@pytest.mark.parametrize("mutate, expected", [
    # A quantizable op whose card has no lowering (how ConvTranspose, LeakyRelu and Tanh were).
    (lambda r: r["cards"].update(Gelu=OpCard("Gelu", OpInfo(quantizable=True))),
     "Gelu: marked quantizable but has no lowering"),
    # A card that lowers to a kind nobody defined.
    (lambda r: r["cards"].update(Gelu=OpCard("Gelu", OpInfo(), ("gelu",), lower=_run)),
     "Gelu: lowers to 'gelu', which no card registers as a kind"),
    # A new kind, defined and lowered to, but with no emitters, no case and no runtime function.
    (lambda r: (r["cards"].update(Gelu=OpCard("Gelu", OpInfo(), ("gelu",), lower=_run)),
                r["kinds"].update(gelu=KindSpec("gelu", _run, UnaryFunction(lambda x: x))),
                r["ncnn_ops"].add("Gelu")),
     "kind 'gelu': no C emitter"),
    (lambda r: r["c_emitters"].discard("tanh"), "kind 'tanh': no C emitter"),
    (lambda r: r["tflite_emitters"].discard("sigmoid"), "kind 'sigmoid': no TFLite emitter"),
    (lambda r: r["matrix_kinds"].discard("softmax"), "kind 'softmax': no op-matrix case"),
    (lambda r: r["ncnn_ops"].discard("Tanh"), "Tanh: lowers but ncnn does not write it"),
    (lambda r: r["runtime_functions"].discard("fw_tanh_f32"),
     "kind 'tanh': runtime_c/fwedge_rt.h declares no fw_tanh_f32 for float models"),
    (lambda r: r["cards"].update(Tanh=replace(r["cards"]["Tanh"], kinds=())), "kind 'tanh': no ONNX op lowers to it"),
], ids=["quantizable-without-lowering", "undefined-kind", "kind-without-emitters", "c", "tflite", "matrix",
        "ncnn", "runtime", "orphan-kind"])
def test_a_half_registered_card_is_named(mutate, expected):
    assert expected in _half(mutate)


def _module_imports(path: Path) -> set[str]:
    """fwedge modules imported by one source file, at the top or inside functions (an import
    inside a function defers the dependency, it does not remove it)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("fwedge"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fwedge"))
    return found


PACKAGE_DIRS = {"fwedge": "fwedge", "fwedge.passes": "passes", "fwedge.calibration": "calibration",
                "fwedge.targets": "targets", "fwedge.device_farm": "device_farm", "fwedge.runtime_c": "runtime_c"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            name = ".".join([package, *parts]) if parts else package
            if package == "fwedge" and parts and parts[0] in ("passes", "calibration", "targets", "device_farm"):
                continue
            modules[name] = path
    return modules


def _import_cycles() -> list[list[str]]:
    modules = _modules()
    graph = {name: sorted(target for target in _module_imports(path) if target in modules and target != name)
             for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        stack.append(name)
        for target in graph[name]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
    return cycles


def test_the_import_graph_has_no_circle():
    """Imports between fwedge's own modules form no circle, counting the ones inside functions
    (the CLI's lazy imports included)."""
    assert _import_cycles() == []


def test_the_op_rooms_import_nothing_inside_functions():
    """fwedge/ops and fwedge/lowered import fwedge modules at the top only: no hidden circle."""
    hidden = []
    for folder in ("fwedge/ops", "fwedge/lowered"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                                ("fwedge.ops", "fwedge.lowered")):
                            hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno} imports {inner.module}")
    assert hidden == []


def test_the_template_card_is_whole_but_for_the_ncnn_layer_it_leaves_to_its_author(monkeypatch):
    from fwedge.ops import TEMPLATE, base

    monkeypatch.setattr(base, "_REGISTRY", base._Registry(dict(base._REGISTRY.cards), dict(base._REGISTRY.kinds)))
    TEMPLATE.register()
    assert card_problems(**_actual()) == ["Example: lowers but ncnn does not write it"]


def test_quantization_lowering_and_analysis_fuse_the_same_activations():
    """x -> Conv -> Relu -> AveragePool -> Relu -> y: the first Relu folds into the Conv in the
    QDQ plan, in the lowered graph and in the per-layer labels; the second follows an
    AveragePool, which takes no fused activation, so all three keep it on its own (before, the
    plan fused it and the lowering then ran the pool in float)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from fwedge.layer_analysis import _fused_producers
    from fwedge.lowered.lower import lower
    from fwedge.quantization import plan_quantization

    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r1"], name="relu1"),
        helper.make_node("AveragePool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(nodes, "fusion", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert plan_quantization(model).fused == {"c": "r1"}
    assert _fused_producers(model) == {"r1": ("conv+relu1", "Conv+Relu")}
    lowered = lower(model)
    assert [(op.kind, getattr(op.attrs, "activation", None)) for op in lowered.ops] == [
        ("conv2d", "relu"), ("avg_pool", None), ("relu", None)]

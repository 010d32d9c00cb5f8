"""Quantization-aware training: fine-tune a float model through the fake-quantized forward of its QDQ plan."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from onnx import numpy_helper

from fwedge import ir, reference
from fwedge.calibration.table import WEIGHT_QMAX, ZERO_RANGE_SCALE, QuantTable, TensorQuant
from fwedge.data import Dataset, Preprocess
from fwedge.errors import DistillError, ModelError
from fwedge.op_info import OP_INFO
from fwedge.passes.distill import DistillOptions, DistillResult, EpochStats, check_options, distill
from fwedge.passes.distill_torch import TorchGraph
from fwedge.quantization import QuantizeRequest, QuantizeResult, quantize_model, run_quantization
from fwedge.quantization.activation_dtype import activation_dtypes, int8_activations, uint8_activations
from fwedge.quantization.plan import QuantizeOptions, QuantPlan
from fwedge.quantization.qdq import INT32_MAX, activation_params

log = logging.getLogger(__name__)

ACTIVATION_QMIN, ACTIVATION_QMAX = -128, 127
METADATA_KEY = "fwedge.qat"

# What QAT trains and what it keeps (the choices the issue asks to be said):
# * Activation scales and zero points are FIXED: the QuantTable's (given with --table or
#   calibrated first, exactly as `fwedge quantize` would). Only float weights and biases train.
# * Weight scales are recomputed from the current weights at every step, as `quantize` computes
#   them when it writes the model: absmax / 127 per output channel (or per tensor with
#   --per-tensor), widened where the int32 bias would overflow. They are not learned.
# * Rounding and clamping use the straight-through estimator: the forward rounds, the backward
#   passes the gradient through unchanged inside the int8 range and zero outside it (torch's
#   fake_quantize_per_{tensor,channel}_affine); biases are rounded to their int32 grid
#   (scale s_in * s_w) with a plain straight-through gradient.
# * At the end the trained float weights go back into the prepared float model, and
#   quantize_model with the SAME table, options and plan writes the QDQ model: the standard QDQ
#   layout `fwedge quantize` writes, so every target takes it unchanged.


class FakeQuantGraph(TorchGraph):
    """The prepared float model run in torch as its QDQ model computes: every planned activation,
    weight, int32 bias, constant and Concat requantization edge fake-quantized.

    Args:
        model: the prepared float model (QuantizeResult.float_model: BN folded, nodes named).
        table, options, plan: what quantize_model writes the QDQ model from (QuantizeResult).
        bn_mode: passed to TorchGraph (a prepared model has no BatchNormalization left).
    """

    def __init__(self, model: onnx.ModelProto, table, options: QuantizeOptions, plan: QuantPlan,
                 bn_mode: str = "frozen"):
        super().__init__(model, bn_mode)
        self.activation_params = {}
        for name in plan.activations:
            self.activation_params[name] = _params(activation_params(table, plan, name, options.symmetric))
        self.weight_axes = {(slot.node, slot.input): slot.axis for slot in plan.weights}
        self.constant_slots = {(slot.node, slot.input) for slot in plan.constants}
        # A bias is int32 only where quantize writes it so: its weight and its input are quantized.
        self.bias_slots = {(slot.node, slot.input): slot for slot in plan.biases
                           if (slot.node, slot.weight_input) in self.weight_axes
                           and slot.activation in self.activation_params}
        self.bias_of = {slot.node: slot for slot in self.bias_slots.values()}
        self.requant = {(edge.concat, edge.tensor): _params(activation_params(table, plan, edge.concat_output,
                                                                              options.symmetric))
                        for edge in plan.requant}
        self.initial = {**self.constants, **self.parameters}
        self._weight_scales: dict[str, object] = {}

    def produced(self, name: str, value):
        params = self.activation_params.get(name)
        if params is None:
            return value
        return self.torch.fake_quantize_per_tensor_affine(value, params[0], params[1],
                                                         ACTIVATION_QMIN, ACTIVATION_QMAX)

    def read(self, node: onnx.NodeProto, index: int, value):
        key = (node.name, index)
        if key in self.weight_axes:
            return self._fake_weight(node, value, self.weight_axes[key])
        if key in self.bias_slots:
            return self._fake_bias(node, value, self.bias_slots[key])
        if key in self.constant_slots:
            return self._fake_weight(node, value, -1, constant=True)
        params = self.requant.get((node.name, node.input[index]))
        if params is not None:
            return self.torch.fake_quantize_per_tensor_affine(value, params[0], params[1],
                                                             ACTIVATION_QMIN, ACTIVATION_QMAX)
        return value

    def _weight_scale(self, node: onnx.NodeProto, weight, axis: int, constant: bool):
        """quantize_weight's scales from the current weight (absmax / 127), widened as
        _QdqWriter.widened_weight widens them where the int32 bias would overflow."""
        torch = self.torch
        detached = weight.detach()
        if axis < 0:
            absmax = detached.abs().max()
        else:
            absmax = detached.movedim(axis, 0).reshape(detached.shape[axis], -1).abs().amax(dim=1)
        scale = torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.full_like(absmax, ZERO_RANGE_SCALE / WEIGHT_QMAX))
        slot = None if constant else self.bias_of.get(node.name)
        if slot is not None:
            bias = self._current(node.input[slot.input]).detach().double()
            limit = bias.abs() / (self.activation_params[slot.activation][0] * INT32_MAX)
            need = limit.max() if axis < 0 else limit
            if bool((need > scale.double()).any()):  # as the writer: every channel to at least need * 1.0001
                scale = torch.maximum(scale, (need * 1.0001).float())
        return scale

    def _current(self, name: str):
        return self.parameters[name] if name in self.parameters else self.initial[name]

    def _fake_weight(self, node: onnx.NodeProto, weight, axis: int, constant: bool = False):
        torch = self.torch
        scale = self._weight_scale(node, weight, axis, constant)
        if not constant:
            self._weight_scales[node.name] = scale
        if axis < 0:
            return torch.fake_quantize_per_tensor_affine(weight, float(scale), 0, -WEIGHT_QMAX, WEIGHT_QMAX)
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, axis, -WEIGHT_QMAX, WEIGHT_QMAX)

    def _fake_bias(self, node: onnx.NodeProto, bias, slot):
        """The int32 bias of scale s_in * s_w, as _QdqWriter.biases writes it; straight-through gradient."""
        torch = self.torch
        w_scale = self._weight_scales[node.name]
        b_scale = self.activation_params[slot.activation][0] * w_scale.double()
        if b_scale.dim() == 1 and b_scale.numel() != bias.numel():
            return bias
        q = torch.clamp(torch.round(bias.detach().double() / b_scale), -INT32_MAX, INT32_MAX)
        return bias + (q.float() * b_scale.float() - bias).detach()


def _params(params) -> tuple[float, int]:
    return float(params.scale), int(params.zero_point)


@dataclass
class QatResult:
    """What `qat` produced.

    Attributes:
        model: the QDQ model written from the trained weights (activation dtype applied).
        float_model: the prepared float model with the trained weights.
        ptq: the post-training quantization QAT started from (its model, table and plan).
        history: the training epochs (passes.distill.EpochStats; accuracies are the fake-quant model's).
        samples: training samples.
        resumed_from_epoch: epochs taken from a checkpoint.
    """

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    ptq: QuantizeResult
    history: list[EpochStats]
    samples: int
    resumed_from_epoch: int = 0


def _table_tag(ptq: QuantizeResult) -> dict:
    """The scales and layout the training runs under (part of the checkpoint fingerprint)."""
    return {"table": ptq.table.to_dict(), "per_channel": ptq.options.per_channel,
            "symmetric": ptq.options.symmetric, "excluded": sorted(ptq.options.exclude_nodes)}


def _check_request(request: QuantizeRequest) -> None:
    if request.has_budget:
        raise DistillError("qat trains every planned layer in int8: an accuracy budget "
                           "(max_accuracy_drop / min_agreement) is not supported; keep layers float with keep_float")
    if request.bias_correction:
        raise DistillError("qat trains the biases itself: bias_correction is not supported")


def qat(
    request: QuantizeRequest,
    dataset: Dataset,
    options: DistillOptions | None = None,
    teacher: onnx.ModelProto | None = None,
    preprocess: Preprocess | None = None,
    val_dataset: Dataset | None = None,
    val_limit: int | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    same_as: onnx.ModelProto | None = None,
) -> QatResult:
    """Quantization-aware training of `request.model`, written as the QDQ model `quantize` writes.

    First the post-training quantization of `request` (its table given or calibrated, its plan),
    then distill's training loop (passes/distill.py: Adam with cosine decay, seeded order,
    checkpoint and resume, optional knowledge distillation) on the FakeQuantGraph of the prepared
    float model, then quantize_model with the same table, options and plan.

    Args:
        request: what `fwedge quantize` would do (no budget, no bias correction).
        dataset: training data.
        options: training options (DistillOptions; bn_mode is moot: BN is folded).
        teacher: a float teacher for knowledge distillation (e.g. the float model), or None for
            hard labels only.
        preprocess, val_dataset, val_limit, on_epoch, on_batch: as in passes.distill.distill.
        same_as: the QDQ model `request` was read from (request_from_qdq): the post-training
            model must have exactly its Q/DQ nodes, else QAT would write another layout.

    Returns:
        QatResult.

    Raises:
        DistillError: a budget or bias correction asked for, torch missing, an op without a torch
            implementation, a checkpoint of another run.
        CalibrationError, DataError, ModelError: as run_quantization and distill.
    """
    _check_request(request)
    options = options or DistillOptions()
    check_options(options, teacher)  # before calibrating
    ptq = run_quantization(request)
    if same_as is not None:
        _check_same_layout(ptq.model, same_as)

    def fake_quant_graph(model: onnx.ModelProto, bn_mode: str) -> FakeQuantGraph:
        return FakeQuantGraph(model, ptq.table, ptq.options, ptq.plan, bn_mode)

    trained: DistillResult = distill(ptq.float_model, teacher, dataset, options, preprocess=preprocess,
                                     val_dataset=val_dataset, val_limit=val_limit, on_epoch=on_epoch,
                                     on_batch=on_batch, graph_factory=fake_quant_graph, run_tag=_table_tag(ptq))
    distill_entry = next((p.value for p in trained.model.metadata_props if p.key == "fwedge.distill"), "{}")
    float_model = _without_metadata(trained.model, "fwedge.distill")
    model = quantize_model(float_model, ptq.table, ptq.options, ptq.plan)
    if request.activation_dtype == "uint8":
        model = uint8_activations(model)
    entry = json.loads(distill_entry)
    # The final epoch's figures without its wall time, so that one seed gives the same bytes.
    final = {key: value for key, value in (entry.get("final") or {}).items() if key not in ("seconds", "resumed")}
    ir.set_metadata(model, METADATA_KEY, json.dumps({
        "teacher_sha256": entry.get("teacher_sha256"), "float_sha256": entry.get("student_sha256"),
        "options": entry.get("options"), "samples": trained.samples, "final": final or None,
        "scales": "activations fixed (quant table), weights absmax per step, straight-through rounding",
    }, sort_keys=True))
    return QatResult(model, float_model, ptq, trained.history, trained.samples, trained.resumed_from_epoch)


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether the model holds QuantizeLinear nodes (a QDQ model)."""
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def request_from_qdq(qdq: onnx.ModelProto, qdq_path, **settings) -> QuantizeRequest:
    """The QuantizeRequest that writes `qdq` again from the float model it names.

    QAT from a QDQ model written by `fwedge quantize` starts from that model's own scales: the
    float model comes from its metadata (fwedge.float_model, checked against its sha256), the
    QuantTable from its activation QuantizeLinear nodes ("<tensor>_QuantizeLinear"), per-tensor or
    per-channel weights and the activation dtype from its Q/DQ nodes, and the layers whose weights
    it keeps float are kept float again. `qat` checks that the plan writes the same pairs.
    Quantizing the float model with the request writes the same nodes, activation pairs and int8
    weights; an int32 bias scale can be one float32 ulp off (and its bias one step), because
    quantize multiplies the table's float64 activation scale, of which the QDQ model holds only the
    float32 rounding.

    Args:
        qdq: the QDQ model.
        qdq_path: its file (the float model's path is relative to it).
        settings: more QuantizeRequest fields (input_shapes, preprocess).

    Raises:
        ModelError: the model names no float model, or the file is missing or changed.
    """
    found, why = reference.from_metadata(qdq, qdq_path)
    if found is None:
        raise ModelError(f"QDQ model '{qdq_path}': qat starts from the float model a QDQ model names "
                         f"({reference.METADATA_KEY}, written by fwedge quantize), "
                         + (why or "and this one names none") + "; give the float model (and --table) instead")
    uint8 = "uint8" in activation_dtypes(qdq)
    model = int8_activations(qdq) if uint8 else qdq
    inits = ir.initializer_map(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    tensors, per_channel, keep_float = {}, False, []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.name.endswith("_QuantizeLinear") and "_requant_" not in node.name:
            scale = float(numpy_helper.to_array(inits[node.input[1]]))
            zero = int(numpy_helper.to_array(inits[node.input[2]])) if len(node.input) > 2 else 0
            tensors[node.name[: -len("_QuantizeLinear")]] = TensorQuant(
                scale, zero, "int8", ((ACTIVATION_QMIN - zero) * scale, (ACTIVATION_QMAX - zero) * scale))
        info = OP_INFO.get(node.op_type)
        if info is not None and info.weight_input is not None and info.weight_input < len(node.input):
            weight = producers.get(node.input[info.weight_input])
            if weight is None or weight.op_type != "DequantizeLinear":
                keep_float.append(node.name)
            elif numpy_helper.to_array(inits[weight.input[1]]).size > 1:
                per_channel = True
    method = next((p.value for p in qdq.metadata_props if p.key == "fwedge.quant_method"), "qdq")
    table = QuantTable(ir.sha256_file(found.path), method, {"from_qdq": str(qdq_path)}, {}, tensors)
    return QuantizeRequest(str(found.path), table=table, per_channel=per_channel, keep_float=tuple(keep_float),
                           activation_dtype="uint8" if uint8 else "int8", **settings)


def _check_same_layout(ptq_model: onnx.ModelProto, qdq: onnx.ModelProto) -> None:
    def pairs(model):
        return {node.name for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")}

    written, given = pairs(ptq_model), pairs(qdq)
    if written != given:
        extra, missing = sorted(written - given), sorted(given - written)
        raise ModelError(f"QDQ model: quantizing the float model it names with its scales gives other Q/DQ nodes "
                         f"(not in it: {extra[:3]}; only in it: {missing[:3]}), so it was not written by fwedge "
                         "quantize from that model; give the float model instead")


def _without_metadata(model: onnx.ModelProto, key: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [prop for prop in out.metadata_props if prop.key != key]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    return out


def fake_quant_outputs(ptq: QuantizeResult, float_model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The fake-quantized forward of `float_model` under `ptq`'s table and plan on a batch
    (eval mode): what the QDQ model written from `float_model` computes, up to float rounding."""
    return FakeQuantGraph(float_model, ptq.table, ptq.options, ptq.plan)(x)


__all__ = ["FakeQuantGraph", "QatResult", "fake_quant_outputs", "qat"]

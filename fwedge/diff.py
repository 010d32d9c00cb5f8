"""Bisection helper: the first tensor, in topological order, where a bundle diverges from its reference model."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from fwedge import ir
from fwedge.bundle import Bundle, load_bundle
from fwedge.data import Preprocess, open_dataset
from fwedge.errors import DataError
from fwedge.eval import dequantized_steps
from fwedge.reference import check_bundle_shapes

log = logging.getLogger(__name__)

_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class TensorDiff:
    """One reference tensor compared with the bundle's value of the same name.

    Attributes:
        name: ONNX tensor name.
        node, op: the reference node that produces it.
        shape: reference shape.
        max_abs: largest absolute difference.
        steps: max_abs in quantization steps of the tensor's Q/DQ pair in the reference (None
            when the tensor is not quantized there).
        sqnr_db: 10·log10(Σ ref² / Σ diff²) (inf when identical).
        diverged: beyond the tolerance (steps > max_steps, or max_abs > atol + rtol·max|ref|).
    """

    name: str
    node: str
    op: str
    shape: list[int]
    max_abs: float
    steps: float | None
    sqnr_db: float
    diverged: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DiffReport:
    """Per-tensor comparison of a bundle against a reference, first divergence named.

    Attributes:
        per_tensor: the target exposes intermediate tensors (False: only graph outputs compared).
        compared: tensors compared, in reference topological order.
        first_divergence: the first diverged tensor, or None.
        missing: reference tensors the bundle does not have under the same name (fused away or
            renamed by the target).
    """

    bundle: str
    reference: str
    target: str
    precision: str
    samples: int
    per_tensor: bool
    compared: list[TensorDiff] = field(default_factory=list)
    first_divergence: TensorDiff | None = None
    missing: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["first_divergence"] = self.first_divergence.to_dict() if self.first_divergence else None
        return data


def _quant_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Tensor -> scale of the QuantizeLinear that reads it (the step that matters for that tensor)."""
    inits = {init.name: init for init in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
            scales.setdefault(node.input[0], float(scale[0]))
    # A DequantizeLinear output carries the same step as its pair (the rule eval's per-output
    # steps use; a per-channel one, a weight's, has no single step).
    for name, step in dequantized_steps(model).items():
        scales.setdefault(name, step)
    return scales


def _quantizers(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Tensor -> (scale, zero point) of the per-tensor int8 QuantizeLinear that reads it."""
    inits = {init.name: init for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in inits:
            continue
        scale = onnx.numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
        zero = (onnx.numpy_helper.to_array(inits[node.input[2]]).reshape(-1)
                if len(node.input) > 2 and node.input[2] in inits else None)
        if scale.size == 1 and zero is not None and zero.dtype == np.int8:
            found.setdefault(node.input[0], (float(scale[0]), int(zero[0])))
    return found


def reference_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Values of the named tensors of an ONNX model in onnxruntime (each made a graph output)."""
    from fwedge.eval import ort_session

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {output.name for output in copy.graph.output}
    for name in names:
        if name not in known:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort_session(copy)
    inputs = {value.name for value in ir.graph_inputs(copy)}
    batch = len(next(iter(feeds.values())))
    fixed_one = all(ir.shape_of(v)[0] == 1 for v in ir.graph_inputs(copy))
    if fixed_one and batch > 1:
        rows = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items() if k in inputs}) for i in range(batch)]
        return {name: np.concatenate([row[k] for row in rows]) for k, name in enumerate(names)}
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})))


def _producers(model: onnx.ModelProto) -> tuple[dict[str, onnx.NodeProto], list[str]]:
    """Tensor -> the node that produces it, and those tensors in topological order (Q/DQ outputs left out)."""
    producers = {}
    order = []
    for node in model.graph.node:
        for output in node.output:
            if output and node.op_type not in _QDQ:
                producers[output] = node
                order.append(output)
    return producers, order


def _step_scales(model: onnx.ModelProto, precision: str) -> dict[str, float]:
    """Tensor -> the quantization step its differences are counted in."""
    scales = _quant_scales(model)
    if precision == "int8":
        # A float tensor between quantized ones (e.g. inside a decomposed hardswish) is judged
        # in the steps of its quantized inputs: differences of up to max_steps there propagate.
        for node in model.graph.node:
            inherited = [scales[name] for name in node.input if name in scales]
            for output in node.output:
                if output not in scales and inherited:
                    scales[output] = max(inherited)
    return scales


def _shared_names(model: onnx.ModelProto, order: list[str], candidate: dict) -> list[str]:
    """The reference tensors the bundle also has, in topological order, then any graph outputs not among them."""
    names = [name for name in order if name in candidate]
    for output in model.graph.output:
        if output.name in candidate and output.name not in names:
            names.append(output.name)
    return names


def _as_quantized(quantizers: dict[str, tuple[float, int]], name: str, value: np.ndarray) -> np.ndarray:
    """The value after the reference's Q/DQ round trip on this tensor (unchanged when it has none)."""
    if name not in quantizers:
        return value
    q_scale, q_zero = quantizers[name]
    q = np.clip(np.rint(value.astype(np.float32) / np.float32(q_scale)) + q_zero, -128, 127)
    return (q - q_zero) * q_scale


def _compare(name: str, node: onnx.NodeProto | None, ref: np.ndarray, got: np.ndarray, scale: float | None,
             max_steps: float, rtol: float, atol: float) -> TensorDiff:
    """One tensor's TensorDiff: in quantization steps when it has a scale, else against atol + rtol·max|ref|."""
    diff = np.abs(got - ref)
    max_abs = float(diff.max(initial=0.0))
    noise = float(np.sum(diff * diff))
    sqnr = float("inf") if noise == 0 else float(10 * np.log10(max(float(np.sum(ref * ref)), 1e-30) / noise))
    steps = max_abs / scale if scale else None
    if steps is not None:
        diverged = steps > max_steps * (1 + 1e-3)
    else:
        diverged = max_abs > atol + rtol * float(np.abs(ref).max(initial=0.0))
    return TensorDiff(name, node.name if node is not None else "", node.op_type if node is not None else "output",
                      list(ref.shape), max_abs, steps, sqnr, diverged)


def diff_bundle(
    bundle: Bundle | str | os.PathLike,
    reference: str | os.PathLike,
    data: str | os.PathLike,
    limit: int = 8,
    preprocess: Preprocess | None = None,
    max_steps: float = 1.0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    exact_int8: bool = False,
    input_shapes: dict[str, list[int]] | None = None,
) -> DiffReport:
    """Compare every tensor the bundle exposes with the reference model, in topological order.

    Targets with supports_intermediates (onnx, openvino, ncnn, tflite) expose internal tensors
    (`Target.intermediates`); other targets are compared on their graph outputs only, and the
    report says so.

    Args:
        bundle: a bundle (path or loaded).
        reference: the reference ONNX model (the QDQ model for an int8 bundle, the float model
            for fp32; a float reference for an int8 bundle shows the quantization error per layer).
        data: dataset spec; `limit` seeded samples are used.
        max_steps: a quantized tensor diverges beyond this many quantization steps.
        rtol, atol: a float tensor diverges when max|diff| > atol + rtol·max|ref|.
        exact_int8: run the bundle's runtime in its exact int8 mode (targets with the exact_int8
            capability: onnx, openvino): Q/DQ computed as defined, not by the integer kernels
            this CPU gets, which tells a wrong bundle from a runtime's kernels.
        input_shapes: fix dynamic inputs of the reference (at batch 1: it runs sample by sample);
            each must agree with the bundle's input past the batch.

    Returns:
        The DiffReport.

    Raises:
        ExportError: the bundle is invalid. DataError: the data or an input shape does not fit.
    """
    from fwedge.targets import get_target

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    target = get_target(bundle.target)
    target.require_exact(bundle, exact_int8)
    check_bundle_shapes(bundle, input_shapes)
    model = ir.load(reference)
    spec = preprocess or Preprocess.from_dict(bundle.preprocess)
    batch = next(open_dataset(data).batches(spec, batch_size=limit, limit=limit))
    if input_shapes:
        # batch 1, run sample by sample (reference_values): a model prepared at batch 1 may bake
        # that batch into a Reshape's shape constant (PP-OCR cls: [1, 200])
        model = ir.set_input_shapes(model, {name: [1, *dims[1:]] for name, dims in input_shapes.items()})
    first = ir.graph_inputs(model)[0]
    feeds = {bundle.inputs[0].name: np.ascontiguousarray(batch.x, dtype=ir.input_dtype(first))}
    producers, order = _producers(model)
    scales = _step_scales(model, bundle.precision)
    report = DiffReport(bundle=str(bundle.path), reference=str(reference), target=bundle.target,
                        precision=bundle.precision, samples=len(batch.x), per_tensor=target.supports_intermediates)
    if target.supports_intermediates:
        candidate = target.intermediates(bundle, feeds, order, exact_int8=exact_int8)
    else:
        candidate = target.run(bundle, feeds, exact_int8=exact_int8)
        report.note = (f"target {bundle.target!r} exposes no intermediate tensors: only graph outputs "
                       "are compared, so the divergence is located at the output, not bisected")
    names = _shared_names(model, order, candidate)
    report.missing = [name for name in order if name not in candidate]
    if not names:
        raise DataError(f"bundle '{bundle.path}': shares no tensor name with reference '{reference}'")
    expected = reference_values(model, feeds, names)
    # Some int8 targets (TFLite, C) hold a tensor that feeds a QuantizeLinear only as that
    # quantizer leaves it (saturated to int8), others (ONNX, OpenVINO, NCNN) expose the float value
    # before it. Compare both sides after the reference's Q/DQ round trip (what the next layer
    # sees), so values the QDQ model itself clips are not reported as a divergence.
    quantizers = _quantizers(model) if bundle.precision == "int8" else {}
    for name in names:
        ref = _as_quantized(quantizers, name, expected[name].astype(np.float64))
        got = _as_quantized(quantizers, name, np.asarray(candidate[name], dtype=np.float64))
        if got.size != ref.size:
            report.missing.append(name)
            continue
        entry = _compare(name, producers.get(name), ref, got.reshape(ref.shape), scales.get(name),
                         max_steps, rtol, atol)
        report.compared.append(entry)
        if entry.diverged and report.first_divergence is None:
            report.first_divergence = entry
    return report

"""Per-layer analysis: SQNR and cosine of every quantized tensor of a QDQ model against float."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field

import onnx

from fwedge import ir
from fwedge.data import Dataset, Preprocess, open_dataset
from fwedge.errors import ModelError
from fwedge.ops.registry import fuses_into, silu_mul

log = logging.getLogger(__name__)

DEFAULT_JUMP_DB = 6.0
# A layer whose output keeps this much SQNR is fine whatever it lost against its (nearly exact)
# inputs: the first convolution always "loses" tens of dB against the 8-bit image itself.
DEFAULT_FLOOR_DB = 30.0


@dataclass
class TensorError:
    """Error of one quantized tensor against the float model on the same inputs.

    Attributes:
        tensor: tensor name (as in the float model).
        node: the node producing it ("conv1+relu1" for a fused activation).
        op: its op type(s).
        order: position in topological order.
        sqnr_db: 10·log10(Σ float² / Σ (float − dequantized)²); inf when identical.
        cosine: mean per-sample cosine similarity.
        max_abs_error: largest absolute difference.
        upstream_sqnr_db: the worst SQNR among the quantized tensors this one is computed from.
        jump_db: upstream_sqnr_db − sqnr_db: how much error this layer adds (None for inputs).
    """

    tensor: str
    node: str
    op: str
    order: int
    sqnr_db: float
    cosine: float
    max_abs_error: float
    upstream_sqnr_db: float | None = None
    jump_db: float | None = None


@dataclass
class LayerAnalysis:
    """`fwedge analyze` output: tensors worst first, and the first layer where error jumps."""

    tensors: list[TensorError]
    samples: int
    jump_threshold_db: float
    first_jump: TensorError | None = None
    largest_jump: TensorError | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def clean(entry):
            data = asdict(entry)
            for key, value in data.items():
                if isinstance(value, float) and not math.isfinite(value):
                    data[key] = None if math.isnan(value) else ("inf" if value > 0 else "-inf")
            return data

        return {
            "samples": self.samples,
            "jump_threshold_db": self.jump_threshold_db,
            "first_jump": clean(self.first_jump) if self.first_jump else None,
            "largest_jump": clean(self.largest_jump) if self.largest_jump else None,
            "tensors": [clean(entry) for entry in self.tensors],
            "notes": self.notes,
        }


def quantized_tensors(qdq_model: onnx.ModelProto) -> dict[str, str]:
    """Float tensor name -> the QDQ model tensor carrying its dequantized value.

    Activation pairs only: weights, biases, constants (DequantizeLinear without a
    QuantizeLinear) and Concat requantization pairs are skipped.
    """
    dq_by_input = {node.input[0]: node for node in qdq_model.graph.node if node.op_type == "DequantizeLinear"}
    result = {}
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = node.input[0]
        if source.endswith("_dequantized"):
            continue  # a requantizing pair on a Concat edge
        dq = dq_by_input.get(node.output[0])
        if dq is None:
            continue
        tensor = source[: -len("_QuantizeLinear_Input")] if source.endswith("_QuantizeLinear_Input") else source
        result[tensor] = dq.output[0]
    return result


def analyze(
    float_model: str | os.PathLike | onnx.ModelProto,
    qdq_model: str | os.PathLike | onnx.ModelProto,
    data: str | os.PathLike | Dataset,
    num_samples: int | None = 256,
    seed: int = 0,
    preprocess: Preprocess | None = None,
    input_shapes: dict | None = None,
    jump_db: float = DEFAULT_JUMP_DB,
    batch_size: int = 64,
    floor_db: float = DEFAULT_FLOOR_DB,
) -> LayerAnalysis:
    """Compare every quantized tensor of a QDQ model with the same tensor of its float model.

    The float model is prepared the way `quantize` prepares it (BN folded), so tensor names
    match. The "first jump" is the first tensor, in topological order, whose SQNR is at least
    `jump_db` below the worst SQNR of the quantized tensors it is computed from and below
    `floor_db` in absolute terms: the first layer that adds much more error than its inputs
    already carry, enough to matter.

    Raises:
        ModelError: the QDQ model holds no activation Q/DQ pairs, or none matches the float model.
        DataError: bad data.
    """
    from fwedge.calibration.collect import with_outputs
    from fwedge.eval import FidelityAccumulator, OrtRunner, resolve_preprocess
    from fwedge.quantization import batch_limit, load_prepared

    prepared, _ = load_prepared(float_model, input_shapes)
    batch_size = batch_limit(prepared, batch_size)
    qdq = qdq_model if isinstance(qdq_model, onnx.ModelProto) else ir.load(qdq_model)
    pairs = quantized_tensors(qdq)
    if not pairs:
        raise ModelError("QDQ model: no activation QuantizeLinear/DequantizeLinear pairs found")
    producers = {name: node for node in prepared.graph.node for name in node.output}
    inputs = {value.name for value in ir.graph_inputs(prepared)}
    order = {}
    for value in ir.graph_inputs(prepared):
        order[value.name] = -1
    for index, node in enumerate(prepared.graph.node):
        for name in node.output:
            order[name] = index
    tensors = [name for name in pairs if name in order]
    missing = sorted(set(pairs) - set(tensors))
    if not tensors:
        raise ModelError("QDQ model: none of its quantized tensors exists in the float model")
    tensors.sort(key=lambda name: order[name])
    float_runner = OrtRunner(with_outputs(prepared, tensors))
    qdq_runner = OrtRunner(with_outputs(qdq, [pairs[name] for name in tensors]))
    spec = resolve_preprocess(prepared, preprocess)
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    if num_samples is not None:
        num_samples = min(num_samples, dataset.num_samples)  # analysis uses what there is
    accumulators = {name: FidelityAccumulator() for name in tensors}
    samples = 0
    from fwedge.data import check_batch_shape

    for batch in dataset.batches(spec, batch_size, num_samples, seed):
        check_batch_shape(batch.x, float_runner.input_shape, str(dataset.path), float_runner.input_name)
        feeds = {float_runner.input_name: batch.x}
        reference = float_runner.session.run(tensors, feeds)
        candidate = qdq_runner.session.run([pairs[name] for name in tensors], feeds)
        for name, ref, cand in zip(tensors, reference, candidate):
            accumulators[name].update(ref, cand)
        samples += len(batch.x)
    fused = _fused_producers(prepared)
    results: dict[str, TensorError] = {}
    for name in tensors:
        fidelity = accumulators[name].result()
        node = producers.get(name)
        label, op = ("(input)", "input") if node is None else fused.get(name, (node.name, node.op_type))
        results[name] = TensorError(name, label, op, order[name], fidelity.sqnr_db, fidelity.cosine,
                                    fidelity.max_abs_error)
    for name in tensors:
        upstream = _upstream_quantized(name, producers, set(tensors), inputs)
        if upstream:
            worst = min(results[u].sqnr_db for u in upstream)
            results[name].upstream_sqnr_db = worst
            if math.isfinite(worst) or math.isfinite(results[name].sqnr_db):
                results[name].jump_db = (worst - results[name].sqnr_db) if math.isfinite(worst) else float("inf")
    ordered = [results[name] for name in tensors]
    first = next((entry for entry in ordered if entry.jump_db is not None and entry.jump_db >= jump_db
                  and entry.sqnr_db < floor_db), None)
    largest = max((entry for entry in ordered if entry.jump_db is not None), key=lambda e: e.jump_db, default=None)
    worst_first = sorted(ordered, key=lambda entry: (entry.sqnr_db, entry.cosine))
    notes = [f"{len(missing)} quantized tensor(s) not in the float model: {missing[:5]}"] if missing else []
    return LayerAnalysis(worst_first, samples, jump_db, first, largest, notes)


def _fused_producers(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """clamp output -> ("producer+clamp", "Op+Clamp") for clamps fused into their producer, and
    a SiLU's Mul output -> ("sigmoid+mul", "Sigmoid+Mul") (the op cards' rules,
    fwedge.ops.base.fuses_into and silu_mul, which quantization and lowering follow)."""
    producers = {name: node for node in model.graph.node for name in node.output}
    consumers = ir.consumer_map(model)
    outputs = {value.name for value in model.graph.output}
    result = {}
    for node in model.graph.node:
        producer = producers.get(node.input[0]) if node.input else None
        if producer is not None and fuses_into(producer, node):
            result[node.output[0]] = (f"{producer.name}+{node.name}", f"{producer.op_type}+{node.op_type}")
        mul = silu_mul(node, consumers.get(node.output[0], [])) if node.output and node.output[0] not in outputs else None
        if mul is not None:
            result[mul.output[0]] = (f"{node.name}+{mul.name}", "Sigmoid+Mul")
    return result


def _upstream_quantized(name: str, producers: dict, quantized: set[str], inputs: set[str]) -> set[str]:
    """The nearest quantized tensors that `name` is computed from."""
    found: set[str] = set()
    node = producers.get(name)
    if node is None:
        return found
    stack = [tensor for tensor in node.input if tensor]
    seen = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in quantized:
            found.add(tensor)
            continue
        producer = producers.get(tensor)
        if producer is not None:
            stack.extend(t for t in producer.input if t)
    return found

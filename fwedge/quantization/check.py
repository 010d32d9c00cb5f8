"""After quantizing with calibration data: how far the int8 model's output is from the float one.

Run on a seeded subset of the calibration data (CHECK_SAMPLES at most), in onnxruntime with
exact QDQ semantics (fwedge.eval.ort_session), so the figure does not depend on the CPU. An
output SQNR below LOW_SQNR_DB is reported as a warning that names `fwedge analyze`, which finds
the layers where the error appears.
"""
from __future__ import annotations

import os

import onnx

from fwedge import ir
from fwedge.data import Dataset, Preprocess, open_dataset
from fwedge.eval import BatchedOrtRunner, Fidelity, FidelityAccumulator, resolve_preprocess
from fwedge.tasks import AUTO, CLASSIFICATION, task_of

CHECK_SAMPLES = 64
# Below this the int8 output departs visibly from float: the shipped examples keep 25-35 dB; a
# depthwise-heavy net whose int8 agrees with float on a third of the images is under 10 dB
# (tests/ill_conditioned.py's mobilenet_v2_tiny: 1.2 dB, 3% agreement; 28 dB with --equalize).
LOW_SQNR_DB = 15.0


def output_check(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, data: str | os.PathLike | Dataset,
                 preprocess: Preprocess | None = None, seed: int = 0, samples: int = CHECK_SAMPLES) -> Fidelity:
    """Fidelity of `qdq_model`'s first output against `float_model`'s on `samples` seeded samples."""
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    spec = resolve_preprocess(float_model, preprocess)
    reference, candidate = BatchedOrtRunner(float_model), BatchedOrtRunner(qdq_model)
    accumulator = FidelityAccumulator()
    # Batches of 8: a plain run holds far less than calibration, but a large model's activations
    # for 64 samples at once would still take gigabytes.
    for batch in dataset.batches(spec, batch_size=8, limit=min(samples, dataset.num_samples), seed=seed):
        accumulator.update(reference(batch.x), candidate(batch.x))
    return accumulator.result()


def output_task(model: onnx.ModelProto) -> str:
    """fwedge.tasks' auto rule on the model's first output as declared (a dynamic dimension
    counts as longer than 1): whether a top-1 agreement of it means anything."""
    shape = ir.shape_of(model.graph.output[0]) if model.graph.output else []
    return task_of(AUTO, [1, *[d if isinstance(d, int) else 2 for d in shape[1:]]])


def summary_for(check: Fidelity, task: str) -> str:
    """'output SQNR 32.8 dB, top-1 agreement 98.4%' (no top-1 for an output that is no classifier's)."""
    text = f"output SQNR {check.sqnr_db:.1f} dB"
    return text + (f", top-1 agreement {100 * check.top1_agreement:.1f}%" if task == CLASSIFICATION else "")


def warning_for(check: Fidelity, task: str = CLASSIFICATION) -> str | None:
    """A one-line warning when the check shows a poor int8 model, else None."""
    if check.sqnr_db >= LOW_SQNR_DB:
        return None
    agreement = f"(top-1 agreement {100 * check.top1_agreement:.1f}%) " if task == CLASSIFICATION else ""
    return (f"int8 output SQNR {check.sqnr_db:.1f} dB against float on {check.samples} calibration samples "
            f"{agreement}is below {LOW_SQNR_DB:g} dB: `fwedge analyze "
            "FLOAT QDQ --data DATA` names the layers where the error appears; --equalize (channel ranges "
            "that differ by orders of magnitude, as in depthwise layers), another --method (percentile, mse), "
            "--max-accuracy-drop or --keep-float may recover it")

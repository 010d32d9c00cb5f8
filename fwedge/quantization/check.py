"""After quantizing with calibration data: how far the int8 model's output is from the float one.

Run on a seeded subset of the calibration data (CHECK_SAMPLES at most), in onnxruntime with
exact QDQ semantics (fwedge.eval.ort_session), so the figure does not depend on the CPU. An
output SQNR below LOW_SQNR_DB is reported as a warning that names `fwedge analyze`, which finds
the layers where the error appears.
"""
from __future__ import annotations

import os

import onnx

from fwedge.data import Dataset, Preprocess, open_dataset
from fwedge.eval import BatchedOrtRunner, Fidelity, FidelityAccumulator, resolve_preprocess

CHECK_SAMPLES = 64
# Below this the int8 output departs visibly from float: the shipped examples keep 25-35 dB; a
# depthwise-heavy net whose int8 agrees with float on a third of the images is under 10 dB.
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


def warning_for(check: Fidelity) -> str | None:
    """A one-line warning when the check shows a poor int8 model, else None."""
    if check.sqnr_db >= LOW_SQNR_DB:
        return None
    return (f"int8 output SQNR {check.sqnr_db:.1f} dB against float on {check.samples} calibration samples "
            f"(top-1 agreement {100 * check.top1_agreement:.1f}%) is below {LOW_SQNR_DB:g} dB: `fwedge analyze "
            "FLOAT QDQ --data DATA` names the layers where the error appears; another --method (percentile, "
            "mse), --max-accuracy-drop or --keep-float may recover it")

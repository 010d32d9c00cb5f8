"""What a model's scored output is, which decides what eval, run, the farm and the gate read.

- classification: one score per class; accuracy and top-1 agreement mean something.
- signal: boxes, maps, sequences, embeddings, regressed values; no accuracy, and fidelity is
  SQNR, cosine and error (a top-1 argmax of a box tensor means nothing).
- detection: a [N, 4 + classes, anchors] detector output (YOLOv5u/v8/v11): a signal, plus
  mAP@0.5 of its boxes against the reference's own boxes (fwedge.detection).
- auto: classification when each sample's output has exactly one axis longer than 1
  (N x K, N x K x 1 x 1), else signal.
"""
from __future__ import annotations

AUTO, CLASSIFICATION, SIGNAL, DETECTION = "auto", "classification", "signal", "detection"
TASKS = (CLASSIFICATION, SIGNAL, DETECTION)
CHOICES = (AUTO, *TASKS)


def task_of(requested: str, shape) -> str:
    """`requested`, or for "auto" the task an output of `shape` (batch first) says."""
    if requested != AUTO:
        return requested
    return CLASSIFICATION if sum(1 for size in tuple(shape)[1:] if size > 1) == 1 else SIGNAL

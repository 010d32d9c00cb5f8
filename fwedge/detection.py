"""Detector fidelity: mAP@0.5 of a candidate's boxes against the float model's own boxes.

A detector's output tensor is a poor thing to compare directly: SQNR is dominated by the box
coordinates (hundreds of pixels) and says little about the class scores, and a top-1 argmax of
it means nothing. What a user of a detector sees is the boxes left after score filtering and
NMS, so that is what is compared: the float model's detections on the same inputs are the
ground truth, and the candidate's are scored against them with the VOC all-point average
precision at IoU 0.5, averaged over the classes the reference found.

The layout read is the one YOLOv5u/v8/v11 exports write: [N, 4 + classes, anchors], rows
cx, cy, w, h, then one sigmoid score per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fwedge.errors import ModelError

SCORE_THRESHOLD = 0.25
IOU_NMS = 0.45
IOU_MATCH = 0.5
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class Detections:
    """One image's detections after NMS: boxes [K, 4] as x1, y1, x2, y2, scores [K], classes [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with each of `boxes`."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy NMS: indices kept, highest score first (stable for equal scores)."""
    order = list(np.argsort(-scores, kind="stable"))
    kept = []
    while order and len(kept) < MAX_DETECTIONS:
        best = order.pop(0)
        kept.append(best)
        if order:
            rest = np.array(order)
            order = list(rest[_iou(boxes[best], boxes[rest]) <= iou])
    return kept


def decode(output: np.ndarray, score_threshold: float = SCORE_THRESHOLD, iou: float = IOU_NMS,
           name: str = "output") -> list[Detections]:
    """Per-image detections of a [N, 4 + classes, anchors] output: the best class of each
    anchor, scores above `score_threshold`, class-wise NMS at `iou`.

    Raises:
        ModelError: the output is not three-dimensional with at least 5 rows.
    """
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[1] < 5:
        raise ModelError(f"output '{name}': expected a detector layout [N, 4 + classes, anchors], "
                             f"got shape {list(output.shape)}")
    found = []
    for image in output:
        cx, cy, w, h = image[:4]
        scores = image[4:]
        classes = scores.argmax(axis=0)
        best = scores[classes, np.arange(scores.shape[1])]
        keep = np.isfinite(best) & (best > score_threshold)
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)[keep]
        best, classes = best[keep], classes[keep]
        chosen: list[int] = []
        for cls in np.unique(classes):
            members = np.flatnonzero(classes == cls)
            chosen += [int(members[i]) for i in _nms(boxes[members], best[members], iou)]
        chosen.sort(key=lambda i: -best[i])
        chosen = chosen[:MAX_DETECTIONS]
        found.append(Detections(boxes[chosen], best[chosen], classes[chosen]))
    return found


def _average_precision(matched: np.ndarray, scores: np.ndarray, truths: int) -> float:
    """VOC all-point AP from per-detection match flags."""
    order = np.argsort(-scores, kind="stable")
    hits = matched[order].astype(np.float64)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall = tp / truths
    precision = tp / np.maximum(tp + fp, 1e-12)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def map50(reference: list[Detections], candidate: list[Detections], iou: float = IOU_MATCH) -> float | None:
    """mAP at IoU `iou` of `candidate` against `reference` as ground truth, over the classes the
    reference found; None when the reference found nothing (no evidence either way)."""
    if len(reference) != len(candidate):
        raise ModelError(f"{len(candidate)} candidate images for {len(reference)} reference images")
    classes = sorted({int(c) for det in reference for c in det.classes})
    if not classes:
        return None
    aps = []
    for cls in classes:
        flags, scores, truths = [], [], 0
        for ref, cand in zip(reference, candidate):
            truth = ref.boxes[ref.classes == cls]
            truths += len(truth)
            mine = np.flatnonzero(cand.classes == cls)
            used = np.zeros(len(truth), dtype=bool)
            for i in mine[np.argsort(-cand.scores[mine], kind="stable")]:
                hit = False
                if len(truth):
                    overlaps = np.where(used, -1.0, _iou(cand.boxes[i], truth))
                    best = int(overlaps.argmax())
                    if overlaps[best] >= iou:
                        used[best] = hit = True
                flags.append(hit)
                scores.append(cand.scores[i])
        aps.append(_average_precision(np.array(flags, dtype=bool), np.array(scores), truths) if flags else 0.0)
    return float(np.mean(aps))

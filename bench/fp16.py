#!/usr/bin/env python
"""fp16 against fp32 bundles on every target that takes --fp16: output error, top-1 agreement, weight bytes.

    .venv/bin/python bench/fp16.py [--images 10000] [--ppocr-images 400] [--models cnn_small mobilenet_v2_tiny ppocr_cls ppocr_det]

For each model, `fwedge export` writes an fp32 and an fp16 bundle for onnx, openvino, tflite and
ncnn (the C targets refuse --fp16). Each pair runs in its own runtime on the same inputs: the
Fashion-MNIST test images (the first --images, a seeded subset when fewer than 10000) for the
example models, --ppocr-images rendered text lines (tests/ppocr_data.py, seed 7) for PP-OCR's
direction classifier (rapidocr-onnxruntime's ch_ppocr_mobile_v2.0_cls, input [1,3,48,192]),
and --ppocr-images / 10 rendered pages (tests/ppocr_inputs.py, seed 3) for PP-OCRv4 det at
128x128.
Printed per target:
  * rel err: the largest |fp16 - fp32| over all outputs, relative to the largest |fp32| output
    (tests/tolerances.py FP16_MODEL_RTOL bounds it in the test command);
  * per-sample: the same ratio per input, its median and largest;
  * top-1 agreement of the fp16 bundle with the fp32 bundle (PP-OCR det: the intersection over
    union of their text masks, p > 0.3);
  * weights_bytes of both bundles from their manifests, and their ratio; file bytes likewise.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from targets import EXAMPLES, PPOCR, rapidocr_model  # noqa: E402

TARGETS = ("onnx", "openvino", "tflite", "ncnn")
PPOCR_DET = "ppocr_det"
DB_THRESHOLD = 0.3  # rapidocr's binarisation threshold of PP-OCR det's probability map


def _model(name: str, work: Path, images: int, ppocr_images: int):
    """(float model path, export keyword arguments, inputs [N, ...]) or None when the model is missing."""
    from fwedge.data import Preprocess, open_dataset

    if name == PPOCR:
        from ppocr_data import PPOCR_CLS_PREPROCESS, make_text_lines

        path = rapidocr_model()
        if path is None:
            return None
        preprocess = Preprocess.from_dict(PPOCR_CLS_PREPROCESS)
        data = make_text_lines(work / "ppocr_eval", ppocr_images, seed=7)
        x = next(open_dataset(data).batches(preprocess, ppocr_images, limit=ppocr_images)).x
        return path, {"input_shapes": {"x": [1, 3, 48, 192]}, "preprocess": preprocess}, x
    if name == PPOCR_DET:
        from ppocr_inputs import DET_SIZE, ppocr_det_inputs

        path = rapidocr_model("ch_PP-OCRv4_det_infer.onnx")
        if path is None:
            return None
        return path, {"input_shapes": {"x": [1, 3, DET_SIZE, DET_SIZE]}}, ppocr_det_inputs(ppocr_images // 10, seed=3)
    path = EXAMPLES / f"{name}.onnx"
    if not path.is_file():
        print(f"{name}: {path} not found; skipped")
        return None
    limit = None if images >= 10000 else images
    x = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"),
                                                         limit or 10000, limit=limit, seed=0)).x
    return path, {}, x


def _run(target: str, bundle, x: np.ndarray, chunk: int = 500) -> np.ndarray:
    from fwedge.targets import get_target

    runner = get_target(target)
    name = bundle.inputs[0].name
    output = bundle.outputs[0].name
    return np.concatenate([runner.run(bundle, {name: x[i : i + chunk]})[output] for i in range(0, len(x), chunk)])


def _agreement(name: str, y16: np.ndarray, y32: np.ndarray) -> float:
    """Top-1 agreement; for PP-OCR det the intersection over union of the two text masks (p > 0.3)."""
    if name != PPOCR_DET:
        return float((y16.argmax(1) == y32.argmax(1)).mean())
    a, b = y16 > DB_THRESHOLD, y32 > DB_THRESHOLD
    return float((a & b).sum() / max((a | b).sum(), 1))


def compare(name: str, path: Path, kwargs: dict, x: np.ndarray, work: Path) -> list[dict]:
    """One row per target: fp16 against fp32 on the same inputs."""
    from fwedge.export import export_bundle
    from fwedge.targets import ExportOptions

    rows = []
    for target in TARGETS:
        bundles = {precision: export_bundle(path, target, work / f"{name}-{target}-{precision}",
                                            ExportOptions(precision=precision), **kwargs)
                   for precision in ("fp32", "fp16")}
        y32 = _run(target, bundles["fp32"], x).reshape(len(x), -1)
        y16 = _run(target, bundles["fp16"], x).reshape(len(x), -1)
        diff = np.abs(y16 - y32)
        per_sample = diff.max(axis=1) / np.maximum(np.abs(y32).max(axis=1), 1e-30)
        rows.append({
            "model": name, "target": target, "inputs": len(x),
            "rel_err": float(diff.max() / np.abs(y32).max()),
            "per_sample_median": float(np.median(per_sample)), "per_sample_max": float(per_sample.max()),
            "top1_agreement": _agreement(name, y16, y32),
            "weights_fp32": bundles["fp32"].sizes["weights_bytes"], "weights_fp16": bundles["fp16"].sizes["weights_bytes"],
            "file_fp32": bundles["fp32"].sizes["file_bytes"], "file_fp16": bundles["fp16"].sizes["file_bytes"],
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--ppocr-images", type=int, default=400)
    parser.add_argument("--models", nargs="+", default=["cnn_small", "mobilenet_v2_tiny", PPOCR, PPOCR_DET])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fwedge-bench-fp16")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'model':<18} {'target':<9} {'inputs':>6} {'rel err':>9} {'median':>9} {'max/in':>9} {'top-1':>8} "
          f"{'weights fp32 -> fp16':>24} {'files fp32 -> fp16':>24}")
    for name in args.models:
        found = _model(name, args.work, args.images, args.ppocr_images)
        if found is None:
            continue
        for row in compare(name, *found, args.work):
            rows.append(row)
            print(f"{row['model']:<18} {row['target']:<9} {row['inputs']:>6} {row['rel_err']:>9.2e} "
                  f"{row['per_sample_median']:>9.2e} {row['per_sample_max']:>9.2e} {100 * row['top1_agreement']:>7.2f}% "
                  f"{row['weights_fp32']:>9,} -> {row['weights_fp16']:>9,} ({row['weights_fp16'] / row['weights_fp32']:.3f}) "
                  f"{row['file_fp32']:>9,} -> {row['file_fp16']:>9,} ({row['file_fp16'] / row['file_fp32']:.3f})",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

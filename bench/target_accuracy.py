#!/usr/bin/env python
"""Accuracy and fidelity of every target bundle: Fashion-MNIST example models and the PP-OCR direction classifier.

    .venv/bin/python bench/target_accuracy.py [--images 10000] [--ppocr-images 400] [--models cnn_small mobilenet_v2_tiny ppocr_cls]

Bundles are the ones bench/targets.py exports (float model -> fp32 bundles, fwedge's QDQ model ->
int8 bundles, every available target). Each bundle runs in its own runtime on the host through
`fwedge run`'s library call (fwedge.runner.evaluate_bundle). Printed per bundle:
  * Fashion-MNIST: top-1 accuracy on the first --images test images (seeded subset when fewer
    than 10000), the gap to the int8 ONNX model in onnxruntime (int8 bundles) or to the float
    model (fp32 bundles) in percentage points, and fidelity (top-1 agreement, SQNR) to the model
    the bundle was exported from;
  * PP-OCR cls (input fixed to [1,3,48,192]): accuracy on --ppocr-images rendered text lines
    (upright / rotated 180°, tests/ppocr_data.py, a different seed than calibration) and fidelity
    of each int8 bundle to the float model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import EXAMPLES, PPOCR, export_all, set_examples, sources  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--ppocr-images", type=int, default=400)
    parser.add_argument("--models", nargs="+", default=["cnn_small", "mobilenet_v2_tiny", PPOCR])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fwedge-bench-targets")
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="folder of the Fashion-MNIST example models")
    args = parser.parse_args()
    set_examples(args.examples)
    args.work.mkdir(parents=True, exist_ok=True)
    from fwedge.data import Preprocess
    from fwedge.runner import evaluate_bundle

    for name in args.models:
        found = sources(name, args.work)
        if found is None:
            continue
        float_path, qdq, extra, _ = found
        bundles, failures = export_all(name, float_path, qdq, extra, args.work)
        if name == PPOCR:
            from ppocr_data import make_text_lines

            data = make_text_lines(args.work / "ppocr_eval", args.ppocr_images, seed=7)
            limit = None
        else:
            data, limit = "fashion-mnist:test", (None if args.images >= 10000 else args.images)
        preprocess = Preprocess.from_dict(json.loads(extra["preprocess"])) if "preprocess" in extra else None
        rows = []
        for label, target, precision, bundle in bundles:
            source = qdq if precision == "int8" else float_path
            result = evaluate_bundle(bundle.path, data, reference=float_path if name == PPOCR else source,
                                     preprocess=preprocess, limit=limit, batch_size=256)
            rows.append((label, precision, result))
        reference = {precision: next((r for l, p, r in rows if l == f"onnx {precision}"), None) for precision in ("fp32", "int8")}
        print(f"== {name}: {rows[0][2]['samples']} samples of {data}")
        against = "float" if name == PPOCR else "source model"
        print(f"{'bundle':<16} {'top-1 %':>8} {'Δ pp vs ORT':>12} {'agree % vs ' + against:>22} {'SQNR dB':>8}")
        for label, precision, result in rows:
            top1 = 100 * result["accuracy"].top1
            base = reference[precision]
            delta = top1 - 100 * base["accuracy"].top1 if base else float("nan")
            fidelity = result["fidelity"]
            print(f"{label:<16} {top1:>8.2f} {delta:>+12.2f} {100 * fidelity.top1_agreement:>22.2f} {fidelity.sqnr_db:>8.1f}")
        for failure in failures:
            print(f"  not evaluated: {failure}")
        print("  (Δ pp: int8 bundles against the int8 ONNX model in onnxruntime, fp32 bundles against ORT fp32)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

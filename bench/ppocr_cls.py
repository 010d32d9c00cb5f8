#!/usr/bin/env python
"""PP-OCR direction classifier (rapidocr's ch_ppocr_mobile_v2.0_cls_infer.onnx) through fwedge int8.

    .venv/bin/python bench/ppocr_cls.py [--calib 300] [--eval 400] [--methods kl percentile minmax mse]

Inputs are real images: text lines rendered with Pillow (DejaVu/Liberation fonts, random
words, colours, noise) and wide crops of scikit-image's sample images, each rotated by 180°
with probability 1/2 (the classifier's task), preprocessed as PP-OCR does (height 48, width
<= 192 right-padded, (x/255 - 0.5)/0.5). Calibration and evaluation sets use different seeds.
The model's input x [-1,3,?,?] is fixed to [1,3,48,192].

Reported per method: top-1 agreement with the float model, SQNR of the output probabilities
and of the pre-softmax logits (tensor linear_1.tmp_1), and top-1 accuracy of float and int8
against the rotation labels.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LOGITS = "linear_1.tmp_1"


def main() -> int:
    from fwedge.calibration.collect import with_outputs
    from fwedge.eval import FidelityAccumulator, ort_session
    from fwedge.layer_analysis import quantized_tensors
    from fwedge.quantization import quantize
    from tests.ppocr_inputs import ppocr_cls_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=300)
    parser.add_argument("--eval", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=["kl", "percentile", "minmax", "mse"])
    args = parser.parse_args()
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("needs rapidocr-onnxruntime")
    model = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    calibration, _ = ppocr_cls_inputs(args.calib, seed=1)
    evaluation, labels = ppocr_cls_inputs(args.eval, seed=2)
    print(f"{model.name}: {args.calib} calibration / {args.eval} evaluation inputs "
          f"({int(labels.sum())} rotated 180)")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "calib.npy", calibration)
        for method in args.methods:
            start = time.perf_counter()
            result = quantize(model, Path(tmp) / "calib.npy", method, args.calib,
                              input_shapes={"x": [1, 3, 48, 192]})
            seconds = time.perf_counter() - start
            pairs = quantized_tensors(result.model)
            reference = ort_session(with_outputs(result.float_model, [LOGITS]))
            candidate = ort_session(with_outputs(result.model, [pairs[LOGITS]]))
            probabilities, logits = FidelityAccumulator(), FidelityAccumulator()
            correct_float = correct_int8 = 0
            for x, y in zip(evaluation, labels):
                ref = reference.run(None, {"x": x[None]})
                got = candidate.run(None, {"x": x[None]})
                probabilities.update(ref[0], got[0])
                logits.update(ref[1], got[1])
                correct_float += int(ref[0].argmax() == y)
                correct_int8 += int(got[0].argmax() == y)
            p, l = probabilities.result(), logits.result()
            print(f"  {method:10s} agreement {100 * p.top1_agreement:6.2f}%  SQNR probs {p.sqnr_db:6.2f} dB  "
                  f"SQNR logits {l.sqnr_db:6.2f} dB  cosine logits {l.cosine:.4f}  accuracy float "
                  f"{100 * correct_float / len(labels):.2f}% int8 {100 * correct_int8 / len(labels):.2f}%  "
                  f"({len(result.plan.quantized_nodes)} int8 nodes, {seconds:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

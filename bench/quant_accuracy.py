#!/usr/bin/env python
"""Fashion-MNIST int8 accuracy of the example models for every calibration method.

    .venv/bin/python bench/quant_accuracy.py [--model M ...] [--num-samples 512] [--eval-samples 10000]

Calibration: `--num-samples` images of fashion-mnist:train (seeded subset, seed 0). Evaluation:
the first `--eval-samples` of the 10,000 test images (all by default), float model vs the QDQ
model of each method, in onnxruntime. Prints the drop in percentage points per method and
whether the best method is within tests/tolerances.INT8_VS_FLOAT_ACCURACY_PP.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ["kl", "percentile", "minmax", "mse"]


def main() -> int:
    from fwedge.data import open_dataset
    from fwedge.eval import OrtRunner, accuracy, resolve_preprocess
    from fwedge.quantization import quantize
    from tests.tolerances import INT8_VS_FLOAT_ACCURACY_PP

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    models = args.model or [str(ROOT / "examples/fashion_mnist/cnn_small.onnx"),
                            str(ROOT / "examples/fashion_mnist/mobilenet_v2_tiny.onnx")]
    test = open_dataset("fashion-mnist:test")
    limit = None if args.eval_samples >= test.num_samples else args.eval_samples
    report = []
    for model in models:
        float_runner = OrtRunner(model)
        spec = resolve_preprocess(float_runner.model)
        base = accuracy(float_runner, test, spec, 500, limit).top1
        print(f"{Path(model).name}: float top-1 {100 * base:.2f}% on {limit or test.num_samples} test images", flush=True)
        entry = {"model": model, "float": base, "methods": {}}
        for method in args.methods:
            start = time.perf_counter()
            result = quantize(model, "fashion-mnist:train", method, args.num_samples, symmetric=args.symmetric)
            seconds = time.perf_counter() - start
            top1 = accuracy(OrtRunner(result.model), test, spec, 500, limit).top1
            entry["methods"][method] = {"top1": top1, "drop_pp": 100 * (base - top1), "quantize_seconds": seconds}
            print(f"  int8 {method:10s} top-1 {100 * top1:.2f}%  drop {100 * (base - top1):+.2f} pp  "
                  f"(quantize {seconds:.1f}s)", flush=True)
        best = min(entry["methods"].items(), key=lambda item: item[1]["drop_pp"])
        ok = best[1]["drop_pp"] <= INT8_VS_FLOAT_ACCURACY_PP
        print(f"  best: {best[0]} drop {best[1]['drop_pp']:.2f} pp "
              f"({'within' if ok else 'OVER'} the {INT8_VS_FLOAT_ACCURACY_PP} pp budget)", flush=True)
        report.append(entry)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

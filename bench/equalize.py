#!/usr/bin/env python
"""Cross-layer equalization (quantize --equalize) and bias correction on the Fashion-MNIST examples.

    .venv/bin/python bench/equalize.py [--num-samples 512] [--eval-samples 10000] [--per-channel] [--ill-conditioned] [--json F]

For cnn_small and mobilenet_v2_tiny, KL calibration on `--num-samples` training images (seed 0),
per-tensor weights (per-channel with --per-channel): int8 top-1, top-1 agreement with the float
model and output SQNR (all logits of the evaluation images) without and with --equalize, with
--bias-correction, and with both, on the first `--eval-samples` of the 10,000 test images, in
onnxruntime's exact QDQ run. mobilenet_v2_tiny's layers are joined by ReLU6 (Clip 0..6), which
equalization leaves alone, so it has extra rows that replace the ReLU6 inside each pair by Relu
(--relu6-as-relu; this changes the float model, whose own top-1 is printed): that replacement
alone without scaling (a control), then equalized, then equalized with bias correction. SQNR
and agreement are always against the original float model.

--ill-conditioned runs tests/ill_conditioned.py's mobilenet_v2_tiny instead: its ReLU6 -> Relu
float variant with each depthwise Conv's output channels scaled by 10^U(-2, 2) and the next
Conv's inputs by the inverse (the float function unchanged), where per-tensor int8 collapses as
EfficientNet-Lite0's does; the rows are the four above, against that float model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["cnn_small", "mobilenet_v2_tiny"]
# name -> (float model first turned ReLU6 -> Relu without scaling: the control, quantize settings)
VARIANTS = {
    "plain": (False, {}),
    "bias-correction": (False, {"bias_correction": True}),
    "equalize": (False, {"equalize": True}),
    "equalize + bias-correction": (False, {"equalize": True, "bias_correction": True}),
}
RELU6_VARIANTS = {
    "ReLU6 -> Relu (no scaling)": (True, {}),
    "--equalize --relu6-as-relu": (False, {"equalize": True, "relu6_as_relu": True}),
    "--equalize --relu6-as-relu --bias-correction": (False, {"equalize": True, "relu6_as_relu": True,
                                                             "bias_correction": True}),
}


def _logits(model, x: np.ndarray) -> np.ndarray:
    from fwedge.eval import ort_session

    session = ort_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def _scores(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    noise = np.sum((reference - candidate) ** 2)
    return {"top1": float(np.mean(candidate.argmax(1) == labels)),
            "agreement": float(np.mean(candidate.argmax(1) == reference.argmax(1))),
            "sqnr_db": float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise else float("inf")}


def _run_model(path: Path, args, x: np.ndarray, labels: np.ndarray) -> dict:
    from fwedge.passes.equalize import equalize
    from fwedge.quantization import quantize
    from fwedge.quantization.prepare import load_prepared

    reference = _logits(str(path), x)
    entry = {"float_top1": float(np.mean(reference.argmax(1) == labels)), "variants": {}}
    print(f"{path.stem}: float top-1 {100 * entry['float_top1']:.2f}% on {len(x)} test images, "
          f"{'per-channel' if args.per_channel else 'per-tensor'} weights", flush=True)
    variants = dict(VARIANTS, **(RELU6_VARIANTS if path.stem == "mobilenet_v2_tiny" else {}))
    for name, (control, settings) in variants.items():
        model, pairs = str(path), None
        if control:
            model, pairs = equalize(load_prepared(str(path))[0], iterations=0, relu6_as_relu=True)
        start = time.perf_counter()
        result = quantize(model, "fashion-mnist:train", "kl", args.num_samples, per_channel=args.per_channel,
                          **settings)
        seconds = time.perf_counter() - start
        scores = _scores(reference, _logits(result.model, x), labels)
        pairs = result.equalized_pairs if pairs is None else pairs
        float_top1 = float_sqnr = None
        if control or result.relu6_replaced:
            changed = _scores(reference, _logits(result.float_model, x), labels)
            float_top1, float_sqnr = changed["top1"], changed["sqnr_db"]
        row = dict(scores, pairs=pairs, modified_float_top1=float_top1, modified_float_sqnr_db=float_sqnr,
                   quantize_seconds=seconds)
        entry["variants"][name] = row
        extra = (f"; its float model {100 * float_top1:.2f}%, {float_sqnr:.2f} dB from the original"
                 if float_top1 is not None else "")
        print(f"  {name:44s} int8 top-1 {100 * scores['top1']:.2f}%  agreement {100 * scores['agreement']:.2f}%  "
              f"SQNR {scores['sqnr_db']:.2f} dB  pairs {pairs if pairs is not None else '-'}{extra}  "
              f"({seconds:.1f}s)", flush=True)
    return entry


def _ill_conditioned_path(directory: Path) -> Path:
    import onnx

    from tests.ill_conditioned import ill_conditioned, relu_base

    model, scaled = ill_conditioned(relu_base(ROOT / "examples" / "fashion_mnist" / "mobilenet_v2_tiny.onnx"))
    print(f"ill-conditioned mobilenet_v2_tiny: {len(scaled)} depthwise Convs scaled apart", flush=True)
    path = directory / "mobilenet_v2_tiny_ill_conditioned.onnx"
    onnx.save(model, path)
    return path


def main() -> int:
    from fwedge.data import open_dataset
    from fwedge.eval import resolve_preprocess
    from fwedge import ir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--per-channel", action="store_true")
    parser.add_argument("--ill-conditioned", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    test = open_dataset("fashion-mnist:test")
    report = {}
    directory = tempfile.TemporaryDirectory()
    paths = ([_ill_conditioned_path(Path(directory.name))] if args.ill_conditioned else
             [ROOT / "examples" / "fashion_mnist" / f"{name}.onnx" for name in args.model or MODELS])
    for path in paths:
        name = path.stem
        spec = resolve_preprocess(ir.load(path))
        batches = list(test.batches(spec, 1000, limit=min(args.eval_samples, test.num_samples)))
        x, labels = np.concatenate([b.x for b in batches]), np.concatenate([b.y for b in batches])
        report[name] = _run_model(path, args, x, labels)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

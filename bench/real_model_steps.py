#!/usr/bin/env python
"""Every int8 target against the QDQ reference on whole real models: steps, the task metric, C identity.

    .venv/bin/python bench/real_model_steps.py [--models cnn_small mobilenet_v2_tiny ppocr_cls ppocr_det ppocr_rec yolov8n magika]
        [--targets onnx openvino ncnn tflite x86_64 aarch64 riscv64 loongarch64]

Each model is quantized by fwedge as its test quantizes it (bench/real_models.py: the data,
method and input shape of tests/test_ppocr_*.py, test_yolov8n.py, test_magika.py), exported to
every target, and run on the same held-out inputs as onnxruntime's exact QDQ run of the model
(fwedge.eval.ort_session), the reference every target is checked against. onnx and openvino run
in their exact int8 mode, so the figures do not depend on the host CPU's integer kernels.
Printed per (model, target):
  * the largest and mean difference of the output in its quantization steps, and the share of
    elements more than one step off. A float output (a Softmax, the detector's decode, PP-OCR's
    Identity) has no step of its own: steps are then of max|reference| / 255;
  * the model's own metric against the reference: top-1 agreement (classifiers), mAP@0.5 of the
    boxes (YOLOv8n), DB text-mask IoU at 0.3 (PP-OCR det), CTC character accuracy (PP-OCR rec);
  * SQNR against the reference.
For the C runtime, whether aarch64, riscv64 and loongarch64 (under qemu) give x86_64's bytes.
A target that refuses a model prints its one-line reason.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from real_models import SOURCES, load_source, task_score  # noqa: E402

TARGETS = ["onnx", "openvino", "ncnn", "tflite", "x86_64", "aarch64", "riscv64", "loongarch64"]
C_ARCHES = ("x86_64", "aarch64", "riscv64", "loongarch64")


def _row(name: str, target: str, reference: np.ndarray, candidate: np.ndarray, step: float, task: str) -> str:
    from fwedge.eval import FAR_STEPS

    steps = np.abs(candidate.astype(np.float64) - reference) / step
    score = task_score(task, reference, candidate)
    noise = np.sum((candidate.astype(np.float64) - reference) ** 2)
    sqnr = float("inf") if noise == 0 else 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)
    shown = "-" if score is None else f"{100 * score:.2f}%"
    return (f"{name:<18} {target:<11} {steps.max():8.2f} {steps.mean():7.3f} {100 * np.mean(steps > FAR_STEPS):7.2f}% "
            f"{task + ' ' + shown:>22} {sqnr:8.1f}")


def main() -> int:
    import onnx

    from fwedge.errors import FwEdgeError
    from fwedge.eval import dequantized_steps, ort_session
    from fwedge.export import export_bundle
    from fwedge.targets import get_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    args = parser.parse_args()
    print(f"{'model':<18} {'target':<11} {'max st':>8} {'mean st':>7} {'>1 st':>8} {'metric vs QDQ':>22} {'SQNR dB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = load_source(name, Path(tmp) / name)
            qdq = onnx.load(model.qdq_path)
            output = qdq.graph.output[0].name
            session = ort_session(qdq)
            x = model.x
            reference = np.concatenate([session.run([output], {model.input_name: x[i:i + 1]})[0] for i in range(len(x))])
            step = dequantized_steps(qdq).get(output)  # None for a float output: then max/255
            if step is None:
                step = float(np.abs(reference).max()) / 255
            outputs = {}
            for target in args.targets:
                started = time.perf_counter()
                try:
                    bundle = export_bundle(model.qdq_path, target, Path(tmp) / name / target,
                                           input_shapes=model.input_shapes)
                    got = get_target(target).run(bundle, {model.input_name: x},
                                                 exact_int8=target in ("onnx", "openvino"))
                except FwEdgeError as exc:
                    print(f"{name:<18} {target:<11} refused: {str(exc)[:160]}", flush=True)
                    continue
                outputs[target] = candidate = got[bundle.output_names(output)[1]].reshape(reference.shape)
                print(_row(name, target, reference, candidate, step, model.task)
                      + f"   ({time.perf_counter() - started:.0f} s)", flush=True)
            if "x86_64" in outputs:
                for arch in C_ARCHES[1:]:
                    if arch in outputs:
                        same = np.array_equal(outputs["x86_64"].view(np.uint8), outputs[arch].view(np.uint8))
                        print(f"{name:<18} C {arch} vs x86_64: {'identical bytes' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

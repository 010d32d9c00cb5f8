#!/usr/bin/env python
"""Every int8 target against the QDQ reference on whole models: steps, agreement, C identity.

    .venv/bin/python bench/real_model_steps.py [--models cnn_small mobilenet_v2_tiny ppocr_cls detector]
                                              [--targets onnx openvino ncnn tflite x86_64 aarch64]

Each model is quantized by fwedge (KL, the default), exported to every target, and run on the
same seeded inputs as onnxruntime's exact QDQ run of the model (fwedge.eval.ort_session), the
reference every target is checked against. onnx and openvino run in their exact int8 mode, so
the figures do not depend on the host CPU's integer kernels. Printed per (model, target): the
largest and mean difference of the scored output in its quantization steps, the share of
elements more than one step off, top-1 agreement (or, for the detector, mAP@0.5 of the boxes),
and SQNR against the reference. For the C runtime, whether x86_64 and aarch64 (under qemu) give
the same bytes.

Inputs: Fashion-MNIST test images for the two example models, rendered text lines and photo
crops for PP-OCR's direction classifier (tests/ppocr_inputs.py), Fashion-MNIST frames for the
YOLOv8-headed detector (tests/detector_model.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
MODELS = ["cnn_small", "mobilenet_v2_tiny", "ppocr_cls", "detector"]
TARGETS = ["onnx", "openvino", "ncnn", "tflite", "x86_64", "aarch64"]


def _source(name: str, work: Path):
    """(float model path, calibration .npy, evaluation inputs, input shapes, input name)."""
    from fwedge.data import Preprocess, open_dataset

    if name in ("cnn_small", "mobilenet_v2_tiny"):
        spec = Preprocess(resize=(28, 28), color="grayscale")
        calib = next(open_dataset("fashion-mnist:train").batches(spec, 256, limit=256, seed=0)).x
        x = next(open_dataset("fashion-mnist:test").batches(spec, 300, limit=300, seed=1)).x
        np.save(work / f"{name}.calib.npy", calib)
        return ROOT / "examples" / "fashion_mnist" / f"{name}.onnx", work / f"{name}.calib.npy", x, None, "input"
    if name == "ppocr_cls":
        import rapidocr_onnxruntime

        from ppocr_inputs import ppocr_cls_inputs

        calib, _ = ppocr_cls_inputs(64, seed=1)
        x, _ = ppocr_cls_inputs(64, seed=2)
        np.save(work / "cls.calib.npy", calib)
        model = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
        return model, work / "cls.calib.npy", x, {"x": [1, 3, 48, 192]}, "x"
    from detector_model import build
    from test_detector import _images

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(work / "detector.onnx")
    np.save(work / "detector.calib.npy", _images("train", 32, 1))
    return model, work / "detector.calib.npy", _images("test", 24, 2), None, "images"


def _row(name, target, reference, candidate, step, detector) -> str:
    from fwedge.detection import decode, map50
    from fwedge.eval import FAR_STEPS

    steps = np.abs(candidate.astype(np.float64) - reference) / step
    if detector:
        agreement = f"mAP50 {100 * (map50(decode(reference), decode(candidate)) or 0):6.2f}%"
    else:
        flat_r, flat_c = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
        agreement = f"top-1 {100 * np.mean(flat_r.argmax(1) == flat_c.argmax(1)):6.2f}%"
    noise = np.sum((candidate.astype(np.float64) - reference) ** 2)
    sqnr = float("inf") if noise == 0 else 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)
    return (f"{name:<18} {target:<9} {steps.max():7.2f} {steps.mean():7.3f} {100 * np.mean(steps > FAR_STEPS):7.2f}% "
            f"{agreement:>15} {sqnr:8.1f}")


def main() -> int:
    import onnx

    from fwedge.errors import FwEdgeError
    from fwedge.eval import ort_session
    from fwedge.export import export_bundle
    from fwedge.quantization import quantize
    from fwedge.targets import get_target

    from op_matrix import output_scale

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    args = parser.parse_args()
    print(f"{'model':<18} {'target':<9} {'max st':>7} {'mean st':>7} {'>1 st':>8} {'agreement':>15} {'SQNR dB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            model, calib, x, shapes, input_name = _source(name, work)
            result = quantize(model, calib, "kl", num_samples=None, input_shapes=shapes)
            qdq = work / f"{name}.int8.onnx"
            onnx.save(result.model, qdq)
            output = result.model.graph.output[0].name
            session = ort_session(qdq)
            reference = np.concatenate([session.run([output], {input_name: x[i:i + 1]})[0] for i in range(len(x))])
            try:
                step = output_scale(result.model, output)
            except KeyError:  # a float output (the detector's Concat, PP-OCR's Identity): max/255
                step = float(np.abs(reference).max()) / 255
            outputs = {}
            for target in args.targets:
                try:
                    bundle = export_bundle(qdq, target, work / f"{name}-{target}")
                    got = get_target(target).run(bundle, {input_name: x}, exact_int8=target in ("onnx", "openvino"))
                except FwEdgeError as exc:
                    print(f"{name:<18} {target:<9} not run: {str(exc)[:150]}")
                    continue
                outputs[target] = candidate = got[bundle.output_names()[1]]
                print(_row(name, target, reference, candidate.reshape(reference.shape), step, name == "detector"),
                      flush=True)
            if "x86_64" in outputs and "aarch64" in outputs:
                same = np.array_equal(outputs["x86_64"].view(np.uint8), outputs["aarch64"].view(np.uint8))
                print(f"{name:<18} C x86_64 vs aarch64: {'identical bytes' if same else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The C target on the Fashion-MNIST example models: cross-architecture bit identity, fidelity to onnxruntime, accuracy, memory.

    .venv/bin/python bench/c_models.py [--images 10000] [--arch-images 2000] [--arches x86_64 aarch64 riscv64 loongarch64]

For each example model (BN folded by fwedge; int8 = onnxruntime quantize_static QDQ per-channel
int8/int8 calibrated on 256 training images, see bench/c_runtime.py):
  * int8 bundles for every architecture, run on the first --arch-images test images (natively on
    x86_64, under qemu-<arch> otherwise): output files byte-identical or not;
  * int8 C (x86_64) against onnxruntime on the same QDQ model: max quantization steps and the
    count of elements one step off; bit-exactness with fwedge's NumPy interpreter of the lowering;
  * float C against onnxruntime fp32: max |difference| of the logits;
  * top-1 accuracy on --images test images: ORT fp32, C fp32, ORT int8, C int8;
  * arena against the live-tensor lower bound, ROM and RAM per architecture.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c_runtime import model_path, qdq_model  # noqa: E402


def test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    from fwedge.data import Preprocess, open_dataset

    dataset = open_dataset("fashion-mnist:test")
    batch = next(dataset.batches(Preprocess(resize=(28, 28), color="grayscale"), batch_size=count, limit=count, seed=0))
    return batch.x, batch.y


def evaluate(name: str, args, work: Path) -> dict:
    from fwedge import ir
    from fwedge.eval import ort_session
    from fwedge.lowered.interp import run_lowered
    from fwedge.lowered.lower import lower
    from fwedge.targets import ExportOptions, get_target

    path, origin = model_path(name, args.model_dir)
    float_model = ir.load(path)
    qdq, _ = qdq_model(path)
    x, labels = test_images(args.images)
    head = x[: args.arch_images]

    ort_fp32 = ort_session(float_model).run(None, {"input": x})[0]
    ort_int8 = ort_session(qdq).run(None, {"input": x})[0]
    int8_bundles, fp32_bundles = {}, {}
    for arch in args.arches:
        int8_bundles[arch] = get_target(arch).export(qdq, work / f"{name}-int8-{arch}", ExportOptions())
        fp32_bundles[arch] = get_target(arch).export(float_model, work / f"{name}-fp32-{arch}", ExportOptions())
    c_int8 = get_target("c").run(int8_bundles["x86_64"], {"input": x})["logits"]
    c_fp32 = get_target("c").run(fp32_bundles["x86_64"], {"input": x})["logits"]

    identical, fp32_identical = {}, {}
    for arch in args.arches:
        got = c_int8[: len(head)] if arch == "x86_64" else get_target("c").run(int8_bundles[arch], {"input": head})["logits"]
        identical[arch] = got.tobytes() == c_int8[: len(head)].tobytes()
        few = head[: args.fp32_arch_images]  # float emulation is slow under qemu (softfloat)
        got32 = c_fp32[: len(few)] if arch == "x86_64" else get_target("c").run(fp32_bundles[arch], {"input": few})["logits"]
        fp32_identical[arch] = (got32.tobytes() == c_fp32[: len(few)].tobytes(),
                                float(np.abs(got32 - ort_fp32[: len(few)]).max()))


    graph = lower(qdq)  # the NumPy interpreter runs in chunks: its float64 windows are large
    interpreted = np.concatenate([run_lowered(graph, {"input": x[i:i + 500]})["logits"] for i in range(0, len(x), 500)])
    step = scale_of_output(qdq)
    steps = np.rint(np.abs(c_int8.astype(np.float64) - ort_int8) / step).astype(np.int64)
    accuracy = {key: float((value.argmax(1) == labels).mean() * 100) for key, value in
                (("ORT fp32", ort_fp32), ("C fp32", c_fp32), ("ORT int8", ort_int8), ("C int8", c_int8))}
    sizes = {arch: {"int8": int8_bundles[arch].sizes, "fp32": fp32_bundles[arch].sizes} for arch in args.arches}
    return {
        "model": name, "origin": origin, "images": len(x), "arch_images": len(head),
        "identical": identical, "fp32_identical": fp32_identical,
        "interpreter_exact": bool(np.array_equal(c_int8, interpreted)),
        "max_steps": int(steps.max()), "off_by_one": int((steps == 1).sum()), "elements": int(steps.size),
        "fp32_max_abs": float(np.abs(c_fp32 - ort_fp32).max()), "accuracy": accuracy, "sizes": sizes,
        "top1_agreement_int8": float((c_int8.argmax(1) == ort_int8.argmax(1)).mean() * 100),
    }


def scale_of_output(qdq) -> float:
    from onnx import numpy_helper

    inits = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    for node in qdq.graph.node:
        if node.op_type == "DequantizeLinear" and "logits" in node.output:
            return float(inits[node.input[1]].reshape(-1)[0])
    raise KeyError("no DequantizeLinear produces 'logits'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn_small", "mobilenet_v2_tiny"])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--arch-images", type=int, default=2000)
    parser.add_argument("--fp32-arch-images", type=int, default=200)
    parser.add_argument("--model-dir", type=Path, help="folder with <model>.onnx (default: examples/fashion_mnist)")
    parser.add_argument("--arches", nargs="+", default=["x86_64", "aarch64", "riscv64", "loongarch64"])
    args = parser.parse_args(argv)
    if "x86_64" not in args.arches:
        args.arches.insert(0, "x86_64")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fwedge-c-models-") as temp:
        results = [evaluate(name, args, Path(temp)) for name in args.models]
    for r in results:
        print(f"\n== {r['model']} ({r['origin']}) ==")
        print(f"int8 outputs on {r['arch_images']} test images byte-identical to x86_64: "
              + ", ".join(f"{arch}={'yes' if ok else 'NO'}" for arch, ok in r["identical"].items()))
        print(f"fp32 outputs on {args.fp32_arch_images} images: " + ", ".join(f"{arch} identical={'yes' if ok else 'no'} max|C-ORT|={diff:.2e}"
                                          for arch, (ok, diff) in r["fp32_identical"].items()))
        print(f"int8 C vs the lowering's NumPy interpreter ({r['images']} images): "
              f"{'bit-exact' if r['interpreter_exact'] else 'DIFFERENT'}")
        print(f"int8 C vs ORT QDQ ({r['images']} images): max {r['max_steps']} step(s), "
              f"{r['off_by_one']}/{r['elements']} elements one step off; top-1 agreement {r['top1_agreement_int8']:.2f}%")
        print(f"fp32 C vs ORT fp32: max |diff| {r['fp32_max_abs']:.2e}")
        print("top-1 accuracy (%): " + ", ".join(f"{k} {v:.2f}" for k, v in r["accuracy"].items())
              + f"; C int8 - ORT int8 = {r['accuracy']['C int8'] - r['accuracy']['ORT int8']:+.2f} pp")
        print("arch | precision | arena | lower bound | ratio | ROM (model) | RAM (model) | binary ROM | binary RAM")
        for arch, per in r["sizes"].items():
            for precision, s in per.items():
                print(f"{arch} | {precision} | {s['arena_bytes']} | {s['arena_lower_bound_bytes']} | "
                      f"{s['arena_ratio']:.3f} | {s['rom_bytes']} | {s['ram_bytes']} | {s['binary_rom_bytes']} | "
                      f"{s['binary_ram_bytes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Latency p50 of the x86_64 C bundle against onnxruntime int8 (QDQ) and ai-edge-litert int8, same model, same run, one thread.

    .venv/bin/python bench/c_runtime.py [--models cnn_small mobilenet_v2_tiny] [--iterations 300] [--rounds 5] [--cpu N]

Every runtime runs batch 1, single-threaded, on the same QDQ model (onnxruntime quantize_static:
QDQ, per-channel, int8/int8, calibrated on 256 Fashion-MNIST training images, after fwedge's BN
folding). The C time comes from the harness's own clock_gettime around fwedge_run (input
quantize to output dequantize, no process start-up); onnxruntime's and LiteRT's from
perf_counter around session.run / interpreter.invoke. Runtimes are interleaved in rounds and the
p50 is taken over all rounds. Prints the table and the ratios C / peer (< 1: C is faster).
The whole run, the harness processes included, is pinned to one CPU (--cpu, default the last
one; -1: not pinned): on a shared machine the cores' speeds drift apart, and each new harness
process landing on either one made the C columns bimodal while the in-process peers were not.
"C int8" is the default x86_64 bundle: the x86-64 baseline (SSE2) kernels plus AVX2 and AVX-512
VNNI variants of the conv, depthwise and add kernels, the widest the CPU has picked at run time
(it runs on any x86-64 CPU; the line under the table says which kernels it ran here). "C int8 x86-64-v3" is the same model
built with -march=x86-64-v3 (AVX2 only; `fwedge export --cflags=-march=x86-64-v3`) and "C int8
native" with -march=native (on a CPU with AVX-512 VNNI or AVX-VNNI: the VNNI kernels everywhere,
compiled for this CPU only); both are measured only on a CPU with AVX2. LiteRT picks its XNNPACK
kernels for the CPU at run time, like the default bundle.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "fashion_mnist"


def model_path(name: str, model_dir: Path | None = None) -> tuple[Path, str]:
    """The trained model from --model-dir or examples/, else an untrained export of the same
    architecture (said so in the output)."""
    for folder, origin in ((model_dir, f"trained, {model_dir}"), (EXAMPLES, "trained example")):
        if folder is not None and (Path(folder) / f"{name}.onnx").is_file():
            return Path(folder) / f"{name}.onnx", origin
    fallback = Path(tempfile.gettempdir()) / "fwedge-bench-untrained" / f"{name}.onnx"
    if not fallback.is_file():
        import torch

        sys.path.insert(0, str(EXAMPLES))
        import train

        torch.manual_seed(0)
        module = train.MODELS[name][0]()
        train.init_weights(module)
        fallback.parent.mkdir(parents=True, exist_ok=True)
        train.export_onnx(module.eval(), name, fallback)
    return fallback, "UNTRAINED export (examples/fashion_mnist model missing)"


def qdq_model(path: Path):
    """onnxruntime quantize_static (QDQ, per-channel int8) of the BN-folded model."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from fwedge import ir
    from fwedge.data import Preprocess, open_dataset
    from fwedge.passes.fold_bn import fold_batchnorm

    folded = fold_batchnorm(ir.load(path))
    preprocess = Preprocess(resize=(28, 28), color="grayscale")
    batch = next(open_dataset("fashion-mnist:train").batches(preprocess, batch_size=256, limit=256, seed=0))
    samples = iter([{"input": batch.x[i:i + 1]} for i in range(len(batch.x))])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        onnx.save(folded, source)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return onnx.load(str(target)), folded


def host_has_avx2() -> bool:
    """Whether this CPU runs x86-64-v3 code (AVX2 in /proc/cpuinfo's flags)."""
    try:
        return any(line.startswith("flags") and " avx2" in line for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def native_conv_kernels() -> str:
    """Which int8 conv kernels a -march=native build compiles (fwedge_rt.h's selection), from the
    host compiler's predefined macros."""
    import subprocess

    try:
        macros = subprocess.run(["cc", "-march=native", "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True,
                                text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ")}
    if "__AVX512VNNI__" in defined and "__AVX512VL__" in defined and "__AVX512F__" in defined:
        return "VNNI vpdpbusd, 512-bit"
    if "__AVXVNNI__" in defined:
        return "VNNI vpdpbusd, 256-bit (AVX-VNNI)"
    if "__AVX2__" in defined:
        return "AVX2 vpmaddwd"
    return "SSE2 pmaddwd"


def picked_kernels(bundle, x: np.ndarray) -> str:
    """The kernels the default bundle's harness says it ran on this CPU (its fwedge-kernels line)."""
    import subprocess

    from fwedge.targets import c as c_target

    with tempfile.TemporaryDirectory(prefix="fwedge-bench-kernels-") as folder:
        c_target.write_harness_input(bundle, {"input": x}, Path(folder) / "in.bin")
        done = subprocess.run([str(bundle.file(c_target.harness_executable(bundle))), "in.bin", "out.bin", "1", "1"],
                              cwd=folder, capture_output=True, text=True, timeout=120, check=True)
    return c_target.parse_harness_kernels(done.stdout) or "no dispatch (one kernel set)"


def time_calls(function, iterations: int) -> list[float]:
    function()
    values = []
    for _ in range(iterations):
        start = time.perf_counter()
        function()
        values.append((time.perf_counter() - start) * 1e3)
    return values


def bench_model(name: str, iterations: int, rounds: int, work: Path, model_dir: Path | None = None) -> dict:
    from fwedge.eval import ort_session
    from fwedge.targets import COptions, ExportOptions, get_target
    from fwedge.targets.tflite_runner import _interpreter

    path, origin = model_path(name, model_dir)
    qdq, folded = qdq_model(path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)

    from fwedge.targets.c import run_harness

    c_target = get_target("x86_64")
    c_int8 = c_target.export(qdq, work / f"{name}-c-int8", ExportOptions())
    c_fp32 = c_target.export(folded, work / f"{name}-c-fp32", ExportOptions())
    # The same int8 bundle compiled for x86-64-v3 (AVX2: 256-bit vpmaddwd tiles) and for this CPU
    # (-march=native: the VNNI kernels where it has them) instead of the portable x86-64 baseline
    # (SSE2), when this CPU has AVX2.
    c_v3 = c_native = None
    if host_has_avx2():
        c_v3 = c_target.export(qdq, work / f"{name}-c-int8-v3", ExportOptions(
            target_options=COptions(cflags=("-march=x86-64-v3",))))
        c_native = c_target.export(qdq, work / f"{name}-c-int8-native", ExportOptions(
            target_options=COptions(cflags=("-march=native",))))
    ort_int8 = ort_session(qdq, threads=1, exact_qdq=False)
    ort_fp32 = ort_session(folded, threads=1)
    litert = None
    try:
        bundle = get_target("tflite").export(qdq, work / f"{name}-tflite-int8", ExportOptions())
        interpreter = _interpreter(bundle, num_threads=1)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], x.transpose(0, 2, 3, 1).astype(detail["dtype"]))  # NHWC
        litert = interpreter
    except Exception as exc:  # the TFLite target may be unavailable: report, don't hide
        print(f"{name}: LiteRT int8 not measured ({exc})")

    times: dict[str, list[float]] = {key: [] for key in ("C int8", "C int8 x86-64-v3", "C int8 native", "C fp32",
                                                         "ORT int8", "ORT fp32", "LiteRT int8")}
    for _ in range(rounds):
        times["C int8"] += run_harness(c_int8, {"input": x}, iterations=iterations)[1]
        if c_v3 is not None:
            times["C int8 x86-64-v3"] += run_harness(c_v3, {"input": x}, iterations=iterations)[1]
            times["C int8 native"] += run_harness(c_native, {"input": x}, iterations=iterations)[1]
        times["C fp32"] += run_harness(c_fp32, {"input": x}, iterations=iterations)[1]
        times["ORT int8"] += time_calls(lambda: ort_int8.run(None, {"input": x}), iterations)
        times["ORT fp32"] += time_calls(lambda: ort_fp32.run(None, {"input": x}), iterations)
        if litert is not None:
            times["LiteRT int8"] += time_calls(litert.invoke, iterations)
    p50 = {key: statistics.median(values) for key, values in times.items() if values}
    return {"model": name, "origin": origin, "p50_ms": p50, "arena": c_int8.sizes["arena_bytes"],
            "kernels": picked_kernels(c_int8, x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn_small", "mobilenet_v2_tiny"])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, help="folder with <model>.onnx (default: examples/fashion_mnist)")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                        help="pin the run and its harness processes to this CPU (-1: do not pin)")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fwedge-bench-c-") as temp:
        results = [bench_model(name, args.iterations, args.rounds, Path(temp), args.model_dir) for name in args.models]
    pinned = f", pinned to CPU {args.cpu}" if args.cpu >= 0 else ""
    print(f"\nlatency p50 (ms), batch 1, 1 thread, {args.rounds} rounds x {args.iterations} iterations, interleaved{pinned}")
    latencies = ["C int8", "C int8 x86-64-v3", "C int8 native", "ORT int8", "LiteRT int8", "C fp32", "ORT fp32"]
    ratios = [("C int8", "ORT int8", "C/ORT int8"), ("C int8", "LiteRT int8", "C/LiteRT int8"),
              ("C int8 x86-64-v3", "ORT int8", "C v3/ORT int8"), ("C int8 x86-64-v3", "LiteRT int8", "C v3/LiteRT int8"),
              ("C int8 native", "ORT int8", "C native/ORT int8"),
              ("C int8 native", "LiteRT int8", "C native/LiteRT int8"), ("C fp32", "ORT fp32", "C/ORT fp32")]
    print(" | ".join(["model"] + latencies + [label for _, _, label in ratios]))
    for result in results:
        p = result["p50_ms"]
        ratio = lambda a, b: f"{p[a] / p[b]:.2f}x" if a in p and b in p else "n/a"  # noqa: E731
        cells = [result["model"]] + [f"{p[k]:.4f}" if k in p else "n/a" for k in latencies] + [
            ratio(a, b) for a, b, _ in ratios]
        print(" | ".join(cells) + f"   ({result['origin']})")
    for result in results:
        print(f"C int8 ({result['model']}): the default bundle ran its {result['kernels']} kernels")
    if host_has_avx2():
        print(f"C int8 native: -march=native, conv kernels: {native_conv_kernels()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Host latency of every target bundle (fp32 and int8) next to onnxruntime fp32, same machine, same run.

    .venv/bin/python bench/targets.py [--runs 300] [--warmup 30] [--threads 1] [--models cnn_small mobilenet_v2_tiny ppocr_cls]

For each model: the float model and its QDQ int8 model (fwedge's quantizer, `fwedge quantize
--method percentile`, calibrated on 256 Fashion-MNIST training images / 128 rendered PP-OCR
text lines) are exported to every available target (onnx, openvino, tflite, ncnn, C x86_64).
Each bundle runs one sample per call through its own runtime via `fwedge.targets.<t>.run` (the
same Python entry point the device farm's local device uses). Bundles take turns round-robin in
blocks of 10 back-to-back calls (the first call of each block and the first --warmup rounds are
dropped), so drift and other load on the machine hit every bundle alike. C bundles are timed by
their harness's on-device timer instead (a process per call would measure process start-up). Printed: p50 and p90 per bundle in ms and the ratio of
p50 to onnxruntime fp32 (the onnx fp32 bundle) measured in the same rounds. Runtimes use
--threads threads each (FWEDGE_THREADS; TFLite and C runners may ignore it: see the table note).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
PPOCR = "ppocr_cls"
EXAMPLES = ROOT / "examples" / "fashion_mnist"
TARGET_ORDER = ("onnx", "openvino", "tflite", "ncnn", "x86_64")


def fwedge(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fwedge", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fwedge {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def set_examples(folder: Path) -> None:
    """Read the example models from another folder (e.g. a stand-in training run)."""
    global EXAMPLES
    EXAMPLES = Path(folder)


def rapidocr_model(file: str = "ch_ppocr_mobile_v2.0_cls_infer.onnx") -> Path | None:
    """A PP-OCR model as rapidocr-onnxruntime ships it (default: the direction classifier), or
    None (said) when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        print(f"{file}: rapidocr-onnxruntime not installed; skipped")
        return None
    return Path(spec.origin).parent / "models" / file


def sources(name: str, work: Path) -> tuple[Path, Path, dict, np.ndarray] | None:
    """(float model, QDQ model, export arguments, one preprocessed sample) or None when missing."""
    from fwedge.data import Preprocess, open_dataset

    if name == PPOCR:
        from ppocr_data import PPOCR_CLS_PREPROCESS, make_text_lines

        float_path = rapidocr_model()
        if float_path is None:
            return None
        data = make_text_lines(work / "ppocr_text", 128, seed=1)
        preprocess = json.dumps(PPOCR_CLS_PREPROCESS)
        qdq = work / "ppocr_cls.int8.onnx"
        if not qdq.exists():
            fwedge("quantize", str(float_path), "--data", str(data), "--preprocess", preprocess, "--input-shape",
                   "x=1,3,48,192", "--num-samples", "128", "--method", "percentile", "-o", str(qdq))
        extra = {"preprocess": preprocess, "input_shape": "x=1,3,48,192"}
        sample = next(open_dataset(data).batches(Preprocess.from_dict(PPOCR_CLS_PREPROCESS), 1, limit=1)).x
        return float_path, qdq, extra, sample
    float_path = EXAMPLES / f"{name}.onnx"
    if not float_path.is_file():
        print(f"{name}: {float_path} not found (run examples/fashion_mnist/train.py); skipped")
        return None
    qdq = work / f"{name}.int8.onnx"
    if not qdq.exists():
        fwedge("quantize", str(float_path), "--data", "fashion-mnist:train", "--num-samples", "256",
               "--method", "percentile", "-o", str(qdq))
    sample = next(open_dataset("fashion-mnist:test").batches(Preprocess(resize=(28, 28), color="grayscale"), 1, limit=1)).x
    return float_path, qdq, {}, sample


def export_all(name: str, float_path: Path, qdq: Path, extra: dict, work: Path) -> tuple[list, list[str]]:
    """Bundles (label, target, precision, Bundle) of every available target; and the failures."""
    from fwedge.data import Preprocess
    from fwedge.export import export_bundle
    from fwedge.targets import available_targets

    available = set(available_targets())
    bundles, failures = [], []
    shapes = None
    if "input_shape" in extra:
        key, _, dims = extra["input_shape"].partition("=")
        shapes = {key: [int(d) for d in dims.split(",")]}
    preprocess = Preprocess.from_dict(json.loads(extra["preprocess"])) if "preprocess" in extra else None
    for target in TARGET_ORDER:
        module = "c" if target == "x86_64" else target
        if module not in available:
            failures.append(f"{target}: not in this installation")
            continue
        for precision, source in (("fp32", float_path), ("int8", qdq)):
            out = work / "bundles" / f"{name}-{target}-{precision}"
            try:
                bundle = export_bundle(source, target, out, input_shapes=shapes, preprocess=preprocess)
            except Exception as exc:  # report every failure and go on with the other bundles
                failures.append(f"{target} {precision}: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            bundles.append((f"{target} {precision}", target, precision, bundle))
    return bundles, failures


def measure(bundles: list, sample: np.ndarray, runs: int, warmup: int, block: int = 10) -> dict[str, np.ndarray]:
    """Single-sample latencies (seconds) per bundle label.

    Bundles take turns in blocks of `block` back-to-back calls; the first call of every block is
    dropped (after the other runtimes ran, its caches and worker threads are cold: OpenVINO's
    worker thread alone costs milliseconds to wake on a loaded host), and so are the first
    `warmup` rounds. C bundles run in their own process: their latencies are the harness's
    on-device clock_gettime timer over `runs` iterations (targets.c.run_harness).
    """
    from fwedge.targets import get_target
    from fwedge.targets.c import run_harness

    calls, times = [], {}
    for label, target, _, bundle in bundles:
        runner = get_target(bundle.target)
        feeds = {bundle.inputs[0].name: np.ascontiguousarray(sample, dtype=np.float32)}
        if bundle.target == "c":
            _, latencies_ms = run_harness(bundle, feeds, iterations=runs)
            times[label] = np.asarray(latencies_ms) / 1e3
            continue
        runner.run(bundle, feeds)  # build and cache the runtime outside the timing
        calls.append((label, runner.run, bundle, feeds))
        times[label] = []
    rounds = warmup + max(1, runs // (block - 1))
    for round_index in range(rounds):
        for label, run, bundle, feeds in calls:
            for call in range(block):
                start = time.perf_counter()
                run(bundle, feeds)
                elapsed = time.perf_counter() - start
                if round_index >= warmup and call > 0:
                    times[label].append(elapsed)
    return {label: np.asarray(values) for label, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (of 10-call blocks) dropped")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["cnn_small", "mobilenet_v2_tiny", PPOCR])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fwedge-bench-targets")
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="folder of the Fashion-MNIST example models")
    args = parser.parse_args()
    set_examples(args.examples)
    os.environ["FWEDGE_THREADS"] = str(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    import platform

    print(f"host: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} runtime thread(s); "
          f"{args.runs} interleaved single-sample runs per bundle after {args.warmup} warm-up rounds\n")
    for name in args.models:
        found = sources(name, args.work)
        if found is None:
            continue
        float_path, qdq, extra, sample = found
        bundles, failures = export_all(name, float_path, qdq, extra, args.work)
        times = measure(bundles, sample, args.runs, args.warmup)
        baseline = float(np.median(times["onnx fp32"]))
        print(f"== {name} (input {list(sample.shape)})")
        print(f"{'bundle':<16} {'p50 ms':>9} {'p90 ms':>9} {'p50 / ORT fp32':>15}")
        for label, *_ in bundles:
            p50, p90 = np.median(times[label]), np.percentile(times[label], 90)
            print(f"{label:<16} {1e3 * p50:>9.3f} {1e3 * p90:>9.3f} {p50 / baseline:>15.2f}")
        for failure in failures:
            print(f"  not measured: {failure}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""fwedge calibration vs onnxruntime.quantization, same model, data and sample counts, same run.

    .venv/bin/python bench/calibration.py [--model examples/fashion_mnist/mobilenet_v2_tiny.onnx]
        [--samples 512 4096] [--methods minmax,percentile,kl] [--skip-mse] [--repeat 1]
        [--accuracy-seeds 1] [--eval-samples 10000] [--json bench_calibration.json]

Every (tool, method, samples) configuration runs in its own subprocess, so its peak RSS is its
own: the kernel's high-water mark VmHWM of the worker's address space (/proc/self/status).
ru_maxrss is printed too, but on Linux it carries the parent's RSS at fork over exec, so it
cannot show a worker smaller than this driver. Both tools calibrate the same prepared float model
(BatchNorm folded by fwedge, saved to a temp file) on the same seeded subset of
fashion-mnist:train, decoded once by the driver into a uint8 .npy that the workers memory-map
and preprocess batch by batch (64 images): the gzip IDX decoder would otherwise dominate both
tools' time.

Peers (onnxruntime.quantization):
  * MinMax and Percentile (99.99, ORT's symmetric default) via create_calibrator;
  * a real Entropy calibration: create_calibrator(..., CalibrationMethod.Entropy,
    extra_options={"num_bins": 2048, "num_quantized_bins": 128}) -- quantize_static's own
    Entropy path silently uses 128 bins;
  the ranges then go to quantize_static (QDQ, per-channel int8 weights, int8 activations)
  through its calibration cache, so the timed part is calibration only for both tools.

fwedge: collect (absmax pass + 2048-bin histogram pass) + compute(method) = the timed
calibration; quantize_model writes the QDQ model.

Printed: calibration wall time and peak RSS (medians over --repeat; the largest RSS too), the
worker's CPU time (all threads; less sensitive to other load on a shared machine, printed for
context only), peak RSS growth from the first to the last sample count, int8 top-1 accuracy on
the test set, and the ratios the issue targets: KL >= 10x faster than ORT entropy, fwedge RSS
growth 512 -> 4096 <= 10 %, fwedge accuracy >= ORT's for the same method.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 64
PERCENTILE = 99.99
PAIRS = [("minmax", "MinMax"), ("percentile", "Percentile"), ("kl", "Entropy")]


def _peak_rss_mb() -> tuple[float, float]:
    """(VmHWM of this process in MB, ru_maxrss in MB)."""
    hwm = 0.0
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024.0
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _subset_path(folder: str, samples: int, seed: int = 0) -> str:
    return os.path.join(folder, f"train_subset_{samples}_seed{seed}.npy")


def write_subset(folder: str, samples: int, seed: int = 0) -> str:
    """The seeded subset of fashion-mnist:train (uint8 N,28,28,1) that both tools read."""
    import numpy as np

    from fwedge.data import open_dataset, read_idx

    dataset = open_dataset("fashion-mnist:train")
    images = read_idx(dataset.path, dataset.select(samples, seed=seed))[..., None]
    path = _subset_path(folder, samples, seed)
    np.save(path, images)
    return path


def _batches(model_path: str, samples: int, seed: int = 0):
    import numpy as np

    from fwedge import ir
    from fwedge.eval import resolve_preprocess

    spec = resolve_preprocess(ir.load(model_path))
    images = np.load(_subset_path(os.path.dirname(model_path), samples, seed), mmap_mode="r")
    return lambda: (spec.apply(np.asarray(images[i:i + BATCH])) for i in range(0, len(images), BATCH))


def worker_fwedge(model_path: str, method: str, samples: int, output: str, seed: int = 0) -> dict:
    from fwedge import ir
    from fwedge.calibration import MethodOptions, collect, compute
    from fwedge.quantization import QuantizeOptions, plan_quantization, quantize_model

    model = ir.load(model_path)
    batches = _batches(model_path, samples, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    plan = plan_quantization(model)
    stats = collect(model, batches, plan.calibrated, histograms=method != "minmax")  # minmax: one pass
    collected = time.perf_counter()
    table = compute(stats, method, MethodOptions(percentile=PERCENTILE))
    calibrate_seconds = time.perf_counter() - start
    calibrate_cpu = time.process_time() - cpu_start
    qdq = quantize_model(model, table, QuantizeOptions(method=method), plan)
    ir.save(qdq, output)
    return {"calibrate_seconds": calibrate_seconds, "calibrate_cpu_seconds": calibrate_cpu,
            "collect_seconds": collected - start,
            "compute_seconds": calibrate_seconds - (collected - start),
            "total_seconds": time.perf_counter() - start}


def worker_ort(model_path: str, method: str, samples: int, output: str, seed: int = 0) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    batches = _batches(model_path, samples, seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.iterator = iter(batches())

        def get_next(self):
            x = next(self.iterator, None)
            return None if x is None else {"input": x}

        def rewind(self):
            self.iterator = iter(batches())

    calibrate_method = getattr(CalibrationMethod, method)
    extra = {"MinMax": {}, "Percentile": {"num_bins": 2048, "percentile": PERCENTILE},
             "Entropy": {"num_bins": 2048, "num_quantized_bins": 128}}[method]
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        calibrator = create_calibrator(model_path, None, augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                       calibrate_method=calibrate_method, extra_options=extra)
        calibrator.collect_data(Reader())
        collected = time.perf_counter()
        ranges = calibrator.compute_data()
        calibrate_seconds = time.perf_counter() - start
        calibrate_cpu = time.process_time() - cpu_start
        compute_seconds = calibrate_seconds - (collected - start)
        cache = os.path.join(tmp, "ranges.json")
        save_tensors_data(ranges, cache)
        del calibrator
        quantize_static(model_path, output, None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate_method, calibration_cache_path=cache)
    return {"calibrate_seconds": calibrate_seconds, "calibrate_cpu_seconds": calibrate_cpu,
            "collect_seconds": calibrate_seconds - compute_seconds,
            "compute_seconds": compute_seconds, "total_seconds": time.perf_counter() - start}


def run_worker(args) -> None:
    import logging

    logging.disable(logging.WARNING)
    function = worker_fwedge if args.worker == "fwedge" else worker_ort
    result = function(args.model, args.method, args.samples, args.output, args.seed)
    result["peak_rss_mb"], result["ru_maxrss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def accuracy(model_path: str, limit: int | None) -> float:
    from fwedge.data import open_dataset
    from fwedge.eval import OrtRunner, accuracy as top1, resolve_preprocess

    runner = OrtRunner(model_path)
    dataset = open_dataset("fashion-mnist:test")
    return top1(runner, dataset, resolve_preprocess(runner.model), 500, limit).top1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="Float model(s); default: both Fashion-MNIST examples.")
    parser.add_argument("--samples", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--repeat", type=int, default=1, help="Runs per configuration (median time).")
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--skip-mse", action="store_true")
    parser.add_argument("--methods", default="minmax,percentile,kl",
                        help="fwedge methods compared with their onnxruntime peer (comma-separated)")
    parser.add_argument("--accuracy-seeds", type=int, default=1,
                        help="calibration subsets (seeds 0..K-1) at the first sample count for the accuracy "
                             "comparison; K > 1 also prints mean and spread over the subsets")
    parser.add_argument("--json", help="Write all measurements as JSON.")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["fwedge", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.samples = args.samples[0]
        args.model = args.model[0]
        run_worker(args)
        return 0

    from fwedge import ir
    from fwedge.quantization import prepare

    models = args.model or [str(ROOT / "examples/fashion_mnist/mobilenet_v2_tiny.onnx"),
                            str(ROOT / "examples/fashion_mnist/cnn_small.onnx")]
    report = []
    for model_path in models:
        if not Path(model_path).is_file():
            print(f"skip {model_path}: not found")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            prepared = os.path.join(tmp, "prepared.onnx")
            ir.save(prepare(ir.load(model_path)), prepared)
            for samples in args.samples:
                write_subset(tmp, samples)
            float_accuracy = accuracy(prepared, args.eval_samples)
            configs = []
            for samples in args.samples:
                for ours, theirs in PAIRS:
                    if ours not in args.methods.split(","):
                        continue
                    configs.append(("fwedge", ours, samples))
                    configs.append(("ort", theirs, samples))
                if not args.skip_mse:
                    configs.append(("fwedge", "mse", samples))
            rows = []
            for tool, method, samples in configs:
                output = os.path.join(tmp, f"{tool}_{method}_{samples}.onnx")
                runs = []
                for _ in range(args.repeat):
                    command = [sys.executable, __file__, "--worker", tool, "--method", method, "--samples",
                               str(samples), "--model", prepared, "--output", output]
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        # e.g. killed for memory: ORT's histogram calibrators keep every batch's
                        # outputs until compute_data. Recorded as a failure, the run goes on.
                        print(f"{tool} {method} n={samples} FAILED (exit {done.returncode}): {done.stderr[-800:]}",
                              flush=True)
                        break
                    runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                if not runs:
                    rows.append({"model": Path(model_path).name, "tool": tool, "method": method,
                                 "samples": samples, "failed": True})
                    continue
                row = {
                    "model": Path(model_path).name, "tool": tool, "method": method, "samples": samples,
                    "calibrate_seconds": statistics.median(r["calibrate_seconds"] for r in runs),
                    "calibrate_cpu_seconds": statistics.median(r["calibrate_cpu_seconds"] for r in runs),
                    "collect_seconds": statistics.median(r["collect_seconds"] for r in runs),
                    "compute_seconds": statistics.median(r["compute_seconds"] for r in runs),
                    "total_seconds": statistics.median(r["total_seconds"] for r in runs),
                    "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                    "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
                    "ru_maxrss_mb": max(r["ru_maxrss_mb"] for r in runs),
                    "accuracy": accuracy(output, args.eval_samples) if samples == args.samples[0] else None,
                }
                rows.append(row)
                print(f"{row['model']:26s} {tool:6s} {method:10s} n={samples:5d}  calib {row['calibrate_seconds']:8.2f}s"
                      f" (collect {row['collect_seconds']:7.2f}s + ranges {row['compute_seconds']:6.2f}s;"
                      f" CPU {row['calibrate_cpu_seconds']:7.2f}s)"
                      f"  total {row['total_seconds']:8.2f}s  peak RSS {row['peak_rss_mb']:7.1f} MB"
                      + (f"  int8 top-1 {100 * row['accuracy']:.2f}%" if row["accuracy"] is not None else ""),
                      flush=True)
            seeds = _seed_accuracies(args, tmp, prepared, rows)
            report.append({"model": model_path, "float_accuracy": float_accuracy, "rows": rows,
                           "accuracy_by_seed": seeds})
            print(f"\n{Path(model_path).name}: float top-1 {100 * float_accuracy:.2f}% on {args.eval_samples} test images")
            _ratios(rows, args.samples, float_accuracy)
            _seed_summary(seeds, args.samples[0], float_accuracy)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _seed_accuracies(args, tmp: str, prepared: str, rows: list[dict]) -> dict[str, list[float]]:
    """int8 accuracy per (tool, method) over calibration subsets 0..K-1 at the first sample count.

    Seed 0 is the timed run above; the others are calibrated (untimed) from other random
    subsets of the training set, so a difference between the tools can be told from the spread
    that the choice of calibration images alone causes.
    """
    samples = args.samples[0]
    seeds: dict[str, list[float]] = {}
    for row in rows:
        if row["samples"] == samples and not row.get("failed") and row["accuracy"] is not None:
            seeds[f"{row['tool']} {row['method']}"] = [row["accuracy"]]
    for seed in range(1, args.accuracy_seeds):
        write_subset(tmp, samples, seed)
        for key in seeds:
            tool, method = key.split()
            output = os.path.join(tmp, f"{tool}_{method}_{samples}_seed{seed}.onnx")
            command = [sys.executable, __file__, "--worker", tool, "--method", method, "--samples", str(samples),
                       "--model", prepared, "--output", output, "--seed", str(seed)]
            subprocess.run(command, capture_output=True, text=True, check=True)
            seeds[key].append(accuracy(output, args.eval_samples))
            print(f"  seed {seed}: {key} int8 top-1 {100 * seeds[key][-1]:.2f}%", flush=True)
    return seeds


def _seed_summary(seeds: dict[str, list[float]], samples: int, float_accuracy: float) -> None:
    if not seeds or len(next(iter(seeds.values()))) < 2:
        return
    count = len(next(iter(seeds.values())))
    mean = {key: statistics.mean(values) for key, values in seeds.items()}
    for key, values in seeds.items():
        print(f"  {key:18s} over {count} calibration subsets of {samples}: mean {100 * mean[key]:.2f}% "
              f"(drop {100 * (float_accuracy - mean[key]):.2f} pp), min {100 * min(values):.2f}%, "
              f"max {100 * max(values):.2f}%, stdev {100 * statistics.stdev(values):.2f} pp")
    for ours, theirs in PAIRS + [("mse", None)]:
        a, b = f"fwedge {ours}", f"ort {theirs}"
        if a in mean and b in mean:
            wins = sum(x >= y for x, y in zip(seeds[a], seeds[b]))
            print(f"  mean int8 top-1 over {count} subsets: fwedge {ours} {100 * mean[a]:.2f}% vs ORT {theirs} "
                  f"{100 * mean[b]:.2f}%: {'OK' if mean[a] >= mean[b] else 'MISSED'} (target fwedge >= ORT); "
                  f"fwedge >= ORT on {wins} of {count} subsets")


def _ratios(rows: list[dict], sample_counts: list[int], float_accuracy: float) -> None:
    def find(tool, method, samples):
        return next(r for r in rows if r["tool"] == tool and r["method"] == method and r["samples"] == samples)

    failed = [r for r in rows if r.get("failed")]
    for r in failed:
        print(f"  {r['tool']} {r['method']} n={r['samples']}: FAILED (see above)")
    rows = [r for r in rows if not r.get("failed")]
    present = {(r["tool"], r["method"], r["samples"]) for r in rows}

    def has(*keys):
        return all(key in present for key in keys)

    low, high = sample_counts[0], sample_counts[-1]
    for samples in sample_counts:
        if not has(("fwedge", "kl", samples), ("ort", "Entropy", samples)):
            continue
        ours, theirs = find("fwedge", "kl", samples), find("ort", "Entropy", samples)
        ratio = theirs["calibrate_seconds"] / ours["calibrate_seconds"]
        ranges = theirs["compute_seconds"] / max(ours["compute_seconds"], 1e-9)
        cpu = theirs["calibrate_cpu_seconds"] / max(ours["calibrate_cpu_seconds"], 1e-9)
        print(f"  n={samples}: KL speed-up vs ORT Entropy(2048 bins): {ratio:.1f}x end to end (target >= 10x) "
              f"{'OK' if ratio >= 10 else 'MISSED'}; threshold search alone (compute_data vs compute): "
              f"{ranges:.0f}x; process CPU time: {cpu:.1f}x")
    for tool, method in [("fwedge", "kl"), ("fwedge", "minmax"), ("fwedge", "percentile"),
                         ("ort", "Entropy"), ("ort", "MinMax"), ("ort", "Percentile")]:
        if not has((tool, method, low), (tool, method, high)):
            continue
        a, b = find(tool, method, low)["peak_rss_mb"], find(tool, method, high)["peak_rss_mb"]
        growth = 100.0 * (b - a) / a
        target = " (target <= 10%) " + ("OK" if growth <= 10 else "MISSED") if tool == "fwedge" else ""
        a_max, b_max = find(tool, method, low)["peak_rss_mb_max"], find(tool, method, high)["peak_rss_mb_max"]
        print(f"  peak RSS {tool} {method} (median of --repeat runs; max {a_max:.1f} / {b_max:.1f} MB): "
              f"{a:.1f} MB at n={low} -> {b:.1f} MB at n={high}: {growth:+.1f}%{target}")
    for ours, theirs in PAIRS:
        if not has(("fwedge", ours, low), ("ort", theirs, low)):
            continue
        a, b = find("fwedge", ours, low)["accuracy"], find("ort", theirs, low)["accuracy"]
        print(f"  int8 top-1 at n={low}: fwedge {ours} {100 * a:.2f}% (drop {100 * (float_accuracy - a):.2f} pp) vs "
              f"ORT {theirs} {100 * b:.2f}% (drop {100 * (float_accuracy - b):.2f} pp): "
              f"{'OK' if a >= b else 'MISSED'} (target fwedge >= ORT)")
    mse = [r for r in rows if r["method"] == "mse" and r["accuracy"] is not None]
    for r in mse:
        print(f"  int8 top-1 at n={low}: fwedge mse {100 * r['accuracy']:.2f}% (drop {100 * (float_accuracy - r['accuracy']):.2f} pp)")


if __name__ == "__main__":
    sys.exit(main())

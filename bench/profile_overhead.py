#!/usr/bin/env python
"""Where the profilers' layer sums part from the ordinary run time: onnxruntime and OpenVINO.

    .venv/bin/python bench/profile_overhead.py ONNX_BUNDLE OPENVINO_BUNDLE [--runs 200] [--threads 1]

Interleaved in one process, one sample per call, --runs calls each (the medians printed):
- onnxruntime: a session without profiling (the ordinary time), one with enable_profiling (its
  wall time, its own model_run events, the sum of its Node kernel_time events per run);
- OpenVINO: infer() and start_async()+wait() on a compiled model without PERF_COUNT and on one
  with it, and the sum of the executed layers' real_time (the CPU plugin reports running means
  over a request's inferences: the timed runs' mean comes from the totals before and after).
`fwedge profile` reports the ratios these decompose (docs: README, "Per-layer profile").
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(call) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e3


def onnxruntime_figures(model: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as temp:
        sessions = []
        for profiled in (False, True):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_profiling = profiled
            options.profile_file_prefix = str(Path(temp) / "ort")
            sessions.append(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))
        feeds = {sessions[0].get_inputs()[0].name: x}
        for session in sessions:
            for _ in range(5):
                session.run(None, feeds)
        plain, profiled = [], []
        for _ in range(runs):
            plain.append(_timed(lambda: sessions[0].run(None, feeds)))
            profiled.append(_timed(lambda: sessions[1].run(None, feeds)))
        events = json.loads(Path(sessions[1].end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[5:]
    first = model_runs[0]["ts"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first]
    per_run: dict[int, float] = {}
    starts = [run["ts"] for run in model_runs]
    for event in kernels:
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        per_run[index] = per_run.get(index, 0.0) + event["dur"]
    return {"nodes per run": len(kernels) / len(model_runs), "ordinary run": float(np.median(plain)),
            "profiled run": float(np.median(profiled)), "model_run event": float(np.median([e["dur"] for e in model_runs])),
            "kernel sum": float(np.median(list(per_run.values())))}


def openvino_figures(bundle: Path, x: np.ndarray, runs: int, threads: int) -> dict:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(bundle / "model.xml"), str(bundle / "model.bin"))
    figures = {}
    for perf in (False, True):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                                     "PERF_COUNT": perf, "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        for _ in range(5):
            request.infer({0: x})

        def layer_total() -> float:
            return sum(info.real_time.total_seconds() * 1e6 for info in request.profiling_info
                       if str(info.status).endswith(".EXECUTED"))

        before = layer_total() * 5 if perf else 0.0
        infers = [_timed(lambda: request.infer({0: x})) for _ in range(runs)]
        middle = layer_total() * (5 + runs) if perf else 0.0
        request.set_input_tensor(ov.Tensor(x))
        asyncs = [_timed(lambda: (request.start_async(), request.wait())) for _ in range(runs)]
        label = "PERF_COUNT" if perf else "plain"
        figures[f"{label} infer()"] = float(np.median(infers))
        figures[f"{label} start_async+wait"] = float(np.median(asyncs))
        if perf:
            figures["layer sum (mean of the infer() runs)"] = (middle - before) / runs
            figures["infer() mean"] = float(np.mean(infers))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_bundle", type=Path)
    parser.add_argument("openvino_bundle", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    manifest = json.loads((args.onnx_bundle / "manifest.json").read_text())
    shape = [1, *manifest["inputs"][0]["shape"][1:]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for name, figures in (("onnxruntime", onnxruntime_figures(args.onnx_bundle / "model.onnx", x, args.runs, args.threads)),
                          ("OpenVINO", openvino_figures(args.openvino_bundle, x, args.runs, args.threads))):
        print(f"{name} (µs, medians of {args.runs} runs, {args.threads} thread(s)):")
        for key, value in figures.items():
            print(f"  {key:40s} {value:10.1f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Calibration peak memory on a large model: PP-OCRv4 det at 320x320, with and without the memory budget.

    .venv/bin/python bench/calibration_memory.py [--samples 64 256] [--methods minmax,kl]
        [--unbounded-methods minmax] [--json bench_calibration_memory.json]

The model is the PP-OCRv4 text detector that rapidocr-onnxruntime ships (dynamic input, run at
3x320x320). The data are real photographs (the sample images inside scikit-image's wheel; none
is downloaded), cropped at seeded offsets and resized to 320x320, written once as PNG files.

Measured on a 2-core AMD EPYC (128-sample photos, 64 and 256 samples):

    minmax  budget       64 samples  batch   2      8.3 s  peak RSS      494 MB
    minmax  budget      256 samples  batch   2     35.1 s  peak RSS      497 MB
    minmax  batch 64     64 samples  batch  64     38.1 s  peak RSS     8544 MB
    minmax  batch 64    256 samples  batch  64     59.6 s  peak RSS     9623 MB
    kl      budget       64 samples  batch   2     14.2 s  peak RSS      722 MB
    kl      budget      256 samples  batch   2     45.0 s  peak RSS      706 MB

Each configuration runs `fwedge.quantization.calibrate` in its own subprocess, so its peak RSS
(VmHWM from /proc/self/status) is its own:
- "budget": as fwedge runs it, --batch-size 64 cut to what CALIBRATION_MEMORY_BUDGET allows
  (fwedge/quantization/calibrate.py: ACTIVATION_COPIES batches of every calibrated tensor);
- "batch 64": the budget lifted, every batch 64 samples, as before the budget existed. Its kl
  run needs about 18 GB, so by default only minmax runs unbounded (--unbounded-methods).

Printed: wall time, peak RSS and the batch used per configuration, and the RSS growth from the
first to the last sample count (flat means memory does not depend on the number of samples).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREPROCESS = {"resize": [320, 320], "color": "rgb", "layout": "NCHW", "scale": 1 / 255,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "text", "page", "rocket", "immunohistochemistry",
          "coins", "hubble_deep_field", "horse", "clock", "moon", "grass", "brick")


def det_model() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"


def write_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` seeded 320x320 crops of scikit-image's photographs, as PNG files."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.dtype != np.uint8:
            image = (255 * (image.astype(np.float64) / max(1.0, float(image.max())))).astype(np.uint8)
        sources.append(image[..., :3])
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = sources[index % len(sources)]
        height, width = image.shape[:2]
        side = int(rng.integers(min(height, width) // 2, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        Image.fromarray(image[top:top + side, left:left + side]).resize((320, 320)).save(folder / f"{index:04d}.png")
    return folder


def worker(data: str, method: str, samples: int, unbounded: bool) -> dict:
    import importlib
    import logging

    from fwedge.data import Preprocess
    from fwedge.quantization import calibrate

    module = importlib.import_module("fwedge.quantization.calibrate")

    batches = []

    class Note(logging.Handler):
        def emit(self, record):
            batches.append(record.getMessage())

    logging.getLogger(module.__name__).addHandler(Note())
    logging.getLogger(module.__name__).setLevel(logging.INFO)
    if unbounded:
        module.CALIBRATION_MEMORY_BUDGET = 1 << 62
    start = time.perf_counter()
    calibrate(str(det_model()), data, method, samples, batch_size=64, preprocess=Preprocess.from_dict(PREPROCESS))
    seconds = time.perf_counter() - start
    hwm = 0.0
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024.0
    batch = 64
    for message in batches:
        if message.startswith("calibration batch "):
            batch = int(message.split()[2])
    return {"seconds": seconds, "peak_rss_mb": hwm, "batch": batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--methods", default="minmax,kl")
    parser.add_argument("--unbounded-methods", default="minmax",
                        help="Methods also run without the budget (batch 64): kl needs about 18 GB there.")
    parser.add_argument("--json", help="Write the measurements as JSON.")
    parser.add_argument("--worker", nargs=4, metavar=("DATA", "METHOD", "SAMPLES", "UNBOUNDED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        data, method, samples, unbounded = args.worker
        print(json.dumps(worker(data, method, int(samples), unbounded == "1")))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_photos(Path(tmp) / "photos", max(args.samples))
        for method in args.methods.split(","):
            for mode in ("budget", "batch 64") if method in args.unbounded_methods.split(",") else ("budget",):
                for samples in args.samples:
                    done = subprocess.run([sys.executable, __file__, "--worker", str(data), method, str(samples),
                                           "1" if mode == "batch 64" else "0"], capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{method} {mode} {samples}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    row = {"method": method, "mode": mode, "samples": samples, **json.loads(done.stdout)}
                    rows.append(row)
                    print(f"{method:7} {mode:9} {samples:5} samples  batch {row['batch']:3}  "
                          f"{row['seconds']:7.1f} s  peak RSS {row['peak_rss_mb']:8.0f} MB", flush=True)
    for method in args.methods.split(","):
        for mode in ("budget", "batch 64"):
            peaks = [r["peak_rss_mb"] for r in rows if r["method"] == method and r["mode"] == mode]
            if len(peaks) > 1:
                print(f"{method} {mode}: peak RSS {args.samples[0]} -> {args.samples[-1]} samples: "
                      f"{100 * (peaks[-1] / peaks[0] - 1):+.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How noisy is the gate's latency check? Identical bundles, separate runs vs interleaved A/B.

    .venv/bin/python bench/farm_ab_noise.py [--device host|qemu-aarch64] [--trials 10] [--repeats 40]

The peer is the naive comparison: a candidate's p50 from one farm run against a baseline p50
from another run. fwedge's `--baseline-bundles` alternates A and B on the same device in the
same job. Both are measured here, in the same process, on two copies of the same C bundle, so
any ratio away from 1.0 is pure noise: the spread is the smallest latency regression each method
can detect without false alarms.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fwedge.bundle import host_arch  # noqa: E402
from fwedge.device_farm import inventory  # noqa: E402
from fwedge.device_farm.runner import FarmOptions, run_farm  # noqa: E402
from fwedge.quantization import quantize  # noqa: E402
from tests import farm_helpers  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="host")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    device = inventory.select(inventory.auto_detect(), [args.device])[0]
    arch = host_arch() if args.device == "host" else device.arch
    with tempfile.TemporaryDirectory(prefix="fwedge-bench-") as temp:
        folder = Path(temp)
        model = quantize(farm_helpers.fashion_mlp(), "fashion-mnist:train", method="minmax", num_samples=128).model
        onnx.save(model, folder / "mlp_int8.onnx")
        [bundle] = farm_helpers.c_bundles(folder / "mlp_int8.onnx", [arch], folder / "B")
        shutil.copytree(bundle, folder / "A" / bundle.name)
        options = dict(data="fashion-mnist:test", limit=20, repeats=args.repeats)

        separate = []
        previous = None
        for _ in range(args.trials + 1):
            result = run_farm([bundle], [device], FarmOptions(**options)).results[0]
            if previous is not None:
                separate.append(result.latency.p50_ms / previous)
            previous = result.latency.p50_ms

        interleaved = []
        for _ in range(args.trials):
            results = run_farm([bundle], [device], FarmOptions(**options, rounds=args.rounds,
                                                               baseline_bundles=str(folder / "A")))
            interleaved.append(results.find(bundle.name, device.name).latency_ratio)

    def spread(ratios: list[float]) -> tuple[float, float]:
        deviations = [abs(r - 1.0) for r in ratios]
        return statistics.median(deviations), max(deviations)

    sep_median, sep_max = spread(separate)
    int_median, int_max = spread(interleaved)
    print(f"device {device.name}, identical C bundle ({arch}), {args.trials} trials x {args.repeats} timed runs")
    print(f"separate runs (naive)   : median |ratio-1| {100 * sep_median:5.1f}%   max {100 * sep_max:5.1f}%")
    print(f"interleaved A/B (fwedge): median |ratio-1| {100 * int_median:5.1f}%   max {100 * int_max:5.1f}%")
    if int_median > 0:
        print(f"noise ratio separate/interleaved (median): {sep_median / int_median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

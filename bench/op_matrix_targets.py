#!/usr/bin/env python
"""Op matrix report for the onnx, openvino and ncnn targets: fp32 max relative error, int8 steps and off-by-one counts.

    .venv/bin/python bench/op_matrix_targets.py [--targets openvino ncnn] [--batch 8]

The same single-node models and QDQ models (fwedge's quantizer) as tests/test_targets_matrix.py,
with a larger batch; prints one row per case and target: fp32 max |diff| / max |ref| against
onnxruntime, int8 max quantization steps against onnxruntime running the same QDQ model, and
how many output elements are exactly one step off.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["openvino", "ncnn"])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from fwedge.bundle import load_bundle
    from fwedge.eval import ort_session
    from fwedge.targets import ExportOptions, get_target
    from op_matrix import OP_CASES, output_scale, qdq_model, random_feeds, steps_off

    print(f"{'case':<24} {'target':<9} {'fp32 max rel':>13} {'int8 max steps':>15} {'one step off':>14}")
    totals = {target: [0, 0] for target in args.targets}
    with tempfile.TemporaryDirectory() as folder:
        for case in OP_CASES:
            feeds = random_feeds(case, batch=args.batch)
            reference = ort_session(case.model).run(["y"], feeds)[0]
            qdq = qdq_model(case)
            reference_q = ort_session(qdq).run(["y"], feeds)[0]
            step = output_scale(qdq, "y")
            for target in args.targets:
                module = get_target(target)
                module.export(case.model, Path(folder) / f"{case.id}-{target}-fp32", ExportOptions())
                got = module.run(load_bundle(Path(folder) / f"{case.id}-{target}-fp32"), feeds)["y"].reshape(reference.shape)
                relative = float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-12))
                module.export(qdq, Path(folder) / f"{case.id}-{target}-int8", ExportOptions())
                got_q = module.run(load_bundle(Path(folder) / f"{case.id}-{target}-int8"), feeds)["y"].reshape(reference_q.shape)
                steps = steps_off(reference_q, got_q, step)
                totals[target][0] += int((steps == 1).sum())
                totals[target][1] += int(steps.size)
                print(f"{case.id:<24} {target:<9} {relative:>13.2e} {int(steps.max()):>15d} "
                      f"{int((steps == 1).sum()):>8d}/{steps.size:<5d}")
    for target, (off, total) in totals.items():
        print(f"{target}: {off}/{total} int8 output elements one step off ({100 * off / total:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

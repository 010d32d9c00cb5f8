"""Examples shown at the end of every command's --help (click epilog), taken from the README."""
from __future__ import annotations

M = "examples/fashion_mnist"

EXAMPLES: dict[str, list[str]] = {
    "bench": [
        "fwedge bench build/bundles/model-onnx-int8 build/bundles/model-tflite-int8 --threads 1 --repeats 200",
        "fwedge bench build/bundles/model-aarch64-int8 --devices qemu-aarch64 --json build/bench.json",
    ],
    "profile": [
        "fwedge profile build/bundles/model-x86_64-int8 build/bundles/model-onnx-int8 --repeats 200 --json build/profile.json",
        "fwedge profile build/bundles/model-aarch64-int8 --devices qemu-aarch64 --threads 1",
    ],
    "inspect": [
        f"fwedge inspect {M}/mobilenet_v2_tiny.onnx",
        "fwedge inspect ch_ppocr_mobile_v2.0_cls_infer.onnx --input-shape x=1,3,48,192 --json summary.json",
    ],
    "eval": [
        f"fwedge eval {M}/cnn_small.onnx --data fashion-mnist:test",
        f"fwedge eval build/int8/cnn_small.onnx --data fashion-mnist:test --reference {M}/cnn_small.onnx --limit 1000",
    ],
    "prune": [
        f"fwedge prune {M}/mobilenet_v2_tiny.onnx --macs 0.5 --round-to 8 -o build/pruned.onnx",
        f"fwedge prune {M}/cnn_small.onnx --sparsity 0.8 -o build/sparse.onnx --json build/prune.json",
    ],
    "distill": [
        f"fwedge distill --teacher {M}/mobilenet_v2_tiny.onnx --student build/pruned.onnx "
        "--data fashion-mnist:train --epochs 4 -o build/distilled.onnx",
        f"fwedge distill --teacher {M}/mobilenet_v2_tiny.onnx --student build/pruned.onnx "
        "--data fashion-mnist:train --epochs 8 --flip --shift 2 --checkpoint build/ckpt --resume -o build/distilled.onnx",
    ],
    "qat": [
        f"fwedge qat {M}/mobilenet_v2_tiny.onnx --data fashion-mnist:train --per-tensor --symmetric "
        f"--teacher {M}/mobilenet_v2_tiny.onnx --temperature 2 --limit 10000 --epochs 2 -o build/qat.onnx",
        "fwedge qat build/model.int8.onnx --data fashion-mnist:train --epochs 4 --checkpoint build/qat-ckpt --resume "
        "-o build/qat.onnx",
    ],
    "calibrate": [
        f"fwedge calibrate {M}/cnn_small.onnx --data fashion-mnist:train --method kl -o build/table.json",
        f"fwedge calibrate {M}/cnn_small.onnx --data fashion-mnist:train --method percentile --num-samples 1024 "
        "-o build/table.json --ncnn-table build/cnn_small.table",
    ],
    "quantize": [
        f"fwedge quantize {M}/mobilenet_v2_tiny.onnx --data fashion-mnist:train --method kl -o build/int8/model.onnx",
        f"fwedge quantize {M}/mobilenet_v2_tiny.onnx --data fashion-mnist:train --max-accuracy-drop 0.5 "
        "--eval-data fashion-mnist:test --eval-limit 1000 -o build/int8/model.onnx --json build/quantize.json",
        f"fwedge quantize {M}/cnn_small.onnx --table build/table.json -o build/int8/cnn_small.onnx",
    ],
    "analyze": [
        f"fwedge analyze {M}/mobilenet_v2_tiny.onnx build/int8/model.onnx --data fashion-mnist:test",
        f"fwedge analyze {M}/mobilenet_v2_tiny.onnx build/int8/model.onnx --data fashion-mnist:test --limit 512 "
        "--json build/analysis.json",
    ],
    "export": [
        "fwedge export build/int8/model.onnx -t onnx -t tflite -t aarch64 -o build/bundles",
        "fwedge export build/int8/model.onnx -t riscv64 -t loongarch64 -o build/bundles --json build/export.json",
        f"fwedge export {M}/cnn_small.onnx -t x86_64 --fp32 --cflags='-march=x86-64-v3' -o build/bundles",
    ],
    "run": [
        "fwedge run build/bundles/model-aarch64-int8 --data fashion-mnist:test --limit 500",
        f"fwedge run build/bundles/model-onnx-int8 --data fashion-mnist:test --reference {M}/mobilenet_v2_tiny.onnx "
        "--exact-int8 --json -",
    ],
    "diff": [
        "fwedge diff build/bundles/model-ncnn-int8 build/int8/model.onnx --data fashion-mnist:test",
        "fwedge diff build/bundles/model-openvino-int8 build/int8/model.onnx --data fashion-mnist:test --exact-int8 --all",
    ],
    "farm list": [
        "fwedge farm list",
        "fwedge farm list --inventory farm.toml --json -",
        "fwedge farm list --labgrid-coordinator lab.example.com:20408 --place-tag board=rpi4",
    ],
    "farm run": [
        "fwedge farm run build/bundles/* --data fashion-mnist:test -o build/results.json",
        "fwedge farm run build/bundles/model-aarch64-int8 --devices qemu-aarch64,qemu-riscv64 --data fashion-mnist:test "
        "--baseline-bundles build/baseline -o build/results.json",
        "fwedge farm run build/bundles/model-aarch64-int8 --labgrid-coordinator lab.example.com:20408 "
        "--places rpi4-01,rpi4-02 --data fashion-mnist:test -o build/results.json",
    ],
    "gate": [
        "fwedge gate build/results.json --baseline baseline.json",
        "fwedge gate build/results.json --baseline baseline.json --max-instructions-increase 1% "
        "--max-latency-increase 10% --json build/gate.json",
        "fwedge gate build/results.json --baseline baseline.json --update-baseline",
    ],
    "report": [
        "fwedge report build/results.json -o build/report.html",
        "fwedge report build/results.json --analysis build/analysis.json --gate build/gate.json "
        "-o build/report.html --markdown build/summary.md",
        "fwedge report build/results.json --profile build/profile.json -o build/report.html",
    ],
    "pipeline": [
        f"fwedge pipeline {M}/pipeline.toml",
        f"fwedge pipeline {M}/pipeline.toml --set farm.repeats=50 --rerun farm",
        f"fwedge pipeline {M}/pipeline.toml --update-baseline",
    ],
}


def epilog(name: str) -> str | None:
    """The examples as a click epilog (a \\b paragraph is printed as written, not rewrapped)."""
    lines = EXAMPLES.get(name)
    if not lines:
        return None
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)

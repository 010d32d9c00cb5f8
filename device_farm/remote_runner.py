"""Runner script shipped to ssh boards: runs an ONNX or TFLite bundle with the board's own runtime.

Usage: python runner.py BUNDLE_DIR INPUTS.npz OUTPUTS.npz REPEATS

Standalone on purpose (numpy plus onnxruntime or tflite-runtime / ai-edge-litert on the board;
fwedge itself is not needed there). Prints `FWEDGE_LATENCIES_MS [...]`: per-iteration latency of
one single-sample inference, timed with time.perf_counter_ns on the board.
"""
import json
import sys
import time

import numpy as np

WARMUP_RUNS = 2


def _bundle_file(bundle_dir, manifest, suffix):
    for relative in manifest["files"]:
        if relative.endswith(suffix):
            return bundle_dir + "/" + relative
    raise SystemExit("runner: bundle has no *%s file" % suffix)


def onnx_session(bundle_dir, manifest):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(_bundle_file(bundle_dir, manifest, ".onnx"), options,
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def call(feeds):
        return dict(zip(names, session.run(names, feeds)))

    return call


def tflite_session(bundle_dir, manifest):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=_bundle_file(bundle_dir, manifest, ".tflite"))
    interpreter.allocate_tensors()
    inputs = {detail["name"]: detail for detail in interpreter.get_input_details()}
    outputs = interpreter.get_output_details()

    def call(feeds):
        results = {}
        for name, value in feeds.items():
            detail = inputs.get(name) or next(iter(inputs.values()))
            if list(detail["shape"]) != list(value.shape):
                interpreter.resize_tensor_input(detail["index"], list(value.shape))
                interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        for detail in outputs:
            results[detail["name"]] = interpreter.get_tensor(detail["index"]).copy()
        return results

    return call


SESSIONS = {"onnx": onnx_session, "tflite": tflite_session}


def main(argv):
    bundle_dir, inputs_path, outputs_path, repeats = argv[1], argv[2], argv[3], int(argv[4])
    with open(bundle_dir + "/manifest.json") as handle:
        manifest = json.load(handle)
    if manifest["target"] not in SESSIONS:
        raise SystemExit("runner: cannot run %r bundles" % manifest["target"])
    call = SESSIONS[manifest["target"]](bundle_dir, manifest)
    with np.load(inputs_path, allow_pickle=False) as archive:
        feeds = {name: archive[name] for name in archive.files}
    count = len(next(iter(feeds.values())))
    batch = manifest["inputs"][0]["shape"][0]
    step = batch if isinstance(batch, int) and batch > 0 else count
    parts = {}
    for start in range(0, count, step):
        result = call({name: value[start:start + step] for name, value in feeds.items()})
        for name, value in result.items():
            parts.setdefault(name, []).append(value)
    np.savez(outputs_path, **{name: np.concatenate(values) for name, values in parts.items()})
    one = {name: value[:1] for name, value in feeds.items()}
    for _ in range(WARMUP_RUNS):
        call(one)
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call(one)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
    print("FWEDGE_LATENCIES_MS " + json.dumps(latencies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

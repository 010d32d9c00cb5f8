"""Runs under qemu-aarch64 with the arm64 sysroot: invoke a LiteRT model K times on one input.

    python3.11 litert_invoke.py MODEL.tflite INPUT.npy OUTPUT.npy K [MAPS]

One invocation first (XNNPACK packs its weights then), then K more with the garbage collector
off, so that two runs with different K differ by exactly K invocations and their Python loop. With
MAPS, the process's /proc/self/maps is copied there at the end: where each library was loaded,
for the per-function split of the instruction counts.
"""
import gc
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main() -> None:
    model, input_path, output_path, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    output_detail = interpreter.get_output_details()[0]
    x = np.load(input_path).astype(input_detail["dtype"]).reshape(input_detail["shape"])
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    gc.disable()
    for _ in range(repeats):
        interpreter.invoke()
    np.save(output_path, interpreter.get_tensor(output_detail["index"]))
    if len(sys.argv) > 5:
        with open("/proc/self/maps") as maps, open(sys.argv[5], "w") as out:
            out.write(maps.read())


if __name__ == "__main__":
    main()

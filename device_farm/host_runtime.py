"""Host runtimes run in-process by the child of device_farm/host_child.py: every row in batches,
then single-sample calls timed around the target's run()."""
from __future__ import annotations

import time

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm.device import DeviceRunError
from fwedge.device_farm.results import DeviceRun
from fwedge.targets import get_target

# Rows per call when the bundle's batch is dynamic.
HOST_BATCH = 256
# Untimed calls before the timed ones (loading, first-call allocation).
WARMUP_RUNS = 2


def _static_batch(bundle: Bundle) -> int | None:
    first = bundle.inputs[0].shape[0] if bundle.inputs and bundle.inputs[0].shape else None
    return first if isinstance(first, int) and first > 0 else None


def as_output_dict(bundle: Bundle, outputs) -> dict[str, np.ndarray]:
    """A target's run() result (a dict, or a list in manifest output order) as a dict by name."""
    if isinstance(outputs, dict):
        return {name: np.asarray(value) for name, value in outputs.items()}
    names = [info.name for info in bundle.outputs]
    return {name: np.asarray(value) for name, value in zip(names, outputs)}


def run_host_runtime(bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
    """Run a host-runtime bundle with its target's `run(bundle, feeds)`.

    All rows go through in batches (the static batch of the bundle, else HOST_BATCH). Latency
    is `repeats` single-sample calls timed with perf_counter_ns after WARMUP_RUNS untimed ones;
    targets cache their compiled runtime per bundle (targets.common.RunnerCache), so the
    warm-up absorbs loading and the timed calls measure inference plus the Python call.

    Raises:
        DeviceRunError: the target module raised.
    """
    target = get_target(bundle.target)
    try:
        call = lambda feeds: target.run(bundle, feeds)  # noqa: E731
        count = len(next(iter(inputs.values())))
        step = _static_batch(bundle) or HOST_BATCH
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, step):
            feeds = {name: value[start:start + step] for name, value in inputs.items()}
            rows = len(next(iter(feeds.values())))
            if rows < step and _static_batch(bundle):
                # A static batch: pad the last chunk with copies of its first row, drop them after.
                feeds = {name: np.concatenate([value, np.repeat(value[:1], step - rows, axis=0)])
                         for name, value in feeds.items()}
            for name, value in as_output_dict(bundle, call(feeds)).items():
                chunks.setdefault(name, []).append(value[:rows])
        outputs = {name: np.concatenate(parts) for name, parts in chunks.items()}
        one = {name: value[:1] for name, value in inputs.items()}
        if _static_batch(bundle) and _static_batch(bundle) > 1:
            one = {name: np.repeat(value[:1], _static_batch(bundle), axis=0) for name, value in inputs.items()}
        for _ in range(WARMUP_RUNS):
            call(one)
        latencies = []
        for _ in range(repeats):
            start_ns = time.perf_counter_ns()
            call(one)
            latencies.append((time.perf_counter_ns() - start_ns) / 1e6)
    except DeviceRunError:
        raise
    except Exception as exc:  # a runtime's own exception types: record, don't crash the farm
        raise DeviceRunError(f"{bundle.target} runtime failed on bundle '{bundle.name}': "
                             f"{type(exc).__name__}: {exc}") from exc
    identity = {"timer": "perf_counter_ns around the target's run()"}
    return DeviceRun(outputs=outputs, latencies_ms=latencies, identity=identity)

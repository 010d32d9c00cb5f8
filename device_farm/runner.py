"""Run bundles on devices in parallel and measure accuracy, fidelity, latency, instructions (emulated boards) and size per pair."""
from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fwedge.bundle import Bundle, copy_verified, load_bundle
from fwedge.data import Preprocess, open_dataset
from fwedge.device_farm import device as device_farm_device
from fwedge.device_farm.device import Device, bundle_kind
from fwedge.device_farm.results import (
    ERROR, INSTRUCTIONS, OK, DeviceResult, DeviceRun, Instructions, Latency, Results,
    host_identity, now_utc,
)
from fwedge.detection import decode, map50
from fwedge.errors import DataError, DeviceError, FwEdgeError
from fwedge.eval import BatchedOrtRunner, FidelityAccumulator, output_step
from fwedge.reference import check_bundle_shapes, for_bundle, verify
from fwedge.tasks import AUTO, CLASSIFICATION, DETECTION, TASKS, task_of

log = logging.getLogger(__name__)

@dataclass
class FarmOptions:
    """Settings of one farm run.

    Attributes:
        data: evaluation data (open_dataset spec).
        repeats: timed single-sample iterations per (bundle, device).
        limit: seeded subset of the data (None: all samples; a data set with fewer is used whole).
        seed: subset seed.
        reference: FP32 reference ONNX model; default: the one each bundle records
            (fwedge.reference; loaded only with its recorded sha256).
        preprocess: a Preprocess.to_dict() used for every bundle instead of its manifest's.
        output: the output (ONNX name) accuracy and fidelity read, default each bundle's first.
        input_shapes: fixed shapes of the reference's dynamic inputs; each must agree with
            every bundle's input past the batch.
        retries: extra attempts after a failed device run (bounded).
        baseline_bundles: folder of baseline bundles, matched to candidates by directory name
            and run interleaved (A B A B) with them on the same device.
        rounds: how many A/B alternations the interleaved latency uses.
        task: one of fwedge.tasks.CHOICES: "classification", "signal", "detection" (adds mAP@0.5
            against the reference's boxes) or "auto" (task_of).
    """

    data: str
    repeats: int = 20
    limit: int | None = 500
    seed: int = 0
    reference: str | None = None
    preprocess: dict | None = None
    input_shapes: dict[str, list[int]] | None = None
    output: str | None = None
    retries: int = 1
    baseline_bundles: str | None = None
    rounds: int = 4
    batch_size: int = 256
    task: str = AUTO


@dataclass
class EvalSet:
    """Model-ready inputs and labels for one preprocessing spec."""

    inputs: np.ndarray
    labels: np.ndarray | None
    fingerprint: str


@dataclass
class Job:
    """One candidate bundle (and its optional baseline) on one device."""

    device: Device
    bundle: Bundle
    baseline: Bundle | None = None


@dataclass
class _Shared:
    """Per-run caches shared by the device threads (guarded by a lock)."""

    options: FarmOptions
    lock: threading.Lock = field(default_factory=threading.Lock)
    eval_sets: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)


def preprocess_of(bundle: Bundle, override: dict | None = None) -> Preprocess:
    """`override` (FarmOptions.preprocess), else the bundle's recorded preprocessing, else a
    guess from its first input shape."""
    if override:
        return Preprocess.from_dict(override)
    if bundle.preprocess:
        return Preprocess.from_dict(bundle.preprocess)
    return Preprocess.for_input_shape(bundle.inputs[0].shape if bundle.inputs else [])


def _eval_set(shared: _Shared, bundle: Bundle) -> EvalSet:
    spec = preprocess_of(bundle, shared.options.preprocess)
    key = repr(spec.to_dict())
    with shared.lock:
        if key not in shared.eval_sets:
            options = shared.options
            dataset = open_dataset(options.data)
            limit = options.limit
            if limit is not None and limit > dataset.num_samples:
                # As calibration does: a file smaller than the (default) subset is used whole.
                log.warning("data '%s' holds %d samples, fewer than the %d asked for: running on all %d",
                            options.data, dataset.num_samples, limit, dataset.num_samples)
                limit = None
            xs, ys = [], []
            indices = []
            for batch in dataset.batches(spec, batch_size=options.batch_size, limit=limit, seed=options.seed):
                xs.append(batch.x)
                indices.append(batch.indices)
                if batch.y is not None:
                    ys.append(batch.y)
            if not xs:
                raise DataError(f"data '{options.data}': no samples")
            shared.eval_sets[key] = EvalSet(
                inputs=np.concatenate(xs),
                labels=np.concatenate(ys) if ys else None,
                fingerprint=dataset.fingerprint(np.concatenate(indices)),
            )
        return shared.eval_sets[key]


def _reference_outputs(shared: _Shared, bundle: Bundle,
                       eval_set: EvalSet) -> tuple[np.ndarray | None, str | None, float | None]:
    """The reference's scored output on the eval set, its path, and its quantization step (None
    for a float output: fwedge.eval.output_step)."""
    reference, _ = for_bundle(bundle, shared.options.reference)
    if reference is None:
        return None, None, None
    key = (str(reference.path.resolve()), reference.sha256, eval_set.fingerprint, id(eval_set))
    with shared.lock:
        if key not in shared.references:
            if not reference.path.is_file():
                raise DataError(f"reference model '{reference.path}' for bundle '{bundle.name}': not found")
            runner = BatchedOrtRunner(reference.load(shared.options.input_shapes), shared.options.output)
            step = shared.options.batch_size
            values = np.concatenate(
                [runner(eval_set.inputs[start:start + step]) for start in range(0, len(eval_set.inputs), step)]
            )
            shared.references[key] = values, output_step([(runner, runner.output)])
        values, known_step = shared.references[key]
        return values, str(reference.path), known_step


def _scored_output(bundle: Bundle, run: DeviceRun, output: str | None) -> np.ndarray:
    _, name = bundle.output_names(output)
    if name in run.outputs:
        return np.asarray(run.outputs[name])
    if not run.outputs:
        raise DeviceError(f"bundle '{bundle.name}': the device returned no outputs")
    if output is not None:
        raise DeviceError(f"bundle '{bundle.name}': the device returned no output '{name}'")
    return np.asarray(next(iter(run.outputs.values())))


def _score(shared: _Shared, bundle: Bundle, device: Device, run: DeviceRun, eval_set: EvalSet,
           latencies: list[float], attempts: int, wall: float, role: str,
           instructions: Instructions | None = None) -> DeviceResult:
    logits = _scored_output(bundle, run, shared.options.output).astype(np.float32)
    count = len(eval_set.inputs)
    if len(logits) != count:
        raise DeviceError(f"bundle '{bundle.name}' on {device.name}: {len(logits)} output rows for {count} inputs")
    flat = logits.reshape(count, -1)
    task = task_of(shared.options.task, logits.shape)
    accuracy = None
    if eval_set.labels is not None and task == CLASSIFICATION:
        accuracy = float(np.mean(flat.argmax(axis=1) == eval_set.labels))
    reference, reference_path, reference_step = _reference_outputs(shared, bundle, eval_set)
    fidelity = None
    if reference is not None:
        reference_flat = reference.reshape(count, -1)
        # As eval and run count it: the reference's step, else the bundle's int8 output scale.
        scored, _ = bundle.output_names(shared.options.output)
        accumulator = FidelityAccumulator(reference_step or bundle.output_steps.get(scored))
        accumulator.update(reference_flat, flat)
        fidelity = accumulator.result().to_dict()
        if task == DETECTION:
            name = shared.options.output or "output"
            fidelity["map50"] = map50(decode(reference.reshape(logits.shape), name=name), decode(logits, name=name))
        if eval_set.labels is not None and task == CLASSIFICATION:
            fidelity["reference_accuracy"] = float(np.mean(reference_flat.argmax(axis=1) == eval_set.labels))
    return DeviceResult(
        bundle=bundle.name, device=device.name, status=OK, target=bundle.target, arch=bundle.arch,
        precision=bundle.precision, device_kind=device.kind, role=role, bundle_path=str(bundle.path),
        samples=count, accuracy=accuracy, fidelity=fidelity, latency=Latency.from_samples(latencies),
        performance=device.performance(), instructions=instructions,
        sizes=dict(bundle.sizes), identity={**device.identity(), **run.identity, "toolchain": bundle.versions},
        reference=reference_path, attempts=attempts, wall_seconds=round(wall, 3), task=task,
    )


def _error_result(bundle: Bundle, device: Device, exc: BaseException, attempts: int, wall: float, role: str) -> DeviceResult:
    stderr = getattr(exc, "stderr", "") or ""
    return DeviceResult(
        bundle=bundle.name, device=device.name, status=ERROR, target=bundle.target, arch=bundle.arch,
        precision=bundle.precision, device_kind=device.kind, role=role, bundle_path=str(bundle.path),
        sizes=dict(bundle.sizes), attempts=attempts, wall_seconds=round(wall, 3),
        error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__,
        stderr_tail=stderr[-2000:] or None,
    )


def _with_retries(shared: _Shared, call: Callable[[], DeviceRun], what: str) -> tuple[DeviceRun, int]:
    attempts = 0
    while True:
        attempts += 1
        try:
            return call(), attempts
        except DeviceError as exc:
            if attempts > shared.options.retries or device_farm_device.CANCELLED.is_set():
                exc.attempts = attempts
                raise
            log.warning("%s failed (attempt %d of %d), retrying: %s", what, attempts,
                        shared.options.retries + 1, str(exc).splitlines()[0])


def _count(shared: _Shared, device: Device, bundle: Bundle, feeds: dict, what: str) -> tuple[Instructions | None, int]:
    """The device's instruction count of one inference (None where it counts none), with retries."""
    if device.performance() != INSTRUCTIONS:
        return None, 0
    log.info("counting the instructions of %s", what)
    return _with_retries(shared, lambda: device.count_instructions(bundle, feeds), f"counting {what}")


def run_job(shared: _Shared, job: Job) -> list[DeviceResult]:
    """Run one job; a device failure becomes an error result, never an exception.

    Right before the run, each bundle is copied into a private work folder and the copy is
    verified (files, manifest digest, nothing unlisted); the device runs only that copy. A
    bundle changed since the farm run started is an error result.
    """
    options = shared.options
    device, bundle, baseline = job.device, job.bundle, job.baseline
    started = time.monotonic()
    try:
        eval_set = _eval_set(shared, bundle)
    except FwEdgeError as exc:
        return [_error_result(bundle, device, exc, 0, 0.0, "candidate")]
    feeds = {bundle.inputs[0].name if bundle.inputs else "input": eval_set.inputs}
    with tempfile.TemporaryDirectory(prefix="fwedge-verified-") as work:
        try:
            candidate_copy = copy_verified(bundle, Path(work) / "candidate")
        except FwEdgeError as exc:
            _log_failure(exc, bundle, device)
            failed = [_error_result(bundle, device, exc, 0, time.monotonic() - started, "candidate")]
            if baseline is not None:
                failed.insert(0, _error_result(baseline, device, DeviceError(
                    f"not run: its candidate '{bundle.name}' failed verification"), 0, 0.0, "baseline"))
            return failed
        if baseline is None:
            try:
                what = f"'{bundle.name}' on {device.name}"
                run, attempts = _with_retries(shared, lambda: device.run(candidate_copy, feeds, options.repeats), what)
                instructions, tries = _count(shared, device, candidate_copy, feeds, what)
                return [_score(shared, bundle, device, run, eval_set, run.latencies_ms, attempts + tries,
                               time.monotonic() - started, "candidate", instructions)]
            except Exception as exc:  # noqa: BLE001 - keep the other devices' results
                _log_failure(exc, bundle, device)
                return [_error_result(bundle, device, exc, getattr(exc, "attempts", 1), time.monotonic() - started, "candidate")]
        try:
            baseline_copy = copy_verified(baseline, Path(work) / "baseline")
        except FwEdgeError as exc:
            _log_failure(exc, baseline, device)
            return [_error_result(baseline, device, exc, 0, time.monotonic() - started, "baseline"),
                    _error_result(bundle, device, DeviceError(
                        f"not run: its baseline '{baseline.path}' failed verification"), 0, 0.0, "candidate")]
        return _interleaved(shared, job, eval_set, feeds, started,
                            {"baseline": baseline_copy, "candidate": candidate_copy})


def paired_ratio(baseline: list[float], candidate: list[float]) -> float | None:
    """The median over rounds of candidate / baseline, each round's A and B run back to back.

    A shared host's load drifts between rounds; a ratio of the two pooled medians carries that
    drift whenever the rounds' timings are unevenly spread, while each round's own ratio sees A
    and B under nearly the same load, so their median measures the bundles, not the drift.
    """
    pairs = [b / a for a, b in zip(baseline, candidate) if a > 0]
    return float(np.median(pairs)) if pairs and len(baseline) == len(candidate) else None


def _interleaved(shared: _Shared, job: Job, eval_set: EvalSet, feeds: dict, started: float,
                 copies: dict[str, Bundle]) -> list[DeviceResult]:
    """Baseline A and candidate B alternate A B A B on one device; latency becomes a ratio.

    The first round feeds every sample (accuracy, fidelity); later rounds feed one sample and
    only time it, so both bundles see the same machine load at nearly the same moments.
    `copies` holds the verified private copy of each role's bundle; only those run.
    """
    options = shared.options
    device, candidate, baseline = job.device, job.bundle, job.baseline
    rounds = max(1, options.rounds)
    per_round = max(1, -(-options.repeats // rounds))
    first_row = {name: value[:1] for name, value in feeds.items()}
    runs: dict[str, DeviceRun] = {}
    latencies: dict[str, list[float]] = {"baseline": [], "candidate": []}
    round_medians: dict[str, list[float]] = {"baseline": [], "candidate": []}
    attempts = {"baseline": 0, "candidate": 0}
    failed: dict[str, BaseException] = {}
    for index in range(rounds):
        for role, bundle in (("baseline", baseline), ("candidate", candidate)):
            if role in failed:
                continue
            batch = feeds if index == 0 else first_row
            try:
                run, tries = _with_retries(shared, lambda b=copies[role], f=batch: device.run(b, f, per_round),
                                           f"'{bundle.name}' ({role}) on {device.name}")
            except Exception as exc:  # noqa: BLE001
                _log_failure(exc, bundle, device)
                failed[role] = exc
                attempts[role] += getattr(exc, "attempts", 1)
                continue
            attempts[role] += tries
            runs.setdefault(role, run)
            latencies[role].extend(run.latencies_ms)
            if run.latencies_ms:
                round_medians[role].append(float(np.median(run.latencies_ms)))
    counts: dict[str, Instructions | None] = {}
    for role, bundle in (("baseline", baseline), ("candidate", candidate)):
        if role in failed:
            continue
        try:  # exact, so counted once per bundle, not per round
            counts[role], tries = _count(shared, device, copies[role], feeds, f"'{bundle.name}' ({role}) on {device.name}")
            attempts[role] += tries
        except Exception as exc:  # noqa: BLE001
            _log_failure(exc, bundle, device)
            failed[role] = exc
            attempts[role] += getattr(exc, "attempts", 1)
    wall = time.monotonic() - started
    results = {}
    for role, bundle in (("baseline", baseline), ("candidate", candidate)):
        if role in failed:
            results[role] = _error_result(bundle, device, failed[role], attempts[role], wall, role)
        else:
            try:
                results[role] = _score(shared, bundle, device, runs[role], eval_set, latencies[role],
                                       attempts[role], wall, role, counts.get(role))
            except Exception as exc:  # noqa: BLE001
                results[role] = _error_result(bundle, device, exc, attempts[role], wall, role)
    if results["baseline"].ok and results["candidate"].ok:
        results["candidate"].latency_ratio = paired_ratio(round_medians["baseline"], round_medians["candidate"])
        if results["baseline"].instructions is not None:
            results["candidate"].baseline_instructions = results["baseline"].instructions.per_inference
    results["candidate"].baseline_bundle = str(baseline.path)
    return [results["baseline"], results["candidate"]]


def _not_run(job: Job, exc: BaseException) -> list[DeviceResult]:
    """Error results for a job its device never ran (the device could not be held)."""
    roles = [("baseline", job.baseline)] if job.baseline is not None else []
    return [_error_result(bundle, job.device, exc, 0, 0.0, role) for role, bundle in [*roles, ("candidate", job.bundle)]]


@contextmanager
def _interrupt_on_sigterm():
    """In the main thread, SIGTERM (a CI job cancelled, `timeout`) raises KeyboardInterrupt as
    Ctrl-C does, so the farm stops its device programs and releases held boards first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_failure(exc: BaseException, bundle: Bundle, device: Device) -> None:
    if isinstance(exc, FwEdgeError):
        log.warning("'%s' on %s failed: %s", bundle.name, device.name, str(exc).splitlines()[0])
    else:
        log.exception("'%s' on %s: unexpected error", bundle.name, device.name)


def plan(bundles: list[Bundle], devices: list[Device], baseline_dir: str | None = None) -> tuple[list[Job], list[str]]:
    """Pair every bundle with every device that can run it.

    Returns:
        (jobs, notes): notes name bundles no device can run.

    Raises:
        DeviceError: a baseline folder is given but lacks a bundle of a candidate's name, or
            holds one of another kind.
    """
    jobs, notes = [], []
    for bundle in bundles:
        baseline = None
        if baseline_dir:
            path = Path(baseline_dir) / bundle.name
            if not path.is_dir():
                raise DeviceError(f"baseline bundles '{baseline_dir}': no bundle named '{bundle.name}' "
                                  "(baselines are matched to candidates by directory name)")
            baseline = load_bundle(path)
            if bundle_kind(baseline) != bundle_kind(bundle):
                raise DeviceError(f"baseline bundle '{path}' is {bundle_kind(baseline)}, candidate "
                                  f"'{bundle.path}' is {bundle_kind(bundle)}")
        runnable = [device for device in devices if device.can_run(bundle)]
        if not runnable:
            reasons = "; ".join(f"{device.name}: {device.why_not(bundle)}" for device in devices)
            notes.append(f"bundle '{bundle.name}' ({bundle_kind(bundle)}): no device can run it ({reasons})")
        jobs.extend(Job(device, bundle, baseline) for device in runnable)
    return jobs, notes


def result_count(jobs: list[Job]) -> int:
    """How many results `jobs` give (a job with a baseline gives two): a progress bar's total."""
    return sum(2 if job.baseline else 1 for job in jobs)


def _run_devices(shared: _Shared, jobs: list[Job],
                 progress: Callable[[DeviceResult], None] | None) -> list[DeviceResult]:
    """Run the jobs, one thread per device, each device's jobs inside one hold of it."""
    by_device: dict[str, list[Job]] = {}
    for job in jobs:
        by_device.setdefault(job.device.name, []).append(job)
    collected: list[DeviceResult] = []
    collected_lock = threading.Lock()
    cancel = threading.Event()

    def deliver(result: DeviceResult) -> None:
        with collected_lock:
            collected.append(result)
        if progress:
            progress(result)

    def work(device_jobs: list[Job]) -> None:
        # One thread per device: a device runs its bundles one after another, so two bundles
        # never compete for the same board, and all inside one hold (a labgrid place stays
        # acquired from the first run to the last, A/B rounds included).
        device, done = device_jobs[0].device, 0
        try:
            with device.hold(cancel):
                for job in device_jobs:
                    if cancel.is_set():
                        break
                    for result in run_job(shared, job):
                        deliver(result)
                    done += 1
        except FwEdgeError as exc:
            log.warning("%s: %s", device.name, str(exc).splitlines()[0])
            for job in device_jobs[done:]:
                for result in _not_run(job, exc):
                    deliver(result)

    for bundle in {id(job.bundle): job.bundle for job in jobs}.values():
        # Read the data before any device is held, so a run whose devices all failed (a place
        # held by someone else) still records how many samples it was to score.
        try:
            _eval_set(shared, bundle)
        except FwEdgeError:
            pass  # that bundle's jobs report it as their error result
    device_farm_device.CANCELLED.clear()
    with _interrupt_on_sigterm(), ThreadPoolExecutor(max_workers=max(1, len(by_device)),
                                                      thread_name_prefix="farm") as pool:
        futures = [pool.submit(work, device_jobs) for device_jobs in by_device.values()]
        try:
            for future in futures:
                future.result()
        except BaseException:
            # Ctrl-C or SIGTERM: stop the running device programs so every device thread leaves
            # its hold (releasing shared boards) before the interrupt goes on.
            cancel.set()
            device_farm_device.cancel_running()
            raise
    return collected


def run_farm(
    bundle_paths: list[Bundle | str | os.PathLike],
    devices: list[Device],
    options: FarmOptions,
    progress: Callable[[DeviceResult], None] | None = None,
) -> Results:
    """Run every bundle on every device that can run it; devices work in parallel threads.

    Args:
        bundle_paths: loaded bundles, or bundle directories (loaded and verified against their
            manifests); either way each is verified again as it is copied for its run.
        devices: the devices to use.
        options: FarmOptions.
        progress: called with each DeviceResult as it completes.

    Returns:
        Results holding one DeviceResult per (bundle, device) pair (two with a baseline: the
        baseline's and the candidate's); failed runs are error results, not exceptions.

    Raises:
        ExportError: a bundle is missing or tampered with.
        DeviceError: bad baseline bundles; DataError: unusable data or preprocessing, or an
            input shape that does not fit a bundle; ModelError: a recorded reference changed.
    """
    if options.repeats < 1:
        raise DeviceError(f"repeats must be at least 1, got {options.repeats}")
    if options.task not in (AUTO, *TASKS):
        raise DeviceError(f"task must be one of {AUTO}, {', '.join(TASKS)}; got {options.task!r}")
    bundles = [path if isinstance(path, Bundle) else load_bundle(path) for path in bundle_paths]
    names = [bundle.name for bundle in bundles]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DeviceError(f"bundle names must be unique (results are keyed by name): {duplicates}")
    if options.preprocess:
        Preprocess.from_dict(options.preprocess)
    checked: set = set()
    for bundle in bundles:
        check_bundle_shapes(bundle, options.input_shapes)
        bundle.output_names(options.output)
        reference, _ = for_bundle(bundle, options.reference)
        if reference is not None and reference.sha256 and (reference.path, reference.sha256) not in checked:
            verify(reference)  # a changed reference is bad input (exit 2), not a failed run
            checked.add((reference.path, reference.sha256))
    open_dataset(options.data)  # fail early on bad data, before any thread starts
    jobs, notes = plan(bundles, devices, options.baseline_bundles)
    for note in notes:
        log.warning("%s", note)
    shared = _Shared(options)
    collected = _run_devices(shared, jobs, progress)
    order = {(bundle.name, device.name): (i, j) for i, bundle in enumerate(bundles) for j, device in enumerate(devices)}
    collected.sort(key=lambda r: (order.get((r.bundle, r.device), (0, 0)), r.role != "baseline"))
    samples = max((len(s.inputs) for s in shared.eval_sets.values()), default=0)
    return Results(results=collected, data=str(options.data), samples=samples, repeats=options.repeats,
                   created=now_utc(), host=host_identity(), notes=notes)

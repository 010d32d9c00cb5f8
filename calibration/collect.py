"""Streaming statistics: absmax pass, then fixed-range histograms, in onnxruntime; and compute()."""
from __future__ import annotations

import functools
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from fwedge import ir
from fwedge.calibration.histogram import BinScratch, Histogram, bin_counts_and_zeros, layout
from fwedge.calibration.options import METHODS, Method, MethodOptions
from fwedge.calibration.table import QuantTable, params_from_range
from fwedge.data import check_batch_shape
from fwedge.errors import CalibrationError, DataError

log = logging.getLogger(__name__)

DEFAULT_BINS = 2048

Batches = Iterable | Callable[[], Iterable]


@dataclass
class CalibrationStats:
    """Per-tensor histograms of a calibration run; memory O(tensors × bins).

    Attributes:
        histograms: tensor name -> Histogram, in the order the tensors were requested.
        bins: magnitude bins per histogram.
        num_samples: samples seen (the first dimension summed over batches).
        model_sha256: sha256 of the source model, copied into the QuantTable.
        dataset: dataset fingerprint and description, copied into the QuantTable.
    """

    histograms: dict[str, Histogram]
    bins: int
    num_samples: int
    model_sha256: str = ""
    dataset: dict = field(default_factory=dict)


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns `tensors` as graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {value.name for value in out.graph.output}
    for name in tensors:
        if name not in existing:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def with_extremes(model: onnx.ModelProto, tensors: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy that outputs ReduceMin and ReduceMax (all axes) of each tensor, and those names.

    The first pass only needs extremes: reducing inside onnxruntime avoids copying every
    intermediate tensor out to numpy (about twice as fast).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = []
    for index, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            result = f"__fwedge_{op}_{index}"
            out.graph.node.append(helper.make_node(op, [name], [result], name=result, keepdims=0))
            out.graph.output.append(helper.make_tensor_value_info(result, TensorProto.FLOAT, []))
            names.append(result)
    return out, names


def _calibration_session(model: onnx.ModelProto, threads: int | None):
    """An onnxruntime session for statistics: no CPU memory arena, no memory pattern.

    The arena keeps its high-water mark and, with every intermediate tensor as an output,
    grows over the first batches; without it, peak memory is one batch's tensors and stays
    flat however many batches follow (the O(tensors x bins) promise).
    """
    import onnxruntime as ort

    from fwedge.errors import ModelError

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors are raised (ModelError) with their message, not logged too
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # Batches are large: idle worker threads spinning for the next op buy nothing here and,
    # on a busy machine, take cores from the ones doing the work (and from the binning thread).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"onnxruntime cannot load the calibration model: {exc}") from exc
    from fwedge.eval import CheckedSession

    return CheckedSession(session)


def _feeds(batch, input_names: list[str], input_shapes: list[list], source: str,
           input_dtypes: list[np.dtype]) -> dict[str, np.ndarray]:
    if isinstance(batch, Mapping):
        feeds = dict(batch)
    else:
        x = getattr(batch, "x", batch)
        if len(input_names) != 1:
            raise DataError(
                f"data '{source}': the model has {len(input_names)} inputs {input_names}; "
                "give each batch as a dict input name -> array"
            )
        feeds = {input_names[0]: x}
    for name, shape, dtype in zip(input_names, input_shapes, input_dtypes):
        if name not in feeds:
            raise DataError(f"data '{source}': no array for model input '{name}'")
        feeds[name] = np.ascontiguousarray(feeds[name], dtype=dtype)
        check_batch_shape(feeds[name], shape, source, name)
    return feeds


def _iterate(batches: Batches, pass_name: str) -> Iterator:
    source = batches() if callable(batches) else batches
    iterator = iter(source)
    if not callable(batches) and iterator is source and pass_name == "histogram":
        raise CalibrationError(
            "calibration makes two passes over the data: give a list or a callable returning a "
            "fresh iterator, not a one-shot generator"
        )
    return iterator



def _binning_threads(threads: int | None) -> int | None:
    """onnxruntime threads for the histogram pass: one core is left to the binning thread.

    The second pass overlaps two things: onnxruntime computing batch i+1 (it releases the GIL)
    and numpy binning batch i in a worker thread (np.bincount holds the GIL). Giving onnxruntime every core would make
    the two fight over them.
    """
    if threads:
        return threads
    return max(1, (os.cpu_count() or 2) - 1)


class _BinningWorker:
    """Bins batches in a worker thread while the calling thread runs onnxruntime on the next.

    onnxruntime releases the GIL while it runs; np.bincount holds it, so the two overlap. The
    model runs in the calling thread, so its allocations stay in the main malloc arena and
    peak memory behaves as in a single-threaded run; the worker only makes small temporaries.
    Before each run the caller takes a token (acquire()); the worker gives it back when it
    has binned that batch, so at most two batches of outputs exist at once. An exception in
    the worker is raised in the caller at its next acquire() or at the end of the with-block.
    """

    def __init__(self, consume: Callable[[object], None]):
        self._consume = consume
        self._tokens = threading.Semaphore(2)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="fwedge-calibration-binning", daemon=True)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._consume(item)
            except BaseException as exc:  # handed to the caller, which re-raises it
                self._error = exc
            finally:
                del item
                self._tokens.release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def acquire(self) -> None:
        """Wait until fewer than two batches are in flight."""
        self._tokens.acquire()
        self._raise_error()

    def submit(self, item: object) -> None:
        """Hand a batch (taken with acquire()) to the worker."""
        self._queue.put(item)

    def __enter__(self) -> "_BinningWorker":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise_error()


class _BufferedRunner:
    """Runs the histogram model with its outputs written straight into reusable numpy arrays.

    session.run allocates and copies every output for every batch: with every intermediate
    tensor as an output that is most of the data the pass moves. Here only the first run for a
    given input shape is a plain run; its output arrays become the destination (IOBinding) of
    later runs with that shape, and a second set of the same shapes is allocated when two
    batches are in flight. onnxruntime writes into them in place, so after the first batch no
    output memory is allocated at all and peak memory does not depend on the number of
    batches. Each handle goes back to the pool with release() once its values are binned.
    Graph inputs that are also calibrated are taken from the feeds, not copied through
    onnxruntime.
    """

    def __init__(self, session, tensors: list[str], input_names: list[str]):
        self._session = session
        self._inputs = [name for name in tensors if name in input_names]
        self._outputs = [name for name in tensors if name not in input_names]
        self._pool: dict[tuple, list] = {}
        self._shapes: dict[tuple, list[tuple]] = {}  # input shapes -> output (shape, dtype)s
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple]:
        """(tensor name -> values, handle to release) for one batch."""
        key = tuple((name, array.shape) for name, array in feeds.items())
        with self._lock:
            pooled = self._pool.setdefault(key, [])
            entry = pooled.pop() if pooled else None
            shapes = self._shapes.get(key)
        if entry is None and shapes is not None:
            entry = self._bind([np.empty(shape, dtype) for shape, dtype in shapes])
        if entry is None or not self._outputs:
            arrays = self._session.run(self._outputs, feeds) if self._outputs else []
            entry = self._bind(arrays)
            with self._lock:
                self._shapes[key] = [(array.shape, array.dtype) for array in arrays]
        else:
            binding, arrays = entry
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            self._session.run_with_iobinding(binding)
            produced = binding.get_outputs()
            if any(value.data_ptr() != array.ctypes.data for value, array in zip(produced, arrays)):
                # onnxruntime allocated elsewhere (a shape changed): read its arrays, drop the entry
                arrays = [value.numpy() for value in produced]
                entry = (self._session.io_binding(), [])
        values = dict(zip(self._outputs, arrays))
        values.update({name: feeds[name] for name in self._inputs})
        return values, (key, entry)

    def _bind(self, arrays: list[np.ndarray]) -> tuple:
        binding = self._session.io_binding()
        for name, array in zip(self._outputs, arrays):
            binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return binding, arrays

    def release(self, handle: tuple) -> None:
        """Return a run's output arrays to the pool once the caller is done with its values."""
        key, entry = handle
        if entry[1] or not self._outputs:
            with self._lock:
                self._pool.setdefault(key, []).append(entry)


def collect(
    model: onnx.ModelProto,
    batches: Batches,
    tensors: list[str],
    bins: int = DEFAULT_BINS,
    source: str = "data",
    progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    model_sha256: str = "",
    dataset: dict | None = None,
    histograms: bool = True,
) -> CalibrationStats:
    """Run the float model over the data twice and histogram every requested tensor.

    Pass 1 records each tensor's exact min and max. Pass 2 fills a histogram over the range fixed
    by pass 1: 2·bins bins over [-absmax, absmax] for signed tensors, bins over [0, max] for
    non-negative ones (see Histogram). Counts are integers over a fixed range, so the result is
    identical for any order of samples or batches; memory holds two batches (onnxruntime runs
    the next batch while numpy bins the current one) and the histograms.

    Args:
        model: the float model (the one QDQ insertion will use, so tensor names match).
        batches: arrays (single-input models) or dicts name -> array; a list, or a callable
            returning a fresh iterable (it is iterated twice).
        tensors: float tensors to observe (graph inputs, node outputs).
        bins: magnitude bins (TensorRT's 2048 by default).
        source: data description for error messages.
        progress: called with the number of samples after each batch of each pass.
        threads: onnxruntime intra-op threads (default: its own choice for the extremes pass,
            all cores but one for the histogram pass, whose binning runs alongside).
        histograms: make the second pass (False: extremes only, enough for minmax).

    Returns:
        CalibrationStats.

    Raises:
        CalibrationError: no tensors, no data, or a tensor with NaN/Inf.
        DataError: a batch whose shape does not fit the model input.
    """
    if not tensors:
        raise CalibrationError("nothing to calibrate: no float tensors to quantize were found")
    if bins < 8:
        raise CalibrationError(f"bins must be at least 8, got {bins}")
    extremes_model, extremes = with_extremes(model, tensors)
    session = _calibration_session(extremes_model, threads)
    inputs = ir.graph_inputs(model)
    input_names = [value.name for value in inputs]
    input_shapes = [ir.shape_of(value) for value in inputs]
    feeds = functools.partial(_feeds, input_names=input_names, input_shapes=input_shapes, source=source,
                              input_dtypes=[ir.input_dtype(value) for value in inputs])
    minimum, maximum, samples = _extremes_pass(session, extremes, batches, tensors, feeds, progress)
    _check_extremes(tensors, minimum, maximum, samples, source)
    if not histograms:
        empty = np.zeros(0, dtype=np.int64)
        return CalibrationStats(
            {name: Histogram(empty, 0.0, 0.0, minimum[name], maximum[name]) for name in tensors},
            0, samples, model_sha256, dict(dataset or {}))
    layouts = {name: layout(minimum[name], maximum[name], bins) for name in tensors}
    del session  # free the extremes session before the histogram session is built
    counts, zeros = _histogram_pass(model, batches, tensors, layouts, feeds, input_names, progress, threads)
    filled = {
        name: Histogram(counts[name], layouts[name][0], layouts[name][1], minimum[name], maximum[name], zeros[name])
        for name in tensors
    }
    log.info("calibration: %d tensors, %d samples, %d bins", len(tensors), samples, bins)
    return CalibrationStats(filled, bins, samples, model_sha256, dict(dataset or {}))


def _extremes_pass(session, extremes: list[str], batches: Batches, tensors: list[str],
                   feeds: Callable[[object], dict[str, np.ndarray]], progress: Callable[[int], None] | None):
    """Pass 1 of collect: each tensor's exact min and max (NaN once any batch gave NaN).

    Args:
        session: runs the with_extremes model; `extremes` are its min/max output names.

    Returns:
        (tensor -> min, tensor -> max, samples seen).
    """
    minimum = {name: np.inf for name in tensors}
    maximum = {name: -np.inf for name in tensors}
    samples = 0
    for batch in _iterate(batches, "absmax"):
        batch_feeds = feeds(batch)
        values = session.run(extremes, batch_feeds)
        for index, name in enumerate(tensors):
            low, high = float(values[2 * index]), float(values[2 * index + 1])
            if np.isnan(low) or np.isnan(high) or np.isnan(minimum[name]):
                minimum[name] = maximum[name] = float("nan")  # stays NaN: reported below
            else:
                minimum[name] = min(minimum[name], low)
                maximum[name] = max(maximum[name], high)
        count = len(next(iter(batch_feeds.values())))
        samples += count
        if progress:
            progress(count)
    return minimum, maximum, samples


def _check_extremes(tensors: list[str], minimum: dict[str, float], maximum: dict[str, float], samples: int,
                    source: str) -> None:
    """Refuse a calibration with no samples, or a tensor whose range is not finite."""
    if samples == 0:
        raise CalibrationError(f"data '{source}': no calibration samples")
    for name in tensors:
        if not (np.isfinite(minimum[name]) and np.isfinite(maximum[name])):
            raise CalibrationError(
                f"tensor '{name}': range [{minimum[name]}, {maximum[name]}] over the calibration "
                "data is not finite (NaN/Inf in the model's activations, or an empty tensor)"
            )


def _histogram_pass(model: onnx.ModelProto, batches: Batches, tensors: list[str],
                    layouts: dict[str, tuple], feeds: Callable[[object], dict[str, np.ndarray]],
                    input_names: list[str], progress: Callable[[int], None] | None, threads: int | None):
    """Pass 2 of collect: bin every tensor over its fixed layout while onnxruntime runs the next batch.

    Returns:
        (tensor -> bin counts, tensor -> count of exact zeros).
    """
    session = _calibration_session(with_outputs(model, tensors), _binning_threads(threads))
    counts = {name: np.zeros(layouts[name][2], dtype=np.int64) for name in tensors}
    zeros = dict.fromkeys(tensors, 0)

    runner = _BufferedRunner(session, tensors, input_names)

    scratch = BinScratch()  # allocated here, used only by the binning thread

    def consume(item: tuple[dict[str, np.ndarray], tuple]) -> None:
        values, handle = item
        for name in tensors:
            low, high, size = layouts[name]
            binned, zero_count = bin_counts_and_zeros(values[name], low, high, size, scratch)
            counts[name] += binned
            zeros[name] += zero_count
        runner.release(handle)

    with _BinningWorker(consume) as worker:
        for batch in _iterate(batches, "histogram"):
            batch_feeds = feeds(batch)
            worker.acquire()
            worker.submit(runner.run(batch_feeds))
            if progress:
                progress(len(next(iter(batch_feeds.values()))))
    return counts, zeros


def compute(
    stats: CalibrationStats,
    method: Method | str,
    options: MethodOptions | None = None,
) -> QuantTable:
    """Turn histograms into a QuantTable with one range method (a pure function per tensor).

    Args:
        stats: the collected statistics.
        method: kl, percentile, minmax or mse.
        options: method options; `symmetric` also selects symmetric activation parameters.

    Returns:
        The QuantTable.

    Raises:
        CalibrationError: an unknown method.
    """
    options = options or MethodOptions()
    try:
        method = Method(method)
    except ValueError as exc:
        raise CalibrationError(
            f"unknown calibration method {method!r}; choose one of {[m.value for m in Method]}"
        ) from exc
    function = METHODS[method]
    if method is not Method.MINMAX and any(h.counts.size == 0 for h in stats.histograms.values()):
        raise CalibrationError(f"method {method.value} needs histograms; collect ran the extremes pass only")
    tensors = {}
    for name, histogram in stats.histograms.items():
        low, high = function(histogram, options)
        tensors[name] = params_from_range(low, high, symmetric=options.symmetric)
    parameters = {
        "bins": stats.bins,
        "num_samples": stats.num_samples,
        "symmetric": options.symmetric,
    }
    if method is Method.PERCENTILE:
        parameters["percentile"] = options.percentile
    if method is Method.KL:
        parameters["num_quantized_bins"] = options.num_quantized_bins
        parameters["start_bin"] = options.start_bin
    return QuantTable(
        model_sha256=stats.model_sha256,
        method=method.value,
        parameters=parameters,
        dataset=dict(stats.dataset),
        tensors=tensors,
    )

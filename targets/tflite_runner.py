"""Running TFLite bundles on the host with ai-edge-litert (tflite-runtime on boards that have the legacy name)."""
from __future__ import annotations

import numpy as np

from fwedge.bundle import Bundle, TensorInfo
from fwedge.errors import ExportError
from fwedge.targets.common import RunnerCache, runtime_threads

# The bundle's model file, and the axis orders between fwedge's logical NCHW and TFLite's NHWC.
MODEL_FILE = "model.tflite"
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)


def _interpreter(bundle: Bundle, num_threads: int | None = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # boards with the legacy runtime package
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    threads = num_threads or runtime_threads() or int(bundle.extra.get("num_threads", 1))
    interpreter = Interpreter(model_path=str(bundle.file(MODEL_FILE)), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


_INTERPRETERS = RunnerCache(_interpreter)


def _to_device(spec: TensorInfo, batch: np.ndarray) -> np.ndarray:
    """One sample [1, ...] in the source model's layout as the device tensor: NHWC, quantized when
    int8, as it is when int32 (indices: an embedding's)."""
    if spec.dtype == "int32":
        return np.ascontiguousarray(batch, dtype=np.int32)
    array = np.asarray(batch, dtype=np.float32)
    if spec.transposed:
        array = array.transpose(NCHW_TO_NHWC)
    if spec.dtype == "int8":
        q = np.rint(array / np.float32(spec.scale)) + spec.zero_point
        return np.clip(q, -128, 127).astype(np.int8)
    return np.ascontiguousarray(array, dtype=np.float32)


def _from_device(spec: TensorInfo, array: np.ndarray) -> np.ndarray:
    """A device output back to float32 in the source model's layout."""
    if spec.dtype == "int8":
        array = (array.astype(np.int32) - spec.zero_point).astype(np.float32) * np.float32(spec.scale)
    if spec.transposed:
        array = array.transpose(NHWC_TO_NCHW)
    return np.asarray(array, dtype=np.float32)


def run(bundle: Bundle, feeds: dict[str, np.ndarray], num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Run a TFLite bundle with ai-edge-litert on the host.

    Args:
        bundle: a loaded TFLite bundle.
        feeds: input name -> float32 NCHW batch [N, ...]; the model is batch 1, so samples are
            run one by one.
        num_threads: interpreter threads (default: FWEDGE_THREADS, else the bundle's num_threads, 1).

    Returns:
        output name -> float32 array [N, ...] in logical (NCHW) layout, dequantized.

    Raises:
        ExportError: a missing input or a shape that does not fit.
    """
    interpreter = _INTERPRETERS.get(bundle) if num_threads is None else _interpreter(bundle, num_threads)
    details_in = {d["name"]: d for d in interpreter.get_input_details()}
    details_out = {d["name"]: d for d in interpreter.get_output_details()}
    batch = None
    for spec in bundle.inputs:
        if spec.name not in feeds:
            raise ExportError(f"bundle '{bundle.path}': input '{spec.name}' not fed; got {sorted(feeds)}")
        logical = spec.logical_shape
        array = feeds[spec.name]
        if array.ndim != len(logical) or list(array.shape[1:]) != list(logical[1:]):
            raise ExportError(f"bundle '{bundle.path}': input '{spec.name}' expects shape [N, "
                              f"{', '.join(map(str, logical[1:]))}] (NCHW), got {list(array.shape)}")
        batch = array.shape[0] if batch is None else batch
    results: dict[str, list[np.ndarray]] = {spec.name: [] for spec in bundle.outputs}
    for sample in range(batch or 0):
        for spec in bundle.inputs:
            device = _to_device(spec, feeds[spec.name][sample:sample + 1])
            interpreter.set_tensor(details_in[spec.name]["index"], device)
        interpreter.invoke()
        for spec in bundle.outputs:
            value = interpreter.get_tensor(details_out[spec.name]["index"])
            results[spec.name].append(_from_device(spec, value.copy()))
    return {name: np.concatenate(values) if values else np.zeros((0,), np.float32) for name, values in results.items()}


def intermediates(bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Values of internal tensors by ONNX name (float32, logical NCHW, dequantized), for `fwedge diff`.

    A name is found when the .tflite holds a tensor of that name, or when the lowering recorded
    which int8 tensor carries it (manifest extra "onnx_names"). Absent names are left out.
    """
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        from tflite_runtime.interpreter import Interpreter, OpResolverType  # type: ignore[no-redef]
    # Tensors inside an XNNPACK-delegated partition are never written back, so intermediates run
    # the builtin kernels without the default delegate (their results can differ from run() by
    # the kernels' own rounding).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "for debugging purposes only": this is debugging
        interpreter = Interpreter(
            model_path=str(bundle.file(MODEL_FILE)), experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    aliases = bundle.onnx_names
    wanted = {name: (name if name in details else aliases.get(name)) for name in names}
    wanted = {name: inner for name, inner in wanted.items() if inner in details}
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    batch = len(next(iter(feeds.values()))) if feeds else 0
    for sample in range(batch):
        for spec in bundle.inputs:
            interpreter.set_tensor(inputs[spec.name]["index"], _to_device(spec, feeds[spec.name][sample:sample + 1]))
        interpreter.invoke()
        for name, inner in wanted.items():
            detail = details[inner]
            value = interpreter.get_tensor(detail["index"]).copy()
            scales = detail["quantization_parameters"]["scales"]
            if value.dtype == np.int8 and scales.size == 1:
                zero = int(detail["quantization_parameters"]["zero_points"][0])
                value = (value.astype(np.int32) - zero).astype(np.float32) * np.float32(scales[0])
            if value.ndim == 4:
                value = value.transpose(NHWC_TO_NCHW)
            rows[name].append(value.astype(np.float32))
    return {name: np.concatenate(values) for name, values in rows.items() if values}

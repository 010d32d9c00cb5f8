"""Run any bundle on the host through its target's run(), and evaluate it with fwedge.eval."""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from fwedge.bundle import Bundle, load_bundle
from fwedge.data import Preprocess, open_dataset
from fwedge.errors import DataError, ExportError
from fwedge.eval import BatchedOrtRunner, evaluate
from fwedge.reference import check_bundle_shapes, for_bundle

log = logging.getLogger(__name__)


class BundleRunner:
    """An fwedge.eval Runner over a bundle: feeds the first input, returns the first output.

    Works for every target, because it only calls the target's `run(bundle, feeds)` (fwedge.targets).
    Inputs are float32 NCHW batches; the target's runner handles batching, layout and
    quantization at the edges.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, isolate: bool = False, exact_int8: bool = False,
                 output: str | None = None):
        """Args:
            bundle: a Bundle or a bundle directory (verified).
            output: the output __call__ returns (its ONNX name), default the first.
            isolate: run a host runtime in a child interpreter (device_farm.host_child), so
                that a runtime crash becomes a DeviceError instead of killing this process.
            exact_int8: run the runtime in its exact int8 mode (targets with the exact_int8
                capability: onnx, openvino), independent of the CPU's integer kernels.
        """
        from fwedge.targets import get_target

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if not self.bundle.inputs or not self.bundle.outputs:
            raise ExportError(f"bundle '{self.bundle.path}': manifest lists no inputs or outputs")
        self.target = get_target(self.bundle.target)
        self.target.require_exact(self.bundle, exact_int8)
        self.exact_int8 = exact_int8
        first = self.bundle.inputs[0]
        self.input_name = first.name
        # The manifest records the device layout; feeds are always logical NCHW.
        shape = first.logical_shape
        if not shape:
            raise ExportError(f"bundle '{self.bundle.path}': input {first.name!r} has no batch dimension (shape [])")
        self.input_shape = [None if dim < 0 else dim for dim in shape]
        self.input_shape[0] = None
        self.output, self.output_name = self.bundle.output_names(output)  # ONNX name, the bundle's own
        # The bundle's own output names -> their ONNX names (outputs() reports by ONNX name).
        self.onnx_names = {own: name for name, own in self.bundle.onnx_names.items()}
        self.output_steps = self.bundle.output_steps  # fwedge.eval.output_step
        self.process = None
        if isolate and self.bundle.target != "c":  # the C harness already runs as a child
            from fwedge.device_farm.host_child import HostRuntimeProcess

            self.process = HostRuntimeProcess(self.bundle, exact_int8=exact_int8)

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name."""
        if self.process is not None:
            return self.process.run(feeds)
        return self.target.run(self.bundle, feeds, exact_int8=self.exact_int8)

    def close(self) -> None:
        """Stop the runtime child, if any."""
        if self.process is not None:
            self.process.close()
            self.process = None

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of one batch, by ONNX name."""
        produced = self.run_all({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return {self.onnx_names.get(name, name): value for name, value in produced.items()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run_all({self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[self.output_name]


def evaluate_bundle(
    bundle_path: str | os.PathLike,
    data: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    exact_int8: bool = False,
    input_shapes: dict[str, list[int]] | None = None,
    output: str | None = None,
    task: str = "auto",
) -> dict:
    """Accuracy (labelled data) and fidelity (against a reference ONNX model in onnxruntime) of a bundle.

    Args:
        bundle_path: a bundle directory (verified against its manifest).
        data: a dataset spec for fwedge.data.open_dataset.
        reference: an ONNX model, e.g. the float model or the QDQ model; default: the reference
            the manifest records (fwedge.reference), loaded only with its recorded sha256.
        preprocess: override of the bundle's preprocessing spec.
        limit: a seeded random subset of this many samples.
        batch_size: samples per run() call.
        exact_int8: onnx and openvino bundles compute Q/DQ as defined (BundleRunner).
        input_shapes: fix dynamic inputs of the reference; each must agree with the bundle's own
            input (fixed at export) past the batch.
        output: the output (ONNX name) accuracy and top-1 agreement read, default the first;
            every output the bundle and the reference share is compared too ("outputs").
        task: fwedge.tasks; classification counts accuracy, detection adds "map50".

    Returns:
        {"bundle", "target", "arch", "precision", "data", "samples", "output", "preprocess",
        "reference", "reference_note", "task", "accuracy", "fidelity", "outputs", "map50"}; reference_note says why
        no reference was used; outputs: the Fidelity of every output both share, by name.

    Host runtimes run in a child interpreter, so a runtime that crashes on a bad bundle is a
    DeviceError (one line, exit 2), not a dead process.

    Raises:
        ExportError: the bundle is invalid or tampered with.
        DataError: unlabelled data without a reference, or shapes that do not fit.
        ModelError: the reference cannot be loaded, or changed since it was recorded.
        DeviceError: the runtime failed or crashed.
    """
    bundle = load_bundle(bundle_path)
    dataset = open_dataset(data)
    spec = preprocess or (Preprocess.from_dict(bundle.preprocess) if bundle.preprocess else None)
    if spec is None:
        raise DataError(f"bundle '{bundle_path}': no preprocessing in the manifest; give --preprocess")
    check_bundle_shapes(bundle, input_shapes)
    chosen, note = for_bundle(bundle, reference)
    scored, _ = bundle.output_names(output)
    reference_runner = None
    if chosen is not None:
        model = chosen.load(input_shapes)
        # The same output by name; a reference that names its outputs otherwise is read at its
        # first output unless --output-name asked for one by name.
        names = [value.name for value in model.graph.output]
        reference_runner = BatchedOrtRunner(model, scored if output or scored in names else None)
    runner = BundleRunner(bundle, isolate=True, exact_int8=exact_int8, output=output)
    try:
        scores = evaluate(runner, dataset, spec, reference_runner, batch_size, limit, progress, task=task)
    finally:
        runner.close()
    return {
        "bundle": str(bundle_path),
        "target": runner.bundle.target,
        "arch": runner.bundle.arch,
        "precision": runner.bundle.precision,
        "data": str(data),
        "preprocess": spec.to_dict(),
        "output": runner.output,
        "reference": str(chosen.path) if chosen is not None else None,
        "reference_note": note,
        **scores,
    }

"""ONNX target: the float or QDQ model itself, run by onnxruntime (the reference runtime)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from fwedge import ir
from fwedge.bundle import Bundle, write_bundle
from fwedge.ir import opset_version
from fwedge.errors import UnsupportedOpError
from fwedge.passes.float16 import to_float16
from fwedge.passes.fold_bn import fold_batchnorm
from fwedge.targets.base import ExportOptions, Target, target
from fwedge.targets.common import RunnerCache, check_feeds, io_specs, resolve_precision, runtime_threads

log = logging.getLogger(__name__)

TARGET = "onnx"
MODEL_FILE = "model.onnx"


def _session(bundle: Bundle, exact_qdq: bool = False):
    from fwedge.eval import ort_session

    # By default the fused integer kernels, as a deployed onnxruntime runs the bundle (see ort_session).
    return ort_session(bundle.file(MODEL_FILE), threads=runtime_threads(), exact_qdq=exact_qdq)


_SESSIONS = RunnerCache(_session)
_EXACT_SESSIONS = RunnerCache(lambda bundle: _session(bundle, exact_qdq=True))



@target("onnx")
class OnnxTarget(Target):
    """The model itself in onnxruntime; exact_int8 runs its Q/DQ as defined (fwedge.eval.ort_session)."""

    exact_int8 = True
    supports_intermediates = True

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Nodes onnxruntime has no CPU kernel for, at the model's opset."""
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        known = {(schema.domain, schema.name) for schema in state.get_all_operator_schema()}
        opset = opset_version(model)
        missing = []
        for node in model.graph.node:
            domain = node.domain if node.domain not in ("ai.onnx",) else ""
            if (domain, node.op_type) not in known:
                missing.append((node.name or node.output[0], node.op_type, opset))
        return missing

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Write the model (float or QDQ, unchanged; fp16: BN folded, then passes.float16.to_float16) as an ONNX bundle.

        Args:
            model: a loaded model (fwedge.ir.load).
            out_dir: the bundle directory to create or replace.
            options: ExportOptions.

        Returns:
            The written Bundle (precision "int8" when the model holds QDQ nodes).

        Raises:
            UnsupportedOpError: onnxruntime has no kernel for some nodes (all listed).
            ExportError: the requested precision contradicts the model.
        """
        import onnxruntime

        options = options or ExportOptions()
        self.own_options(options)
        precision = resolve_precision(model, options.precision, TARGET)
        missing = self.check(model, options)
        if missing:
            raise UnsupportedOpError(TARGET, missing)
        inputs, outputs = io_specs(model)
        if precision == "fp16":
            # BatchNormalization folded first, as onnxruntime does at load anyway: its running
            # variance need not fit float16 (PP-OCR det's first BN holds 9.8e7), the folded weights do.
            model = to_float16(fold_batchnorm(model))

        def write_files(folder: Path) -> dict:
            ir.save(model, folder / MODEL_FILE)
            return {"weights_bytes": sum(len(init.raw_data) for init in model.graph.initializer)}

        return write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision,
            source_sha256=options.source_sha256, inputs=inputs, outputs=outputs,
            write_files=write_files, preprocess=options.preprocess, reference=options.reference, kept_float=options.kept_float,
            toolchain={"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            extra={"opset": opset_version(model)},
        )

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run an ONNX bundle in onnxruntime on the host.

        Args:
            bundle: a loaded ONNX bundle.
            feeds: input name -> float32 NCHW batch.
            exact_int8: run Q/DQ as defined instead of onnxruntime's fused int8 kernels, whose
                results depend on the CPU (fwedge.eval.ort_session): for checking a bundle
                independently of the host CPU.

        Returns:
            output name -> float32 array, as onnxruntime returns it.
        """
        check_feeds(bundle, feeds)
        session = (_EXACT_SESSIONS if exact_int8 else _SESSIONS).get(bundle)
        return _run_batched(session, bundle, feeds, [spec.name for spec in bundle.outputs])

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Values of internal tensors (by ONNX name), for `fwedge diff`.

        Every requested tensor is made a graph output of a copy of the bundle's model.
        """
        from fwedge.eval import ort_session

        model = onnx.load(str(bundle.file(MODEL_FILE)))
        known = {output.name for output in model.graph.output}
        produced = {name for node in model.graph.node for name in node.output}
        wanted = [name for name in names if name in produced]
        for name in wanted:
            if name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        return _run_batched(ort_session(model, exact_qdq=exact_int8), bundle, feeds, wanted)


def _run_batched(session, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """`names` for the whole batch; a model exported with a fixed batch of 1 runs sample by sample."""
    batch = len(feeds[bundle.inputs[0].name])
    if all(spec.shape[0] == 1 for spec in bundle.inputs) and batch > 1:
        rows = [session.run(names, {spec.name: feeds[spec.name][i : i + 1] for spec in bundle.inputs})
                for i in range(batch)]
        return {name: np.concatenate([row[k] for row in rows]) for k, name in enumerate(names)}
    return dict(zip(names, session.run(names, {spec.name: feeds[spec.name] for spec in bundle.inputs})))

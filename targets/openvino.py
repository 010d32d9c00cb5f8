"""OpenVINO target: openvino.convert_model + save_model to IR (.xml/.bin); a QDQ model becomes FakeQuantize IR."""
from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import onnx

from fwedge.bundle import Bundle, write_bundle
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.ir import opset_version
from fwedge.targets.base import ExportOptions, Target, target
from fwedge.targets.common import RunnerCache, check_feeds, io_specs, resolve_precision, runtime_threads

log = logging.getLogger(__name__)

TARGET = "openvino"
XML_FILE = "model.xml"
BIN_FILE = "model.bin"


def _model_stream(model: onnx.ModelProto) -> io.BytesIO:
    return io.BytesIO(model.SerializeToString())


class _Compiled:
    """An IR model compiled once per batch size on CPU with f32 inference precision.

    exact_int8 turns off the CPU plugin's low-precision transformations, so FakeQuantize runs as
    the float op it defines instead of feeding oneDNN's int8 kernels. Those kernels depend on the
    CPU: without VNNI they add pairs of u8 x s8 products in saturating int16 (pmaddubsw) and a
    layer with full-range int8 weights comes out tens of steps off, while VNNI CPUs are exact.
    The exact mode checks what the bundle says, on any CPU; the default is what a deployed
    OpenVINO runs.
    """

    def __init__(self, bundle: Bundle, exact_int8: bool = False):
        import openvino as ov

        self.core = ov.Core()
        self.bundle = bundle
        self.exact_int8 = exact_int8
        self.compiled: dict[int, object] = {}
        self.requests: dict[int, object] = {}

    def read(self):
        return self.core.read_model(str(self.bundle.file(XML_FILE)), str(self.bundle.file(BIN_FILE)))

    def for_batch(self, batch: int):
        if batch not in self.compiled:
            model = self.read()
            shapes = {}
            for spec in self.bundle.inputs:
                shape = list(model.input(spec.name).get_partial_shape())
                if shape and (shape[0].is_dynamic or shape[0].get_length() != batch):
                    shapes[spec.name] = [batch] + [d.get_length() if d.is_static else -1 for d in shape[1:]]
            if shapes:
                model.reshape(shapes)
            self.compiled[batch] = self.compile(model)
            self.requests[batch] = self.compiled[batch].create_infer_request()
        return self.compiled[batch]

    def request(self, batch: int):
        """The compiled model and its reusable infer request for a batch size."""
        compiled = self.for_batch(batch)
        return compiled, self.requests[batch]

    def compile(self, model):
        # f32 inference precision: parity with onnxruntime must not depend on the CPU (bf16 on
        # AMX/AVX512-BF16 hosts, fp16 on ARM would be the default otherwise).
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.exact_int8:
            config["LP_TRANSFORMS_MODE"] = "NO"
        if runtime_threads():
            config["INFERENCE_NUM_THREADS"] = runtime_threads()
        return self.core.compile_model(model, "CPU", config)


_MODELS = RunnerCache(_Compiled)
_EXACT_MODELS = RunnerCache(lambda bundle: _Compiled(bundle, exact_int8=True))



# OpenVINO's "Model wasn't fully converted" report: one "While validating ONNX node '<Node(OP):
# NAME>'" per failed node, then a "Summary" line; the reason is the line after its "failed at".
_FAILED_NODE = re.compile(r"While validating ONNX node '<Node\((\w+)\): ([^>]*)>'")


def _untranslated(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node, op, opset) of each node a partial conversion keeps as an ONNXFrameworkNode: those
    OpenVINO's ONNX frontend has no translator for."""
    from openvino.frontend import FrontEndManager

    frontend = FrontEndManager().load_by_framework("onnx")
    partial = frontend.convert_partially(frontend.load(_model_stream(model)))
    by_name = {}
    for node in model.graph.node:
        for key in [node.name, *node.output]:
            if key:
                by_name.setdefault(key, node)
    opset = opset_version(model)
    missing = []
    for op in partial.get_ordered_ops():
        if op.get_type_name() not in ("ONNXFrameworkNode", "NotSupportedONNXNode", "FrameworkNode"):
            continue
        node = by_name.get(op.get_friendly_name())
        if node is None:
            missing.append((op.get_friendly_name(), op.get_type_name(), opset))
        else:
            missing.append((node.name or node.output[0], node.op_type, opset))
    return missing


def _failed_nodes(text: str, opset: int) -> list[tuple[str, str, int]]:
    """(node, op, opset) of each node an openvino.convert_model failure report names."""
    return [(name, op, opset) for op, name in dict.fromkeys(_FAILED_NODE.findall(text))]


def _failed_conversion(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """The nodes a full openvino.convert_model fails on; [] when it converts (or fails without
    naming nodes: export reports that failure itself)."""
    import openvino as ov

    try:
        ov.convert_model(_model_stream(model))
    except Exception as exc:  # ovc raises its own Error / RuntimeError types
        return _failed_nodes(str(exc), opset_version(model))
    return []


def conversion_failure(text: str) -> str:
    """One line for an openvino.convert_model failure: the nodes it could not convert and why
    (the first reason of each), or the first line of any other error."""
    nodes = list(dict.fromkeys(_FAILED_NODE.findall(text)))
    if not nodes:
        return "openvino.convert_model failed: " + text.strip().splitlines()[0][:300] if text.strip() else \
            "openvino.convert_model failed"
    reasons = []
    for block in re.split(r"\n\s*-- ", text)[1:]:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        detail = [line for line in lines if not line.startswith(("[ONNX Frontend]", "While validating", "Check ",
                                                                  "FrontEnd API", "Summary", "-- "))
                  and not line.endswith("with a message:")]
        reasons.append(detail[0][:120] if detail else "")
    shown = "; ".join(f"'{name}' ({op}{': ' + reasons[i] if i < len(reasons) and reasons[i] else ''})"
                      for i, (op, name) in enumerate(nodes[:5]))
    more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
    return f"the OpenVINO ONNX frontend could not convert {len(nodes)} node(s): {shown}{more}"


@target("openvino")
class OpenvinoTarget(Target):
    """OpenVINO IR from openvino.convert_model; exact_int8 runs FakeQuantize as the float op it defines (_Compiled)."""

    exact_int8 = True
    supports_intermediates = True

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Nodes OpenVINO's ONNX frontend cannot convert, found by a partial conversion.

        A partial conversion keeps every node it has no translator for as an ONNXFrameworkNode; those
        are the unsupported ones. When it finds none, a full conversion runs too: a node whose
        translator exists can still fail (silero-vad's If branch: a Conv on a tensor of unknown
        rank), and only the full conversion's report names it. Nothing is compiled.
        """
        return _untranslated(model) or _failed_conversion(model)

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Convert the float or QDQ model to OpenVINO IR and write it as a bundle.

        Weights stay float32 (compress_to_fp16=False) so the fp32 bundle matches onnxruntime; an fp16
        bundle stores them as float16 (compress_to_fp16=True: the IR decompresses them to float32
        at load, and the CPU plugin computes in f32 as _Compiled asks); a QDQ
        model's QuantizeLinear/DequantizeLinear pairs become FakeQuantize ops, which OpenVINO's
        low-precision transformations turn into int8 kernels at compile time.

        Raises:
            UnsupportedOpError: the ONNX frontend cannot translate some nodes (all listed).
            ExportError: precision mismatch, or the conversion fails.
        """
        import openvino as ov

        options = options or ExportOptions()
        self.own_options(options)
        precision = resolve_precision(model, options.precision, TARGET)
        # check() without its full conversion: the conversion below is that conversion.
        missing = _untranslated(model)
        if missing:
            raise UnsupportedOpError(TARGET, missing)
        try:
            converted = ov.convert_model(_model_stream(model))
        except Exception as exc:  # ovc raises its own Error / RuntimeError types
            failed = _failed_nodes(str(exc), opset_version(model))
            if failed:
                raise UnsupportedOpError(TARGET, failed) from exc
            raise ExportError(f"target {TARGET!r}: {conversion_failure(str(exc))}") from exc
        fake_quantize = sum(1 for op in converted.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        if precision == "int8" and fake_quantize == 0:
            raise ExportError(f"target {TARGET!r}: the QDQ model converted to IR without FakeQuantize ops")
        inputs, outputs = io_specs(model)

        def write_files(folder: Path) -> dict:
            ov.save_model(converted, str(folder / XML_FILE), compress_to_fp16=precision == "fp16")
            return {"weights_bytes": (folder / BIN_FILE).stat().st_size}

        return write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision,
            source_sha256=options.source_sha256, inputs=inputs, outputs=outputs,
            write_files=write_files, preprocess=options.preprocess, reference=options.reference, kept_float=options.kept_float,
            toolchain={"openvino": ov.get_version()},
            extra={"fake_quantize_ops": fake_quantize},
        )

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run an OpenVINO bundle on the host CPU.

        Args:
            bundle: a loaded OpenVINO bundle.
            feeds: input name -> float32 NCHW batch.
            exact_int8: compute FakeQuantize as defined instead of with the CPU's int8 kernels
                (_Compiled): for checking a bundle independently of the host CPU.

        Returns:
            output name -> float32 array (copied out of OpenVINO's buffers).
        """
        check_feeds(bundle, feeds)
        batch = len(feeds[bundle.inputs[0].name])
        if all(spec.shape[0] == 1 for spec in bundle.inputs) and batch > 1:
            # A model exported with a fixed batch of 1 (constant Reshape shapes, e.g. PP-OCR) cannot
            # be reshaped to the batch: run it sample by sample.
            rows = [self.run(bundle, {name: value[i : i + 1] for name, value in feeds.items()}, exact_int8=exact_int8)
                    for i in range(batch)]
            return {spec.name: np.concatenate([row[spec.name] for row in rows]) for spec in bundle.outputs}
        compiled, request = (_EXACT_MODELS if exact_int8 else _MODELS).get(bundle).request(batch)
        results = request.infer({spec.name: np.ascontiguousarray(feeds[spec.name]) for spec in bundle.inputs})
        out = {}
        for spec in bundle.outputs:
            out[spec.name] = np.array(results[compiled.output(spec.name)], dtype=np.float32, copy=True)
        return out

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Values of internal tensors that kept their ONNX names in the IR, for `fwedge diff`.

        Every IR op output whose tensor names include a requested ONNX name becomes a model output;
        names the conversion fused away (e.g. a Conv output folded with its BatchNormalization) are
        simply absent from the result.
        """
        holder = _Compiled(bundle, exact_int8=exact_int8)
        model = holder.read()
        wanted = set(names)
        found = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Result", "Constant"):
                continue
            for port in op.outputs():
                names = port.get_names()
                if len(names) > 1:
                    # Conversion merged tensors (e.g. a Clip removed in front of a FakeQuantize hands
                    # its name to the Add before it): the port holds the first op's value, so only the
                    # name matching the op itself is trusted.
                    names = {name for name in names if name == op.get_friendly_name()}
                for name in names:
                    if name in wanted and name not in found:
                        found[name] = port
        if not found:
            return {}
        model.add_outputs(list(found.values()))
        batch = len(feeds[bundle.inputs[0].name])
        per_sample = all(spec.shape[0] == 1 for spec in bundle.inputs)
        if not per_sample:
            shapes = {spec.name: [batch] + list(spec.shape[1:]) for spec in bundle.inputs if -1 not in spec.shape[1:]}
            if shapes:
                model.reshape(shapes)
        compiled = holder.compile(model)
        request = compiled.create_infer_request()
        chunks = [slice(i, i + 1) for i in range(batch)] if per_sample else [slice(0, batch)]
        collected: dict[str, list[np.ndarray]] = {}
        for chunk in chunks:
            results = request.infer({spec.name: np.ascontiguousarray(feeds[spec.name][chunk]) for spec in bundle.inputs})
            seen = set()
            for output in compiled.outputs:
                for name in output.get_names():
                    if name in found and name not in seen:
                        seen.add(name)
                        collected.setdefault(name, []).append(np.array(results[output], dtype=np.float32, copy=True))
        return {name: np.concatenate(parts) for name, parts in collected.items()}

"""NCNN target: fwedge's own .param/.bin writer (fp32, and int8 from the QDQ model's scales), run by the ncnn Python module.

Why a direct writer rather than the pnnx binary: the int8 model has to be written by fwedge anyway
(ncnn2int8 is not available, and pnnx has no way to take fwedge's scales), and one writer for
both precisions means the fp32 and int8 bundles share every non-quantized layer. The writer also
keeps ONNX tensor names as blob names, so `fwedge diff` can extract any intermediate blob and
compare it with the reference by name; pnnx renames blobs. pnnx stays useful as an independent
cross-check of the fp32 numerics (tests/test_targets_ncnn.py, marker pnnx).

Source of the int8 model: the QDQ ONNX model itself, not the lowered integer graph. ncnn's int8
layers are float-in/float-out: Convolution, ConvolutionDepthWise and InnerProduct quantize their
input with `bottom_blob_int8_scales`, multiply int8 weights (`weight_data_int8_scales` per output
channel, per group for ConvolutionDepthWise), accumulate in int32 and dequantize (+ float bias).
That is exactly a QDQ Conv: DQ(Q(x)) * DQ(W) + DQ(b), so the QDQ graph's scales map one to one;
the lowered graph's requantization multipliers have no place in ncnn's format. Every other op
runs in float between the int8 layers; where the QDQ model has a Q/DQ pair on its input, the
writer inserts a fake quantization (x / s, round half to even, clamp, × s: four cheap layers), so
it computes on the same values as onnxruntime, including the clamp that stands in for a Relu the
quantizer removed. Graph outputs behind a Q/DQ pair are fake-quantized the same way.

Zero points: ncnn int8 activations are symmetric (q = clamp(round(x * scale), -127, 127), no zero
point), fwedge's default activations are asymmetric. A layer whose input has zero point zp != 0
reads a shifted blob x + m·s (one BinaryOp; an explicit Padding with value m·s replaces the
convolution's zero padding) and its bias absorbs -m·s·ΣW, with m = zp (or zp + 1 when zp = -128,
so that a post-ReLU zero stays exact). Inside the quantization window this is exactly ORT's
QuantizeLinear; the one value ncnn's [-127, 127] clamp cannot hold is the window's top (zp =
-128) or bottom (otherwise) level, which saturates one step early. Symmetric QDQ models need no
shift and lose only the -128 level.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx

from fwedge.bundle import Bundle, write_bundle
from fwedge.errors import ExportError, UnsupportedOpError
from fwedge.ir import opset_version
from fwedge.op_info import attribute
from fwedge.targets.base import ByOpTypeOnly, ExportOptions, Target, target
from fwedge.targets.common import (
    QDQ_OPS, RunnerCache, check_feeds, has_qdq, io_specs, resolve_precision, runtime_threads,
)
# Re-exported: callers and tests reach the preparation and the writer through this module.
from fwedge.targets.ncnn_view import (  # noqa: F401
    _ALIAS, TARGET, ActQuant, FloatView, WeightQuant, float_view, prepare,
)
from fwedge.targets.ncnn_writer import (  # noqa: F401
    _BINARY, _UNARY, Layer, NcnnWriter, ncnn_bilinear_problem, ncnn_nearest, permute_order, write_ncnn,
)

log = logging.getLogger(__name__)

PARAM_FILE = "model.param"
BIN_FILE = "model.bin"

# Every ONNX op this writer takes (Q/DQ pairs and aliases are folded into the float view first);
# tests/test_op_cards.py checks it against the op cards that lower.
WRITTEN_OPS = frozenset(_UNARY) | frozenset(_BINARY) | frozenset(_ALIAS) | frozenset(QDQ_OPS) | frozenset({
    "Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Softmax", "Pad",
    "PRelu", "Transpose", "Resize", "DepthToSpace", "Slice", "Split", "Gather", "LayerNormalization",
})

# Ops the lowering takes that ncnn refuses by design, each with its reason (tests/test_op_cards.py
# counts them as answered). The one-hot embedding (fwedge/ops/embedding.py): ncnn's Embed reads
# its index blob's bits as int32 and does not clamp them, and every ncnn blob here is float32 (no
# layer casts to int32): a float index would read outside the table (measured: a segfault on
# magika's bytes).
REFUSED_OPS = {
    "Equal": "the one-hot embedding: ncnn's Embed reads int32 index bits from a float blob, unclamped",
    "Cast": "the one-hot embedding's Cast: ncnn has no int32 blobs",
}


# --------------------------------------------------------------------------------------------
# Support check
# --------------------------------------------------------------------------------------------


def _reason(node: onnx.NodeProto, view: FloatView) -> str | None:
    """Why the writer cannot take this node, or None."""
    op = node.op_type
    consts = view.consts
    if node.domain not in ("", "ai.onnx"):
        return "custom domain"
    if op in REFUSED_OPS:
        return REFUSED_OPS[op]
    if op not in WRITTEN_OPS:
        return "no ncnn writer for this op"
    if op == "PRelu":
        from fwedge.ops.prelu import slopes

        found = slopes(view, node)
        return found if isinstance(found, str) else None
    if op == "Conv":
        if len(attribute(node, "kernel_shape", consts.get(node.input[1], np.zeros((1, 1, 1, 1))).shape[2:])) != 2:
            return "only 2-D convolution"
        if node.input[1] not in consts:
            return "weight must be a constant"
        return None
    if op == "Gemm":
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
            return "only Gemm with transA=0, alpha=beta=1"
        return None if node.input[1] in consts else "weight must be a constant"
    if op == "MatMul":
        return _matmul_reason(node, view)
    if op in ("MaxPool", "AveragePool"):
        if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
            return "pool dilation"
        return None if len(attribute(node, "kernel_shape", [])) == 2 else "only 2-D pools"
    if op == "Pow":
        exponent = consts.get(node.input[1])
        return None if exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0 \
            else "only Pow with the constant exponent 2"
    if op in ("GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Flatten", "Reshape", "Squeeze",
              "Unsqueeze", "Concat", "Softmax") or op in _UNARY or op in _BINARY:
        return None
    if op == "Resize":
        from fwedge.ops.resize import check_resize, is_linear, resize_tables

        problem = check_resize(view, node)
        if problem is not None:
            return problem
        in_shape, out_shape = view.shapes.get(node.input[0]), view.shapes.get(node.output[0])
        if not in_shape or not out_shape or any(not isinstance(d, int) for d in [*in_shape, *out_shape]):
            return "input and output shapes must be static"
        tables = resize_tables(view.consts, node, in_shape, out_shape)
        if is_linear(node):
            return ncnn_bilinear_problem(node, in_shape, out_shape, tables)
        if ncnn_nearest(out_shape[2], in_shape[2]) != tables.rows or ncnn_nearest(out_shape[3], in_shape[3]) != tables.cols:
            return "nearest tables other than ncnn's floor(x * in / out)"
        return None
    if op in ("Slice", "Split", "Gather"):
        return _take_reason(node, view)
    if op == "DepthToSpace":
        from fwedge.ops.depth_to_space import check_depth_to_space

        return check_depth_to_space(view, node)
    if op == "Transpose":
        rank = len(view.shapes.get(node.input[0]) or [])
        perm = [int(a) for a in attribute(node, "perm", list(range(rank))[::-1])]
        return None if permute_order(perm) is not None else f"perm {perm}: only batch-first rank 3-4 permutes"
    if op == "ReduceMean":
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            axes = consts.get(node.input[1])
        keep = attribute(node, "keepdims", 1)
        return None if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] and keep else "only ReduceMean over H,W with keepdims"
    if op == "LayerNormalization":
        rank = len(view.shapes.get(node.input[0]) or [])
        if rank not in (2, 3) or int(attribute(node, "axis", -1)) % max(rank, 1) != rank - 1:
            return "only LayerNormalization over the last axis of a rank-2 or rank-3 tensor"
        return None if all(name in consts for name in node.input[1:] if name) else "scale and bias must be constant"
    if op == "Pad":
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge"):
            return f"pad mode {mode}"
        if not (len(node.input) > 1 and node.input[1] in consts):
            return "pads must be constant"
        return "negative pads (a crop)" if int(np.min(consts[node.input[1]], initial=0)) < 0 else None
    return "no ncnn writer for this op"


def _matmul_reason(node: onnx.NodeProto, view: FloatView) -> str | None:
    """A constant 2-D weight on a [1, K] or [1, T, K] input (InnerProduct), or two activations of
    the same rank 3 or 4 with equal leading dims (ncnn MatMul, batched over its channels)."""
    weight = view.consts.get(node.input[1])
    a = list(view.shapes.get(node.input[0]) or [])
    if weight is not None:
        return None if weight.ndim == 2 and len(a) in (2, 3) else "only MatMul by a constant 2-D matrix of a [1, K] or [1, T, K] input"
    b = list(view.shapes.get(node.input[1]) or [])
    if node.input[0] in view.consts or len(a) != len(b) or len(a) not in (3, 4) or a[:-2] != b[:-2]:
        return f"MatMul of shapes {a} and {b}: two activations of rank 3 or 4 with equal leading dims"
    return None


def _take_reason(node: onnx.NodeProto, view: FloatView) -> str | None:
    """Slice becomes one Crop, Gather a Crop per contiguous run and a Concat, Split an ncnn Slice:
    ncnn has no strided crop and no general gather."""
    from fwedge.ops.take import changed_axes, take_tables

    for index in range(len(node.output)):
        tables = take_tables(view.consts, view.shapes, node, index)
        if isinstance(tables, str):
            return tables
        odd = changed_axes(tables, view.shapes[node.input[0]])
        if node.op_type == "Slice" and any(b - a != 1 for axis in odd for a, b in zip(tables[axis], tables[axis][1:])):
            return "a Slice with a step other than 1"
        if node.op_type == "Gather" and view.consts[node.input[1]].ndim == 0:
            return "a Gather with a scalar index (it drops an axis)"
    return None


def _node_reasons(view: FloatView) -> list[tuple[onnx.NodeProto, str]]:
    """(node, why) for every node this writer has no translation for (the node table of _reason)."""
    return [(node, reason) for node in view.nodes if (reason := _reason(node, view)) is not None]


def _node_problems(view: FloatView, opset: int) -> list[tuple[str, str, int]]:
    """Nodes this writer has no translation for, as (name, op, opset)."""
    return [(node.name or node.output[0], node.op_type, opset) for node, _ in _node_reasons(view)]


def _writer_refusals(view: FloatView, int8: bool) -> list[tuple[onnx.NodeProto, str]]:
    """Every node whose translation raises, each translated on its own (write_ncnn stops at the first).

    Each emit_* reads shapes and blob names from the view, not from the layers written before,
    so one refused node does not make the next ones fail.
    """
    writer = NcnnWriter(view, int8)
    found = []
    for node in view.nodes:
        try:
            writer.emit(node)
        except ExportError as error:
            found.append((node, str(error).removeprefix(f"target {TARGET!r}: ")))
    return found


def write_checked(view: FloatView, int8: bool, opset: int, fp16: bool = False) -> tuple[str, bytes, NcnnWriter]:
    """write_ncnn in memory, after checking every node: the check and the build are one step.

    Raises:
        UnsupportedOpError: every node with no translation, else every node whose translation
            refuses its attributes or shapes (all listed; nothing is written yet).
        ExportError: a failure that is not a node's (a graph output that is a graph input).
    """
    missing = _node_reasons(view)
    if missing:
        raise UnsupportedOpError(TARGET, [(node.name or node.output[0], node.op_type, opset) for node, _ in missing],
                                 detail="; ".join(f"{node.name or node.output[0]!r}: {why}" for node, why in missing))
    try:
        return write_ncnn(view, int8, fp16)
    except ExportError as error:
        refused = _writer_refusals(view, int8)
        if not refused:
            raise
        raise UnsupportedOpError(TARGET, [(node.name or node.output[0], node.op_type, opset) for node, _ in refused],
                                 detail="; ".join(f"{node.name or node.output[0]!r}: {why}" for node, why in refused)
                                 ) from error


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _net(bundle: Bundle):
    import ncnn

    net = ncnn.Net()
    net.opt.use_int8_inference = True
    # fp16/bf16 storage would round fp32 weights and activations on CPUs that have it, so parity
    # with onnxruntime would depend on the host; Winograd changes rounding beyond 1e-5.
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                 "use_bf16_packed", "use_winograd_convolution"):
        setattr(net.opt, flag, False)
    net.opt.num_threads = runtime_threads() or os.cpu_count() or 1
    if net.load_param(str(bundle.file(PARAM_FILE))) != 0 or net.load_model(str(bundle.file(BIN_FILE))) != 0:
        raise ExportError(f"bundle '{bundle.path}': ncnn cannot load {PARAM_FILE}/{BIN_FILE}")
    return net


_NETS = RunnerCache(_net)


def _extract(bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str]) -> list[list[np.ndarray]]:
    import ncnn

    net = _NETS.get(bundle)
    batch = len(next(iter(feeds.values())))
    results = []
    for index in range(batch):
        extractor = net.create_extractor()
        # ncnn.Mat wraps the numpy buffer without owning it (no refcount): keep every array alive
        # until the extraction is done, and clone it into ncnn-owned memory, because a layer that
        # works in place on the input (ReLU, BinaryOp with a scalar) crashes on a borrowed buffer.
        # Outputs are copied out of ncnn's memory.
        alive = []
        for spec in bundle.inputs:
            sample = np.ascontiguousarray(feeds[spec.name][index], dtype=np.float32)
            sample = sample.reshape(sample.shape if sample.ndim else (1,))
            alive.append(sample)
            extractor.input(spec.name, ncnn.Mat(sample).clone())
        row = []
        for name in names:
            code, mat = extractor.extract(name)
            if code != 0:
                raise ExportError(f"bundle '{bundle.path}': ncnn extract of blob '{name}' failed ({code})")
            row.append(np.array(mat, dtype=np.float32, copy=True))
        results.append(row)
        del alive
    return results


@target("ncnn")
class NcnnTarget(Target):
    """fwedge's own .param/.bin writer from the float or QDQ model, run by the ncnn Python module."""

    supports_intermediates = True

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Nodes this writer cannot express in ncnn (after folding constant shape subgraphs),
        found by writing the model in memory as export() does."""
        opset = opset_version(model)
        try:
            view = float_view(prepare(model))
        except ExportError as error:  # dynamic non-batch shapes: judged by the node table only
            return ByOpTypeOnly(_node_problems(float_view(model), opset), str(error))
        try:
            write_checked(view, has_qdq(model), opset)
        except UnsupportedOpError as error:
            return error.nodes
        return []

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Write an ncnn bundle: fp32 from a float model, int8 from a QDQ model (fwedge's scales).

        Returns:
            The Bundle; extra records the int8 layers and the layers kept in float with the reason.

        Raises:
            UnsupportedOpError: nodes the writer cannot take (all listed, nothing written).
            ExportError: dynamic non-batch shapes, precision mismatch.
        """
        import ncnn

        options = options or ExportOptions()
        self.own_options(options)
        precision = resolve_precision(model, options.precision, TARGET)
        prepared = prepare(model)
        param, weights, writer = write_checked(float_view(prepared), precision == "int8", opset_version(model),
                                               fp16=precision == "fp16")
        notes = [f"kept in float: {name} ({why})" for name, why in writer.float_layers.items()]
        if precision == "int8" and not writer.int8_layers:
            notes.append("no Conv/Gemm/MatMul runs in int8; every layer computes in float between the Q/DQ clamps")
        for note in notes:
            log.warning("ncnn: %s", note)
        inputs, outputs = io_specs(prepared, batch=None)
        for spec in inputs + outputs:
            spec.shape[0] = -1

        def write_files(folder: Path) -> dict:
            (folder / PARAM_FILE).write_text(param)
            (folder / BIN_FILE).write_bytes(weights)
            return {"weights_bytes": len(weights)}

        return write_bundle(
            out_dir, target=TARGET, arch=self.arch, precision=precision,
            source_sha256=options.source_sha256, inputs=inputs, outputs=outputs,
            write_files=write_files, preprocess=options.preprocess, reference=options.reference, kept_float=options.kept_float,
            toolchain={"ncnn": ncnn.__version__},
            extra={"int8_layers": writer.int8_layers, "float_layers": writer.float_layers, "notes": notes,
                   "layers": len(writer.layers)},
        )

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run an ncnn bundle with the ncnn Python module, one sample at a time.

        Args:
            bundle: a loaded ncnn bundle.
            feeds: input name -> float32 NCHW batch.

        Returns:
            output name -> float32 array of the ONNX output shape (batch first).
        """
        self.require_exact(bundle, exact_int8)
        check_feeds(bundle, feeds)
        names = [spec.name for spec in bundle.outputs]
        rows = _extract(bundle, feeds, names)
        out = {}
        for position, spec in enumerate(bundle.outputs):
            tail = [d for d in spec.shape[1:]]
            out[spec.name] = np.stack([row[position].reshape(tail) for row in rows])
        return out

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Values of any blob named after an ONNX tensor (ncnn can extract every blob), for `fwedge diff`."""
        self.require_exact(bundle, exact_int8)
        blobs = set()
        for line in bundle.file(PARAM_FILE).read_text().splitlines()[2:]:
            fields = line.split()
            count_in, count_out = int(fields[2]), int(fields[3])
            blobs.update(fields[4 + count_in : 4 + count_in + count_out])
        wanted = [name for name in names if name in blobs]
        rows = _extract(bundle, feeds, wanted)
        return {name: np.stack([row[i] for row in rows]) for i, name in enumerate(wanted)}

"""The prepared float model that calibration, planning and QDQ writing all work on."""
from __future__ import annotations

import os

import onnx

from fwedge import ir
from fwedge.passes.attention import rewrite_attention
from fwedge.passes.conv_transpose import conv_transpose_as_depth_to_space
from fwedge.passes.fold_bn import fold_batchnorm
from fwedge.passes.layer_norm import fuse_layer_norm
from fwedge.passes.softmax import fuse_softmax
from fwedge.passes.layout import fold_transposes
from fwedge.passes.simplify import fuse_conv_bias, fuse_matmul_bias, simplify
from fwedge.quantization.plan import name_nodes


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float model that calibration and QDQ insertion work on.

    Constant folding / shape simplification (when the input shapes are static), attention's
    rank-5 QKV split and flattened Softmax as rank-4 ops (passes/attention.py), the LayerNorm
    chain exporters write (and jax2tf's variance form) as one LayerNormalization
    (passes/layer_norm.py), a written-out softmax as Softmax (passes/softmax.py), the layout
    Transposes of TF-converted models hoisted to the inputs, cancelled or folded into weights
    (passes/layout.py; the inputs and outputs stay), MatMul + bias as Gemm, a bias Add
    after Conv/ConvTranspose into its bias, BatchNorm folding,
    ConvTranspose with kernel == stride as a 1x1 Conv + DepthToSpace (passes/conv_transpose.py),
    and names for unnamed nodes. Tensor names of the source model are kept.
    """
    return name_nodes(conv_transpose_as_depth_to_space(fold_batchnorm(fuse_conv_bias(fuse_matmul_bias(fold_transposes(fuse_softmax(fuse_layer_norm(rewrite_attention(simplify(model))))))))))


def load_prepared(model: str | os.PathLike | onnx.ModelProto,
                  input_shapes: dict | None = None) -> tuple[onnx.ModelProto, str]:
    """(prepared model, source sha256) from a path or a loaded model."""
    if isinstance(model, onnx.ModelProto):
        loaded, sha = model, ir.model_sha256(model)
    else:
        loaded, sha = ir.load(model), ir.sha256_file(model)
    if input_shapes:
        loaded = ir.set_input_shapes(loaded, input_shapes)
    return prepare(loaded), sha


def batch_limit(model: onnx.ModelProto, batch_size: int) -> int:
    """`batch_size`, capped by a static batch dimension of the model's first input (e.g. 1)."""
    shape = ir.shape_of(ir.graph_inputs(model)[0])
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return min(batch_size, shape[0])
    return batch_size

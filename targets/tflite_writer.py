"""The .tflite flatbuffer writer: tensors, buffers and operators of one subgraph, in TFLite's NHWC order."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fwedge.lowered.graph import LoweredGraph, QuantParams, same_padding
from fwedge.targets.tflite_runner import NCHW_TO_NHWC

TFLITE_SCHEMA_VERSION = 3
# TFLite int8 spec: LOGISTIC and SOFTMAX outputs are fixed to scale 1/256, zero point -128.
FIXED_OUTPUT_QUANT = QuantParams((1.0 / 256.0,), (-128,))
FILE_IDENTIFIER = b"TFL3"


# --------------------------------------------------------------------------------------------
# Layout helpers: the lowered graph is NCHW; TFLite is NHWC for rank-4 tensors
# --------------------------------------------------------------------------------------------



def nhwc_shape(shape) -> list[int]:
    """The TFLite shape of a logical tensor shape (rank 4: NCHW -> NHWC; others unchanged)."""
    shape = [int(d) for d in shape]
    return [shape[i] for i in NCHW_TO_NHWC] if len(shape) == 4 else shape


def nhwc_axis(axis: int, rank: int) -> int:
    """A logical axis in TFLite order."""
    return NCHW_TO_NHWC.index(axis) if rank == 4 else axis


def padding_mode(in_shape, kernel, strides, dilations, pads) -> str:
    """"VALID", "SAME", or "EXPLICIT" when the ONNX pads are neither."""
    top, left, bottom, right = pads
    if not any(pads):
        return "VALID"
    height = same_padding(in_shape[2], kernel[0], strides[0], dilations[0])
    width = same_padding(in_shape[3], kernel[1], strides[1], dilations[1])
    if (top, bottom) == height and (left, right) == width:
        # SAME also has to give the same output size as the ONNX pads.
        return "SAME"
    return "EXPLICIT"


# Lowered op kind -> emitter(writer, op); filled by @tflite_op.
TFLITE_OPS: dict = {}


def tflite_op(*kinds: str):
    """Register the emitter of one or more lowered kinds: function(writer, op)."""

    def register(function):
        for kind in kinds:
            TFLITE_OPS[kind] = function
        return function

    return register


# --------------------------------------------------------------------------------------------
# Flatbuffer writer
# --------------------------------------------------------------------------------------------

_TYPES = {"float32": 0, "float16": 1, "int32": 2, "int8": 9, "int64": 4}
# DEQUANTIZE reads float16 from version 3 on (TFLite's operator versioning).
_FLOAT16_DEQUANTIZE_VERSION = 3
# Operator versions that cover int8 (per-channel) kernels; float ops use version 1.
_INT8_VERSIONS = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "ADD": 2, "MUL": 2,
    "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2, "MEAN": 2, "RESHAPE": 1, "SOFTMAX": 2,
    "CONCATENATION": 2, "PAD": 2, "PADV2": 2, "HARD_SWISH": 1, "LOGISTIC": 2, "QUANTIZE": 2,
    "DEQUANTIZE": 2, "TRANSPOSE": 2, "MINIMUM": 2, "RELU": 2, "RELU6": 2, "RESIZE_NEAREST_NEIGHBOR": 2,
    "RESIZE_BILINEAR": 2, "DEPTH_TO_SPACE": 2, "STRIDED_SLICE": 2, "GATHER": 2, "BATCH_MATMUL": 2,
}


@dataclass
class _Writer:
    """Accumulates tensors, buffers and operators of one subgraph."""

    graph: LoweredGraph
    schema: object
    tensors: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    operators: list = field(default_factory=list)
    opcodes: dict = field(default_factory=dict)
    index: dict = field(default_factory=dict)
    counter: int = 0
    # Float32 constants are stored as FLOAT16 buffers, each read through a DEQUANTIZE to a float32
    # tensor, the layout of the TFLite converter's float16 quantization.
    fp16: bool = False
    # (node, reason) of int8 lowered ops the writer runs in float between DEQUANTIZE and QUANTIZE
    float_islands: list = field(default_factory=list)

    def __post_init__(self):
        self.buffers.append(self.schema.BufferT())  # buffer 0: the empty buffer, by convention

    # -- tensors ----------------------------------------------------------------------------

    def add(self, name: str, shape, dtype: str, quant: QuantParams | None = None,
            data: np.ndarray | None = None, quantized_dimension: int = 0) -> int:
        """Add a TFLite tensor (shape already in TFLite order); returns its index.

        With fp16, a float32 constant becomes a FLOAT16 tensor `<name>/fp16` and the DEQUANTIZE
        op that writes the float32 tensor `name` from it, whose index is returned.
        """
        if self.fp16 and data is not None and dtype == "float32":
            half = self.add(f"{name}/fp16", shape, "float16", None, np.asarray(data, np.float32).astype(np.float16))
            index = self.add(name, shape, "float32")
            self.op("DEQUANTIZE", [half], [index])
            return index
        S = self.schema
        tensor = S.TensorT()
        tensor.name = name
        tensor.shape = [int(d) for d in shape]
        tensor.type = _TYPES[dtype]
        tensor.buffer = 0
        if data is not None:
            buffer = S.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        if quant is not None:
            params = S.QuantizationParametersT()
            params.scale = [float(np.float32(s)) for s in quant.scale]
            params.zeroPoint = [int(z) for z in quant.zero_point]
            params.quantizedDimension = quantized_dimension if len(quant.scale) > 1 else 0
            tensor.quantization = params
        self.tensors.append(tensor)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}/tflite_{self.counter}"

    def temp(self, base: str, shape, dtype: str, quant: QuantParams | None) -> int:
        """A fresh activation tensor (TFLite shape)."""
        return self.add(self.fresh(base), shape, dtype, quant)

    def const(self, base: str, data: np.ndarray, quant: QuantParams | None = None, quantized_dimension: int = 0) -> int:
        data = np.asarray(data)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int32): "int32", np.dtype(np.int8): "int8",
                 np.dtype(np.int64): "int64"}[data.dtype]
        return self.add(self.fresh(base), data.shape, dtype, quant, data, quantized_dimension)

    def tensor(self, name: str) -> int:
        """Index of a lowered tensor, creating it (activation or constant, NHWC) on first use."""
        if name in self.index:
            return self.index[name]
        lowered = self.graph.tensors[name]
        data = lowered.data
        if data is not None and data.ndim == 4:
            data = data.transpose(NCHW_TO_NHWC)
        quant = lowered.quant
        axis = 0
        if quant is not None and quant.axis is not None and lowered.data is not None and lowered.data.ndim == 4:
            axis = NCHW_TO_NHWC.index(quant.axis)
        return self.add(name, nhwc_shape(lowered.shape), lowered.dtype, quant, data, axis)

    def info(self, index: int):
        return self.tensors[index]

    # -- operators --------------------------------------------------------------------------

    def op(self, builtin: str, inputs: list[int], outputs: list[int], options_type: str | None = None, options=None,
           int8_version: int | None = None) -> None:
        S = self.schema
        int8 = any(self.tensors[i].type == _TYPES["int8"] for i in list(inputs) + list(outputs) if i >= 0)
        version = (int8_version or _INT8_VERSIONS.get(builtin, 1)) if int8 else 1
        if builtin == "DEQUANTIZE" and self.tensors[inputs[0]].type == _TYPES["float16"]:
            version = _FLOAT16_DEQUANTIZE_VERSION
        code = getattr(S.BuiltinOperator, builtin)
        key = (code, version)
        if key not in self.opcodes:
            opcode = S.OperatorCodeT()
            opcode.builtinCode = code
            opcode.deprecatedBuiltinCode = min(code, 127)
            opcode.version = version
            self.opcodes[key] = (len(self.opcodes), opcode)
        operator = S.OperatorT()
        operator.opcodeIndex = self.opcodes[key][0]
        operator.inputs = [int(i) for i in inputs]
        operator.outputs = [int(i) for i in outputs]
        if options_type is not None:
            operator.builtinOptionsType = getattr(S.BuiltinOptions, options_type)
            operator.builtinOptions = options
        self.operators.append(operator)

    def options(self, cls: str, **values):
        instance = getattr(self.schema, cls)()
        for key, value in values.items():
            setattr(instance, key, value)
        return instance

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        S = self.schema
        subgraph = S.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = inputs
        subgraph.outputs = outputs
        subgraph.operators = self.operators
        subgraph.name = "main"
        model = S.ModelT()
        model.version = TFLITE_SCHEMA_VERSION
        model.operatorCodes = [opcode for _, opcode in sorted(self.opcodes.values(), key=lambda item: item[0])]
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        model.description = description
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def transpose_into(writer: _Writer, op, x: int, perm, shape, dtype, quant) -> int:
    """TRANSPOSE of tensor x by `perm` into a fresh tensor of TFLite shape `shape`; returns its index."""
    y = writer.temp(f"{op.name}/transpose", shape, dtype, quant)
    writer.op("TRANSPOSE", [x, writer.const(f"{op.name}/perm", np.array(perm, dtype=np.int32))], [y],
              "TransposeOptions", writer.options("TransposeOptionsT"))
    return y

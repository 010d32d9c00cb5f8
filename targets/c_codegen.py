"""C code generation: a LoweredGraph becomes model.c/model.h calling the runtime_c kernels (NHWC)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from fwedge import __version__
from fwedge.errors import ExportError
from fwedge.lowered.graph import LoweredGraph, LoweredOp
from fwedge.targets.c_emit_base import (  # noqa: F401  (also re-exported: c.py and tests import them from here)
    _C_TYPES,
    _ITEM_BYTES,
    ALWAYS_KERNELS,
    EMITTERS,
    _Emitter,
    c_array,
    c_comment,
    c_comment_block,
    c_float,
    c_int,
    c_name_bytes,
    c_string,
    c_struct,
    emitter,
    layout_trivial,
    nbytes,
    physical_shape,
    to_physical,
)
# Importing c_emitters registers every emitter in EMITTERS: importing this module alone fills it.
from fwedge.targets.c_emitters import CONV_BLOCK, CONV_K_GROUPS, broadcast_of, pack_conv_s8  # noqa: F401
from fwedge.targets.memory_plan import Buffer, MemoryPlan, plan_memory

ALIGNMENT = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Program
# --------------------------------------------------------------------------------------------


@dataclass
class CProgram:
    """Generated sources and the facts the bundle manifest reports.

    Attributes:
        model_c, model_h: generated source texts.
        kernels: runtime_c source files the model needs (only these are compiled in).
        plan: the arena memory plan.
        weights_bytes: bytes of constant arrays (weights, biases, tables).
        conv_layout_bytes: bytes of the packed groups == 1 conv weights by layout ("pairs",
            "quads"); a build compiles in one of them (an x86-64 dispatch build both).
        inputs, outputs: (name, shape, dtype) of the graph inputs and outputs, in the order of
            the harness files; the shape is the source model's (NHWC for those in nhwc_io).
        nhwc_io: inputs and outputs that are NHWC in the source model (the layout pass absorbed
            their Transpose): their bytes are the stored NHWC ones.
        ops: (kind, dtype) of every op, for reports.
        op_names: the name of every op, in model.c order (its comments say "op <index>").
        op_kinds: the lowered kind of every op, in that order.
        op_macs: the multiply-accumulates of every op, in that order (0 for ops without weights).
    """

    model_c: str
    model_h: str
    kernels: list[str]
    plan: MemoryPlan
    weights_bytes: int
    inputs: list[tuple[str, tuple[int, ...], str]]
    outputs: list[tuple[str, tuple[int, ...], str]]
    ops: list[tuple[str, str]] = field(default_factory=list)
    op_names: list[str] = field(default_factory=list)
    op_kinds: list[str] = field(default_factory=list)
    op_macs: list[int] = field(default_factory=list)
    conv_layout_bytes: dict[str, int] = field(default_factory=dict)
    nhwc_io: frozenset[str] = frozenset()


# --------------------------------------------------------------------------------------------
# Whole program
# --------------------------------------------------------------------------------------------


# Kinds whose input 1 is the weight tensor [out, in/groups, kh, kw] or [out, in]: each output
# element costs one multiply-accumulate per weight of its output channel.
WEIGHTED_KINDS = frozenset({"conv2d", "depthwise_conv2d", "fully_connected"})


def op_macs(graph: LoweredGraph, op: LoweredOp) -> int:
    """Multiply-accumulates of one lowered op on batch 1: output elements x weights per output
    channel for conv2d, depthwise_conv2d and fully_connected; 0 for every other kind."""
    if op.kind not in WEIGHTED_KINDS or len(op.inputs) < 2:
        return 0
    weight = graph.tensors[op.inputs[1]].shape
    output = graph.tensors[op.outputs[0]].shape
    return int(np.prod(output[1:], dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))


# The opt-in profiling build (-DFW_PROFILE): after every step of fwedge_run (the input copy, each
# op, the output copy) FW_STEP(i) adds the monotonic clock's time since the previous step to
# fwedge_profile_ns[i], while the harness has fwedge_profile_on set. Without FW_PROFILE the
# macros expand to nothing: the default build compiles the same statements as a model.c without
# them, so its binary is the same bytes.
PROFILE_MACROS = """#ifdef FW_PROFILE
long long fwedge_profile_ns[FWEDGE_PROFILE_STEPS];
int fwedge_profile_on;
#define FW_STEPS_BEGIN() long long fw_step_last = fwedge_profile_on ? fwedge_profile_clock() : 0
#define FW_STEP(index) do { if (fwedge_profile_on) { const long long fw_step_now = fwedge_profile_clock(); \\
        fwedge_profile_ns[index] += fw_step_now - fw_step_last; fw_step_last = fw_step_now; } } while (0)
#else
#define FW_STEPS_BEGIN() do { } while (0)
#define FW_STEP(index) do { } while (0)
#endif

"""


def unsupported_ops(graph: LoweredGraph) -> list[LoweredOp]:
    """Lowered ops the C emitters do not cover (every KINDS entry has one; kept for safety)."""
    return [op for op in graph.ops if op.kind not in EMITTERS]


def lifetimes(graph: LoweredGraph) -> list[Buffer]:
    """Arena buffers of every non-constant tensor. Step 0 copies inputs in, step i+1 runs op i,
    and the last step copies outputs out."""
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = {name: 0 for name in graph.inputs}
    for index, op in enumerate(graph.ops, start=1):
        for name in op.inputs:
            if not graph.tensors[name].is_constant:
                last[name] = index
        for name in op.outputs:
            first.setdefault(name, index)
            last[name] = max(last.get(name, index), index)
    final = len(graph.ops) + 1
    for name in graph.outputs:
        last[name] = final
    return [Buffer(name, nbytes(graph.tensors[name]), first[name], last[name]) for name in first]


def generate(graph: LoweredGraph, source_sha256: str = "", quads: bool = True, prepare_neon: bool = False) -> CProgram:
    """Generate model.c and model.h for a lowered graph.

    Args:
        graph: the lowered graph (batch 1).
        source_sha256: recorded in the generated header comment.
        quads: also write the packed conv weights in the quad layout (x86 builds: VNNI kernels);
            without it model.c holds the pairs only and refuses a build that reads quads.
        prepare_neon: also write the per-channel constants of the aarch64 NEON int8 conv kernels
            (targets/c_prepared.py), which they then do not compute on every call.

    Returns:
        The CProgram.

    Raises:
        ExportError: an op whose layout or attributes the C kernels cannot express.
    """
    missing = unsupported_ops(graph)
    if missing:
        raise ExportError("C target: no emitter for " + ", ".join(f"{op.name!r} ({op.kind})" for op in missing))
    for name in [*graph.inputs, *graph.outputs]:
        if not isinstance(name, str):  # protobuf hands over a name that is not UTF-8 as bytes
            raise ExportError(f"C target: graph input or output name {name[:80]!r} is not UTF-8 text")
    if not _SHA256.fullmatch(source_sha256 or "0" * 64):
        raise ExportError(f"C target: source sha256 {source_sha256[:80]!r} is not 64 hex digits")
    plan = plan_memory(lifetimes(graph), ALIGNMENT)
    e = _Emitter(graph, plan, quads, prepare_neon)
    nhwc = {name for name, layout in graph.io_layouts.items() if layout == "NHWC"}
    for index, name in enumerate(graph.inputs):
        X = graph.tensors[name]
        line = None
        if layout_trivial(X.shape) or name in nhwc:  # NHWC in the source model: the stored bytes
            line = f"memcpy({e.pointer(name)}, inputs[{index}], {nbytes(X)});"
        else:
            _, c, h, w = X.shape
            line = f"fw_transpose2d({c}, {h * w}, {_ITEM_BYTES[X.dtype]}, inputs[{index}], {e.pointer(name)});"
        given = "NHWC" if name in nhwc else "NCHW"
        e.body.append(f"    {c_comment(f'input {index} {X.dtype}{list(X.shape)} ({given} in, NHWC stored)')}\n    {line}\n")
    e.body.append("    FW_STEP(0);\n")
    for e.op_index, op in enumerate(graph.ops):
        EMITTERS[op.kind](e, op)
        e.body.append(f"    FW_STEP({e.op_index + 1});\n")
    for index, name in enumerate(graph.outputs):
        Y = graph.tensors[name]
        if layout_trivial(Y.shape) or name in nhwc:
            line = f"memcpy(outputs[{index}], {e.pointer(name)}, {nbytes(Y)});"
        else:
            _, c, h, w = Y.shape
            line = f"fw_transpose2d({h * w}, {c}, {_ITEM_BYTES[Y.dtype]}, {e.pointer(name)}, outputs[{index}]);"
        given = "NHWC" if name in nhwc else "NCHW"
        e.body.append(f"    {c_comment(f'output {index} {Y.dtype}{list(Y.shape)} ({given} out)')}\n    {line}\n")
    e.body.append(f"    FW_STEP({len(graph.ops) + 1});\n")

    def io(name: str) -> tuple[str, tuple[int, ...], str]:
        shape = tuple(graph.tensors[name].shape)
        return name, physical_shape(shape) if name in nhwc else shape, graph.tensors[name].dtype

    inputs, outputs = [io(name) for name in graph.inputs], [io(name) for name in graph.outputs]
    header = _model_h(inputs, outputs, plan, source_sha256, len(graph.ops) + 2)
    banner = "\n".join([
        c_comment(f"Generated by fwedge {__version__} from model sha256 {source_sha256 or 'unknown'}; do not edit."),
        c_comment(f"{len(graph.ops)} ops, {graph.precision}; arena {plan.arena_bytes} bytes "
                  f"(live-tensor lower bound {plan.lower_bound_bytes}); constants {e.weights_bytes} bytes."),
        c_comment("Activations are stored NHWC in one static arena; see fwedge_rt.h for the kernels."),
        c_comment("Comments name ops by index: the bundle manifest's op_names holds their names."),
    ]) + "\n"
    model_c = (
        banner
        + "#include <math.h>\n#include <stdint.h>\n#include <string.h>\n\n#include \"fwedge_rt.h\"\n#include \"model.h\"\n\n"
        + ("" if quads else "#if FW_CONV_K_GROUP != 2 || defined(FW_X86_DISPATCH)\n#error \"this model.c holds the "
                            "packed conv weights in the pair layout only: export the model for x86_64 for the VNNI "
                            "kernels\"\n#endif\n\n")
        + f"static union {{\n    uint8_t bytes[{max(plan.arena_bytes, 1)}];\n    int64_t align;\n}} fw_arena;\n\n"
        + "#define FW_TENSOR(type, offset) ((type *)(fw_arena.bytes + (offset)))\n\n"
        + "\n".join(e.declarations)
        + "\n" + PROFILE_MACROS
        + "void fwedge_run(const void *const inputs[], void *const outputs[])\n{\n    FW_STEPS_BEGIN();\n"
        + "".join(e.body)
        + "}\n"
    )
    return CProgram(
        model_c=model_c, model_h=header, kernels=sorted(e.kernels), plan=plan, weights_bytes=e.weights_bytes,
        conv_layout_bytes=dict(e.conv_layout_bytes),
        inputs=inputs, outputs=outputs, nhwc_io=frozenset(nhwc),
        ops=[(op.kind, graph.tensors[op.outputs[0]].dtype) for op in graph.ops],
        op_names=[op.name for op in graph.ops], op_kinds=[op.kind for op in graph.ops],
        op_macs=[op_macs(graph, op) for op in graph.ops],
    )


def _model_h(inputs, outputs, plan: MemoryPlan, source_sha256: str, steps: int) -> str:
    def sizes(items):
        return ", ".join(str(int(np.prod(shape)) * _ITEM_BYTES[dtype]) for _, shape, dtype in items)

    def names(items):
        return ",\n    ".join(c_string(name) for name, _, _ in items)

    def name_bytes(items):
        return ", ".join(str(c_name_bytes(name)) for name, _, _ in items)

    def describe(items):
        return [f"  {index}: {dtype}{list(shape)}" for index, (_, shape, dtype) in enumerate(items)]

    total_in = sum(int(np.prod(s)) * _ITEM_BYTES[d] for _, s, d in inputs)
    total_out = sum(int(np.prod(s)) * _ITEM_BYTES[d] for _, s, d in outputs)
    doc = c_comment_block([
        f"Generated by fwedge {__version__} (model sha256 {source_sha256 or 'unknown'}); do not edit.",
        "",
        "fwedge_run(inputs, outputs) runs the model once on batch 1. Inputs and outputs are raw",
        "little-endian arrays in the source model's order (NCHW; NHWC where the manifest says",
        "source_layout NHWC); inputs[i] must hold fwedge_input_bytes[i] bytes:",
        *describe(inputs),
        "Outputs:",
        *describe(outputs),
        "All other memory is one static arena of FWEDGE_ARENA_BYTES bytes (not reentrant).",
        "Names: fwedge_input_names[i] holds fwedge_input_name_bytes[i] bytes (UTF-8, NUL bytes",
        "possible), likewise for outputs; the bundle manifest holds the same names.",
        "",
        "Built with -DFW_PROFILE, fwedge_run adds each of its FWEDGE_PROFILE_STEPS steps' time (the",
        "input copy, op 0 .. op N-1, the output copy) to fwedge_profile_ns[step] while",
        "fwedge_profile_on is set; fwedge_profile_clock() (the harness's) gives nanoseconds.",
    ])
    return f"""{doc}
#ifndef FWEDGE_MODEL_H
#define FWEDGE_MODEL_H

#include <stdint.h>

#define FWEDGE_NUM_INPUTS {len(inputs)}
#define FWEDGE_NUM_OUTPUTS {len(outputs)}
#define FWEDGE_INPUT_BYTES {total_in}
#define FWEDGE_OUTPUT_BYTES {total_out}
#define FWEDGE_ARENA_BYTES {plan.arena_bytes}

static const uint32_t fwedge_input_bytes[FWEDGE_NUM_INPUTS] = {{{sizes(inputs)}}};
static const uint32_t fwedge_output_bytes[FWEDGE_NUM_OUTPUTS] = {{{sizes(outputs)}}};
static const char *const fwedge_input_names[FWEDGE_NUM_INPUTS] = {{
    {names(inputs)}}};
static const char *const fwedge_output_names[FWEDGE_NUM_OUTPUTS] = {{
    {names(outputs)}}};
static const uint32_t fwedge_input_name_bytes[FWEDGE_NUM_INPUTS] = {{{name_bytes(inputs)}}};
static const uint32_t fwedge_output_name_bytes[FWEDGE_NUM_OUTPUTS] = {{{name_bytes(outputs)}}};

void fwedge_run(const void *const inputs[], void *const outputs[]);

#ifdef FW_PROFILE
#define FWEDGE_PROFILE_STEPS {steps}
extern long long fwedge_profile_ns[FWEDGE_PROFILE_STEPS];
extern int fwedge_profile_on;
long long fwedge_profile_clock(void);
#endif

#endif /* FWEDGE_MODEL_H */
"""

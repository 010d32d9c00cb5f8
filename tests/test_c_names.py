"""C target: hostile tensor and node names reach the generated C only as escaped data."""
from __future__ import annotations

import re
import subprocess

import numpy as np
import onnx
import pytest

from fwedge.bundle import host_arch, load_bundle
from fwedge.errors import ExportError
from fwedge.export import export_bundle
from fwedge.targets import ExportOptions
from fwedge.targets.c_codegen import PROFILE_MACROS
from helpers import tiny_conv_model

pytestmark = pytest.mark.cc

TRIGRAPHS = ["??=", "??/", "??'", "??(", "??)", "??!", "??<", "??>", "??-"]
# Each would end a string literal, a comment or a line of C if it were pasted into a source, or
# smuggle a preprocessor line in. MARKER is the file an injected constructor would create.
MARKER = "fwedge-injected-marker"
PAYLOAD = ('"; ??/" */ }; __attribute__((constructor)) static void fw_evil(void) '
           f'{{ fclose(fopen("{MARKER}", "w")); }} /* ??/\n#include </etc/passwd>\n#error injected\n')
HOSTILE = [
    'quo"te', "back\\slash", "back\\", "*/", "/*", "//", "end */ /* again", "new\nline", "cr\rreturn", "\r\n#define x 1",
    "#include </etc/passwd>", "\n#include </etc/passwd>\n", "nul\x00byte", "\x01\x02\x1b[31mctrl\x7f", "tab\there",
    "%s%n%x", "\\x41\\101", "é✓ unicode\u2028\u2029", "??", "?" * 7, "'single'", "${HOME}$(id)`id`", "a" * 3000,
    PAYLOAD, *(f"tri{t}graph" for t in TRIGRAPHS), "".join(TRIGRAPHS) + '"',
]
# Substrings that only hostile names bring: none may appear anywhere in a generated source.
FORBIDDEN = ["passwd", "fw_evil", "constructor", MARKER, "injected", "quo", "slash", "unicode", "${HOME}", "aaaaaaaa",
             "single", "ctrl", "\r", "\x00"]
SOURCES = ("model.c", "model.h", "main.c", "Makefile", "CMakeLists.txt")
# Preprocessor lines the generator writes; any other '#' line came from somewhere else.
DIRECTIVE = re.compile(r'#(include "(fwedge_rt|model)\.h"|include <(math|stdint|string)\.h>|ifndef FWEDGE_MODEL_H'
                       r'|define FWEDGE_[A-Z_]+( \d+)?|define FW_TENSOR\(type, offset\) \(\(type \*\)\(fw_arena\.bytes \+ \(offset\)\)\)|endif( /\* FWEDGE_MODEL_H \*/)?'
                       r'|if FW_CONV_K_GROUP [!=]= \d( \|\| defined\(FW_X86_DISPATCH\))?|error "[a-zA-Z0-9 :_,.-]*")$')

# The profiling build's macros (fixed text of the generator, the same in every model.c) and
# model.h's declarations under #ifdef FW_PROFILE.
PROFILE_LINES = {line for line in PROFILE_MACROS.splitlines() if line.startswith("#")} | {"#ifdef FW_PROFILE"}


def renamed(model: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model with every tensor, node and graph name replaced by hostile ones (kept unique)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    # The graph's input and output (the names model.h holds) get the worst ones.
    mapping: dict[str, str] = {"x": "".join(TRIGRAPHS) + '"\n#include </etc/passwd>\n', "y": PAYLOAD}

    def rename(name: str) -> str:
        if not name:
            return name
        if name not in mapping:
            mapping[name] = f"{names[len(mapping) % len(names)]}#{len(mapping)}"
        return mapping[name]

    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = rename(value.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    for index, node in enumerate(graph.node):
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
        node.name = names[(index + 7) % len(names)] + f"/node{index}"
    graph.name = PAYLOAD
    onnx.checker.check_model(out)
    return out, mapping


def quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """fwedge's int8 QDQ model of `model` (minmax over a few seeded samples)."""
    from fwedge.calibration import collect, compute
    from fwedge.quantization import plan_quantization, prepare, quantize_model

    prepared = prepare(model)
    plan = plan_quantization(prepared)
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(8)]
    return quantize_model(prepared, compute(collect(prepared, calibration, plan.calibrated), "minmax"), plan=plan)


def octal(name: str) -> str:
    return "".join(f"\\{byte:03o}" for byte in name.encode("utf-8", "surrogatepass"))


# The probe prints every name of model.h as hex bytes (its full length, NULs included).
PROBE = r"""
#include <stdio.h>
#include "model.h"
static void dump(const char *kind, const char *name, uint32_t length)
{
    printf("%s ", kind);
    for (uint32_t i = 0; i < length; ++i) printf("%02x", (unsigned char)name[i]);
    printf("\n");
}
int main(void)
{
    for (int i = 0; i < FWEDGE_NUM_INPUTS; ++i) dump("in", fwedge_input_names[i], fwedge_input_name_bytes[i]);
    for (int i = 0; i < FWEDGE_NUM_OUTPUTS; ++i) dump("out", fwedge_output_names[i], fwedge_output_name_bytes[i]);
    return 0;
}
void fwedge_run(const void *const inputs[], void *const outputs[]) { (void)inputs; (void)outputs; }
"""


def _probe(bundle, tmp_path) -> list[str]:
    """Compile PROBE against the bundle's model.h (-std=c99: trigraphs on) and run it."""
    (tmp_path / "probe.c").write_text(PROBE)
    probe = tmp_path / "probe"
    build = subprocess.run(["cc", "-std=c99", "-Wall", "-Wtrigraphs", "-Werror", "-I", str(bundle.path),
                            str(tmp_path / "probe.c"), "-o", str(probe)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    return subprocess.run([str(probe)], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()


def _check_sources(folder, names: list[str]) -> None:
    for source in SOURCES:
        raw = (folder / source).read_bytes()
        allowed = {10, 9} if source == "Makefile" else {10}  # a Makefile's recipes start with a tab
        bad = sorted({byte for byte in raw if not (32 <= byte < 127 or byte in allowed)})
        assert not bad, f"{source}: bytes outside printable ASCII: {bad}"
        text = raw.decode("ascii")
        for hostile in FORBIDDEN:
            assert hostile not in text, f"{source}: holds {hostile!r} from a name"
        if source in ("model.c", "model.h"):
            assert "??" not in text, f"{source}: holds a '??' (trigraph start)"
            for line in text.splitlines():
                if line.lstrip().startswith("#"):
                    assert DIRECTIVE.match(line.strip()) or line in PROFILE_LINES, \
                        f"{source}: unexpected preprocessor line {line!r}"
    header = re.sub(r'"\s*\n\s*"', "", (folder / "model.h").read_text())  # join adjacent literals
    for name in names:
        assert f'"{octal(name)}"' in header, f"model.h: name {name[:40]!r} not as octal escapes"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_hostile_names_compile_run_and_round_trip(precision, tmp_path):
    base = tiny_conv_model()
    if precision == "int8":
        base = quantized(base)
    hostile, mapping = renamed(base, HOSTILE)
    plain_path, hostile_path = tmp_path / "plain.onnx", tmp_path / "hostile.onnx"
    onnx.save(base, plain_path)
    onnx.save(hostile, hostile_path)
    options = ExportOptions(precision=precision)
    plain = export_bundle(plain_path, host_arch(), tmp_path / "plain", options)
    bundle = load_bundle(export_bundle(hostile_path, host_arch(), tmp_path / "hostile", options).path)

    input_name, output_name = mapping["x"], mapping["y"]
    assert [spec.name for spec in bundle.inputs] == [input_name]
    assert [spec.name for spec in bundle.outputs] == [output_name]
    _check_sources(bundle.path, [input_name, output_name])

    # The harness runs, writes no marker, and computes what the same model with plain names does.
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    from fwedge.targets import get_target

    c = get_target("c")
    expected = c.run(plain, {"x": x})["y"]
    got = c.run(bundle, {input_name: x})
    assert list(got) == [output_name]
    np.testing.assert_array_equal(got[output_name], expected, err_msg=f"output {output_name[:40]!r}")
    binary = bundle.file("bin/fwedge_model")
    usage = subprocess.run([str(binary)], cwd=tmp_path, capture_output=True, timeout=60)
    assert usage.returncode == 2
    assert input_name.encode().split(b"\0")[0] in usage.stderr, usage.stderr[:300]
    assert not list(tmp_path.rglob(MARKER)), "an injected constructor ran"

    # model.h holds the names byte for byte.
    assert _probe(bundle, tmp_path) == [f"in {input_name.encode().hex()}", f"out {output_name.encode().hex()}"]


def test_an_output_name_holding_nul_is_refused_before_anything_is_built(tmp_path):
    """The manifest cannot name it (load_bundle refuses NUL in a name), so export refuses it in
    one line, before compiling, and leaves no bundle behind."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["nul\x00byte"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("nul\x00byte", TensorProto.FLOAT, [1, 2, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="without NUL") as error:
        export_bundle(tmp_path / "m.onnx", host_arch(), tmp_path / "b", ExportOptions())
    assert "\n" not in str(error.value)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_every_hostile_name_as_an_output_name(tmp_path):
    """One Relu per hostile name on a shared input, each output named by one: model.h holds
    them all, the bundle builds, and every output keeps its name and its values."""
    from onnx import TensorProto, helper

    from fwedge.targets import get_target

    # A bundle's inputs and outputs are named in its manifest, which holds no NUL (see the next test).
    names = [name for name in dict.fromkeys(HOSTILE) if "\x00" not in name]
    input_name = "in??/put\n#define x"
    nodes = [helper.make_node("Relu", [input_name], [name], name=f"{name}/relu") for name in names]
    graph = helper.make_graph(nodes, PAYLOAD, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, 3, 3]) for name in names])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    bundle = load_bundle(export_bundle(path, host_arch(), tmp_path / "b", ExportOptions()).path)
    assert [spec.name for spec in bundle.outputs] == names
    _check_sources(bundle.path, [input_name, *names])
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 3)).astype(np.float32)
    got = get_target("c").run(bundle, {input_name: x})
    assert list(got) == names
    for name in names:
        np.testing.assert_array_equal(got[name], np.maximum(x, 0), err_msg=f"output {name[:40]!r}")
    assert not list(tmp_path.rglob(MARKER))
    assert _probe(bundle, tmp_path) == [f"in {input_name.encode().hex()}"] + [f"out {n.encode().hex()}" for n in names]


def test_a_name_that_is_not_utf8_is_refused_with_one_line(tmp_path):
    """protobuf hands a name that is not UTF-8 over as bytes: refused, nothing written."""
    from fwedge.errors import FwEdgeError

    raw = tiny_conv_model().SerializeToString()
    # the graph output's ValueInfo name and the Gemm output: field 1 / field 2, length 1, "y"
    patched = raw.replace(b"\x0a\x01y", b"\x0a\x01\xff").replace(b"\x12\x01y", b"\x12\x01\xff")
    assert patched != raw
    path = tmp_path / "m.onnx"
    path.write_bytes(patched)
    with pytest.raises(FwEdgeError) as caught:
        export_bundle(path, host_arch(), tmp_path / "b", ExportOptions())
    assert "\n" not in str(caught.value) and "UTF-8" in str(caught.value)
    assert not (tmp_path / "b").exists()


def test_c_string_round_trips_random_bytes_through_the_compiler(tmp_path):
    """Seeded fuzz of c_string: bytes drawn mostly from the characters C treats specially."""
    from fwedge.targets.c_codegen import c_name_bytes, c_string

    rng = np.random.default_rng(0)
    special = np.frombuffer(b'?=/\'()!<>-"\\*\n\r\x00#%{};x7', dtype=np.uint8)
    samples = []
    for _ in range(400):
        length = int(rng.integers(0, 120))
        pool = special if rng.random() < 0.7 else np.arange(256, dtype=np.uint8)
        samples.append(bytes(rng.choice(pool, length)))
    samples += [b"??/" * 50, b"\\" * 33, b"\x00" * 40, b"*/" * 20, b"\xff\xfe"]
    literals = ",\n".join(c_string(sample) for sample in samples)
    lengths = ", ".join(str(c_name_bytes(sample)) for sample in samples)
    (tmp_path / "strings.c").write_text(
        "#include <stdio.h>\n"
        f"static const char *const strings[] = {{\n{literals}}};\n"
        f"static const unsigned lengths[] = {{{lengths}}};\n"
        "int main(void) {\n"
        "    for (unsigned i = 0; i < sizeof lengths / sizeof lengths[0]; ++i) {\n"
        "        for (unsigned j = 0; j < lengths[i]; ++j) printf(\"%02x\", (unsigned char)strings[i][j]);\n"
        "        printf(\"\\n\");\n"
        "    }\n"
        "    return 0;\n"
        "}\n")
    build = subprocess.run(["cc", "-std=c99", "-Wall", "-Wtrigraphs", "-Werror", str(tmp_path / "strings.c"), "-o",
                            str(tmp_path / "strings")], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    lines = subprocess.run([str(tmp_path / "strings")], capture_output=True, text=True, timeout=60,
                           check=True).stdout.split("\n")[:-1]
    assert lines == [sample.hex() for sample in samples]


@pytest.mark.zig
@pytest.mark.qemu("aarch64")
def test_hostile_names_cross_compile_and_run_under_qemu(tmp_path):
    """The same names through zig cc for aarch64 (musl, -std=c99) and qemu-aarch64."""
    from fwedge.targets import get_target
    from tolerances import C_FP32_ATOL, FP32_RTOL

    base = tiny_conv_model()
    hostile, mapping = renamed(base, HOSTILE)
    plain_path, hostile_path = tmp_path / "plain.onnx", tmp_path / "hostile.onnx"
    onnx.save(base, plain_path)
    onnx.save(hostile, hostile_path)
    bundle = load_bundle(export_bundle(hostile_path, "aarch64", tmp_path / "hostile", ExportOptions()).path)
    _check_sources(bundle.path, [mapping["x"], mapping["y"]])
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    c = get_target("c")
    expected = c.run(export_bundle(plain_path, host_arch(), tmp_path / "plain", ExportOptions()), {"x": x})["y"]
    got = c.run(bundle, {mapping["x"]: x})
    assert list(got) == [mapping["y"]]
    np.testing.assert_allclose(got[mapping["y"]], expected, rtol=FP32_RTOL, atol=C_FP32_ATOL)
    assert not list(tmp_path.rglob(MARKER))


def test_random_names_never_reach_the_generated_sources_as_text():
    """Seeded fuzz through lower + generate (the compiler is in the tests above): names drawn
    from C's special characters and from all of Unicode; the sources stay printable ASCII with no '??', no
    foreign preprocessor line, and every name appears only as its octal escapes."""
    import random

    from onnx import TensorProto, helper

    from fwedge.lowered.lower import lower
    from fwedge.targets.c_codegen import generate

    rng = random.Random(0)
    alphabet = list('?=/\'()!<>-"\\*#%{};\n\r\t\x00\x0b\x0c ') + ["\u2028", "é", "\U0001f600", "??/", "*/"]
    tried = 0
    for _ in range(150):
        def name() -> str:
            # protobuf refuses lone surrogates, so they never reach fwedge
            return "".join(rng.choice(alphabet) if rng.random() < 0.8 else chr(rng.choice([rng.randint(1, 0xD7FF),
                                                                                           rng.randint(0xE000, 0x10FFFF)]))
                           for _ in range(rng.randint(1, 24)))

        names = list(dict.fromkeys(name() for _ in range(3)))
        if len(names) < 3:
            continue
        x, y, z = names
        graph = helper.make_graph([helper.make_node("Relu", [x], [y], name=name()),
                                   helper.make_node("Sigmoid", [y], [z], name=name())], name(),
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info(z, TensorProto.FLOAT, [1, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        tried += 1
        program = generate(lower(model, target=host_arch()), "0" * 64)
        header = re.sub(r'"\s*\n\s*"', "", program.model_h)
        for source in (program.model_c, program.model_h):
            assert all(32 <= ord(ch) < 127 or ch == "\n" for ch in source)
            assert "??" not in source
            for line in source.splitlines():
                if line.lstrip().startswith("#"):
                    assert DIRECTIVE.match(line.strip()) or line in PROFILE_LINES, line
        assert f'"{octal(x)}"' in header and f'"{octal(z)}"' in header
    assert tried > 100
    print(f"C name fuzz: {tried} models tried, all generated, 0 exceptions")


def test_an_export_error_naming_a_hostile_node_is_one_line(tmp_path):
    from onnx import TensorProto, helper

    from fwedge.errors import FwEdgeError

    node_name = "soft\nmax\r#include </etc/passwd>"
    pads = helper.make_tensor("pads", TensorProto.INT64, [6], [0, 1, 1, 0, 1, 1])  # rank 3: C refuses it
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], name=node_name)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6])], [pads])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(FwEdgeError) as caught:
        export_bundle(path, host_arch(), tmp_path / "b", ExportOptions())
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and repr(node_name) in message, message

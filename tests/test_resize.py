"""Nearest and bilinear Resize (fwedge/ops/resize.py): the rules against onnxruntime, and what each target takes."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fwedge.errors import UnsupportedOpError
from fwedge.eval import ort_session
from fwedge.ops.resize import source_index
from tolerances import C_RESIZE_LINEAR_INT8_STEPS, FP32_ATOL, FP32_RTOL, RESIZE_LINEAR_INT8_STEPS

MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
         "half_pixel_symmetric"]
ROUNDING = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
SIZES = [(5, 10), (5, 8), (7, 3), (4, 4), (3, 9), (6, 13), (10, 5), (1, 4), (4, 1)]


def _resize_model(size, out, transform, rounding, mode="nearest", sizes=False, opset=19):
    if sizes:
        inputs, inits = ["x", "", "", "sizes"], [numpy_helper.from_array(np.array([1, 2, out, out], np.int64), "sizes")]
    else:
        inputs = ["x", "", "scales"]
        inits = [numpy_helper.from_array(np.array([1, 1, out / size, out / size], np.float32), "scales")]
    node = helper.make_node("Resize", inputs, ["y"], name="up", mode=mode, coordinate_transformation_mode=transform,
                            nearest_mode=rounding)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, size, size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("transform", MODES)
def test_the_nearest_index_rule_is_onnxruntimes(transform):
    """Every nearest_mode, scales and sizes, up and down: the same source pixels as onnxruntime
    (its float32 ties included)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # tf_half_pixel_for_nn is deprecated; still read
    for rounding in ROUNDING:
        for size, out in SIZES:
            for sizes in (False, True):
                x = np.arange(2 * size * size, dtype=np.float32).reshape(1, 2, size, size)
                y = ort_session(_resize_model(size, out, transform, rounding, sizes=sizes)).run(None, {"x": x})[0]
                scale = np.float32(out) / np.float32(size) if sizes else np.float32(out / size)
                table = list(source_index(y.shape[2], size, float(scale), transform, rounding))
                np.testing.assert_array_equal(x[:, :, table][:, :, :, table], y,
                                              err_msg=f"{transform} {rounding} {size}->{out} sizes={sizes}")


@pytest.mark.tflite
@pytest.mark.ncnn
@pytest.mark.cc
@pytest.mark.zig
def test_each_target_takes_the_tables_it_can_express(tmp_path):
    """half_pixel 5->8: TFLite's half_pixel_centers rule and C's tables give onnxruntime's
    result; ncnn's nearest rule (floor(x * in / out)) picks other rows, so ncnn refuses it."""
    from fwedge.targets import ExportOptions, get_target

    model = _resize_model(5, 8, "half_pixel", "round_prefer_floor", opset=13)
    x = np.random.default_rng(0).random((1, 2, 5, 5), dtype=np.float32)
    expected = ort_session(model).run(None, {"x": x})[0]
    for target in ("tflite", "x86_64"):
        bundle = get_target(target).export(model, tmp_path / target, ExportOptions(source_sha256="0" * 64))
        got = get_target(target).run(bundle, {"x": x})["y"]
        np.testing.assert_allclose(got, expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{target}: output 'y'")
    with pytest.raises(UnsupportedOpError, match="'up' \\(Resize"):
        get_target("ncnn").export(model, tmp_path / "ncnn", ExportOptions(source_sha256="0" * 64))
    assert not (tmp_path / "ncnn").exists()


def test_cubic_resize_is_refused_with_its_reason():
    from fwedge.lowered.lower import unsupported_nodes
    from fwedge.lowered.lower import lower

    model = _resize_model(4, 8, "half_pixel", "round_prefer_floor", mode="cubic", opset=13)
    assert unsupported_nodes(model) == [("up", "Resize", 13)]
    with pytest.raises(UnsupportedOpError, match="mode 'cubic': only nearest and linear"):
        lower(model)


def test_a_resize_to_a_huge_output_is_refused_before_its_tables_are_made(monkeypatch):
    """A stranger's scales can ask for any size: the output is bounded by FWEDGE_MAX_TENSOR_BYTES
    before one table entry is computed."""
    from fwedge.lowered.lower import lower

    monkeypatch.setenv("FWEDGE_MAX_TENSOR_BYTES", str(1 << 20))
    model = _resize_model(4, 4096, "asymmetric", "floor", opset=13)  # [1, 2, 4096, 4096] float32: 128 MiB
    with pytest.raises(UnsupportedOpError, match="FWEDGE_MAX_TENSOR_BYTES"):
        lower(model)


# -- bilinear --------------------------------------------------------------------------------

LINEAR_MODES = ["asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners"]
# (input H, W) -> (output H, W): x2 up, up by ratios that are no integers, down, the same size,
# down onto a row of 1, up from a row of 1, mixed down and up, a larger up.
LINEAR_SHAPES = [((5, 6), (10, 12)), ((5, 6), (8, 9)), ((8, 9), (3, 5)), ((6, 6), (6, 6)), ((4, 5), (1, 3)),
                 ((1, 4), (3, 8)), ((20, 16), (10, 40)), ((7, 9), (16, 20))]
BATCH, CHANNELS = 8, 3
# int8 (input scale, zero point, output scale, zero point): the input's kept, as quantizers write
# a Resize, and an output quantization of its own.
LINEAR_QUANT = {"shared": (2 / 255, 0, 2 / 255, 0), "own": (2 / 255, 0, 1.5 / 255, 3)}


def _linear_model(size, out, sizes: bool, modes, quant=None, batch: int = BATCH) -> onnx.ModelProto:
    """Resize linear of x [batch, CHANNELS, *size] onto `out`, from sizes or scales, one node per
    mode of `modes` (node 'up' and output 'y' for one mode, else 'up_<mode>' and 'y_<mode>');
    with quant = LINEAR_QUANT[...] the QDQ form x -Q-DQ- Resize -Q-DQ- y."""
    if sizes:
        factors, inits = "sizes", [numpy_helper.from_array(np.array([batch, CHANNELS, *out], np.int64), "sizes")]
    else:
        factors = "scales"
        inits = [numpy_helper.from_array(np.array([1, 1, out[0] / size[0], out[1] / size[1]], np.float32), "scales")]
    inputs = ["x" if quant is None else "xd", ""] + (["", "sizes"] if sizes else ["scales"])
    nodes, outputs = [], []
    if quant is not None:
        for name, (scale, zero_point) in {"x": quant[:2], "y": quant[2:]}.items():
            inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                      numpy_helper.from_array(np.array(zero_point, np.int8), f"{name}_zero_point")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"], name="x_q"),
                  helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero_point"], ["xd"], name="x_dq")]
    for mode in modes:
        tag = "" if len(modes) == 1 else f"_{mode}"
        resized = f"y{tag}" if quant is None else f"r{tag}"
        nodes.append(helper.make_node("Resize", inputs, [resized], name=f"up{tag}", mode="linear",
                                      coordinate_transformation_mode=mode))
        if quant is not None:
            nodes += [helper.make_node("QuantizeLinear", [resized, "y_scale", "y_zero_point"], [f"q{tag}"], name=f"q{tag}"),
                      helper.make_node("DequantizeLinear", [f"q{tag}", "y_scale", "y_zero_point"], [f"y{tag}"],
                                       name=f"dq{tag}")]
        outputs.append(helper.make_tensor_value_info(f"y{tag}", onnx.TensorProto.FLOAT, [batch, CHANNELS, *out]))
    assert factors in inputs
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, CHANNELS, *size])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _linear_cases():
    """(mode, size, out, sizes) over every mode, shape, and scales or sizes."""
    return [(mode, size, out, sizes) for mode in LINEAR_MODES for size, out in LINEAR_SHAPES for sizes in (False, True)]


def _feeds(size, seed: int, batch: int = BATCH) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).uniform(-1, 1, (batch, CHANNELS, *size)).astype(np.float32)}


def _ort_per_sample(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on a batch-1 model, sample by sample: name -> [len(x), ...]."""
    session = ort_session(model)
    names = [output.name for output in model.graph.output]
    runs = [session.run(names, {"x": x[i:i + 1]}) for i in range(len(x))]
    return {name: np.concatenate([run[k] for run in runs]) for k, name in enumerate(names)}


def _steps(reference: np.ndarray, candidate: np.ndarray, quant) -> np.ndarray:
    return np.rint(np.abs(candidate.astype(np.float64) - reference) / np.float32(quant[2])).astype(np.int64)


def _tflite_refusal(mode, size, out) -> str | None:
    """What TFLite must refuse: RESIZE_BILINEAR's half_pixel_centers puts a lone output row at
    (0 + 1/2) * in - 1/2, where pytorch_half_pixel reads source row 0."""
    if mode == "pytorch_half_pixel" and min(out) == 1 and size != out:
        return "follow no TFLite rule"
    return None


def _ncnn_refusal(mode, size, out) -> str | None:
    """What ncnn must refuse: Interp's bilinear rule is half_pixel or align_corners from the sizes
    (asymmetric only where every rule is the identity), reads in - 2, and divides by out - 1."""
    if size == out:
        return None
    if min(size) == 1:
        return "reads index in - 2"
    if mode == "align_corners" and min(out) == 1:
        return "divides by out - 1"
    if mode == "asymmetric" or (mode == "pytorch_half_pixel" and min(out) == 1):
        return "differ from ncnn Interp's rule"
    return None


def test_the_bilinear_rule_is_onnxruntimes():
    """fwedge's bilinear tables and interpreter (fwedge/ops/resize.py) against onnxruntime on
    every mode x shape x scales/sizes: fp32 bit for bit, int8 (its exact QDQ run) to the step,
    both with the output's own quantization and the input's, on 4 x 8 seeded inputs."""
    from fwedge.lowered.interp import run_lowered
    from fwedge.lowered.lower import lower

    for mode, size, out, sizes in _linear_cases():
        for quant in (None, *LINEAR_QUANT.values()):
            model = _linear_model(size, out, sizes, [mode], quant)
            graph, session = lower(model), ort_session(model)
            for seed in range(4):
                feeds = _feeds(size, seed)
                got, want = run_lowered(graph, feeds)["y"], session.run(None, feeds)[0]
                where = f"{mode} {size}->{out} sizes={sizes} quant={quant} seed={seed}: output 'y'"
                np.testing.assert_array_equal(got, want, err_msg=where)


def test_the_other_linear_coordinate_modes_are_refused_with_their_reason():
    from fwedge.lowered.lower import lower

    for transform in ("tf_half_pixel_for_nn", "half_pixel_symmetric"):
        model = _resize_model(4, 8, transform, "round_prefer_floor", mode="linear", opset=19)
        with pytest.raises(UnsupportedOpError, match=f"'up'.*linear with coordinate_transformation_mode '{transform}'"):
            lower(model)


@pytest.mark.cc
@pytest.mark.zig
def test_c_bilinear_is_onnxruntimes(tmp_path, record_property):
    """The C bundle (x86_64) of every mode x shape x scales/sizes against onnxruntime on 32
    seeded inputs each: fp32 bit for bit (the kernel sums in onnxruntime's order, no FMA), int8
    within C_RESIZE_LINEAR_INT8_STEPS of the exact QDQ run, with the input's output
    quantization and with one of its own."""
    import itertools

    from fwedge.targets import ExportOptions, get_target

    target, worst, elements = get_target("x86_64"), 0, 0
    plan = itertools.product(LINEAR_SHAPES, (False, True), [None, *LINEAR_QUANT.values()])
    for index, ((size, out), sizes, quant) in enumerate(plan):
        model = _linear_model(size, out, sizes, LINEAR_MODES, quant, batch=1)
        x = _feeds(size, index, batch=32)["x"]
        want = _ort_per_sample(model, x)
        got = target.run(target.export(model, tmp_path / str(index), ExportOptions(source_sha256="0" * 64)), {"x": x})
        for name, reference in want.items():
            where = f"C {size}->{out} sizes={sizes} quant={quant}: output '{name}'"
            if quant is None:
                np.testing.assert_array_equal(got[name], reference, err_msg=where)
                continue
            steps = _steps(reference, got[name], quant)
            worst, elements = max(worst, int(steps.max())), elements + steps.size
            assert steps.max() <= C_RESIZE_LINEAR_INT8_STEPS, f"{where}: {steps.max()} steps"
    record_property("int8_worst_steps", f"{worst} over {elements} elements")


def _tflite_int8_refusal(quant) -> str | None:
    """TFLite's int8 RESIZE_BILINEAR keeps its input's quantization; another output one is refused."""
    return None if quant == LINEAR_QUANT["shared"] else "output scale or zero point is not its input's"


@pytest.mark.parametrize("target", [pytest.param("tflite", marks=pytest.mark.tflite),
                                    pytest.param("ncnn", marks=pytest.mark.ncnn)])
def test_tflite_and_ncnn_take_the_bilinear_modes_their_rules_match(target, tmp_path, record_property):
    """Every mode x shape x scales/sizes, fp32 and int8 (both quantizations): the target refuses,
    naming the node and the reason, exactly the cases its own rule cannot compute
    (_tflite_refusal, _ncnn_refusal), and runs the others within the fp32 tolerance of
    onnxruntime and within RESIZE_LINEAR_INT8_STEPS[target] of its exact QDQ run."""
    from fwedge.targets import ExportOptions, get_target

    runtime, refusal = get_target(target), {"tflite": _tflite_refusal, "ncnn": _ncnn_refusal}[target]
    one_step = elements = 0
    for index, (mode, size, out, sizes) in enumerate(_linear_cases()):
        for label, quant in [("fp32", None), *LINEAR_QUANT.items()]:
            model, folder = _linear_model(size, out, sizes, [mode], quant), tmp_path / f"{index}-{label}"
            where = f"{target} {label} {mode} {size}->{out} sizes={sizes}"
            reason = refusal(mode, size, out) or (_tflite_int8_refusal(quant) if target == "tflite" and quant else None)
            if reason is not None:
                with pytest.raises(UnsupportedOpError, match=f"'up' \\(Resize.*{re.escape(reason)}"):
                    runtime.export(model, folder, ExportOptions(source_sha256="0" * 64))
                assert not folder.exists(), where
                continue
            feeds = _feeds(size, index)
            got = runtime.run(runtime.export(model, folder, ExportOptions(source_sha256="0" * 64)), feeds)["y"]
            want = ort_session(model).run(None, feeds)[0]
            if quant is None:
                np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{where}: output 'y'")
                continue
            steps = _steps(want, got, quant)
            one_step, elements = one_step + int((steps == 1).sum()), elements + steps.size
            assert steps.max() <= RESIZE_LINEAR_INT8_STEPS[target], f"{where}: output 'y' {steps.max()} steps off"
    record_property("int8_one_step", f"{one_step}/{elements}")


@pytest.mark.cc
@pytest.mark.zig
@pytest.mark.qemu("aarch64", "riscv64", "loongarch64")
def test_c_bilinear_gives_the_same_bytes_on_every_architecture(tmp_path):
    """The fp32 and int8 C bundles of all four modes, up by ratios that are no integers and down,
    built for x86_64, aarch64, riscv64 and loongarch64 (the others under qemu-user): the same
    output bytes on 16 seeded inputs (no FMA; nearbyintf, the one libm call, is exact)."""
    from fwedge.bundle import host_arch, load_bundle
    from fwedge.targets import C_ARCHES, ExportOptions, get_target

    for index, (size, out) in enumerate([((7, 9), (16, 20)), ((8, 9), (3, 5))]):
        for label, quant in (("fp32", None), ("int8", LINEAR_QUANT["own"])):
            model = _linear_model(size, out, False, LINEAR_MODES, quant, batch=1)
            x = _feeds(size, 50 + index, batch=16)["x"]
            results = {}
            for arch in C_ARCHES:
                bundle = get_target(arch).export(model, tmp_path / f"{index}-{label}-{arch}",
                                                 ExportOptions(source_sha256="0" * 64))
                results[arch] = get_target("c").run(load_bundle(bundle.path), {"x": x})
            for arch, outputs in results.items():
                for name, value in outputs.items():
                    assert value.tobytes() == results[host_arch()][name].tobytes(), (
                        f"{label} {size}->{out} output '{name}': {arch} differs from {host_arch()}")


@pytest.mark.tflite
@pytest.mark.ncnn
@pytest.mark.cc
@pytest.mark.zig
def test_a_model_of_a_fixed_batch_keeps_its_resize_sizes_per_sample(tmp_path):
    """A model exported at a fixed batch of 8 holds 8 in its Resize `sizes`. A bundle runs one
    sample at a time, so the batch entry follows the input's batch 1 (fwedge.ir.set_input_shapes):
    before, the C bundle declared an output of eight samples per sample, of which its kernel wrote one.
    Each target's bundle, fed the 8 samples, gives ORT's output of the batch-8 model. A sizes
    batch that no input batch explains is refused, naming the node."""
    from fwedge.lowered.lower import unsupported_nodes
    from fwedge.targets import ExportOptions, get_target

    model = _linear_model((5, 5), (10, 10), True, ["half_pixel"], batch=8)
    x = _feeds((5, 5), 7, batch=8)["x"]
    [want] = ort_session(model).run(None, {"x": x})
    for name in ("x86_64", "tflite", "ncnn"):
        target = get_target(name)
        bundle = target.export(model, tmp_path / name, ExportOptions(source_sha256="0" * 64))
        assert bundle.outputs[0].shape[0] in (1, -1), (name, bundle.outputs[0].shape)  # per sample
        got = target.run(bundle, {"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=name)
    odd = _linear_model((5, 5), (10, 10), True, ["half_pixel"], batch=1)
    next(init for init in odd.graph.initializer if init.name == "sizes").CopyFrom(
        numpy_helper.from_array(np.array([2, CHANNELS, 10, 10], np.int64), "sizes"))
    assert unsupported_nodes(odd) == [("up", "Resize", 13)]
    with pytest.raises(UnsupportedOpError, match="resize the batch axis"):
        get_target("x86_64").export(odd, tmp_path / "odd", ExportOptions(source_sha256="0" * 64))

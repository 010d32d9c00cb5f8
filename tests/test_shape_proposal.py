"""A dynamic-shape error proposes a concrete --input-shape: the calibration samples' shape quantize recorded, or the fwedge.preprocess resize."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.errors import ExportError
from fwedge.shape_proposal import SAMPLE_SHAPE_METADATA, proposed_shape
from fwedge.targets.common import require_static
from helpers import tiny_conv_model
from ppocr_inputs import ppocr_cls_inputs


def _dynamic(dims=("N", 1, "height", "width"), metadata: dict | None = None) -> onnx.ModelProto:
    """tiny_conv_model (Conv -> GlobalAveragePool -> Gemm: any H and W) with input x of `dims`."""
    model = tiny_conv_model(np.random.default_rng(0))
    shape = model.graph.input[0].type.tensor_type.shape
    shape.ClearField("dim")
    for dim in dims:
        if isinstance(dim, int):
            shape.dim.add().dim_value = dim
        else:
            shape.dim.add().dim_param = dim
    onnx.helper.set_model_props(model, metadata or {})
    return model


def _invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _refused(result, proposal: str) -> None:
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert proposal in result.output, result.output


def test_quantize_records_the_sample_shape_and_export_proposes_it(tmp_path):
    onnx.save(_dynamic(), tmp_path / "dynamic.onnx")
    np.save(tmp_path / "lines.npy", np.random.default_rng(0).uniform(-1, 1, (16, 1, 12, 20)).astype(np.float32))
    quantized = _invoke("quantize", tmp_path / "dynamic.onnx", "--data", tmp_path / "lines.npy", "-o", tmp_path / "q.onnx")
    assert quantized.exit_code == 0, quantized.output
    qdq = onnx.load(tmp_path / "q.onnx")
    assert [d.dim_param for d in qdq.graph.input[0].type.tensor_type.shape.dim[2:]] == ["height", "width"]  # not applied
    for target in ("x86_64", "tflite"):
        _refused(_invoke("export", tmp_path / "q.onnx", "-t", target, "-o", tmp_path),
                 "give --input-shape x=1,1,12,20 (the shape of the calibration samples in lines.npy)")


@pytest.mark.cc
@pytest.mark.zig
def test_the_proposed_shape_exports(tmp_path):
    onnx.save(_dynamic(), tmp_path / "dynamic.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(-1, 1, (16, 1, 12, 20)).astype(np.float32))
    assert _invoke("quantize", tmp_path / "dynamic.onnx", "--data", tmp_path / "x.npy", "-o", tmp_path / "q.onnx").exit_code == 0
    result = _invoke("export", tmp_path / "q.onnx", "-t", "x86_64", "--input-shape", "x=1,1,12,20", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "q-x86_64-int8" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 1, 12, 20]


def test_export_proposes_the_resize_of_the_preprocess_metadata(tmp_path):
    preprocess = json.dumps({"resize": [12, 20], "color": "grayscale"})
    onnx.save(_dynamic(metadata={"fwedge.preprocess": preprocess}), tmp_path / "resized.onnx")
    _refused(_invoke("export", tmp_path / "resized.onnx", "-t", "x86_64", "-o", tmp_path),
             "give --input-shape x=1,1,12,20 (the resize in the model's fwedge.preprocess metadata)")


def test_without_data_or_metadata_the_message_keeps_the_placeholders(tmp_path):
    onnx.save(_dynamic(), tmp_path / "dynamic.onnx")
    _refused(_invoke("export", tmp_path / "dynamic.onnx", "-t", "x86_64", "-o", tmp_path),
             "give --input-shape x=1,1,H,W with the size the model runs at")


def _recorded(shape, name="x", data="lines.npy") -> dict:
    return {SAMPLE_SHAPE_METADATA: json.dumps({"input": name, "shape": shape, "data": data})}


@pytest.mark.parametrize("dims,metadata,expected", [
    # Only the unknown dims are filled; a dim_param batch becomes 1.
    (("N", 3, "h", 48), _recorded([1, 3, 16, 48]), [1, 3, 16, 48]),
    (("N", 3, "h", 48), {"fwedge.preprocess": '{"resize": [16, 48]}'}, [1, 3, 16, 48]),
    (("batch", "h", "w", 3), {"fwedge.preprocess": '{"resize": [16, 24], "layout": "NHWC"}'}, [1, 16, 24, 3]),
    # A source that contradicts a fixed dim, or has another rank, input or shape, proposes nothing.
    (("N", 3, "h", 48), _recorded([1, 3, 16, 40]), None),
    (("N", 3, "h", 48), _recorded([1, 1, 16, 48]), None),
    (("N", 3, "h", 48), _recorded([1, 3, 16]), None),
    (("N", 3, "h", 48), _recorded([1, 3, 16, 48], name="y"), None),
    (("N", 3, "h", 48), _recorded([1, 3, 0, 48]), None),
    (("N", 3, "h", 48), {SAMPLE_SHAPE_METADATA: "[not json"}, None),
    (("N", 3, "h", 48), {"fwedge.preprocess": '{"resize": [16, 16]}'}, None),
    (("N", 3, "h", "w", 2), {"fwedge.preprocess": '{"resize": [16, 16]}'}, None),
    # The recorded samples come before the resize.
    (("N", 3, "h", "w"), {**_recorded([1, 3, 48, 192]), "fwedge.preprocess": '{"resize": [16, 16]}'},
     [1, 3, 48, 192]),
])
def test_the_proposal_fills_only_unknown_dims_from_a_source_that_fits(dims, metadata, expected):
    model = _dynamic(dims, metadata)
    found = proposed_shape(model, model.graph.input[0])
    assert (found[0] if found else None) == expected, found


def test_a_target_needing_static_shapes_proposes_too():
    """targets/common.require_static (ncnn's check) gives the same advice as the lowering."""
    model = _dynamic(metadata=_recorded([1, 1, 12, 20], data="\x1b[31mred.npy"))
    with pytest.raises(ExportError, match=r"give --input-shape x=1,1,12,20 \(the shape of the calibration "
                                          r"samples in the data\)$"):
        require_static(model, "ncnn")


def test_ppocr_cls_quantized_on_rendered_lines_proposes_its_line_shape(ppocr_cls_path, tmp_path):
    """The real PP-OCR cls model's input is x [N,3,48,W]; quantized on 48x192 lines, its export
    proposes exactly that shape."""
    np.save(tmp_path / "lines.npy", ppocr_cls_inputs(8)[0].astype(np.float32))
    quantized = _invoke("quantize", ppocr_cls_path, "--data", tmp_path / "lines.npy", "-o", tmp_path / "cls.onnx", "-q")
    assert quantized.exit_code == 0, quantized.output
    _refused(_invoke("export", tmp_path / "cls.onnx", "-t", "x86_64", "-o", tmp_path),
             "give --input-shape x=1,3,48,192 (the shape of the calibration samples in lines.npy)")


def test_the_pipeline_export_proposes_the_calibration_sample_shape(tmp_path, monkeypatch):
    """The pipeline's export reads quantize's QDQ model, so it proposes the same shape."""
    onnx.save(_dynamic(), tmp_path / "dynamic.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.uniform(-1, 1, (32, 1, 12, 20)).astype(np.float32), y=rng.integers(0, 3, 32))
    (tmp_path / "p.toml").write_text('[pipeline]\ncache_dir = "cache"\nout_dir = "out"\n[model]\npath = "dynamic.onnx"\n'
                                     '[data]\ncalibration = "d.npz"\neval = "d.npz"\n[quantize]\nnum_samples = 32\n'
                                     '[export]\ntargets = ["x86_64"]\n')
    monkeypatch.chdir(tmp_path)
    result = _invoke("pipeline", tmp_path / "p.toml", "-q")
    assert result.exit_code == 2, result.output
    assert "give --input-shape x=1,1,12,20 (the shape of the calibration samples in d.npz)" in result.output, result.output


def _flatten_head() -> onnx.ModelProto:
    """x[N,1,H,W] -> Flatten -> Gemm(240 -> 3): runs only at H*W = 240."""
    weight = onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal((3, 240)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
         onnx.helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)], "head",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, "h", "w"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_eval_of_images_at_another_size_proposes_the_calibration_sample_shape(tmp_path):
    """Images at their own 8x8 size fail the 12x20 head; the message proposes the calibrated shape,
    and with it eval resizes the images and runs."""
    from PIL import Image

    onnx.save(_flatten_head(), tmp_path / "head.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.uniform(0, 1, (16, 1, 12, 20)).astype(np.float32))
    assert _invoke("quantize", tmp_path / "head.onnx", "--data", tmp_path / "x.npy", "-o", tmp_path / "q.onnx").exit_code == 0
    for index in range(6):
        (tmp_path / "images" / str(index % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / str(index % 3) / f"{index}.png")
    _refused(_invoke("eval", tmp_path / "q.onnx", "--data", tmp_path / "images"),
             "give --input-shape x=1,1,12,20 (the shape of the calibration samples in x.npy)")
    fixed = _invoke("eval", tmp_path / "q.onnx", "--data", tmp_path / "images", "--input-shape", "x=1,1,12,20", "--json", "-")
    assert fixed.exit_code == 0 and json.loads(fixed.output)["samples"] == 6, fixed.output

"""`fwedge diff BUNDLE REFERENCE.onnx --data ...`."""
from __future__ import annotations

import click

from fwedge.commands.options import data_option, emit_json, input_shape_option, json_option, preprocess_option


@click.command("diff")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("reference", type=click.Path(dir_okay=False))
@data_option(required=True)
@click.option("--limit", type=int, default=8, show_default=True, help="Samples to compare on.")
@click.option("--max-steps", type=float, default=1.0, show_default=True,
              help="A quantized tensor diverges beyond this many quantization steps.")
@click.option("--rtol", type=float, default=1e-4, show_default=True,
              help="A float tensor diverges when max|diff| > atol + rtol * max|ref|.")
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--all", "show_all", is_flag=True, help="List every compared tensor, not only up to the divergence.")
@input_shape_option("Fix a dynamic input shape of REFERENCE, e.g. x=1,3,48,192 (run at batch 1, sample by sample); it must "
                    "agree with the bundle's input, fixed at export. Repeatable.")
@preprocess_option()
@click.option("--exact-int8", is_flag=True,
              help="onnx and openvino bundles: compute Q/DQ as defined instead of with the runtime's int8 kernels, "
                   "which depend on the CPU (without VNNI they saturate int16 pair sums): tells a wrong bundle "
                   "from this CPU's kernels.")
@json_option("the report")
def command(bundle, reference, data, limit, max_steps, rtol, atol, show_all, input_shapes, exact_int8, preprocess,
            json_out) -> None:
    """Name the first tensor, in the reference's topological order, where BUNDLE diverges from
    REFERENCE (the QDQ model for an int8 bundle, the float model for fp32).

    ONNX, OpenVINO, NCNN and TFLite bundles expose intermediate tensors by their ONNX names, so the
    divergence is bisected to one node; for other targets only the graph outputs are compared,
    and the report says so. Exit code 0 whether or not a divergence is found.
    """
    from fwedge.console import stdout, table
    from fwedge.diff import diff_bundle

    report = diff_bundle(bundle, reference, data, limit=limit, preprocess=preprocess,
                         max_steps=max_steps, rtol=rtol, atol=atol, exact_int8=exact_int8,
                         input_shapes=input_shapes)
    if emit_json(json_out, report.to_dict()):
        return
    rows = []
    for entry in report.compared:
        steps = "" if entry.steps is None else f"{entry.steps:.2f}"
        rows.append([entry.name, entry.op, entry.shape, f"{entry.max_abs:.4g}", steps,
                     f"{entry.sqnr_db:.1f}", "over limit" if entry.diverged else "ok"])
        if entry is report.first_divergence and not show_all:
            break
    stdout.print(table(f"{report.target} ({report.precision}) vs {reference}, {report.samples} samples",
                       ["tensor", "op", "shape", "max |diff|", "steps", "SQNR dB", ""], rows))
    if report.note:
        stdout.print(f"note: {report.note}")
    if report.missing:
        stdout.print(f"{len(report.missing)} reference tensors have no counterpart in the bundle (fused or renamed)")
    first = report.first_divergence
    if first is None:
        stdout.print(f"no divergence in {len(report.compared)} compared tensors")
    else:
        where = f"{first.steps:.2f} steps" if first.steps is not None else f"max |diff| {first.max_abs:.4g}"
        limit = f"--max-steps {max_steps:g}" if first.steps is not None else f"--rtol {rtol:g} / --atol {atol:g}"
        stdout.print(f"first divergence: tensor '{first.name}' produced by {first.op} '{first.node}' ({where}; "
                     f"limit {limit})")
        stdout.print("note: steps count the reference's int8 quantization steps; a runtime that computes a layer "
                     "another way (in float, or rounding differently) exceeds them while its SQNR stays high and "
                     "its answers agree; `fwedge run BUNDLE --reference MODEL` gives the end-to-end agreement",
                     markup=False, highlight=False)

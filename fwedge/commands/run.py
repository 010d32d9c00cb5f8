"""`fwedge run BUNDLE --data ...`."""
from __future__ import annotations

import click

from fwedge.commands.options import (
    data_option, input_shape_option, json_option, output_name_option, preprocess_option, print_scores, task_option,
    threads_option,
)


@click.command("run")
@click.argument("bundle", type=click.Path(file_okay=False))
@data_option(required=True)
@click.option("--reference", type=click.Path(dir_okay=False),
              help="A reference ONNX model (the float or QDQ model) to measure fidelity against. "
                   "Default: the float model the bundle records (fwedge export records it).")
@output_name_option()
@task_option()
@click.option("--limit", type=int, help="Use a seeded random subset of this many samples.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@input_shape_option("Fix a dynamic input shape of the reference, e.g. x=1,3,48,192; it must agree with the "
                    "bundle's input, fixed at export. Repeatable.")
@preprocess_option()
@click.option("--exact-int8", is_flag=True,
              help="onnx and openvino bundles: compute Q/DQ as defined instead of with the runtime's int8 kernels, "
                   "which depend on the CPU (without VNNI they saturate int16 pair sums).")
@threads_option()
@json_option("the result")
def command(bundle, data, reference, output_name, task, limit, batch_size, input_shapes, preprocess, exact_int8, threads,
            json_out) -> None:
    """Run BUNDLE on the host in its own runtime (onnxruntime, OpenVINO, LiteRT, ncnn, or the
    compiled C program) and report top-1 accuracy on labelled DATA and fidelity against a
    reference ONNX model run in onnxruntime: --reference, else the float model the bundle records
    (loaded only if its sha256 is the recorded one). An output with a quantization step (the
    reference's DequantizeLinear, the manifest's int8 output scale) is also counted in steps.

    The bundle is verified against its manifest first; a modified bundle is refused.
    Preprocessing comes from the bundle's manifest unless --preprocess is given.
    """
    from fwedge.console import progress
    from fwedge.data import open_dataset
    from fwedge.runner import evaluate_bundle

    total = limit or open_dataset(data).num_samples
    with progress(total, "running") as advance:
        result = evaluate_bundle(bundle, data, reference=reference, preprocess=preprocess,
                                 limit=limit, batch_size=batch_size, progress=advance, exact_int8=exact_int8,
                                 input_shapes=input_shapes, output=output_name, task=task)
    heading = f"{bundle} ({result['target']}, {result['arch']}, {result['precision']}) on {data}"
    print_scores(result, reference, json_out, heading)

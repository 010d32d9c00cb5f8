"""`fwedge calibrate MODEL --data ... --method kl -o table.json`."""
from __future__ import annotations

import click

from fwedge.commands.options import data_option, input_shape_option, preprocess_option
from fwedge.console import calibration_bar

METHOD_NAMES = ["kl", "percentile", "minmax", "mse"]


def calibration_options(function):
    """Options shared by `calibrate` and `quantize`."""
    options = [
        click.option("--method", type=click.Choice(METHOD_NAMES), default="kl", show_default=True,
                     help="Range method: kl (TensorRT entropy), percentile, minmax, mse."),
        click.option("--num-samples", type=int, default=512, show_default=True,
                     help="Calibration samples (a seeded random subset of DATA)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample subset."),
        click.option("--bins", type=int, default=2048, show_default=True,
                     help="Histogram bins over [0, absmax] (signed tensors get twice as many)."),
        click.option("--percentile", type=float, default=99.99, show_default=True,
                     help="percentile method: share of values kept inside the range."),
        click.option("--symmetric", is_flag=True, help="Symmetric int8 activations (zero point 0)."),
        click.option("--batch-size", type=int, default=64, show_default=True),
        input_shape_option(),
        preprocess_option(),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True)
@calibration_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="QuantTable JSON to write.")
@click.option("--ncnn-table", type=click.Path(dir_okay=False), help="Also write an ncnn .table file.")
@click.option("--tensorrt-cache", type=click.Path(dir_okay=False), help="Also write a TensorRT calibration cache.")
def command(model, data, method, num_samples, seed, bins, percentile, symmetric, batch_size,
            input_shapes, preprocess, output, ncnn_table, tensorrt_cache) -> None:
    """Run MODEL over calibration DATA (two streaming passes: absmax, then histograms) and write
    the activation ranges as a QuantTable (schema fwedge.quant_table/1).

    The table is keyed by the tensor names of the prepared model (BatchNorm folded), which
    `fwedge quantize --table` uses.
    """
    from fwedge.calibration import MethodOptions
    from fwedge.calibration.table import ncnn_table as render_ncnn, tensorrt_cache as render_trt
    from fwedge.console import progress, stdout
    from fwedge.ir import write_atomic
    from fwedge.quantization import calibrate, load_prepared, ncnn_layers
    from fwedge.quantization.calibrate import calibration_count

    options = MethodOptions(percentile=percentile, symmetric=symmetric)
    with progress(*calibration_bar(method, calibration_count(data, num_samples))) as advance:
        table = calibrate(model, data, method, num_samples, options, bins=bins, seed=seed,
                          batch_size=batch_size, preprocess=preprocess, input_shapes=input_shapes,
                          progress=advance)
    table.save(output)
    stdout.print(f"{output}: {len(table.tensors)} tensors, method {method}, {num_samples} samples")
    if tensorrt_cache:
        write_atomic(tensorrt_cache, render_trt(table))
        stdout.print(f"{tensorrt_cache}: TensorRT calibration cache")
    if ncnn_table:
        prepared, _ = load_prepared(model, input_shapes)
        write_atomic(ncnn_table, render_ncnn(table, ncnn_layers(prepared)))
        stdout.print(f"{ncnn_table}: ncnn int8 table")

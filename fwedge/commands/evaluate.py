"""`fwedge eval MODEL --data ...`."""
from __future__ import annotations

import click

from fwedge.commands.options import (
    data_option, input_shape_option, json_option, output_name_option, preprocess_option, print_scores, task_option,
)


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True)
@click.option("--reference", type=click.Path(dir_okay=False),
              help="A reference ONNX model (e.g. the float model) to measure fidelity against.")
@output_name_option()
@task_option()
@click.option("--limit", type=int, help="Use a seeded random subset of this many samples.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@input_shape_option("Fix a dynamic input shape of MODEL and --reference, e.g. x=1,3,48,192 (a batch of 1 runs "
                    "sample by sample). Repeatable.")
@preprocess_option()
@json_option("the result")
def command(model, data, reference, output_name, task, limit, batch_size, input_shapes, preprocess, json_out) -> None:
    """Evaluate an ONNX model in onnxruntime: top-1 accuracy on labelled DATA and, with
    --reference, fidelity (top-1 agreement, cosine, max abs error, SQNR) against another model,
    and for an output with a quantization step (a QDQ model's DequantizeLinear) the largest
    difference in steps and the share of elements more than one step off.

    DATA is an image folder (one sub-folder per class for labels), an .npy/.npz file, an IDX
    file, or fashion-mnist:test / fashion-mnist:train (Debian's dataset-fashion-mnist).
    Preprocessing comes from the model's metadata unless --preprocess is given, else it is
    guessed from the input shape (fixed with --input-shape when the model leaves it dynamic).
    """
    from fwedge.console import progress
    from fwedge.data import open_dataset
    from fwedge.eval import evaluate_model

    total = limit or open_dataset(data).num_samples
    with progress(total, "evaluating") as advance:
        result = evaluate_model(model, data, reference=reference, preprocess=preprocess,
                                limit=limit, batch_size=batch_size, progress=advance, input_shapes=input_shapes,
                                output=output_name, task=task)
    print_scores(result, reference, json_out, heading=f"{model} on {data}")

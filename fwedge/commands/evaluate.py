"""`fwedge eval MODEL --data ...`."""
from __future__ import annotations

import json

import click

from fwedge.commands.options import data_option, preprocess_option


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True)
@click.option("--reference", type=click.Path(dir_okay=False),
              help="A reference ONNX model (e.g. the float model) to measure fidelity against.")
@click.option("--limit", type=int, help="Use a seeded random subset of this many samples.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@preprocess_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(model, data, reference, limit, batch_size, preprocess, as_json) -> None:
    """Evaluate an ONNX model in onnxruntime: top-1 accuracy on labelled DATA and, with
    --reference, fidelity (top-1 agreement, cosine, max abs error, SQNR) against another model.

    DATA is an image folder (one sub-folder per class for labels), an .npy/.npz file, an IDX
    file, or fashion-mnist:test / fashion-mnist:train (Debian's dataset-fashion-mnist).
    Preprocessing comes from the model's metadata unless --preprocess is given.
    """
    from fwedge.console import progress, stdout
    from fwedge.data import open_dataset
    from fwedge.eval import evaluate_model

    total = limit or open_dataset(data).num_samples
    with progress(total, "evaluating") as advance:
        result = evaluate_model(model, data, reference=reference, preprocess=preprocess,
                                limit=limit, batch_size=batch_size, progress=advance)
    if as_json:
        payload = {key: value.to_dict() if hasattr(value, "to_dict") else value for key, value in result.items()}
        click.echo(json.dumps(payload, indent=2))
        return
    stdout.print(f"{model} on {data}: {result['samples']} samples")
    if result["accuracy"] is not None:
        acc = result["accuracy"]
        stdout.print(f"top-1 accuracy: {100 * acc.top1:.2f}% ({acc.correct}/{acc.total})")
    if result["fidelity"] is not None:
        fid = result["fidelity"]
        stdout.print(f"fidelity vs {reference}: top-1 agreement {100 * fid.top1_agreement:.2f}%, "
                     f"cosine {fid.cosine:.6f}, max abs error {fid.max_abs_error:.4g}, SQNR {fid.sqnr_db:.2f} dB")

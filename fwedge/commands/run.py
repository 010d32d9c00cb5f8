"""`fwedge run BUNDLE --data ...`."""
from __future__ import annotations

import json

import click

from fwedge.commands.options import data_option, preprocess_option


@click.command("run")
@click.argument("bundle", type=click.Path(file_okay=False))
@data_option(required=True)
@click.option("--reference", type=click.Path(dir_okay=False),
              help="A reference ONNX model (the float or QDQ model) to measure fidelity against.")
@click.option("--limit", type=int, help="Use a seeded random subset of this many samples.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@preprocess_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(bundle, data, reference, limit, batch_size, preprocess, as_json) -> None:
    """Run BUNDLE on the host in its own runtime (onnxruntime, OpenVINO, LiteRT, ncnn, or the
    compiled C program) and report top-1 accuracy on labelled DATA and, with --reference,
    fidelity against a reference ONNX model run in onnxruntime.

    The bundle is verified against its manifest first; a modified bundle is refused.
    Preprocessing comes from the bundle's manifest unless --preprocess is given.
    """
    from fwedge.console import progress, stdout
    from fwedge.data import open_dataset
    from fwedge.runner import evaluate_bundle

    total = limit or open_dataset(data).num_samples
    with progress(total, "running") as advance:
        result = evaluate_bundle(bundle, data, reference=reference, preprocess=preprocess,
                                 limit=limit, batch_size=batch_size, progress=advance)
    if as_json:
        payload = {key: value.to_dict() if hasattr(value, "to_dict") else value for key, value in result.items()}
        click.echo(json.dumps(payload, indent=2))
        return
    stdout.print(f"{bundle} ({result['target']}, {result['arch']}, {result['precision']}) on {data}: "
                 f"{result['samples']} samples")
    if result["accuracy"] is not None:
        acc = result["accuracy"]
        stdout.print(f"top-1 accuracy: {100 * acc.top1:.2f}% ({acc.correct}/{acc.total})")
    if result["fidelity"] is not None:
        fid = result["fidelity"]
        stdout.print(f"fidelity vs {reference}: top-1 agreement {100 * fid.top1_agreement:.2f}%, "
                     f"cosine {fid.cosine:.6f}, max abs error {fid.max_abs_error:.4g}, SQNR {fid.sqnr_db:.2f} dB")

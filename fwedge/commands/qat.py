"""`fwedge qat QDQ_OR_FLOAT.onnx --data DATA --epochs N -o OUT.onnx`."""
from __future__ import annotations

import click

from fwedge.commands.calibrate import METHOD_NAMES
from fwedge.commands.distill import distill_options, epoch_printer, training_options
from fwedge.commands.options import data_option, emit_json, input_shape_option, json_option, preprocess_option


@click.command("qat")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option(required=True, help_text="Training data (and calibration data without --table): fashion-mnist:train, "
                                      "image folder, .npz, IDX.")
@click.option("--table", type=click.Path(dir_okay=False), help="Start from this QuantTable instead of calibrating.")
@click.option("--method", type=click.Choice(METHOD_NAMES), default="kl", show_default=True,
              help="Range method of the calibration (without --table).")
@click.option("--num-samples", type=int, default=512, show_default=True, help="Calibration samples (without --table).")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--symmetric", is_flag=True, help="Symmetric int8 activations (zero point 0).")
@click.option("--keep-float", "keep_float", multiple=True, metavar="NODE",
              help="Keep this layer (node name) and its fused ReLU/Clip in float. Repeatable.")
@click.option("--float-stem", is_flag=True, help="Keep the layers that read the model input in float.")
@click.option("--activation-dtype", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="Activation Q/DQ dtype of the written model (same values).")
@click.option("--teacher", type=click.Path(dir_okay=False),
              help="Float teacher for knowledge distillation, e.g. the float model itself. Without it: hard labels.")
@training_options(epochs=2, lr=3e-4, bn=False)
@input_shape_option()
@preprocess_option()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="QDQ ONNX model to write.")
@json_option("the epoch history")
def command(model, data, table, method, num_samples, per_tensor, symmetric, keep_float, float_stem, activation_dtype,
            teacher, val_data, val_limit, input_shapes, preprocess, output, json_out, **training) -> None:
    """Quantization-aware training: fine-tune MODEL with fake quantization and write the same
    standard QDQ ONNX model that `fwedge quantize` writes (every target takes it unchanged).

    MODEL is a float model (the QuantTable is --table or calibrated on DATA, as quantize does) or
    a QDQ model written by `fwedge quantize` (its own scales and layout; its float model comes
    from its metadata). Activation scales stay fixed; weight scales are recomputed from the
    weights at every step (per channel, or --per-tensor); rounding has a straight-through
    gradient. Training is distill's: Adam with cosine decay, deterministic per seed, resumable,
    optional knowledge distillation from --teacher. Needs torch: pip install 'fwedge[distill]'.
    """
    from dataclasses import asdict

    from fwedge import ir
    from fwedge.console import progress, stdout
    from fwedge.data import open_dataset
    from fwedge.passes.qat import is_qdq, qat, request_from_qdq
    from fwedge.quantization import QuantizeRequest
    from fwedge.reference import write_metadata

    dataset = open_dataset(data)
    options = distill_options(training)
    loaded = ir.load(model)
    same_as = loaded if is_qdq(loaded) else None
    if same_as is not None:
        given = [name for name, value in (("--table", table), ("--per-tensor", per_tensor), ("--symmetric", symmetric),
                                          ("--keep-float", keep_float), ("--float-stem", float_stem)) if value]
        if given:
            raise click.UsageError(f"MODEL '{model}' is a QDQ model, which brings its own scales and layout: "
                                   f"{', '.join(given)} do not apply (give the float model to choose them)")
        request = request_from_qdq(loaded, model, input_shapes=input_shapes, preprocess=preprocess)
    else:
        request = QuantizeRequest(model, data if table is None else None, method, num_samples, table=table,
                                  per_channel=not per_tensor, symmetric=symmetric, preprocess=preprocess,
                                  input_shapes=input_shapes, keep_float=keep_float, float_stem=float_stem,
                                  activation_dtype=activation_dtype)
    teacher_model = ir.load(teacher) if teacher else None
    val_dataset = open_dataset(val_data) if val_data else None

    samples = options.limit or dataset.num_samples
    with progress(samples * options.epochs, "quantization-aware training") as advance:
        result = qat(request, dataset, options, teacher=teacher_model, preprocess=preprocess, val_dataset=val_dataset,
                     val_limit=val_limit, on_epoch=epoch_printer(json_out), on_batch=advance,
                     same_as=same_as)
    write_metadata(result.model, request.model, output)  # export records the float model as the reference
    ir.save(result.model, output)
    if emit_json(json_out, [asdict(stats) for stats in result.history]):
        return
    plan = result.ptq.plan
    stdout.print(f"{output}: {len(plan.quantized_nodes)} nodes in int8 after {result.samples} samples x "
                 f"{options.epochs} "
                 f"epochs of QAT" + (f" (resumed after epoch {result.resumed_from_epoch})"
                                     if result.resumed_from_epoch else "")
                 + f"; scales from {'the QDQ model' if same_as is not None else 'the quant table'} "
                 f"({result.ptq.table.method})")

"""`fwedge quantize MODEL --data DIR --method kl -o model.int8.onnx`."""
from __future__ import annotations

import click

from fwedge.commands.calibrate import calibration_options
from fwedge.commands.options import data_option, emit_json, json_option, renamed
from fwedge.console import calibration_bar


@click.command("quantize")
@renamed("--eval-samples", "--eval-limit", "eval_limit")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option()
@calibration_options
@click.option("--table", type=click.Path(dir_okay=False), help="Use this QuantTable instead of calibrating.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--max-accuracy-drop", type=float,
              help="Accuracy budget in percentage points on --eval-data: keep the most sensitive layers in float until met.")
@click.option("--min-agreement", type=float,
              help="Fidelity budget without labels: top-1 agreement with the float model (e.g. 0.99).")
@data_option(name="--eval-data", help_text="Data for the budget (labelled for --max-accuracy-drop).")
@click.option("--eval-limit", type=int, default=1000, show_default=True, help="Samples of --eval-data used by the budget.")
@click.option("--keep-float", "keep_float", multiple=True, metavar="NODE",
              help="Keep this layer (node name) and its fused ReLU/Clip in float. Repeatable.")
@click.option("--float-stem", is_flag=True,
              help="Keep the layers that read the model input in float (onnxruntime's int8 conv on 1-3 input "
                   "channels is slower than its float conv; the first layer is also the most sensitive).")
@click.option("--bias-correction", is_flag=True,
              help="Measure the mean error int8 adds to each layer's output on calibration samples and subtract "
                   "it from the layer's bias, layer by layer; helps per-tensor weights on depthwise nets, can hurt others "
                   "(PP-OCR cls: -4 dB), so check the result.")
@click.option("--equalize", is_flag=True,
              help="Cross-layer equalization before calibration: scale each Conv/Gemm pair joined by ReLU/MaxPool "
                   "/GlobalAveragePool, through a Flatten into a Gemm or into a grouped Conv "
                   "(not ReLU6: Clip's bound is one scalar) so both have the same per-channel weight ranges; the "
                   "float function is unchanged. Aimed at --per-tensor weights.")
@click.option("--relu6-as-relu", is_flag=True,
              help="With --equalize, also equalize pairs joined by ReLU6 (Clip 0..6), replacing those Clips by "
                   "Relu: this CHANGES the float model where a value exceeded 6 (mobilenet_v2_tiny: 92.37% -> 92.35% "
                   "top-1); the check compares against the original.")
@click.option("--activation-dtype", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="Activation Q/DQ dtype. uint8 (zero point + 128, same scales and values) runs onnxruntime's "
                   "fast u8s8 x86 kernels; weights stay int8 per-channel either way.")
@click.option("--save-table", type=click.Path(dir_okay=False), help="Also write the QuantTable used.")
@json_option("a report of the run")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="QDQ ONNX model to write.")
def command(model, data, method, num_samples, seed, bins, percentile, symmetric, batch_size, input_shapes,
            preprocess, table, per_tensor, max_accuracy_drop, min_agreement, eval_data, eval_limit,
            keep_float, float_stem, bias_correction, equalize, relu6_as_relu, activation_dtype, save_table, json_out,
            output) -> None:
    """Calibrate MODEL on DATA and write an INT8 QDQ ONNX model: int8 per-channel weights, int8
    (or --activation-dtype uint8) activations, int32 biases, standard QuantizeLinear/DequantizeLinear
    (opset 13) that runs in onnxruntime and that every export target consumes.

    With --max-accuracy-drop or --min-agreement the most sensitive layers stay in float (no
    Q/DQ) until the budget is met; the report names each and why.
    """
    import dataclasses

    from fwedge import ir
    from fwedge.calibration import MethodOptions
    from fwedge.console import progress, stdout, table as rich_table
    from fwedge.errors import CalibrationError
    from fwedge.quantization import QuantizeRequest, run_quantization
    from fwedge.quantization.calibrate import calibration_count
    from fwedge.quantization.check import output_task, summary_for

    if data is None and table is None:
        raise click.UsageError("give --data to calibrate, or --table with a QuantTable")
    request = QuantizeRequest(
        model, data, method, num_samples, table=table, per_channel=not per_tensor, symmetric=symmetric,
        method_options=MethodOptions(percentile=percentile, symmetric=symmetric), bins=bins, seed=seed,
        batch_size=batch_size, preprocess=preprocess, input_shapes=input_shapes,
        max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, eval_data=eval_data,
        eval_samples=eval_limit, keep_float=keep_float, float_stem=float_stem, bias_correction=bias_correction,
        equalize=equalize, relu6_as_relu=relu6_as_relu, activation_dtype=activation_dtype)
    total, label = (None, "quantizing (with --table)") if table else \
        calibration_bar(method, calibration_count(data, num_samples))
    with progress(total, label) as advance:
        result = run_quantization(request, progress=advance)
    from fwedge.reference import write_metadata

    write_metadata(result.model, model, output)  # export then records the float model as the reference
    ir.save(result.model, output)
    if save_table:
        result.table.save(save_table)
    plan = result.plan
    payload = {
        "model": model, "output": output, "method": result.table.method, "activation_dtype": activation_dtype,
        "quantized_nodes": plan.quantized_nodes, "activations": plan.activations,
        "kept_float": [dataclasses.asdict(k) for k in result.kept_float], "budget": result.budget,
        "check": result.check.to_dict() if result.check is not None else None,
        "equalized_pairs": result.equalized_pairs, "relu6_replaced": list(result.relu6_replaced),
    }
    if not emit_json(json_out, payload):
        stdout.print(f"{output}: {len(plan.quantized_nodes)} nodes in int8, {len(plan.activations)} activation "
                     f"Q/DQ pairs, {len(plan.weights)} per-{'tensor' if per_tensor else 'channel'} weights, "
                     f"{len(plan.biases)} int32 biases; {activation_dtype} activations; method {result.table.method}")
        if result.equalized_pairs is not None:
            replaced = (f"; {len(result.relu6_replaced)} ReLU6 replaced by Relu (the float model changed there)"
                        if result.relu6_replaced else "")
            stdout.print(f"cross-layer equalization: {result.equalized_pairs} layer pairs equalized{replaced}")
        if result.check is not None:
            check = result.check
            stdout.print(f"check: int8 vs float on {check.samples} calibration samples: "
                         f"{summary_for(check, output_task(result.float_model))}")
        if result.budget:
            stdout.print(f"budget: {result.budget['summary']}")
        if result.kept_float:
            stdout.print(rich_table("Kept in float", ["node", "op", "why"],
                                    [[k.node, k.op, k.reason] for k in result.kept_float]))
    if result.budget and not result.budget.get("met", True):
        raise CalibrationError(f"budget not met: {result.budget['summary']}")

"""`fwedge inspect MODEL`."""
from __future__ import annotations

import click

from fwedge.commands.options import emit_json, input_shape_option, json_option


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option("Fix a dynamic input shape (for MACs), e.g. x=1,3,48,192. Repeatable.")
@json_option("the summary")
def command(model: str, input_shapes: dict | None, json_out: str | None) -> None:
    """Show a model's inputs and outputs, op histogram, parameter count, MACs per layer, and
    which nodes each export target cannot take.

    Dynamic dimensions other than the batch make MACs unknown; give --input-shape to fix them.
    The batch dimension is counted as 1.
    """
    from fwedge import ir
    from fwedge.console import stdout, table
    from fwedge.summary import summarize

    loaded = ir.load(model)
    if input_shapes:
        loaded = ir.set_input_shapes(loaded, input_shapes)
    summary = summarize(loaded, path=model)
    if emit_json(json_out, summary.to_dict()):
        return
    stdout.print(f"[bold]{model}[/bold]  opset {summary.opset}  learnable parameters {summary.parameters:,}"
                 + (f"  MACs {summary.total_macs:,}" if summary.total_macs is not None else "  MACs unknown (dynamic shapes)"))
    stdout.print(table("Inputs / outputs", ["kind", "name", "shape", "dtype"],
                       [["input", s.name, s.shape, s.dtype] for s in summary.inputs]
                       + [["output", s.name, s.shape, s.dtype] for s in summary.outputs]))
    stdout.print(table("Ops", ["op", "count"], [[op, n] for op, n in summary.op_histogram.items()]))
    stdout.print(table("Layers with weights", ["node", "op", "params", "MACs"],
                       [[l.name, l.op, f"{l.params:,}", "?" if l.macs is None else f"{l.macs:,}"]
                        for l in summary.layers]))
    stdout.print(table("Target support", ["target", "status"], _support_rows(summary)))


def _support_rows(summary) -> list[list[str]]:
    """[target, status] lines; a prediction made by op type only says so, and what would make it exact."""
    dynamic = any(not isinstance(dim, int) for spec in summary.inputs for dim in spec.shape[1:])
    rows = []
    for target, missing in summary.support.items():
        ops = sorted({op for _, op, _ in missing})
        status = "all nodes" if not missing else f"{len(missing)} unsupported: {', '.join(ops)}"
        if target in summary.support_by_op_type:
            why = "give --input-shape for the exact check" if dynamic else summary.support_by_op_type[target]
            status += f"; by op type only: {why}"
        rows.append([target, status])
    return rows

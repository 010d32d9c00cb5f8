"""`fwedge analyze FLOAT QDQ --data ...`: per-tensor SQNR and cosine, worst first."""
from __future__ import annotations

import math

import click

from fwedge.commands.options import data_option, emit_json, input_shape_option, json_option, preprocess_option, renamed


def _db(value) -> str:
    return "inf" if value is None or (isinstance(value, float) and math.isinf(value)) else f"{value:.2f}"


@click.command("analyze")
@renamed("--num-samples", "--limit", "limit")
@click.argument("float_model", metavar="FLOAT", type=click.Path(dir_okay=False))
@click.argument("qdq_model", metavar="QDQ", type=click.Path(dir_okay=False))
@data_option(required=True)
@click.option("--limit", type=int, default=256, show_default=True, help="Samples of DATA compared (seeded subset).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jump-db", type=float, default=6.0, show_default=True,
              help="A layer 'jumps' when its SQNR is this many dB below its inputs' worst SQNR.")
@click.option("--floor-db", type=float, default=30.0, show_default=True,
              help="...and ends below this SQNR (a layer keeping more is fine whatever it lost).")
@input_shape_option("Fix a dynamic input shape, as given to quantize. Repeatable.")
@click.option("--top", type=int, default=30, show_default=True, help="Rows to print (JSON has all).")
@preprocess_option()
@json_option("the full analysis")
def command(float_model, qdq_model, data, limit, seed, jump_db, floor_db, input_shapes, top, preprocess,
            json_out) -> None:
    """For every quantized tensor of QDQ, the SQNR and cosine of its dequantized value against
    the same tensor of FLOAT on the same inputs, sorted worst first; and the first layer (in
    topological order) where the error jumps.
    """
    from fwedge.console import stdout, table
    from fwedge.layer_analysis import analyze

    result = analyze(float_model, qdq_model, data, limit, seed, preprocess, input_shapes, jump_db,
                     floor_db=floor_db)
    if emit_json(json_out, result.to_dict()):
        return
    rows = [[e.tensor, e.node, e.op, _db(e.sqnr_db), f"{e.cosine:.5f}", f"{e.max_abs_error:.4g}",
             "" if e.jump_db is None else _db(e.jump_db)] for e in result.tensors[:top]]
    stdout.print(table(f"Quantized tensors, worst first ({result.samples} samples)",
                       ["tensor", "node", "op", "SQNR dB", "cosine", "max abs err", "jump dB"], rows))
    if result.first_jump:
        e = result.first_jump
        stdout.print(f"first jump: '{e.tensor}' from {e.node} ({e.op}): SQNR {_db(e.sqnr_db)} dB, "
                     f"{_db(e.jump_db)} dB below its inputs ({_db(e.upstream_sqnr_db)} dB)")
    else:
        stdout.print(f"no layer loses {jump_db} dB or more against its inputs and ends below {floor_db} dB"
                     + (f"; largest: '{result.largest_jump.tensor}' ({_db(result.largest_jump.jump_db)} dB)"
                        if result.largest_jump else ""))
    for note in result.notes:
        stdout.print(f"note: {note}")

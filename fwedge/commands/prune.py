"""`fwedge prune MODEL (--ratio R | --macs F | --sparsity S) -o OUT`."""
from __future__ import annotations

import click

from fwedge.commands.options import emit_json, json_option


@click.command("prune")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--ratio", type=float, help="Structured: fraction of channels to remove, in [0, 1).")
@click.option("--macs", "macs_fraction", type=float,
              help="Structured: the smallest ratio that leaves at most this fraction of the MACs.")
@click.option("--sparsity", type=float, help="Unstructured: fraction of weights to zero, in [0, 1).")
@click.option("--criterion", type=click.Choice(["l1", "l2", "bn"]), default="l1", show_default=True,
              help="Channel importance: weight L1/L2 norm over the whole group, or BN gamma.")
@click.option("--global/--per-layer", "global_scope", default=True, show_default=True,
              help="One ranking over all layers, or the same ratio in every layer.")
@click.option("--exclude", multiple=True, metavar="NODE", help="Node whose output channels are kept. Repeatable.")
@click.option("--round-to", type=int, default=1, show_default=True,
              help="Keep a multiple of this many channels per group (8 or 16 suits CPU kernels: odd widths run slower).")
@click.option("--prune-first-conv", is_flag=True, help="Also prune the first conv's output channels.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned model path.")
@json_option("the report")
def command(model, ratio, macs_fraction, sparsity, criterion, global_scope, exclude, round_to,
            prune_first_conv, output, json_out) -> None:
    """Prune MODEL and write the result to OUT.

    Structured (--ratio or --macs) removes whole output channels of Conv/Gemm layers. Dependency
    groups are found from the graph: Conv -> BN -> activation -> next layer's input channels,
    depthwise convs, residual Adds (all branches drop the same channels), Concat offsets and
    Flatten -> Gemm blocks. The first conv and the graph outputs are kept.

    Unstructured (--sparsity) zeroes the smallest weights; the model keeps its shape, and the
    report gives the compressed size that the zeros buy.
    """
    from fwedge import ir
    from fwedge.console import stdout, table
    from fwedge.errors import PruneError
    from fwedge.passes import prune

    chosen = [name for name, value in (("--ratio", ratio), ("--macs", macs_fraction), ("--sparsity", sparsity))
              if value is not None]
    if len(chosen) != 1:
        raise PruneError(f"give exactly one of --ratio, --macs, --sparsity (got {chosen or 'none'})")
    scope = "global" if global_scope else "per-layer"
    loaded = ir.load(model)
    if sparsity is not None:
        pruned, sparse_report = prune.sparsify(loaded, sparsity, scope=scope, exclude=exclude)
        ir.save(pruned, output)
        if emit_json(json_out, sparse_report.to_dict()):
            return
        stdout.print(f"{output}: {100 * sparse_report.sparsity:.2f}% of {sparse_report.weights:,} weights are zero "
                     f"({scope}); weights gzip {sparse_report.dense_gzip_bytes:,} -> "
                     f"{sparse_report.sparse_gzip_bytes:,} bytes (raw {sparse_report.dense_bytes:,})")
        return
    if ratio is not None:
        pruned, report = prune.prune_channels(loaded, ratio, criterion=criterion, scope=scope,
                                              exclude=exclude, protect_first=not prune_first_conv, round_to=round_to)
    else:
        pruned, report = prune.prune_to_macs(loaded, macs_fraction, criterion=criterion, scope=scope,
                                             exclude=exclude, protect_first=not prune_first_conv,
                                             round_to=round_to)
    ir.save(pruned, output)
    if emit_json(json_out, report.to_dict()):
        return
    rows = [[g.name, len(g.sources), g.channels, g.kept, "; ".join(g.blocked_by)] for g in report.groups]
    stdout.print(table("Channel groups", ["group", "layers", "channels", "kept", "blocked by"], rows))
    fraction = report.macs_fraction

    def count(value):
        return "?" if value is None else f"{value:,}"

    stdout.print(f"{output}: ratio {report.ratio:.3f} ({report.criterion}, {scope}); parameters "
                 f"{report.params_before:,} -> {report.params_after:,}; MACs {count(report.macs_before)} -> "
                 f"{count(report.macs_after)}" + (f" ({100 * fraction:.1f}%)" if fraction is not None else ""))

"""`fwedge pipeline pipeline.toml`: every stage from model to report, cached per stage."""
from __future__ import annotations

import dataclasses
import json

import click

from fwedge.commands.options import emit_json, json_option, text_console


def _parse_set(ctx, param, values):
    overrides = {}
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep:
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, got {text!r}")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    return overrides


@click.command("pipeline")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, callback=_parse_set, metavar="SECTION.KEY=VALUE",
              help="Override a setting, e.g. --set farm.repeats=50 --set 'export.targets=[\"onnx\"]'. Repeatable.")
@click.option("--update-baseline", is_flag=True, help="Write this run's results as the gate baseline.")
@click.option("--rerun", multiple=True, metavar="STAGE",
              type=click.Choice(["load", "prune", "distill", "quantize", "analyze", "export", "farm"]),
              help="Rebuild this stage even when its cached output is valid (e.g. --rerun farm measures "
                   "the same bundles again). Repeatable.")
@json_option("the stages, the report paths and the gate's outcome")
@click.pass_context
def command(ctx, config, overrides, update_baseline, rerun, json_out) -> None:
    """Run CONFIG (pipeline.toml): load -> [prune -> distill] -> quantize -> analyze -> export
    (every listed target) -> farm run -> gate -> report. Each stage's output is cached under
    the cache dir by a hash of its inputs and settings, so a re-run after an interruption, or
    with only the gate settings changed, redoes nothing else. Exits 1 when the gate fails.
    """
    from fwedge.console import stdout, table
    from fwedge.pipeline import run_pipeline

    out = text_console(json_out)

    def show(stage) -> None:
        state = "cached" if stage.cached else (f"{stage.seconds:.1f}s" if stage.key else "")
        out.print(f"[bold]{stage.name}[/bold] {state}  {stage.summary}")

    result = run_pipeline(config, overrides, update_baseline=update_baseline, on_stage=show, rerun=rerun)
    if emit_json(json_out, dataclasses.asdict(result)):
        if result.gate_passed is False:
            ctx.exit(1)
        return
    stdout.print(table("Pipeline", ["stage", "cached", "seconds", "output", "summary"],
                       [[s.name, "yes" if s.cached else "no", s.seconds, s.path, s.summary] for s in result.stages]))
    for line in result.skipped_targets:
        stdout.print(f"skipped target {line}")
    stdout.print(f"report: {result.report_html}  summary: {result.report_markdown}  ({result.seconds:.1f} s)")
    if result.gate_passed is None and not update_baseline:
        stdout.print("gate: not run (the pipeline names no \\[gate] baseline)")
    if result.gate_passed is False:
        for line in result.regressions:
            stdout.print(f"[red]regression[/red]: {line}")
        ctx.exit(1)

"""`fwedge report results.json [--analysis analysis.json] [--profile profile.json] [--gate gate.json] -o report.html`."""
from __future__ import annotations

import click


@click.command("report")
@click.argument("results_path", metavar="RESULTS", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML report to write (one self-contained file).")
@click.option("--analysis", type=click.Path(dir_okay=False),
              help="`fwedge analyze --json` output: adds the per-layer SQNR chart.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
              help="`fwedge profile --json` output: adds the per-layer time chart of each bundle.")
@click.option("--gate", "gate_path", type=click.Path(dir_okay=False),
              help="`fwedge gate --json` verdict to show.")
@click.option("--baseline", type=click.Path(dir_okay=False),
              help="Or: evaluate the gate against this baseline with default limits.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write a Markdown summary (CI job summary).")
@click.option("--title", default="fwedge report", show_default=True)
def command(results_path, output, analysis, profile_path, gate_path, baseline, markdown, title) -> None:
    """Write ONE self-contained HTML file (inline CSS/JS/SVG, no network fetches): the accuracy,
    latency and size table per target and device, a latency chart, the per-layer SQNR chart,
    the per-layer time of each profiled bundle, and the gate verdict. Optionally a Markdown summary for $GITHUB_STEP_SUMMARY.
    """
    from fwedge.console import stdout
    from fwedge.device_farm import gate
    from fwedge.device_farm.results import load_results
    from fwedge.report import write_report

    verdict = None
    if gate_path:
        verdict = gate.load_gate(gate_path)
    elif baseline:
        verdict = gate.evaluate_gate(load_results(results_path), load_results(baseline, "baseline"))
    files = write_report(results_path, output, analysis_path=analysis, gate=verdict, markdown_path=markdown,
                         title=title, profile_path=profile_path)
    stdout.print(f"wrote {files.html}" + (f" and {files.markdown}" if files.markdown else ""))

"""`fwedge gate results.json --baseline baseline.json`: exit 0 pass, 1 regression, 2 usage error."""
from __future__ import annotations

import click

from fwedge.commands.options import emit_json, json_option


@click.command("gate")
@click.argument("results_path", metavar="RESULTS", type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False), required=True, help="Baseline results JSON.")
@click.option("--max-accuracy-drop", type=float, default=0.5, show_default=True, help="Percentage points.")
@click.option("--max-fidelity-drop", type=float, default=1.0, show_default=True,
              help="Top-1 agreement with the FP32 reference, percentage points.")
@click.option("--max-sqnr-drop", type=float, default=3.0, show_default=True, metavar="DB",
              help="SQNR of the scored output against the FP32 reference, dB (the figure that means "
                   "something for detectors, OCR and regressors). Above 80 dB counts as 80.")
@click.option("--max-latency-increase", default="10%", show_default=True,
              help="Fraction or percentage of p50 wall time, on real boards and the host.")
@click.option("--max-instructions-increase", default="1%", show_default=True,
              help="Executed instructions per inference on emulated (qemu) boards, compared exactly.")
@click.option("--max-emulated-latency-increase", default=None, metavar="FRACTION",
              help="Also gate wall time on emulated boards with this limit (default: not gated there; it "
                   "swings from run to run under emulation).")
@click.option("--max-size-increase", default="5%", show_default=True, help="Fraction or percentage of each size.")
@click.option("--waive", multiple=True, metavar="DEVICE_OR_BUNDLE",
              help="Do not fail on this device, bundle, or BUNDLE@DEVICE. Repeatable.")
@click.option("--update-baseline", is_flag=True, help="Write RESULTS as the new baseline (on purpose) and exit 0.")
@click.option("--allow-missing-baseline", is_flag=True,
              help="A first run: when no --baseline file exists, check RESULTS, compare nothing and exit 0. "
                   "Without it a missing baseline is an error (exit 2).")
@json_option("the verdict")
@click.pass_context
def command(ctx, results_path, baseline, max_accuracy_drop, max_fidelity_drop, max_sqnr_drop, max_latency_increase,
            max_instructions_increase, max_emulated_latency_increase, max_size_increase, waive, update_baseline,
            allow_missing_baseline, json_out) -> None:
    """Compare RESULTS with --baseline per (bundle, device). Exit 0 only when every pair was
    compared and is within its limits; 1 on a regression, a device error, a baseline pair or
    figure missing now, or nothing compared (fails closed unless waived); 2 on unusable input
    (a missing, malformed or out-of-schema file, a baseline with no ok result, a bad option).

    Performance is the executed instructions per inference on emulated boards (exact; identical
    bundles give x1.000) and p50 wall time on real boards and the host.

    \b
    Example:
      fwedge gate build/results.json --baseline baseline.json --max-instructions-increase 1% \\
          --max-latency-increase 10% --json build/gate.json
    """
    from fwedge.console import stdout
    from fwedge.device_farm import gate
    from fwedge.device_farm.results import load_results
    from fwedge.errors import GateError

    thresholds = gate.Thresholds(
        max_accuracy_drop=max_accuracy_drop, max_fidelity_drop=max_fidelity_drop, max_sqnr_drop=max_sqnr_drop,
        max_latency_increase=gate.parse_fraction(max_latency_increase, "--max-latency-increase"),
        max_size_increase=gate.parse_fraction(max_size_increase, "--max-size-increase"),
        max_instructions_increase=gate.parse_fraction(max_instructions_increase, "--max-instructions-increase"),
        max_emulated_latency_increase=None if max_emulated_latency_increase is None else
        gate.parse_fraction(max_emulated_latency_increase, "--max-emulated-latency-increase"))
    if update_baseline:
        results = load_results(results_path)
        gate.check_baseline_usable(results, f"results '{results_path}'")  # before printing anything
        try:
            previous = gate.load_baseline(baseline, allow_missing=True)
            if previous is not None:
                stdout.print(render_table(gate.evaluate_gate(results, previous, thresholds, waive)))
        except GateError as exc:
            # Replacing an unusable baseline is what --update-baseline is for.
            stdout.print(f"not comparable with the previous baseline: {exc}")
        gate.update_baseline(results, baseline)
        stdout.print(f"baseline updated: {baseline} ({len(results.candidates())} results)")
        return
    report = gate.run_gate(results_path, baseline, thresholds, waive, allow_missing_baseline=allow_missing_baseline)
    if report is None:
        stdout.print(f"gate: no baseline at {baseline}; nothing was compared (--allow-missing-baseline)")
        return
    if emit_json(json_out, report.to_dict()):
        if not report.passed:
            ctx.exit(1)
        return
    stdout.print(render_table(report))
    if report.passed:
        stdout.print("[green]gate: PASS[/green]")
        return
    for line in report.regressions:
        stdout.print(f"[red]regression[/red]: {line}")
    stdout.print("[red]gate: FAIL[/red]")
    ctx.exit(1)


def render_table(report):
    """A rich table: one row per (bundle, device) with every check."""
    from fwedge.console import table

    rows = []
    for row in report.rows:
        checks = "; ".join(f"{c.metric} {c.change}{'' if c.passed else ' FAIL'}" for c in row.shown_checks())
        rows.append([row.bundle, row.device, row.verdict.upper(), checks, "; ".join(row.reasons)])
    return table("Gate", ["bundle", "device", "verdict", "checks", "reasons"], rows)

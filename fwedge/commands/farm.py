"""`fwedge farm list` and `fwedge farm run BUNDLE... --devices ... --data ... -o results.json`."""
from __future__ import annotations

import os

import click

from fwedge.commands.options import (
    data_option, emit_json, input_shape_option, inventory_option, json_option, lab_devices, labgrid_options,
    output_name_option, preprocess_option, split_device_names, task_option, threads_option,
)


@click.group("farm")
def command() -> None:
    """List devices and run bundles on the device farm (host runtimes, qemu boards, ssh boards,
    labgrid places)."""


@command.command("list")
@inventory_option
@labgrid_options
@json_option("the devices")
def list_devices(inventory, labgrid_coordinator, places, place_tags, json_out) -> None:
    """Show the devices, their state, and which bundle kinds each can run. A labgrid place's
    state is the coordinator's: free, acquired by HOST/USER, or offline (its exporter is gone)."""
    from fwedge.console import stdout, table
    from fwedge.device_farm.inventory import devices_for

    devices = devices_for(inventory, lab_devices(labgrid_coordinator, places, place_tags))
    rows = [[d.name, d.kind, d.state(), ", ".join(d.bundle_kinds())] for d in devices]
    if emit_json(json_out, [{"name": name, "kind": kind, "state": state, "runs": list(d.bundle_kinds())}
                            for d, (name, kind, state, _) in zip(devices, rows)]):
        return
    auto = not inventory and not any(d.kind == "labgrid" for d in devices)
    stdout.print(table("Devices" + (" (auto-detected)" if auto else ""), ["name", "kind", "state", "runs"], rows))


@command.command("run")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@inventory_option
@labgrid_options
@click.option("--devices", "device_names", multiple=True, default=("all",), show_default=True,
              help="Device names, repeatable or comma-separated; `all` for every device.")
@data_option(required=True)
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed single-sample iterations.")
@click.option("--limit", type=int, default=500, show_default=True, help="Seeded subset of the data (0: all).")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="FP32 reference ONNX for fidelity (default: the float model each bundle records).")
@input_shape_option("Fix a dynamic input shape of the reference, e.g. x=1,3,48,192; it must agree with "
                    "every bundle's input, fixed at export. Repeatable.")
@preprocess_option()
@click.option("--retries", type=int, default=1, show_default=True, help="Extra attempts after a device failure.")
@click.option("--baseline-bundles", type=click.Path(file_okay=False),
              help="Folder of baseline bundles (same names) run interleaved A B A B with the candidates.")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="A/B alternations for --baseline-bundles (the timed repeats are split over them).")
@threads_option()
@output_name_option()
@task_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Results JSON to write.")
@click.pass_context
def run(ctx, bundles, inventory, labgrid_coordinator, places, place_tags, device_names, data, repeats, limit, reference, input_shapes, preprocess, retries,
        baseline_bundles, rounds, threads, output_name, task, output) -> None:
    """Run BUNDLES on every selected device that can run them; write per (bundle, device)
    accuracy, fidelity vs the FP32 reference, latency p50/p95 on the device's clock, sizes and
    identity, and on qemu boards the executed instructions per inference (a qemu plugin, built
    on first use with the host C compiler: exact and repeatable, the figure the gate compares
    there). A failing device becomes an error result; the other results are kept.

    Exits 0 when every run succeeded, 3 when the results file was written but some runs failed
    (each is an error result in it, and `fwedge gate` fails on it), 2 on unusable input.
    """
    from fwedge.console import progress, stdout
    from fwedge.device_farm.inventory import devices_for, select
    from fwedge.device_farm.results import save_results
    from fwedge.device_farm.runner import FarmOptions, plan, result_count, run_farm
    from fwedge.bundle import load_bundle
    from fwedge.reference import for_bundle

    names = split_device_names(device_names)
    known = devices_for(inventory, lab_devices(labgrid_coordinator, places, place_tags))
    device_names_known = {device.name for device in known}
    for path in bundles:  # `--devices a b`: b is read as a bundle
        if path in device_names_known and not os.path.exists(path):
            raise click.UsageError(f"'{path}' is a device name, not a bundle folder: give several devices "
                                   f"comma-separated (--devices a,{path}) or repeat --devices")
    devices = select(known, names)
    options = FarmOptions(data=data, repeats=repeats, limit=limit or None, reference=reference,
                          preprocess=preprocess.to_dict() if preprocess else None, input_shapes=input_shapes,
                          output=output_name, task=task,
                          retries=retries, baseline_bundles=baseline_bundles, rounds=rounds)
    loaded = [load_bundle(path) for path in bundles]
    found = {bundle.name: for_bundle(bundle, reference) for bundle in loaded}
    for name, (_, why) in found.items():
        if why:
            stdout.print(f"note: {why}", markup=False, highlight=False)
    unreferenced = [name for name, (chosen, _) in found.items() if chosen is None]
    if unreferenced:
        stdout.print(f"note: no FP32 reference for {', '.join(unreferenced)}: agreement and SQNR vs FP32 stay "
                     "blank (give --reference FLOAT.onnx)", markup=False, highlight=False)
    jobs, _ = plan(loaded, devices, baseline_bundles)
    with progress(result_count(jobs), "farm") as advance:
        def report(result) -> None:
            advance(1)
            status = "ok" if result.ok else f"[red]error[/red]: {result.error}"
            if result.ok and result.instructions is not None:
                status += f", {result.instructions.per_inference:,} instructions per inference"
            stdout.print(f"{result.bundle} ({result.role}) on {result.device}: {status}")

        results = run_farm(loaded, devices, options, progress=report)
    save_results(results, output)
    _print_summary(results)
    stdout.print(f"wrote {output}")
    failed = [r for r in results.results if not r.ok]
    if failed:
        from fwedge.cli import EXIT_RUNS_FAILED

        stdout.print(f"[red]{len(failed)} of {len(results.results)} runs failed[/red]")
        ctx.exit(EXIT_RUNS_FAILED)


def _db(value) -> str:
    """An SQNR figure for the table: "inf" for an exact match, one decimal otherwise."""
    if value is None or isinstance(value, str):
        return value or ""
    return "inf" if value == float("inf") else f"{value:.1f}"


def _agreement(result) -> str:
    """The agreement cell (DeviceResult.agreement): top-1 for a classifier, mAP@0.5 vs FP32
    boxes for a detector, blank for any other signal."""
    from fwedge.tasks import DETECTION

    if result.agreement is None:
        return ""
    return ("mAP50 " if result.task == DETECTION else "") + f"{100 * result.agreement:.2f}%"


def _max_steps(fidelity: dict | None) -> str:
    """The scored output's largest difference in its quantization steps; "no step" for a float
    output; blank without fidelity."""
    if not fidelity or "max_steps" not in fidelity:
        return ""
    value = fidelity["max_steps"]
    return "no step" if value is None else value if isinstance(value, str) else f"{value:.2f}"


def _print_summary(results) -> None:
    from fwedge.console import stdout, table

    rows = []
    for r in results.results:
        latency = r.latency
        rows.append([
            r.bundle + ("" if r.role == "candidate" else " (baseline)"), r.device, r.status,
            "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%",
            _agreement(r),
            "" if not r.fidelity else _db(r.fidelity.get("sqnr_db")),
            _max_steps(r.fidelity),
            "" if latency is None else f"{latency.p50_ms:.4g}",
            "" if latency is None else f"{latency.p95_ms:.4g}",
            "" if r.latency_ratio is None else f"{r.latency_ratio:.3f}",
            "" if r.instructions is None else f"{r.instructions.per_inference:,}" + (
                "" if r.baseline_instructions is None else
                f" (B/A {r.instructions.per_inference / r.baseline_instructions:.3f})"),
        ])
    stdout.print(table(f"Farm results ({results.samples} samples, {results.repeats} timed runs)",
                       ["bundle", "device", "status", "accuracy", "agreement", "SQNR dB", "max steps", "p50 ms", "p95 ms", "B/A",
                        "instructions"], rows))
    for r in results.results:
        if not r.ok:
            stdout.print(f"[red]error[/red] {r.bundle} on {r.device}: {r.error}")
    for note in results.notes:
        stdout.print(f"note: {note}")

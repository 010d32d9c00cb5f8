"""`fwedge bench BUNDLE... [--devices NAME] [--repeats N]`: latency on random inputs, no data set."""
from __future__ import annotations

import click

from fwedge.commands.options import (
    emit_json, host_devices_option, inventory_option, json_option, labgrid_options, random_inputs, text_console,
    threads_option, timing_pairs,
)

MAX_ROUNDS = 50  # --min-seconds runs further rounds of --repeats, at most this many


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@inventory_option
@labgrid_options
@host_devices_option
@click.option("--warmup", type=int, default=5, show_default=True,
              help="Timed runs dropped from the start of each round (on top of the runtime's own untimed ones).")
@click.option("--repeats", type=int, default=50, show_default=True, help="Timed single-sample runs per round.")
@click.option("--min-seconds", type=float, default=0.0, show_default=True,
              help=f"Run further rounds until the kept runs add up to this many seconds (at most {MAX_ROUNDS} rounds).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@threads_option()
@json_option("the figures per bundle and device")
def command(bundles, inventory, labgrid_coordinator, places, place_tags, device_names, warmup, repeats, min_seconds, seed, threads, json_out) -> None:
    """Time BUNDLES on random inputs of each bundle's own input spec: p50, p95 and min latency
    on the device's clock, and throughput (1000 / mean ms, one inference at a time). No data set
    is read and nothing is scored: for accuracy, use run or farm run.

    On qemu boards wall time means nothing (it swings by tens of percent between runs), so bench
    also prints the executed instructions per inference there, exact and repeatable.
    """
    import dataclasses

    import numpy as np

    from fwedge.console import progress
    from fwedge.device_farm.results import INSTRUCTIONS, Latency

    for name, value, low in (("--warmup", warmup, 0), ("--repeats", repeats, 1)):
        if value < low:
            raise click.BadParameter(f"must be at least {low}, got {value}", param_hint=name)
    pairs = timing_pairs(bundles, inventory, labgrid_coordinator, places, place_tags, device_names)
    rng = np.random.default_rng(seed)
    rows, report = [], []
    with progress(len(pairs), "bench") as advance:
        for bundle, device in pairs:
            feeds = random_inputs(bundle, rng)
            kept: list[float] = []
            rounds = 0
            instructions = None
            with device.hold():  # a labgrid place is acquired for this pair's runs only
                while rounds < MAX_ROUNDS and (rounds == 0 or sum(kept) < 1000 * min_seconds):
                    run = device.run(bundle, feeds, warmup + repeats)
                    kept += run.latencies_ms[warmup:]
                    rounds += 1
                if device.performance() == INSTRUCTIONS:
                    counted = device.count_instructions(bundle, feeds)
                    instructions = counted.per_inference if counted is not None else None
            latency = Latency.from_samples(kept)
            entry = {"bundle": bundle.name, "device": device.name, "target": bundle.target, "arch": bundle.arch,
                     "rounds": rounds, "emulated": device.performance() == INSTRUCTIONS,
                     "throughput_per_s": 1000.0 / latency.mean_ms if latency.mean_ms > 0 else None,
                     "instructions_per_inference": instructions, **dataclasses.asdict(latency)}
            report.append(entry)
            rows.append([bundle.name, device.name + (" (emulated)" if entry["emulated"] else ""),
                         f"{latency.p50_ms:.4g}", f"{latency.p95_ms:.4g}", f"{latency.min_ms:.4g}",
                         "" if entry["throughput_per_s"] is None else f"{entry['throughput_per_s']:.1f}",
                         str(latency.iterations), "" if instructions is None else f"{instructions:,}"])
            advance(1)
    if emit_json(json_out, report):
        return
    from fwedge.console import table

    text_console(json_out).print(table("Latency on random inputs", ["bundle", "device", "p50 ms", "p95 ms", "min ms",
                                                                    "per s", "runs", "instructions"], rows))


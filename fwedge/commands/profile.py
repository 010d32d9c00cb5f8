"""`fwedge profile BUNDLE... [--devices NAME] [--repeats N] [--json F]`: time per layer in the bundle's own runtime."""
from __future__ import annotations

import click

from fwedge.commands.options import (
    host_devices_option, inventory_option, json_option, labgrid_options, random_inputs, text_console, threads_option,
    timing_pairs,
)


@click.command("profile")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(file_okay=False))
@inventory_option
@labgrid_options
@host_devices_option
@click.option("--repeats", type=int, default=50, show_default=True,
              help="Profiled single-sample runs (and as many ordinary ones) per bundle and device.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random input.")
@threads_option()
@json_option("the per-layer profiles (schema fwedge.profile/1; `fwedge report --profile` reads it)")
def command(bundles, inventory, labgrid_coordinator, places, place_tags, device_names, repeats, seed, threads,
            json_out) -> None:
    """Time each layer of BUNDLES on a device, in the bundle's own runtime, on a random input of
    its input spec: one table per bundle and device with the layer's name (the source ONNX
    node's where it can be traced), kind, MACs, mean time and % of the layer sum, and the layer
    sum against the whole run measured in the same process and against the bundle timed the
    ordinary way (its own binary or runtime, as `fwedge bench`).

    C bundles (host, qemu boards, ssh boards, labgrid places): a -DFW_PROFILE rebuild of the
    bundle's sources clocks each step of the generated call sequence (on a board it is uploaded
    and hashed there like the bundle's files); the bundle's own binary has no clock in it. onnx:
    onnxruntime's enable_profiling; openvino: PERF_COUNT. tflite and ncnn: their Python modules
    expose no per-layer profiler, which the output says in one line per bundle.
    """
    import numpy as np

    from fwedge.console import progress, table
    from fwedge.profile import profile_bundle, profiles_payload, write_profiles

    if repeats < 1:
        raise click.BadParameter(f"must be at least 1, got {repeats}", param_hint="--repeats")
    pairs = timing_pairs(bundles, inventory, labgrid_coordinator, places, place_tags, device_names)
    rng = np.random.default_rng(seed)
    profiles = []
    with progress(len(pairs), "profile") as advance:
        for bundle, device in pairs:
            profiles.append(profile_bundle(bundle, device, random_inputs(bundle, rng), repeats))
            advance(1)
    if json_out == "-":
        import json

        click.echo(json.dumps(profiles_payload(profiles), indent=2))
        return
    if json_out:
        write_profiles(json_out, profiles)
    from rich.markup import escape

    out = text_console(json_out)
    for profile in profiles:
        head = escape(f"{profile.bundle} on {profile.device}")
        if not profile.layers:
            out.print(f"{head}: {profile.note}; ordinary p50 {_ms(profile.ordinary_p50_ms)} ms")
            continue
        rows = [[escape(layer.name), escape(layer.kind), "" if layer.macs is None else f"{layer.macs:,}", f"{layer.time_ms:.4f}",
                 f"{layer.percent:.1f}"] for layer in profile.layers]
        out.print(table(f"{head}: {escape(profile.method)}; mean of the faster half of {profile.runs} runs", ["layer", "kind", "MACs", "ms", "%"], rows))
        out.print(f"layer sum {_ms(profile.layer_sum_ms)} ms = {_pct(profile.sum_over_total)} of {_ms(profile.total_ms)} "
                  f"ms ({escape(profile.total_what)}); {_pct(profile.sum_over_ordinary)} of the ordinary p50 "
                  f"{_ms(profile.ordinary_p50_ms)} ms"
                  + (f"; {_pct(profile.sum_over_plain)} of {_ms(profile.plain_ms)} ms, the same build's clock-off runs "
                     "in the same process" if profile.plain_ms else "")
                  + (f". {escape(profile.note)}" if profile.note else ""))


def _ms(value) -> str:
    return "?" if value is None else f"{value:.4g}"


def _pct(value) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"

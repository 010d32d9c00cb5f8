"""Click options shared by several commands."""
from __future__ import annotations

import json
import os

import click


inventory_option = click.option(
    "--inventory", type=click.Path(dir_okay=False), envvar="FWEDGE_INVENTORY",
    help="Device inventory TOML (default: auto-detect the host and every qemu-<arch> on PATH).")


def labgrid_options(command):
    """--labgrid-coordinator HOST:PORT with --places NAME... and/or --place-tag KEY=VALUE...:
    labgrid places as devices, beside (or instead of) an inventory's."""
    command = click.option(
        "--place-tag", "place_tags", multiple=True, metavar="KEY=VALUE",
        help="With --labgrid-coordinator: every place with these labgrid tags (all of them). Repeatable.")(command)
    command = click.option(
        "--places", "places", multiple=True, metavar="NAME[,NAME...]",
        help="With --labgrid-coordinator: place names, repeatable or comma-separated.")(command)
    return click.option(
        "--labgrid-coordinator", "labgrid_coordinator", metavar="HOST:PORT", envvar="LG_COORDINATOR",
        help="A labgrid coordinator whose places (--places, --place-tag) are devices; each is acquired "
             "for its runs and always released (docs/labgrid.md). Default: $LG_COORDINATOR when "
             "--places or --place-tag is given.")(command)


def lab_devices(coordinator: str | None, places: tuple[str, ...], tags: tuple[str, ...]) -> list:
    """The labgrid devices --labgrid-coordinator, --places and --place-tag name (none without
    places or tags). Their ssh settings are ssh's own: ~/.ssh/config, the agent, known_hosts.

    Raises:
        DeviceError: places or tags without a coordinator, a coordinator without either, or a bad
            coordinator address, place name or tag.
    """
    from fwedge.errors import DeviceError

    names = split_device_names(places)
    if not names and not tags:
        if coordinator and os.environ.get("LG_COORDINATOR") != coordinator:
            raise DeviceError("--labgrid-coordinator needs --places NAME or --place-tag KEY=VALUE")
        return []
    if not coordinator:
        raise DeviceError("--places and --place-tag need --labgrid-coordinator HOST:PORT (or LG_COORDINATOR)")
    from fwedge.device_farm.labgrid_place import LabgridDevice

    devices = [LabgridDevice(name=name, coordinator=coordinator, place=name) for name in names]
    if tags:
        devices.append(LabgridDevice(name="place-tag " + ",".join(tags), coordinator=coordinator, tags=list(tags)))
    return devices


def split_device_names(values: tuple[str, ...]) -> list[str]:
    """--devices values, repeated or comma-separated, as one list of names."""
    return [name for item in values for name in item.split(",") if name]


def data_option(required: bool = False, name: str = "--data", help_text: str | None = None):
    """The --data option: a dataset path or fashion-mnist:train|test."""
    return click.option(
        name,
        "data" if name == "--data" else name.lstrip("-").replace("-", "_"),
        required=required,
        metavar="DATA",
        help=help_text
        or "Image folder, .npy/.npz, IDX file, or fashion-mnist:test|train (Debian package).",
    )


def _parse_preprocess(ctx, param, value):
    if value is None:
        return None
    from fwedge.data import Preprocess
    from fwedge.errors import DataError

    try:
        text = open(value).read() if value.endswith(".json") else value
        return Preprocess.from_dict(json.loads(text))
    except (OSError, ValueError, DataError) as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from exc


def preprocess_option():
    """--preprocess: a JSON object or .json file overriding the model's preprocessing spec."""
    return click.option(
        "--preprocess",
        callback=_parse_preprocess,
        metavar="JSON",
        help='Preprocessing as JSON or a .json file, e.g. \'{"resize":[28,28],"color":"grayscale",'
        '"layout":"NCHW","scale":0.00392156862745098}\'. Default: the model\'s metadata, else a '
        "guess from its input shape.",
    )


def _parse_shapes(ctx, param, values) -> dict[str, list[int]] | None:
    shapes: dict[str, list[int]] = {}
    for text in values or ():
        name, _, dims = text.partition("=")
        if not name or not dims:
            raise click.BadParameter(f"expected NAME=D0,D1,..., got {text!r}")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError as exc:
            raise click.BadParameter(f"dimensions must be integers in {text!r}") from exc
        if not shape or any(d <= 0 or d >= 2**31 for d in shape):
            raise click.BadParameter(f"dimensions must be 1..2^31-1 in {text!r}")
        if name in shapes:
            raise click.BadParameter(f"input {name!r} is given twice")
        shapes[name] = shape
    return shapes or None


def _set_threads(ctx, param, value):
    if value is None:
        return None
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    import os

    os.environ["FWEDGE_THREADS"] = str(value)  # read by every host runtime, in this process and its children
    return value


def threads_option():
    """--threads N: threads of the host runtimes (onnxruntime, OpenVINO, LiteRT, ncnn), for
    this command and the runtime processes it starts (the FWEDGE_THREADS environment variable)."""
    return click.option("--threads", type=int, callback=_set_threads, expose_value=True, metavar="N",
                        help="Threads for the host runtimes (onnxruntime, OpenVINO, LiteRT, ncnn; also "
                             "FWEDGE_THREADS). Default: each runtime's own. The C runtime uses one thread.")


def output_name_option():
    """--output-name NAME: the model output that accuracy and top-1 agreement read. (--output is
    the file a command writes, in every command that has it.)"""
    return click.option("--output-name", "output_name", metavar="NAME",
                        help="The model output (its ONNX name) that accuracy and top-1 agreement read (default: the "
                             "first). eval and run also compare every output the model and the reference share.")


def task_option():
    """--task: what the scored output is (fwedge.tasks), for eval, run and farm run."""
    from fwedge.tasks import CHOICES

    return click.option(
        "--task", type=click.Choice(CHOICES), default="auto", show_default=True,
        help="What the scored output is. classification: scores per class (accuracy, top-1 agreement). signal: "
             "boxes, maps, sequences, regressed values (no accuracy; SQNR vs the reference, not top-1). detection: "
             "a [N, 4 + classes, anchors] detector output (YOLOv5u/v8/v11): signal, and mAP@0.5 against the "
             "reference's boxes. auto: classification when each sample's output is one vector of scores, else signal.")


def input_shape_option(help_text: str = "Fix a dynamic input shape, e.g. x=1,3,48,192. Repeatable."):
    """--input-shape NAME=D0,D1,...: one spelling and one parser in every command; the value is
    a dict of input name -> dims, or None."""
    return click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=D0,D1,...",
                        callback=_parse_shapes, help=help_text)


def json_option(what: str):
    """--json FILE, one meaning in every command: write WHAT as JSON to FILE (atomically), or to
    standard output for '-', which then carries the JSON alone."""
    return click.option(
        "--json", "json_out", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
        help=f"Write {what} as JSON to FILE; '-' prints only the JSON, to standard output.")


def emit_json(json_out: str | None, payload) -> bool:
    """Write `payload` for --json. True when it went to standard output (print nothing else)."""
    if not json_out:
        return False
    text = json.dumps(payload, indent=2) + "\n"
    if json_out == "-":
        click.echo(text, nl=False)
        return True
    from fwedge.ir import write_atomic

    write_atomic(json_out, text)
    return False


def text_console(json_out: str | None):
    """Where a command's text goes: stdout, or stderr when `--json -` gives stdout to the JSON."""
    from fwedge.console import console, stdout

    return console if json_out == "-" else stdout


def steps_text(fidelity) -> str:
    """A Fidelity's difference in quantization steps: the largest and the share of elements more
    than one step off, or that the output has no step."""
    from fwedge.eval import FAR_STEPS

    if fidelity.max_steps is None:
        return "no step (float output)"
    return (f"max {fidelity.max_steps:.2f} steps of {fidelity.step:.4g}, "
            f"{100 * fidelity.far_fraction:.2f}% > {FAR_STEPS:g} steps")


def print_scores(result: dict, reference: str | None, json_out: str | None, heading: str) -> None:
    """Print an evaluation result (accuracy and fidelity) as text, and as JSON for --json."""
    def plain(value):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {key: plain(item) for key, item in value.items()} if isinstance(value, dict) else value

    payload = {key: plain(value) for key, value in result.items()}
    if emit_json(json_out, payload):
        return
    from fwedge.console import stdout, table

    stdout.print(f"{heading}: {result['samples']} samples")
    if result["accuracy"] is not None:
        acc = result["accuracy"]
        stdout.print(f"top-1 accuracy: {100 * acc.top1:.2f}% ({acc.correct}/{acc.total})")
    if result["fidelity"] is not None:
        fid = result["fidelity"]
        classification = result.get("task", "classification") == "classification"
        agreement = f"top-1 agreement {100 * fid.top1_agreement:.2f}%, " if classification else ""
        if result.get("map50") is not None:
            agreement = f"mAP@0.5 vs the reference's boxes {100 * result['map50']:.2f}%, "
        stdout.print(f"fidelity vs {result.get('reference') or reference}: {agreement}cosine {fid.cosine:.6f}, "
                     f"max abs error {fid.max_abs_error:.4g}, SQNR {fid.sqnr_db:.2f} dB, {steps_text(fid)}",
                     markup=False, highlight=False)
        outputs = result.get("outputs") or {}
        if len(outputs) > 1 or (outputs and result.get("output") not in outputs):
            stdout.print(table("Every output against the reference",
                               ["output", "SQNR dB", "cosine", "max abs error", "max steps"],
                               [[name, f"{f.sqnr_db:.2f}", f"{f.cosine:.6f}", f"{f.max_abs_error:.4g}", steps_text(f)]
                                for name, f in outputs.items()]))
    elif "reference_note" in result:  # a bundle run with no reference at hand
        why = result.get("reference_note") or "the bundle records no reference model"
        stdout.print(f"note: no fidelity: {why}; give --reference FLOAT.onnx", markup=False, highlight=False)


def renamed(old: str, new: str, dest: str):
    """A hidden alias for one release: OLD sets what NEW sets (an integer option). Goes under
    @click.command. Giving both is a usage error; the old spelling prints a note on stderr."""
    import functools

    from click.core import ParameterSource

    alias = f"_renamed_{dest}"

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(alias)
            if value is not None:
                if click.get_current_context().get_parameter_source(dest) is ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"give {new}, not both {new} and {old}")
                click.echo(f"note: {old} is now called {new}", err=True)
                kwargs[dest] = value
            return command(*args, **kwargs)

        return click.option(old, alias, type=int, hidden=True, default=None)(wrapper)

    return decorate


# `bench` and `profile`: the devices to time bundles on, by default the host.
host_devices_option = click.option(
    "--devices", "device_names", multiple=True, default=("host",), show_default=True,
    help="Device names, repeatable or comma-separated; `all` for every device that runs the bundle.")


def timing_pairs(paths, inventory, labgrid_coordinator, places, place_tags, device_names) -> list[tuple]:
    """The (bundle, device) pairs `bench` and `profile` time: the bundles at `paths` on the
    --devices of the inventory and the lab that run them (with a lab and the default `host` that
    the lab does not have, every place). Every bundle's inputs are checked against the tensor
    size limit (random_inputs) before any run starts.

    Raises:
        DeviceError: no selected device runs any of the bundles (each reason listed).
        ExportError: an unusable bundle, or an input above the size limit.
    """
    import numpy as np

    from fwedge.bundle import load_bundle
    from fwedge.device_farm.inventory import devices_for, select
    from fwedge.errors import DeviceError

    loaded = [load_bundle(path) for path in paths]
    known = devices_for(inventory, lab_devices(labgrid_coordinator, places, place_tags))
    names = split_device_names(device_names)
    if labgrid_coordinator and names == ["host"] and "host" not in {d.name for d in known}:
        names = ["all"]
    devices = select(known, names)
    pairs = [(bundle, device) for bundle in loaded for device in devices if device.why_not(bundle) is None]
    if not pairs:
        reasons = "; ".join(f"{d.name}: {d.why_not(b)}" for b in loaded for d in devices)
        raise DeviceError(f"no selected device runs these bundles ({reasons})")
    for bundle in loaded:
        random_inputs(bundle, np.random.default_rng(0))
    return pairs


def random_inputs(bundle, rng) -> dict:
    """One random float32 sample of each input of `bundle` (its spec's shape, batch 1), checked
    against FWEDGE_MAX_TENSOR_BYTES before anything is allocated: a stranger's manifest may
    declare any shape.

    Raises:
        ExportError: an input above the tensor size limit.
    """
    import math

    import numpy as np

    from fwedge.errors import ExportError
    from fwedge.ir import max_tensor_bytes

    limit = max_tensor_bytes()
    feeds = {}
    for spec in bundle.inputs:
        shape = (1, *(max(1, dim) for dim in spec.logical_shape[1:]))
        if 4 * math.prod(shape) > limit:
            raise ExportError(f"bundle '{bundle.name}': input '{spec.name}' of shape {list(shape)} takes "
                              f"{4 * math.prod(shape):,} bytes, above the {limit:,} of FWEDGE_MAX_TENSOR_BYTES")
        feeds[spec.name] = rng.random(shape, dtype=np.float32)
    return feeds

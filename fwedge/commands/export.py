"""`fwedge export MODEL --target ... -o bundles/`."""
from __future__ import annotations

import click

from fwedge.commands.options import emit_json, input_shape_option, json_option, preprocess_option, text_console

# Kept literal so that `fwedge export --help` imports no target module.
TARGET_NAMES = ("onnx", "openvino", "tflite", "ncnn", "x86_64", "aarch64", "riscv64", "loongarch64")


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", "targets", multiple=True, required=True, type=click.Choice(TARGET_NAMES),
              help="Target runtime or C architecture. Repeatable.")
@click.option("--int8/--fp32", "int8", default=None,
              help="Expect a QDQ int8 model (--int8) or a float model (--fp32). Default: int8 "
                   "exactly when the model holds QuantizeLinear/DequantizeLinear nodes.")
@click.option("--fp16", is_flag=True,
              help="From a float model: float16 weights with float32 inputs and outputs. onnx: float16 "
                   "initializers and compute, Cast at the graph edges; openvino: compress_to_fp16; tflite: "
                   "FLOAT16 weight tensors each followed by DEQUANTIZE to float32; ncnn: fp16-tagged weight "
                   "storage. C targets refuse it (the generated runtime has no fp16 arithmetic; int8 is its "
                   "compressed form). Refused for a QDQ model.")
@click.option("--allow-float-fallback", is_flag=True,
              help="C and TFLite: lower int8 nodes that have no int8 form (asymmetric weights, a non-zero "
                   "int8 pad value, ...) in float, list them in the manifest (float_fallback) and print them, "
                   "instead of refusing the model. onnx, openvino and ncnn take the QDQ model as it is and "
                   "never refuse a node for its quantization (ncnn notes the layers it keeps in float), so "
                   "the flag changes nothing there.")
@click.option("--cc", metavar="CC", help="C compiler command for C targets (default: zig cc / host cc).")
@click.option("--no-build", is_flag=True, help="C targets: write sources only, do not compile.")
@click.option("--cflags", metavar="FLAGS",
              help="C targets: extra compiler flags. Default: the portable baseline of the architecture; "
                   "on x86_64 the baseline plus AVX2 and AVX-512 VNNI kernels picked at run time (--cflags=-DFW_NO_DISPATCH: "
                   "the baseline only, less ROM). --cflags=-march=native builds for this CPU only, "
                   "--cflags=-march=x86-64-v3 for AVX2 CPUs.")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="The FP32 model the bundles record for fidelity (farm run's agreement). Default: MODEL itself "
                   "when it is float; for a QDQ model, the float model `fwedge quantize` named in it.")
@input_shape_option("Fix a dynamic input shape before export, e.g. x=1,3,48,192. Repeatable.")
@preprocess_option()
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Folder for the bundles; each is written to <output>/<model>-<target>-<precision>.")
@json_option("the bundles written and the targets that failed")
def command(model, targets, int8, fp16, allow_float_fallback, cc, no_build, cflags, reference, input_shapes, preprocess,
            output, json_out) -> None:
    """Write a deployment bundle of MODEL for each --target.

    Every bundle is a folder with a manifest.json (files and their sha256, input/output specs,
    preprocessing, versions, sizes), written atomically: an interrupted export leaves the
    previous bundle intact or nothing at all. Before anything is written, the whole model is
    checked and every node a target cannot take is listed in one error.

    With several --target options, a target that fails does not stop the others: each failure
    is printed as it happens, and the command ends with a line naming the targets written and
    those that failed, and exit code 2. --cc, --cflags and --no-build apply to the C targets
    among them; without any C target they are an error.

    Examples:

      fwedge export model.int8.onnx -t tflite -t aarch64 -o bundles/

      fwedge export model.onnx -t onnx -t openvino -t tflite -t ncnn --fp16 -o bundles/
    """
    import shlex
    from pathlib import Path

    from fwedge import console as console_module
    from fwedge.console import console
    from fwedge.errors import ExportError, FwEdgeError
    from fwedge.export import bundle_name, export_bundle
    from fwedge.reference import for_export
    from fwedge.targets import C_ARCHES, COptions, ExportOptions
    from fwedge.targets.common import has_qdq
    from fwedge import ir

    shapes = input_shapes
    if fp16 and int8:
        raise ExportError("--fp16 and --int8 exclude each other: --fp16 exports a float model with float16 weights")
    precision = "fp16" if fp16 else "auto" if int8 is None else "int8" if int8 else "fp32"
    unique = list(dict.fromkeys(targets))
    if (cc or cflags or no_build) and not any(target in C_ARCHES for target in unique):
        raise ExportError(f"--cc, --cflags and --no-build are options of the C targets ({', '.join(C_ARCHES)}); "
                          f"none is among --target {', '.join(unique)}")
    try:
        flags = tuple(shlex.split(cflags)) if cflags else ()
    except ValueError as exc:
        raise click.BadParameter(f"{cflags!r}: {exc}", param_hint="--cflags") from exc
    c_options = COptions(cc=cc, cflags=flags, build=not no_build)
    loaded = ir.load(model)
    if fp16 and has_qdq(loaded):
        raise ExportError(f"export --fp16: '{model}' is a QDQ int8 model; --fp16 takes the float model "
                          "(the one `fwedge quantize` was given)")
    resolved = precision if precision != "auto" else ("int8" if has_qdq(loaded) else "fp32")
    written, failed, report = [], [], {"bundles": [], "failed": []}
    out = text_console(json_out)
    _, why = for_export(loaded, model, resolved == "int8", reference)
    if why:
        out.print(f"note: no FP32 reference recorded: {why}; farm run then measures no agreement",
                  markup=False, highlight=False, soft_wrap=True)
    for number, target in enumerate(unique, 1):
        if len(unique) > 1 and not console_module.QUIET:  # a cold C build takes a minute: say what runs
            console.print(f"[{number}/{len(unique)}] {target}: exporting", markup=False, highlight=False)
        options = ExportOptions(precision=precision, allow_float_fallback=allow_float_fallback,
                                target_options=c_options if target in C_ARCHES else None)
        out_dir = Path(output) / bundle_name(model, target, resolved)
        try:
            bundle = export_bundle(model, target, out_dir, options, input_shapes=shapes, preprocess=preprocess,
                                   reference=reference)
        except FwEdgeError as exc:
            if len(unique) == 1:
                raise
            failed.append(target)
            report["failed"].append({"target": target, "error": str(exc)})
            out.print(f"{target}: failed: {exc}", markup=False, highlight=False, soft_wrap=True)
            continue
        written.append(target)
        size = bundle.sizes.get("file_bytes", 0)
        out.print(f"{target}: wrote {bundle.path} ({bundle.precision}, {bundle.arch}, "
                     f"{len(bundle.files)} files, {size:,} bytes)")
        notes = list(bundle.extra.get("notes", []))
        notes += [f"kept in float (--allow-float-fallback): {entry['node']} ({entry['reason']})"
                  for entry in bundle.extra.get("float_fallback", [])]
        kept = bundle.extra.get("kept_float", [])
        if kept:  # the quantizer's decisions, each listed with its reason by `fwedge quantize`
            notes.append(f"{len(kept)} layer(s) kept in float by the quantizer (manifest extra.kept_float): "
                         + ", ".join(entry["node"] for entry in kept))
        for note in notes:
            out.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
        report["bundles"].append({"target": target, "path": str(bundle.path), "precision": bundle.precision,
                                  "arch": bundle.arch, "files": len(bundle.files), "file_bytes": size,
                                  "notes": notes})
    emit_json(json_out, report)
    if failed:
        raise ExportError(f"export: wrote {len(written)} of {len(unique)} targets ({', '.join(written) or 'none'}); "
                          f"failed: {', '.join(failed)}")

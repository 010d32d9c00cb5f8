"""Export a model file to one or more target bundles: the library behind `fwedge export`."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from fwedge import ir
from fwedge.bundle import Bundle
from fwedge.data import Preprocess
from fwedge.errors import ExportError
from fwedge.eval import resolve_preprocess
from fwedge.quantization.plan import kept_float_from_metadata
from fwedge.reference import for_export
from fwedge.targets import ExportOptions, Target, export_names, get_target
from fwedge.targets.common import has_qdq

log = logging.getLogger(__name__)


def resolve_target(target: str) -> Target:
    """The Target object for a command-line target name (a C target per architecture).

    Raises:
        ExportError: an unknown target name, or a target whose module is not installed.
    """
    if target not in export_names():
        raise ExportError(f"unknown target {target!r}; choose from {', '.join(export_names())}")
    return get_target(target)


# Precision words a model's file name may end with (model.int8.onnx): the bundle name carries
# the precision already, so they are not repeated (model-aarch64-int8, not model.int8-aarch64-int8).
_PRECISION_SUFFIXES = (".int8", ".uint8", ".qdq", ".quant", ".fp32", ".float", ".fp16")


def bundle_name(model_path: str | os.PathLike, target: str, precision: str) -> str:
    """The default bundle directory name: <model stem>-<target>-<precision>, the stem without a
    trailing precision word."""
    stem = Path(model_path).stem
    for suffix in _PRECISION_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[:-len(suffix)]
            break
    return f"{stem}-{target}-{precision}"


def export_bundle(
    model_path: str | os.PathLike,
    target: str,
    out_dir: str | os.PathLike,
    options: ExportOptions | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    preprocess: Preprocess | None = None,
    reference: str | os.PathLike | None = None,
) -> Bundle:
    """Load a model and write one target bundle.

    Args:
        model_path: the float or QDQ ONNX model.
        target: onnx, openvino, tflite, ncnn, or a C architecture (x86_64, aarch64, ...).
        out_dir: the bundle directory (replaced atomically if it exists).
        options: export options (target_options: the target's own, e.g. COptions for C);
            preprocess and source_sha256 are filled in here.
        input_shapes: fix dynamic input shapes first (e.g. {"x": [1, 3, 48, 192]}).
        preprocess: the preprocessing recorded in the manifest; default: the model's metadata,
            else a guess from its input shape (fwedge.eval.resolve_preprocess).
        reference: the FP32 model the manifest records for fidelity; default: the model itself
            for fp32, else the float model a QDQ model's metadata names (fwedge.reference).
            When there is none, the bundle's notes say why.

    Returns:
        The written Bundle.

    Raises:
        ModelError: the model cannot be loaded.
        UnsupportedOpError: the target cannot take some nodes (all listed; nothing written).
        ExportError: bad target, precision or target options, or a writer failure.
    """
    exporter = resolve_target(target)
    model = ir.load(model_path)
    if input_shapes:
        model = ir.set_input_shapes(model, input_shapes)
    options = options or ExportOptions()
    int8 = options.precision == "int8" or (options.precision == "auto" and has_qdq(model))
    chosen, why = for_export(model, model_path, int8, reference)
    if why:
        log.info("%s: %s; the bundle records no FP32 reference", model_path, why)
    options = dataclasses.replace(
        options,
        preprocess=resolve_preprocess(model, preprocess).to_dict(),
        source_sha256=ir.sha256_file(model_path),
        reference=chosen.to_manifest(out_dir) if chosen is not None else None,
        kept_float=kept_float_from_metadata(model, str(model_path)) if int8 else None,
    )
    log.info("exporting %s to %s (%s, %s) at %s", model_path, exporter.name, exporter.arch,
             "int8" if int8 else "fp16" if options.precision == "fp16" else "fp32", out_dir)
    return exporter.export(model, Path(out_dir), options)

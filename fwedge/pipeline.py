"""`fwedge pipeline`: load → [prune → distill] → quantize → [qat] → analyze → export → farm → gate → report.

The pipeline is a list of stage functions (STAGES) over one PipelineRun. Each cached stage
writes its outputs under <cache>/<stage>-<hash16>/, where the hash covers exactly the settings
the stage reads (typed, from fwedge.pipeline_config), its upstream stages' keys, the data's
identity and fwedge's own code. A finished stage records the sha256 of every output; a reused
one is checked against them first, and rebuilt when anything was edited, added or removed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fwedge import __version__
from fwedge.errors import FwEdgeError, PipelineError
from fwedge.ir import sha256_file, write_atomic
from fwedge.pipeline_config import SECTIONS, PipelineConfig, export_targets, load_config, parse_section

__all__ = ["SECTIONS", "PipelineConfig", "PipelineResult", "StageCache", "StageRecord", "STAGES", "load_config",
           "run_pipeline", "code_fingerprint"]

log = logging.getLogger(__name__)

DONE = "stage.json"


@dataclass
class StageRecord:
    """One stage of a pipeline run: its cache key, whether it was reused, and where its output is."""

    name: str
    key: str
    cached: bool
    seconds: float
    path: str
    summary: str = ""


@dataclass
class PipelineResult:
    """What a pipeline run produced. `gate_passed` is None when the pipeline has no [gate] baseline."""

    stages: list[StageRecord]
    bundles: list[str]
    results_path: str | None
    report_html: str | None
    report_markdown: str | None
    gate_passed: bool | None
    regressions: list[str] = field(default_factory=list)
    skipped_targets: list[str] = field(default_factory=list)
    seconds: float = 0.0


CODE_PACKAGES = ("fwedge", "fwedge.passes", "fwedge.calibration", "fwedge.targets", "fwedge.runtime_c",
                 "fwedge.device_farm")
TOOLCHAIN_DISTRIBUTIONS = ("onnx", "onnxruntime", "openvino", "ai-edge-litert", "ncnn", "ziglang", "torch", "numpy")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A sha256 over fwedge's own sources (.py, .c, .h) and the toolchain versions.

    Part of every stage's cache key: a changed kernel, pass or runtime version must rebuild the
    stages it feeds, not reuse bundles built by the old code.
    """
    from importlib import metadata

    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for folder in importlib.import_module(package).__path__:
            root = Path(folder)
            for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c", ".h") and p.is_file()):
                digest.update(f"{package}/{path.relative_to(root).as_posix()}".encode())
                digest.update(path.read_bytes())
    for name in TOOLCHAIN_DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}".encode())
    return digest.hexdigest()


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _data_identity(spec: str) -> dict:
    """A data source's identity for cache keys: path, size and mtime (not its contents)."""
    from fwedge.data import open_dataset

    dataset = open_dataset(spec)
    stat = dataset.path.stat()
    return {"spec": spec, "path": str(dataset.path.resolve()), "size": stat.st_size, "mtime": int(stat.st_mtime),
            "samples": dataset.num_samples}


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _output_hashes(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under folder, except the stage marker."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            hashes[relative] = "symlink"  # never produced by a stage: a reused folder with one fails the check
        elif path.is_file() and relative != DONE:
            hashes[relative] = sha256_file(path)
    return hashes


@dataclass
class StageOutput:
    """What a stage's build function returns: a one-line summary, and whether it may be reused."""

    summary: str
    cacheable: bool = True


class StageCache:
    """Stage outputs under <root>/<stage>-<hash16>/, built in a temp dir and renamed when done.

    - A finished stage is reused only when its files match the sha256 recorded in its marker.
    - A stage whose build says it must not be reused (a farm run with failed results) keeps
      its output in a private folder for this run only, removed by `close()`.
    - A finished, valid stage is never removed: when two runs build the same key at once, the
      second keeps the first one's output and drops its own, so a concurrent reader never loses
      the folder it reads.
    """

    def __init__(self, root: Path, rerun: tuple[str, ...] = ()):
        self.root = root
        self.rerun = rerun  # stage names (or name prefixes such as "export") rebuilt even when cached
        self._private: list[Path] = []

    def key(self, name: str, payload: dict) -> str:
        return _digest({"stage": name, "fwedge": __version__, "code": code_fingerprint(), **payload})

    def run(self, name: str, payload: dict, build: Callable[[Path], StageOutput | str]) -> StageRecord:
        """Reuse the stage's output if a valid finished one exists for this key; else build it.

        `build(out_dir)` writes the outputs and returns a StageOutput (or a summary string).
        """
        key = self.key(name, payload)
        final = self.root / f"{name}-{key[:16]}"
        forced = any(name == stage or name.startswith(f"{stage}-") for stage in self.rerun)
        summary = None if forced else self._valid(final)
        if summary is not None:
            log.info("stage %s: cached at %s", name, final)
            return StageRecord(name, key, True, 0.0, str(final), summary)
        self.root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=self.root))
        started = time.monotonic()
        try:
            output = build(temp)
            output = output if isinstance(output, StageOutput) else StageOutput(str(output))
            seconds = round(time.monotonic() - started, 2)
            if not output.cacheable:
                self._private.append(temp)
                return StageRecord(name, key, False, seconds, str(temp), output.summary)
            marker = {"stage": name, "key": key, "payload": payload, "summary": output.summary,
                      "files": _output_hashes(temp)}
            write_atomic(temp / DONE, json.dumps(marker, indent=2, default=str))
            self._publish(temp, final, replace=forced)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return StageRecord(name, key, False, seconds, str(final), output.summary)

    def close(self) -> None:
        """Remove this run's private (not reusable) stage outputs."""
        for folder in self._private:
            shutil.rmtree(folder, ignore_errors=True)
        self._private.clear()

    def _valid(self, final: Path) -> str | None:
        """The summary of a finished stage whose files all match its marker; else None."""
        marker = final / DONE
        if not marker.is_file() or marker.is_symlink():
            return None
        try:
            record = json.loads(marker.read_text())
            recorded = record["files"]
            summary = str(record.get("summary", ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("stage %s: unreadable %s; rebuilding", final.name, DONE)
            return None
        if not isinstance(recorded, dict) or _output_hashes(final) != recorded:
            log.warning("stage %s: its files differ from the ones recorded in %s; rebuilding", final.name, DONE)
            return None
        return summary

    def _publish(self, temp: Path, final: Path, replace: bool = False) -> None:
        """Rename temp to final; an existing valid final wins (unless `replace`: a forced rerun),
        an invalid one is moved aside first."""
        for _ in range(3):
            try:
                os.rename(temp, final)  # fails when final exists and is not empty
                return
            except OSError:
                if not replace and self._valid(final) is not None:
                    shutil.rmtree(temp, ignore_errors=True)
                    return
                stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".stale", dir=self.root))
                try:
                    os.rename(final, stale / "old")
                except OSError:
                    pass  # another run replaced it meanwhile: look again
                shutil.rmtree(stale, ignore_errors=True)
        raise PipelineError(f"stage folder '{final}' keeps changing under this run; is another run writing it?")


@dataclass
class PipelineRun:
    """The state one pipeline run passes from stage to stage."""

    config: PipelineConfig
    cache: StageCache
    update_baseline: bool = False
    on_stage: Callable[[StageRecord], None] | None = None
    targets: list[str] = field(default_factory=list)  # export_targets(config), checked before any work
    explicit_targets: bool = False
    stages: list[StageRecord] = field(default_factory=list)
    loaded: StageRecord | None = None
    model: StageRecord | None = None  # the current float model (after prune / distill)
    quantized: StageRecord | None = None
    analysis_path: Path | None = None
    bundles: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results_path: Path | None = None
    verdict: object | None = None
    report_html: Path | None = None
    report_markdown: Path | None = None

    def record(self, stage: StageRecord) -> StageRecord:
        self.stages.append(stage)
        if self.on_stage:
            self.on_stage(stage)
        return stage

    @property
    def qdq_path(self) -> Path:
        return Path(self.quantized.path) / "model_int8.onnx"

    @property
    def float_path(self) -> Path:
        return Path(self.quantized.path) / "model_fp32.onnx"


def _needs(stage: str):
    """Run a stage function, naming the stage when one of its libraries is not installed."""

    def wrap(function: Callable[[PipelineRun], None]):
        @functools.wraps(function)
        def run(state: PipelineRun) -> None:
            try:
                function(state)
            except ModuleNotFoundError as exc:
                from fwedge.errors import missing_dependency

                hint = missing_dependency(exc)
                raise PipelineError(f"stage '{stage}' needs {exc.name}, which is not part of this installation"
                                    + (f" ({hint.install})" if hint else "")) from exc

        run.stage = stage
        return run

    return wrap


@_needs("load")
def stage_load(run: PipelineRun) -> None:
    from fwedge import ir

    model_path = run.config.file(run.config.model.path)
    if not model_path.is_file():
        raise PipelineError(f"[model] path '{model_path}' not found")

    def build(out: Path) -> str:
        model = ir.load(model_path)
        ir.save(model, out / "model.onnx")
        return f"{model_path.name}: {len(model.graph.node)} nodes"

    run.loaded = run.model = run.record(run.cache.run("load", {"model_sha256": sha256_file(model_path)}, build))


@_needs("prune")
def stage_prune(run: PipelineRun) -> None:
    settings = run.config.prune
    if settings is None:
        return
    from fwedge import ir
    from fwedge.passes import prune

    def build(out: Path, upstream=run.model) -> str:
        model = ir.load(Path(upstream.path) / "model.onnx")
        common = {"criterion": settings.criterion, "scope": settings.scope, "exclude": settings.exclude,
                  "protect_first": not settings.prune_first_conv, "round_to": settings.round_to}
        if settings.sparsity is not None:
            pruned, report = prune.sparsify(model, settings.sparsity, scope=settings.scope, exclude=settings.exclude)
            ir.save(pruned, out / "model.onnx")
            return f"{100 * report.sparsity:.2f}% of {report.weights:,} weights zero"
        if settings.ratio is not None:
            pruned, report = prune.prune_channels(model, settings.ratio, **common)
        else:
            pruned, report = prune.prune_to_macs(model, settings.macs, **common)
        ir.save(pruned, out / "model.onnx")
        return f"parameters {report.params_before:,} -> {report.params_after:,}"

    payload = {"input": run.model.key, "settings": dataclasses.asdict(settings)}
    run.model = run.record(run.cache.run("prune", payload, build))


@_needs("distill")
def stage_distill(run: PipelineRun) -> None:
    if run.config.distill is None:
        return
    from fwedge import ir
    from fwedge.data import open_dataset

    kd = importlib.import_module("fwedge.passes.distill")  # a missing module is named by _needs
    table = dict(run.config.distill)
    train_data = table.pop("data", run.config.data.calibration)
    if not isinstance(train_data, str):
        raise PipelineError(f"[distill].data: expected a data spec string, got {train_data!r}")
    options = parse_section(kd.DistillOptions, table, "[distill]")

    def build(out: Path, upstream=run.model, teacher=run.loaded) -> str:
        result = kd.distill(ir.load(Path(upstream.path) / "model.onnx"), ir.load(Path(teacher.path) / "model.onnx"),
                            open_dataset(train_data), options)
        ir.save(result.model, out / "model.onnx")
        last = result.history[-1] if result.history else None
        return f"{result.samples} samples x {len(result.history)} epochs" + (f", loss {last.loss:.4f}" if last else "")

    payload = {"input": run.model.key, "teacher": run.loaded.key, "data": _data_identity(train_data),
               "options": dataclasses.asdict(options)}
    run.model = run.record(run.cache.run("distill", payload, build))


def _preprocess(table: dict | None, where: str):
    if table is None:
        return None
    from fwedge.data import Preprocess

    try:
        return Preprocess.from_dict(table)
    except FwEdgeError as exc:
        raise PipelineError(f"{where}.preprocess: {exc}") from exc


def _quantize_request(run: PipelineRun, model_path: Path, table: Path | None = None):
    """The QuantizeRequest of [quantize] for `model_path` (with `table`: from that QuantTable, and
    without equalization: with [quantize] equalize, `model_path` is the equalized float model the
    table was calibrated on)."""
    from fwedge.calibration import MethodOptions
    from fwedge.quantization import QuantizeRequest

    settings, data = run.config.quantize, run.config.data
    budget = settings.max_accuracy_drop is not None or settings.min_agreement is not None
    return QuantizeRequest(
        model_path, data.calibration, settings.method, settings.num_samples, table=table,
        per_channel=settings.per_channel, symmetric=settings.symmetric,
        method_options=MethodOptions(percentile=settings.percentile, symmetric=settings.symmetric),
        bins=settings.bins, seed=settings.seed, batch_size=settings.batch_size,
        preprocess=_preprocess(settings.preprocess, "[quantize]"),
        input_shapes={name: list(dims) for name, dims in settings.input_shape.items()} or None,
        max_accuracy_drop=settings.max_accuracy_drop, min_agreement=settings.min_agreement,
        eval_data=data.eval if budget else None, eval_samples=settings.eval_limit,
        keep_float=settings.keep_float, float_stem=settings.float_stem,
        bias_correction=settings.bias_correction, equalize=settings.equalize and table is None,
        relu6_as_relu=settings.relu6_as_relu and table is None, activation_dtype=settings.activation_dtype)


@_needs("quantize")
def stage_quantize(run: PipelineRun) -> None:
    from fwedge import ir
    from fwedge.quantization import run_quantization
    from fwedge.quantization.calibrate import calibration_count
    from fwedge.reference import write_metadata

    settings = run.config.quantize
    data = run.config.data
    budget = settings.max_accuracy_drop is not None or settings.min_agreement is not None

    def build(out: Path, upstream=run.model) -> str:
        request = _quantize_request(run, Path(upstream.path) / "model.onnx")
        from fwedge.console import calibration_bar, progress

        count = calibration_count(data.calibration, settings.num_samples)
        with progress(*calibration_bar(settings.method, count)) as advance:
            result = run_quantization(request, progress=advance)
        ir.save(result.float_model, out / "model_fp32.onnx")
        write_metadata(result.model, out / "model_fp32.onnx", out / "model_int8.onnx")  # the bundles' reference
        ir.save(result.model, out / "model_int8.onnx")
        result.table.save(out / "quant_table.json")
        summary = f"{settings.method}: {len(result.table.tensors)} activation tensors"
        if result.check is not None:
            summary += f", output SQNR {result.check.sqnr_db:.1f} dB vs float"
        if result.budget:
            summary += f"; budget: {result.budget['summary']}"
            if not result.budget.get("met", True):
                from fwedge.errors import CalibrationError

                raise CalibrationError(f"[quantize] budget not met: {result.budget['summary']}")
        return summary

    payload = {"input": run.model.key, "data": _data_identity(data.calibration),
               "eval": _data_identity(data.eval) if budget else None, "settings": dataclasses.asdict(settings)}
    run.quantized = run.record(run.cache.run("quantize", payload, build))


@_needs("qat")
def stage_qat(run: PipelineRun) -> None:
    """Quantization-aware training from the [quantize] stage's QuantTable and settings
    (fwedge.passes.qat); its QDQ model replaces quantize's for analyze, export and the farm, and
    its reference stays quantize's float model."""
    if run.config.qat is None:
        return
    from fwedge import ir
    from fwedge.data import open_dataset
    from fwedge.reference import write_metadata

    qat_module = importlib.import_module("fwedge.passes.qat")  # a missing module is named by _needs
    kd = importlib.import_module("fwedge.passes.distill")
    table = dict(run.config.qat)
    train_data = table.pop("data", run.config.data.calibration)
    if not isinstance(train_data, str):
        raise PipelineError(f"[qat].data: expected a data spec string, got {train_data!r}")
    teach = table.pop("kd", False)
    if not isinstance(teach, bool):
        raise PipelineError(f"[qat].kd: expected true or false (KD from the float model), got {teach!r}")
    options = parse_section(kd.DistillOptions, table, "[qat]")

    def build(out: Path, upstream=run.model, quantized=run.quantized) -> str:
        source = Path(upstream.path) / "model.onnx"
        # [quantize] equalize: its table's ranges are those of the equalized float model it wrote.
        student = Path(quantized.path) / "model_fp32.onnx" if run.config.quantize.equalize else source
        request = _quantize_request(run, student, table=Path(quantized.path) / "quant_table.json")
        result = qat_module.qat(request, open_dataset(train_data), options, preprocess=request.preprocess,
                                teacher=ir.load(source) if teach else None)
        shutil.copyfile(Path(quantized.path) / "model_fp32.onnx", out / "model_fp32.onnx")
        write_metadata(result.model, out / "model_fp32.onnx", out / "model_int8.onnx")  # the bundles' reference
        ir.save(result.model, out / "model_int8.onnx")
        shutil.copyfile(Path(quantized.path) / "quant_table.json", out / "quant_table.json")
        last = result.history[-1] if result.history else None
        return f"{result.samples} samples x {len(result.history)} epochs" + (f", loss {last.loss:.4f}" if last else "")

    payload = {"input": run.quantized.key, "model": run.model.key, "data": _data_identity(train_data), "kd": teach,
               "options": dataclasses.asdict(options)}
    run.quantized = run.record(run.cache.run("qat", payload, build))


@_needs("analyze")
def stage_analyze(run: PipelineRun) -> None:
    settings = run.config.analyze
    if not settings.enabled:
        return
    from fwedge.layer_analysis import analyze

    eval_data = run.config.data.eval

    def build(out: Path) -> str:
        result = analyze(run.float_path, run.qdq_path, eval_data, settings.limit, settings.seed,
                         _preprocess(settings.preprocess, "[analyze]"), jump_db=settings.jump_db,
                         floor_db=settings.floor_db)
        write_atomic(out / "analysis.json", json.dumps(result.to_dict(), indent=2))
        worst = result.tensors[0] if result.tensors else None
        return f"{len(result.tensors)} tensors" + (f", worst {worst.tensor} {worst.sqnr_db:.1f} dB" if worst else "")

    payload = {"input": run.quantized.key, "data": _data_identity(eval_data), "settings": dataclasses.asdict(settings)}
    analyzed = run.record(run.cache.run("analyze", payload, build))
    run.analysis_path = Path(analyzed.path) / "analysis.json"


@_needs("export")
def stage_export(run: PipelineRun) -> None:
    from fwedge.export import export_bundle
    from fwedge.targets import C_ARCHES, COptions, ExportOptions

    settings = run.config.export
    preprocess = _preprocess(settings.preprocess, "[export]")
    shapes = {name: list(dims) for name, dims in settings.input_shape.items()} or None
    stem = run.config.file(run.config.model.path).stem
    # ExportSettings.check has split and vetted the flags already.
    c_options = COptions(cc=settings.cc, cflags=tuple(shlex.split(settings.cflags)))
    for target in run.targets:
        name = f"{stem}-{target}-int8"
        is_c = target in C_ARCHES
        options = ExportOptions(precision="int8", allow_float_fallback=settings.allow_float_fallback,
                                target_options=c_options if is_c else None)

        def build(out: Path, target=target, name=name, options=options) -> str:
            bundle = export_bundle(run.qdq_path, target, out / name, options, input_shapes=shapes,
                                   preprocess=preprocess)
            return f"{bundle.target}/{bundle.arch}: {bundle.sizes.get('file_bytes', 0):,} bytes"

        used = dataclasses.asdict(settings)
        del used["targets"]
        if not is_c:  # the compiler settings do not reach a non-C bundle
            del used["cc"], used["cflags"]
        try:
            exported = run.record(run.cache.run(f"export-{target}", {"input": run.quantized.key, "target": target,
                                                                      "settings": used}, build))
        except FwEdgeError as exc:
            if run.explicit_targets:
                raise
            run.skipped.append(f"{target}: {str(exc).splitlines()[0]}")
            log.warning("export %s skipped: %s", target, exc)
            continue
        run.bundles.append(str(Path(exported.path) / name))
    if not run.bundles:
        raise PipelineError("stage 'export' produced no bundle" + (f": {'; '.join(run.skipped)}" if run.skipped else ""))


@_needs("farm")
def stage_farm(run: PipelineRun) -> None:
    from fwedge.commands.options import lab_devices
    from fwedge.device_farm import inventory, runner
    from fwedge.device_farm.results import save_results

    settings = run.config.farm
    inventory_path = run.config.file(settings.inventory)
    names = ["all"] if settings.devices == "all" else list(settings.devices)
    lab = lab_devices(settings.labgrid_coordinator, settings.places, settings.place_tags)
    devices = inventory.select(inventory.devices_for(inventory_path, lab), names)
    baseline_bundles = run.config.file(settings.baseline_bundles)
    options = runner.FarmOptions(
        data=run.config.data.eval, repeats=settings.repeats, limit=settings.limit or None,
        reference=str(run.float_path), output=settings.output_name, task=settings.task, retries=settings.retries,
        preprocess=_preprocess(settings.preprocess, "[farm]").to_dict() if settings.preprocess else None,
        baseline_bundles=str(baseline_bundles) if baseline_bundles else None, rounds=settings.rounds)

    if settings.threads is not None:  # read by the host runtimes the farm starts
        os.environ["FWEDGE_THREADS"] = str(settings.threads)

    def build(out: Path) -> StageOutput:
        from fwedge.bundle import load_bundle
        from fwedge.console import progress

        bundles = [load_bundle(path) for path in run.bundles]
        jobs, _ = runner.plan(bundles, devices, options.baseline_bundles)
        with progress(runner.result_count(jobs), "farm") as advance:
            results = runner.run_farm(bundles, devices, options, progress=lambda result: advance(1))
        save_results(results, out / "results.json")
        failed = sum(not r.ok for r in results.results)
        # A run with failed results is never reused: the next pipeline run tries the devices again.
        return StageOutput(f"{len(results.results)} runs on {len(devices)} devices, {failed} failed",
                           cacheable=failed == 0)

    payload = {"bundles": [Path(b).parent.name for b in run.bundles],
               "devices": [dataclasses.asdict(device) for device in devices],
               "options": dataclasses.asdict(options) | {"reference": run.quantized.key, "threads": settings.threads},
               "data": _data_identity(run.config.data.eval),
               "inventory": sha256_file(inventory_path) if inventory_path else None,
               "baseline_bundles": _tree_hash(baseline_bundles) if baseline_bundles else None}
    farmed = run.record(run.cache.run("farm", payload, build))
    run.results_path = Path(farmed.path) / "results.json"


@_needs("gate")
def stage_gate(run: PipelineRun) -> None:
    from fwedge.device_farm import gate
    from fwedge.device_farm.results import load_results

    settings = run.config.gate
    baseline_path = run.config.file(settings.baseline)
    results = load_results(run.results_path)
    if baseline_path and not baseline_path.is_file() and not run.update_baseline:
        # A gate that was asked for but has nothing to compare with must not pass.
        raise PipelineError(f"[gate] baseline '{baseline_path}' not found; create it on purpose with "
                            "`fwedge pipeline --update-baseline`, or remove [gate] baseline")
    if baseline_path and baseline_path.is_file():
        thresholds = gate.Thresholds(
            max_accuracy_drop=settings.max_accuracy_drop, max_fidelity_drop=settings.max_fidelity_drop,
            max_sqnr_drop=settings.max_sqnr_drop,
            max_latency_increase=gate.parse_fraction(str(settings.max_latency_increase), "[gate] max_latency_increase"),
            max_size_increase=gate.parse_fraction(str(settings.max_size_increase), "[gate] max_size_increase"),
            max_instructions_increase=gate.parse_fraction(str(settings.max_instructions_increase),
                                                          "[gate] max_instructions_increase"),
            max_emulated_latency_increase=None if settings.max_emulated_latency_increase is None else
            gate.parse_fraction(str(settings.max_emulated_latency_increase), "[gate] max_emulated_latency_increase"))
        try:
            run.verdict = gate.evaluate_gate(results, load_results(baseline_path, "baseline"), thresholds,
                                             list(settings.waive))
        except FwEdgeError:
            if not run.update_baseline:
                raise
            log.warning("the old baseline is not comparable with this run; replacing it")
    if run.update_baseline:
        if not baseline_path:
            raise PipelineError("--update-baseline needs [gate] baseline in the pipeline file")
        gate.update_baseline(results, baseline_path)
    verdict = run.verdict
    summary = ("no [gate] baseline" if verdict is None and not run.update_baseline else
               "baseline written" if verdict is None else
               "PASS" if verdict.passed else f"FAIL: {len(verdict.regressions)} regression(s)")
    if verdict is not None and run.update_baseline:
        summary += " (baseline updated)"
    run.record(StageRecord("gate", "", False, 0.0, str(baseline_path or ""), summary))


@_needs("report")
def stage_report(run: PipelineRun) -> None:
    from fwedge.report import write_report

    settings = run.config.report
    out_dir = run.config.file(run.config.pipeline.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_copy = out_dir / "results.json"
    write_atomic(results_copy, run.results_path.read_bytes())
    if run.verdict is not None:
        write_atomic(out_dir / "gate.json", json.dumps(run.verdict.to_dict(), indent=2) + "\n")
    run.report_html = out_dir / settings.html
    run.report_markdown = out_dir / settings.markdown
    stem = run.config.file(run.config.model.path).stem
    write_report(results_copy, run.report_html, analysis_path=run.analysis_path, gate=run.verdict,
                 markdown_path=run.report_markdown, title=settings.title or f"fwedge: {stem}")
    run.results_path = results_copy
    run.record(StageRecord("report", "", False, 0.0, str(run.report_html),
                           f"{run.report_html.name}, {run.report_markdown.name}"))


CACHED_STAGES = ("load", "prune", "distill", "quantize", "qat", "analyze", "export", "farm")
STAGES: list[Callable[[PipelineRun], None]] = [
    stage_load, stage_prune, stage_distill, stage_quantize, stage_qat, stage_analyze, stage_export, stage_farm, stage_gate,
    stage_report,
]


def run_pipeline(
    config_path: str | os.PathLike,
    overrides: dict | None = None,
    update_baseline: bool = False,
    on_stage: Callable[[StageRecord], None] | None = None,
    rerun: tuple[str, ...] | list[str] = (),
) -> PipelineResult:
    """Run every stage of a pipeline.toml, reusing valid cached stage outputs.

    Args:
        config_path: the pipeline.toml.
        overrides: {"section.key": value} on top of the file.
        update_baseline: write this run's results as the gate baseline (on purpose).
        on_stage: called after each stage.
        rerun: stages to rebuild even when a valid cached output exists, e.g. ("farm",) to
            measure the same bundles on the devices again; "export" names every export-TARGET.

    Returns:
        PipelineResult; `gate_passed` is None when the pipeline names no [gate] baseline.

    Raises:
        PipelineError: bad configuration, a named baseline that does not exist, or a stage whose
            library is missing.
        FwEdgeError: a stage failed (the message names what and where).
    """
    started = time.monotonic()
    config = load_config(config_path, overrides)
    targets, explicit = export_targets(config)  # refuse unknown or missing targets before any work
    unknown = sorted(set(rerun) - set(CACHED_STAGES))
    if unknown:
        raise PipelineError(f"--rerun {', '.join(unknown)}: not a cached stage; cached stages: {', '.join(CACHED_STAGES)}")
    cache = StageCache(config.file(config.pipeline.cache_dir), tuple(rerun))
    run = PipelineRun(config, cache, update_baseline, on_stage, targets=targets, explicit_targets=explicit)
    try:
        for stage in STAGES:
            stage(run)
    finally:
        run.cache.close()
    verdict = run.verdict
    return PipelineResult(
        stages=run.stages, bundles=run.bundles, results_path=str(run.results_path), report_html=str(run.report_html),
        report_markdown=str(run.report_markdown), gate_passed=None if verdict is None else verdict.passed,
        regressions=verdict.regressions if verdict else [], skipped_targets=run.skipped,
        seconds=round(time.monotonic() - started, 1))

"""`fwedge pipeline`: load → [prune → distill] → quantize → export → farm → gate → report, each
stage cached under <cache>/<stage>-<hash>/ by a content hash of its inputs and settings."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fwedge import __version__
from fwedge.errors import FwEdgeError, PipelineError, UnsupportedOpError

log = logging.getLogger(__name__)

DONE = "stage.json"
SECTIONS = ("pipeline", "model", "data", "prune", "distill", "quantize", "analyze", "export", "farm", "gate", "report")


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
    """What a pipeline run produced."""

    stages: list[StageRecord]
    bundles: list[str]
    results_path: str | None
    report_html: str | None
    report_markdown: str | None
    gate_passed: bool | None
    regressions: list[str] = field(default_factory=list)
    skipped_targets: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PipelineConfig:
    """A parsed pipeline.toml; relative paths are resolved against the file's folder."""

    path: Path
    sections: dict

    def section(self, name: str) -> dict:
        return self.sections.get(name, {})

    def file(self, value: str | None) -> Path | None:
        if not value:
            return None
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.path.parent / path)

    def enabled(self, name: str) -> bool:
        section = self.sections.get(name)
        return section is not None and section.get("enabled", True)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> PipelineConfig:
    """Read pipeline.toml.

    Args:
        overrides: {"section.key": value} applied on top (the CLI's --set).

    Raises:
        PipelineError: missing file, bad TOML, unknown section, no [model] path.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline '{path}': not found")
    try:
        sections = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"pipeline '{path}': not valid TOML ({exc})") from exc
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"pipeline '{path}': unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise PipelineError(f"override {dotted!r}: expected SECTION.KEY with SECTION in {', '.join(SECTIONS)}")
        sections.setdefault(section, {})[key] = value
    if not sections.get("model", {}).get("path"):
        raise PipelineError(f"pipeline '{path}': [model] needs a path")
    return PipelineConfig(path=path.resolve(), sections=sections)


def _library(stage: str, module: str, attribute: str | None = None):
    """Import a stage's library lazily; a missing one is a clear error naming the stage."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise PipelineError(f"stage '{stage}' needs {module}, which is not part of this installation "
                            f"({exc.name} is missing)") from exc
    if attribute and not hasattr(loaded, attribute):
        raise PipelineError(f"stage '{stage}' needs {module}.{attribute}, which this installation lacks")
    return getattr(loaded, attribute) if attribute else loaded


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


def _file_hash(path: Path) -> str:
    from fwedge.ir import sha256_file

    return sha256_file(path)


def _data_identity(spec: str) -> dict:
    """A data source's identity for cache keys: path, size and mtime (not its contents)."""
    from fwedge.data import open_dataset

    dataset = open_dataset(spec)
    stat = dataset.path.stat()
    return {"spec": spec, "path": str(dataset.path.resolve()), "size": stat.st_size, "mtime": int(stat.st_mtime),
            "samples": dataset.num_samples}


class StageCache:
    """Stage outputs under <root>/<stage>-<hash16>/, written in a temp dir and renamed when done."""

    def __init__(self, root: Path):
        self.root = root

    def run(self, name: str, payload: dict, build: Callable[[Path], str]) -> StageRecord:
        """Reuse the stage's output if a finished one exists for this key; else build it.

        `build(out_dir)` writes the outputs and returns a one-line summary.
        """
        key = _digest({"stage": name, "fwedge": __version__, "code": code_fingerprint(), **payload})
        final = self.root / f"{name}-{key[:16]}"
        marker = final / DONE
        if marker.is_file():
            summary = json.loads(marker.read_text()).get("summary", "")
            log.info("stage %s: cached at %s", name, final)
            return StageRecord(name, key, True, 0.0, str(final), summary)
        self.root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=self.root))
        started = time.monotonic()
        try:
            summary = build(temp)
            (temp / DONE).write_text(json.dumps({"stage": name, "key": key, "payload": payload,
                                                 "summary": summary}, indent=2, default=str))
            if final.exists():  # an unfinished earlier attempt (no marker): replace it
                shutil.rmtree(final)
            os.rename(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return StageRecord(name, key, False, round(time.monotonic() - started, 2), str(final), summary)


def _targets(config: PipelineConfig) -> tuple[list[str], bool]:
    """The export targets, and whether they were given explicitly (then a failure is an error)."""
    from fwedge.targets import C_ARCHES, TARGETS, available_targets

    wanted = config.section("export").get("targets", "all")
    if wanted == "all":
        names = []
        for target in available_targets():
            names.extend(C_ARCHES if target == "c" else [target])
        return names, False
    if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
        raise PipelineError(f"pipeline '{config.path}': [export] targets must be \"all\" or a list of names")
    for target in wanted:
        module = "c" if target in C_ARCHES else target
        if module not in TARGETS:
            raise PipelineError(f"[export] unknown target {target!r}; known: {', '.join(list(TARGETS) + list(C_ARCHES))}")
        _library("export", TARGETS[module])
    return list(wanted), True


def run_pipeline(
    config_path: str | os.PathLike,
    overrides: dict | None = None,
    update_baseline: bool = False,
    on_stage: Callable[[StageRecord], None] | None = None,
) -> PipelineResult:
    """Run every stage of a pipeline.toml, reusing cached stage outputs.

    Args:
        config_path: the pipeline.toml.
        overrides: {"section.key": value} on top of the file.
        update_baseline: write this run's results as the gate baseline (on purpose).
        on_stage: called after each stage.

    Returns:
        PipelineResult; `gate_passed` is None when no baseline exists yet.

    Raises:
        PipelineError: bad configuration, or a stage whose library is missing.
        FwEdgeError: a stage failed (the message names what and where).
    """
    started = time.monotonic()
    config = load_config(config_path, overrides)
    targets, explicit = _targets(config)  # refuse unknown or missing targets before any work
    settings = config.section("pipeline")
    cache = StageCache(config.file(settings.get("cache_dir", ".cache/pipeline")))
    out_dir = config.file(settings.get("out_dir", "build/pipeline"))
    stages: list[StageRecord] = []

    def record(stage: StageRecord) -> StageRecord:
        stages.append(stage)
        if on_stage:
            on_stage(stage)
        return stage

    data = config.section("data")
    eval_data = data.get("eval", "fashion-mnist:test")
    calibration_data = data.get("calibration", "fashion-mnist:train")

    # -- load -------------------------------------------------------------------------------
    model_path = config.file(config.section("model")["path"])
    if not model_path.is_file():
        raise PipelineError(f"[model] path '{model_path}' not found")

    def build_load(out: Path) -> str:
        from fwedge import ir

        model = ir.load(model_path)
        ir.save(model, out / "model.onnx")
        return f"{model_path.name}: {len(model.graph.node)} nodes"

    current = record(cache.run("load", {"model_sha256": _file_hash(model_path)}, build_load))
    reference_stage = current

    # -- prune --------------------------------------------------------------------------------
    if config.enabled("prune"):
        options = {k: v for k, v in config.section("prune").items() if k != "enabled"}
        prune_channels = _library("prune", "fwedge.passes.prune", "prune_channels")

        def build_prune(out: Path, upstream=current) -> str:
            from fwedge import ir

            model = ir.load(Path(upstream.path) / "model.onnx")
            pruned, report = prune_channels(model, float(options.get("ratio", 0.25)),
                                            criterion=options.get("criterion", "l1"),
                                            scope=options.get("scope", "global"),
                                            exclude=tuple(options.get("exclude", ())))
            ir.save(pruned, out / "model.onnx")
            return f"parameters {report.params_before:,} -> {report.params_after:,}"

        current = record(cache.run("prune", {"input": current.key, "options": options}, build_prune))

    # -- distill ------------------------------------------------------------------------------
    if config.enabled("distill"):
        options = {k: v for k, v in config.section("distill").items() if k != "enabled"}
        distill_module = _library("distill", "fwedge.passes.distill")
        train_data = options.pop("data", calibration_data)

        def build_distill(out: Path, upstream=current) -> str:
            from fwedge import ir
            from fwedge.data import open_dataset

            student = ir.load(Path(upstream.path) / "model.onnx")
            teacher = ir.load(Path(reference_stage.path) / "model.onnx")
            known = {f.name for f in dataclasses.fields(distill_module.DistillOptions)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise PipelineError(f"[distill] unknown option(s) {unknown}; known: {sorted(known)}")
            result = distill_module.distill(student, teacher, open_dataset(train_data),
                                            distill_module.DistillOptions(**options))
            ir.save(result.model, out / "model.onnx")
            last = result.history[-1] if result.history else None
            return f"{result.samples} samples x {len(result.history)} epochs" + (
                f", loss {last.loss:.4f}" if last else "")

        current = record(cache.run("distill", {"input": current.key, "teacher": reference_stage.key,
                                               "data": _data_identity(train_data), "options": options},
                                   build_distill))

    # -- quantize -----------------------------------------------------------------------------
    quantize_options = dict(config.section("quantize"))
    quantize = _library("quantize", "fwedge.quantization", "quantize")

    def build_quantize(out: Path, upstream=current) -> str:
        from fwedge import ir

        result = quantize(Path(upstream.path) / "model.onnx", calibration_data,
                          method=quantize_options.get("method", "kl"),
                          num_samples=quantize_options.get("num_samples", 512),
                          per_channel=quantize_options.get("per_channel", True),
                          symmetric=quantize_options.get("symmetric", False),
                          seed=quantize_options.get("seed", 0))
        ir.save(result.model, out / "model_int8.onnx")
        ir.save(result.float_model, out / "model_fp32.onnx")
        result.table.save(out / "quant_table.json")
        return f"{quantize_options.get('method', 'kl')}: {len(result.table.tensors)} activation tensors"

    quantized = record(cache.run("quantize", {"input": current.key, "data": _data_identity(calibration_data),
                                              "options": quantize_options}, build_quantize))
    qdq_path = Path(quantized.path) / "model_int8.onnx"
    float_path = Path(quantized.path) / "model_fp32.onnx"
    stem = model_path.stem

    # -- analyze (per-layer SQNR for the report) ------------------------------------------------
    analysis_path = None
    if config.section("analyze").get("enabled", True):
        analyze_options = {k: v for k, v in config.section("analyze").items() if k != "enabled"}
        analyze = _library("analyze", "fwedge.layer_analysis", "analyze")

        def build_analyze(out: Path) -> str:
            from fwedge.ir import write_atomic

            result = analyze(float_path, qdq_path, eval_data, analyze_options.get("num_samples", 256))
            write_atomic(out / "analysis.json", json.dumps(result.to_dict(), indent=2))
            worst = result.tensors[0] if result.tensors else None
            return f"{len(result.tensors)} tensors" + (f", worst {worst.tensor} {worst.sqnr_db:.1f} dB" if worst else "")

        analyzed = record(cache.run("analyze", {"input": quantized.key, "data": _data_identity(eval_data),
                                                "options": analyze_options}, build_analyze))
        analysis_path = Path(analyzed.path) / "analysis.json"

    # -- export (one cached entry per target) ---------------------------------------------------
    export_bundle = _library("export", "fwedge.export", "export_bundle")
    export_options = {k: v for k, v in config.section("export").items() if k != "targets"}
    bundles, skipped = [], []
    for target in targets:
        name = f"{stem}-{target}-int8"

        def build_export(out: Path, target=target, name=name) -> str:
            from fwedge.targets import ExportOptions

            options = ExportOptions(precision="int8", cc=export_options.get("cc"))
            bundle = export_bundle(qdq_path, target, out / name, options)
            return f"{bundle.target}/{bundle.arch}: {bundle.sizes.get('file_bytes', 0):,} bytes"

        try:
            exported = record(cache.run(f"export-{target}", {"input": quantized.key, "target": target,
                                                              "options": export_options}, build_export))
        except (UnsupportedOpError, PipelineError, FwEdgeError) as exc:
            if explicit:
                raise
            skipped.append(f"{target}: {str(exc).splitlines()[0]}")
            log.warning("export %s skipped: %s", target, exc)
            continue
        bundles.append(str(Path(exported.path) / name))
    if not bundles:
        raise PipelineError("stage 'export' produced no bundle" + (f": {'; '.join(skipped)}" if skipped else ""))

    # -- farm -----------------------------------------------------------------------------------
    farm = config.section("farm")
    runner = _library("farm", "fwedge.device_farm.runner")
    inventory_module = _library("farm", "fwedge.device_farm.inventory")
    inventory_path = config.file(farm.get("inventory"))
    devices_wanted = farm.get("devices", "all")
    device_names = ["all"] if devices_wanted == "all" else list(devices_wanted)
    devices = inventory_module.select(inventory_module.devices_for(inventory_path), device_names)
    baseline_bundles = config.file(farm.get("baseline_bundles"))
    farm_options = runner.FarmOptions(
        data=eval_data, repeats=int(farm.get("repeats", 20)), limit=farm.get("limit", 1000) or None,
        reference=str(float_path), retries=int(farm.get("retries", 1)),
        baseline_bundles=str(baseline_bundles) if baseline_bundles else None, rounds=int(farm.get("rounds", 4)))

    def build_farm(out: Path) -> str:
        from fwedge.device_farm.results import save_results

        results = runner.run_farm(bundles, devices, farm_options)
        save_results(results, out / "results.json")
        failed = sum(not r.ok for r in results.results)
        return f"{len(results.results)} runs on {len(devices)} devices, {failed} failed"

    device_identity = [dataclasses.asdict(device) for device in devices]
    farm_payload = {"bundles": [Path(b).parent.name for b in bundles], "devices": device_identity,
                    "options": dataclasses.asdict(farm_options) | {"reference": quantized.key},
                    "data": _data_identity(eval_data),
                    "inventory": _file_hash(inventory_path) if inventory_path else None,
                    "baseline_bundles": _tree_hash(baseline_bundles) if baseline_bundles else None}
    farmed = record(cache.run("farm", farm_payload, build_farm))
    results_path = Path(farmed.path) / "results.json"

    # -- gate and report (cheap: always recomputed) -----------------------------------------------
    gate_module = _library("gate", "fwedge.device_farm.gate")
    from fwedge.device_farm.results import load_results

    gate_settings = config.section("gate")
    baseline_path = config.file(gate_settings.get("baseline"))
    results = load_results(results_path)
    verdict = None
    if baseline_path and baseline_path.is_file():
        thresholds = gate_module.Thresholds(
            max_accuracy_drop=float(gate_settings.get("max_accuracy_drop", 0.5)),
            max_fidelity_drop=float(gate_settings.get("max_fidelity_drop", 1.0)),
            max_latency_increase=gate_module.parse_fraction(gate_settings.get("max_latency_increase", "10%"), "[gate] max_latency_increase"),
            max_size_increase=gate_module.parse_fraction(gate_settings.get("max_size_increase", "5%"), "[gate] max_size_increase"))
        try:
            verdict = gate_module.evaluate_gate(results, load_results(baseline_path, "baseline"), thresholds,
                                                gate_settings.get("waive", []))
        except FwEdgeError:
            if not update_baseline:
                raise
            log.warning("the old baseline is not comparable with this run; replacing it")
    if update_baseline:
        if not baseline_path:
            raise PipelineError("--update-baseline needs [gate] baseline in the pipeline file")
        gate_module.update_baseline(results, baseline_path)
    record(StageRecord("gate", "", False, 0.0, str(baseline_path or ""),
                       "no baseline yet" if verdict is None else ("PASS" if verdict.passed else
                                                                   f"FAIL: {len(verdict.regressions)} regression(s)")
                       + (" (baseline updated)" if update_baseline else "")))

    report_settings = config.section("report")
    report_module = _library("report", "fwedge.report")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(results_path, out_dir / "results.json")
    if verdict is not None:
        from fwedge.ir import write_atomic

        write_atomic(out_dir / "gate.json", json.dumps(verdict.to_dict(), indent=2) + "\n")
    html_path = out_dir / report_settings.get("html", "report.html")
    markdown_path = out_dir / report_settings.get("markdown", "summary.md")
    report_module.write_report(out_dir / "results.json", html_path, analysis_path=analysis_path, gate=verdict,
                               markdown_path=markdown_path, title=report_settings.get("title", f"fwedge: {stem}"))
    record(StageRecord("report", "", False, 0.0, str(html_path), f"{html_path.name}, {markdown_path.name}"))
    return PipelineResult(
        stages=stages, bundles=bundles, results_path=str(out_dir / "results.json"), report_html=str(html_path),
        report_markdown=str(markdown_path), gate_passed=None if verdict is None else verdict.passed,
        regressions=verdict.regressions if verdict else [], skipped_targets=skipped,
        seconds=round(time.monotonic() - started, 1))


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(_file_hash(path).encode())
    return digest.hexdigest()

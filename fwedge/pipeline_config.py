"""pipeline.toml as typed settings: one frozen dataclass per section, unknown keys and wrong types refused."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from fwedge.errors import PipelineError

MAX_TOML_BYTES = 1 << 20  # a pipeline file is a few hundred bytes; refuse anything absurd


@dataclass(frozen=True)
class PipelineSettings:
    """[pipeline]: where stage outputs are cached and where the report goes (relative to the file)."""

    cache_dir: str = ".cache/pipeline"
    out_dir: str = "build/pipeline"


@dataclass(frozen=True)
class ModelSettings:
    """[model]: the float ONNX model."""

    path: str = ""


@dataclass(frozen=True)
class DataSettings:
    """[data]: calibration and evaluation data (open_dataset specs)."""

    calibration: str = "fashion-mnist:train"
    eval: str = "fashion-mnist:test"


@dataclass(frozen=True)
class PruneSettings:
    """[prune]: `fwedge prune`'s options; exactly one of ratio, macs, sparsity."""

    enabled: bool = True
    ratio: float | None = None
    macs: float | None = None
    sparsity: float | None = None
    criterion: Literal["l1", "l2", "bn"] = "l1"
    scope: Literal["global", "per-layer"] = "global"
    exclude: tuple[str, ...] = ()
    round_to: int = 1
    prune_first_conv: bool = False

    def check(self, where: str) -> None:
        chosen = [name for name in ("ratio", "macs", "sparsity") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise PipelineError(f"{where}: give exactly one of ratio, macs, sparsity (got {chosen or 'none'})")
        value = getattr(self, chosen[0])
        if not 0 <= value < 1 and not (chosen[0] == "macs" and 0 < value <= 1):
            raise PipelineError(f"{where}.{chosen[0]}: expected a fraction in [0, 1), got {value}")
        _at_least(self.round_to, 1, f"{where}.round_to")


@dataclass(frozen=True)
class QuantizeSettings:
    """[quantize]: `fwedge quantize`'s options (the budget reads [data] eval)."""

    method: Literal["kl", "percentile", "minmax", "mse"] = "kl"
    num_samples: int = 512
    seed: int = 0
    bins: int = 2048
    percentile: float = 99.99
    symmetric: bool = False
    per_channel: bool = True
    batch_size: int = 64
    input_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    preprocess: dict | None = None
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    eval_limit: int = 1000
    keep_float: tuple[str, ...] = ()
    float_stem: bool = False
    bias_correction: bool = False
    equalize: bool = False
    relu6_as_relu: bool = False
    activation_dtype: Literal["int8", "uint8"] = "int8"

    def check(self, where: str) -> None:
        for name in ("num_samples", "bins", "batch_size", "eval_limit"):
            _at_least(getattr(self, name), 1, f"{where}.{name}")
        if not 0 < self.percentile <= 100:
            raise PipelineError(f"{where}.percentile: expected a value in (0, 100], got {self.percentile}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise PipelineError(f"{where}.max_accuracy_drop: expected >= 0, got {self.max_accuracy_drop}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise PipelineError(f"{where}.min_agreement: expected a fraction in [0, 1], got {self.min_agreement}")


@dataclass(frozen=True)
class AnalyzeSettings:
    """[analyze]: per-layer SQNR for the report."""

    enabled: bool = True
    limit: int = 256
    seed: int = 0
    jump_db: float = 6.0
    floor_db: float = 30.0
    preprocess: dict | None = None

    def check(self, where: str) -> None:
        _at_least(self.limit, 1, f"{where}.limit")


# A pipeline file may come from a stranger, and its compiler settings reach a command line: a
# flag such as -fplugin=, -B, -wrapper, -specs= or @file would load or run what the file names.
# So a pipeline's cflags are limited to code-generation flags, and its cc to a compiler's name.
# (The CLI's --cc and --cflags are typed by the user and are not limited.)
SAFE_CFLAG = re.compile(r"-O[0-3sz]?|-g[0-3]?|-D[A-Za-z_][A-Za-z0-9_]*(=[A-Za-z0-9_.+-]*)?|-U[A-Za-z_][A-Za-z0-9_]*"
                        r"|-m(arch|cpu|tune|abi)=[A-Za-z0-9_.+-]+|-m[a-z0-9][a-z0-9.-]*"
                        r"|-f(no-)?(fast-math|unroll-loops|vectorize|slp-vectorize|tree-vectorize|strict-aliasing"
                        r"|omit-frame-pointer|fp-contract=(off|on|fast)|lto|pic|PIC|pie|PIE)|-w|-W[a-z][a-z0-9-]*")
SAFE_CC = re.compile(r"(zig cc|cc|c99|gcc|clang|([A-Za-z0-9_]+-)+(gcc|cc|clang))(-[0-9]+)?")


@dataclass(frozen=True)
class ExportSettings:
    """[export]: `fwedge export`'s options; targets "all" skips targets this installation lacks."""

    targets: Union[Literal["all"], tuple[str, ...]] = "all"
    cc: str | None = None
    cflags: str = ""
    input_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    allow_float_fallback: bool = False
    preprocess: dict | None = None

    def check(self, where: str) -> None:
        if self.cc is not None and not SAFE_CC.fullmatch(self.cc):
            raise PipelineError(f"{where}.cc: expected a C compiler's name (cc, gcc, clang, zig cc, "
                                f"aarch64-linux-gnu-gcc, ...), got {self.cc[:60]!r}")
        try:
            flags = shlex.split(self.cflags)
        except ValueError as exc:
            raise PipelineError(f"{where}.cflags: {exc}") from exc
        for flag in flags:
            if not SAFE_CFLAG.fullmatch(flag):
                raise PipelineError(f"{where}.cflags: {flag[:60]!r} is not allowed in a pipeline file (only -O, -g, "
                                    "-D/-U macros, -m and -march/-mcpu/-mtune, and code-generation -f flags); "
                                    "pass other flags with fwedge export --cflags")


@dataclass(frozen=True)
class FarmSettings:
    """[farm]: `fwedge farm run`'s options."""

    devices: Union[Literal["all"], tuple[str, ...]] = "all"
    inventory: str | None = None
    limit: int = 1000
    repeats: int = 20
    retries: int = 1
    baseline_bundles: str | None = None
    rounds: int = 4
    output_name: str | None = None
    preprocess: dict | None = None
    threads: int | None = None
    labgrid_coordinator: str | None = None
    task: Literal["auto", "classification", "signal", "detection"] = "auto"
    places: tuple[str, ...] = ()
    place_tags: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        _at_least(self.limit, 0, f"{where}.limit")
        _at_least(self.repeats, 1, f"{where}.repeats")
        _at_least(self.retries, 0, f"{where}.retries")
        _at_least(self.rounds, 1, f"{where}.rounds")
        if self.threads is not None:
            _at_least(self.threads, 1, f"{where}.threads")


@dataclass(frozen=True)
class GateSettings:
    """[gate]: `fwedge gate`'s thresholds; a named baseline that does not exist is an error."""

    baseline: str | None = None
    max_accuracy_drop: float = 0.5
    max_fidelity_drop: float = 1.0
    max_sqnr_drop: float = 3.0
    max_latency_increase: Union[str, float] = "10%"
    max_size_increase: Union[str, float] = "5%"
    max_instructions_increase: Union[str, float] = "1%"
    max_emulated_latency_increase: Union[str, float, None] = None
    waive: tuple[str, ...] = ()

    def check(self, where: str) -> None:
        for name in ("max_accuracy_drop", "max_fidelity_drop", "max_sqnr_drop"):
            _at_least(getattr(self, name), 0, f"{where}.{name}")


@dataclass(frozen=True)
class ReportSettings:
    """[report]: file names inside [pipeline] out_dir."""

    html: str = "report.html"
    markdown: str = "summary.md"
    title: str | None = None

    def check(self, where: str) -> None:
        for name in ("html", "markdown"):
            value = getattr(self, name)
            if not value or Path(value).name != value or value in (".", ".."):
                raise PipelineError(f"{where}.{name}: expected a plain file name, got {value!r}")


SECTION_TYPES = {
    "pipeline": PipelineSettings, "model": ModelSettings, "data": DataSettings, "prune": PruneSettings,
    "distill": None,  # fwedge.passes.distill.DistillOptions plus `data`, parsed when the stage runs
    "quantize": QuantizeSettings,
    "qat": None,  # DistillOptions plus `data` and `kd`, parsed when the stage runs (fwedge.passes.qat)
    "analyze": AnalyzeSettings, "export": ExportSettings,
    "farm": FarmSettings, "gate": GateSettings, "report": ReportSettings,
}
SECTIONS = tuple(SECTION_TYPES)


@dataclass
class PipelineConfig:
    """A parsed pipeline.toml; relative paths are resolved against the file's folder.

    Optional stages (prune, distill, qat) are None when their section is absent or `enabled = false`.
    `distill` and `qat` stay raw tables: their options are DistillOptions, which need the distill module.
    """

    path: Path
    pipeline: PipelineSettings
    model: ModelSettings
    data: DataSettings
    quantize: QuantizeSettings
    analyze: AnalyzeSettings
    export: ExportSettings
    farm: FarmSettings
    gate: GateSettings
    report: ReportSettings
    prune: PruneSettings | None = None
    distill: dict | None = None
    qat: dict | None = None

    def file(self, value: str | None) -> Path | None:
        """A path from the file, resolved against the file's folder."""
        if not value:
            return None
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.path.parent / path)


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> PipelineConfig:
    """Read and validate pipeline.toml.

    Args:
        path: the file.
        overrides: {"section.key": value} applied on top (the CLI's --set).

    Raises:
        PipelineError: missing or unreadable file, bad TOML, an unknown section or key (the
            message lists the known ones), a value of the wrong type or range, no [model] path.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"pipeline '{path}': not found")
    if path.stat().st_size > MAX_TOML_BYTES:
        raise PipelineError(f"pipeline '{path}': {path.stat().st_size:,} bytes; a pipeline file is at most "
                            f"{MAX_TOML_BYTES:,}")
    try:
        sections = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PipelineError(f"pipeline '{path}': not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"pipeline '{path}': not valid TOML ({exc})") from exc
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"pipeline '{path}': unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    for name, table in sections.items():
        if not isinstance(table, dict):
            raise PipelineError(f"pipeline '{path}': [{name}] must be a table, got {type(table).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise PipelineError(f"override {dotted!r}: expected SECTION.KEY with SECTION in {', '.join(SECTIONS)}")
        sections.setdefault(section, {})[key] = value
    parsed = {name: parse_section(cls, sections.get(name, {}), f"[{name}]")
              for name, cls in SECTION_TYPES.items() if cls is not None and name != "prune"}
    if not parsed["model"].path:
        raise PipelineError(f"pipeline '{path}': [model] needs a path")
    prune = parse_section(PruneSettings, sections["prune"], "[prune]") if "prune" in sections else None
    return PipelineConfig(path=path.resolve(), prune=prune if prune and prune.enabled else None,
                          distill=_raw_section(sections, "distill"), qat=_raw_section(sections, "qat"), **parsed)


def _raw_section(sections: dict, name: str) -> dict | None:
    """An optional section kept as its table (parsed when its stage runs), None when absent or
    `enabled = false`."""
    if name not in sections:
        return None
    table = dict(sections[name])
    enabled = table.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise PipelineError(f"[{name}].enabled: expected true or false, got {enabled!r}")
    return table if enabled else None


def export_targets(config: PipelineConfig) -> tuple[list[str], bool]:
    """The export targets, and whether they were given explicitly (then a failure is an error).

    Raises:
        PipelineError: an unknown target, or an explicit one whose toolchain is not installed.
    """
    from fwedge.targets import C_ARCHES, TARGET_MODULES, available_targets, export_names, target_class

    wanted = config.export.targets
    if wanted == "all":
        names = []
        for target in available_targets():
            names.extend(C_ARCHES if target == "c" else [target])
        return names, False
    for target in wanted:
        if target not in export_names():
            raise PipelineError(f"[export] unknown target {target!r}; known: {', '.join(export_names())}")
        family = "c" if target in C_ARCHES else target
        try:
            target_class(family)
        except ModuleNotFoundError as exc:
            raise PipelineError(f"stage 'export' needs {TARGET_MODULES[family]}, which is not part of this installation "
                                f"({exc.name} is missing)") from exc
    return list(wanted), True


# Keys renamed to the CLI's vocabulary (--limit: samples read from a command's data; --eval-limit
# from --eval-data); the old key is still read, for one release.
RENAMED = {"QuantizeSettings": {"eval_samples": "eval_limit"}, "AnalyzeSettings": {"num_samples": "limit"}}


def parse_section(cls, table: dict, where: str):
    """A settings dataclass from a TOML table: every key known, every value of its field's type.

    Raises:
        PipelineError: an unknown key (the known ones listed), or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    table = dict(table)
    for old, new in RENAMED.get(cls.__name__, {}).items():  # the CLI's names; the old key for one release
        if old in table:
            if new in table:
                raise PipelineError(f"{where}: give {new}, not both {new} and {old} (its old name)")
            table[new] = table.pop(old)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; known: {', '.join(known)}")
    values = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in table.items()}
    try:
        settings = cls(**values)
    except TypeError as exc:  # a required field without a default
        raise PipelineError(f"{where}: {exc}") from exc
    if hasattr(settings, "check"):
        settings.check(where)
    return settings


def _coerce(value, hint, where: str):
    """`value` checked against a type hint; lists become tuples (settings are hashable and frozen)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        problems = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, where)
            except PipelineError as exc:
                problems.append(str(exc).split(": ", 1)[-1].split(", got ")[0].removeprefix("expected "))
        raise PipelineError(f"{where}: expected {' or '.join(dict.fromkeys(problems))}, got {_kind(value)}")
    if origin is Literal:
        if value not in args:
            raise PipelineError(f"{where}: expected one of {', '.join(map(repr, args))}, got {_kind(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"{where}: expected a list, got {_kind(value)}")
        item = args[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{where}: expected a table, got {_kind(value)}")
        key_type, value_type = args
        return {_coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if hint is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{where}: expected a table, got {_kind(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PipelineError(f"{where}: expected a finite number, got {_kind(value)}")
        return float(value)
    if hint is Path:
        return Path(_coerce(value, str, where))
    if hint is str:
        if not isinstance(value, str) or "\x00" in value:
            raise PipelineError(f"{where}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"{where}: no rule for {hint!r}")  # a settings class uses an unsupported type


def _kind(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _at_least(value: int | float, low: int | float, where: str) -> None:
    if value < low:
        raise PipelineError(f"{where}: expected >= {low}, got {value}")

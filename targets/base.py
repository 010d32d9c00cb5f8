"""The target protocol: a class per target registered with @target(name), its export options, and the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from fwedge.bundle import Bundle
from fwedge.errors import ExportError

# C targets are named by architecture on the command line (`--target aarch64`).
C_ARCHES = ("x86_64", "aarch64", "riscv64", "loongarch64")


class ByOpTypeOnly(list):
    """check()'s list of (node, op, opset) when the exact check could not run (dynamic shapes:
    the target cannot lower or write the model): the nodes refused by op type alone. A node of a
    supported type may still be refused once the shapes are fixed; `fwedge inspect` says so.

    Attributes:
        reason: why the exact check did not run (the lowering's or writer's one-line error).
    """

    def __init__(self, nodes, reason: str):
        super().__init__(nodes)
        self.reason = reason


@dataclass(frozen=True)
class COptions:
    """The C target's own export options.

    Attributes:
        cc: a C compiler command overriding the default (zig cc / host cc).
        cflags: extra compiler flags (e.g. ("-march=native",) for a host-only build); the
            default is the portable baseline of the architecture.
        build: compile the bundle (False writes sources only).
    """

    cc: str | None = None
    cflags: tuple[str, ...] = ()
    build: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.cflags, str) or not all(isinstance(flag, str) for flag in self.cflags):
            raise ExportError(f"C target: cflags must be a sequence of flags, got {self.cflags!r:.80}")
        object.__setattr__(self, "cflags", tuple(self.cflags))


@dataclass(frozen=True)
class TfliteOptions:
    """The TFLite target's own export options.

    Attributes:
        num_threads: interpreter threads recorded in the manifest for the runner.
    """

    num_threads: int = 1


@dataclass(frozen=True)
class ExportOptions:
    """What every target's `export(model, out_dir, options) -> Bundle` receives.

    Attributes:
        precision: "fp32", "int8" or "fp16" (a float model's weights stored as float16, float32
            I/O; refused for a QDQ model and by the C targets); "auto" means int8 when the model
            holds QDQ nodes, else fp32.
        preprocess: the preprocessing spec (fwedge.data.Preprocess.to_dict()) for the manifest.
        source_sha256: sha256 of the source model file, recorded in the manifest.
        reference: the FP32 reference the manifest records (fwedge.reference: path relative to
            the bundle folder, and sha256), or None.
        kept_float: the layers a QDQ model's quantizer kept in float, and why ({"node", "op",
            "reason"}, from its fwedge.kept_float metadata), recorded in the manifest.
        float_io: int8 bundles take and return float32 (QUANTIZE/DEQUANTIZE at the edges);
            False gives int8 in/out where the target supports it.
        allow_float_fallback: targets that lower the model (C, TFLite) keep int8 nodes that
            have no int8 form in float, and list them in the manifest (extra "float_fallback"),
            instead of raising UnsupportedOpError. The other targets take the QDQ model as it
            is and never refuse a node for its quantization, so the flag changes nothing there.
        target_options: the target's own options (COptions, TfliteOptions); None gives that
            target's defaults. Options of another target are refused (ExportError).
    """

    precision: str = "auto"
    preprocess: dict = field(default_factory=dict)
    source_sha256: str = ""
    reference: dict | None = None
    kept_float: list[dict] | None = None
    float_io: bool = True
    allow_float_fallback: bool = False
    target_options: COptions | TfliteOptions | None = None


class Target:
    """The protocol every target implements; subclasses register with @target(name).

    Capabilities are class attributes, so callers ask `target.exact_int8` instead of probing:
        exact_int8: run() and intermediates() take exact_int8=True (Q/DQ computed as defined,
            not by the CPU-dependent integer kernels of the runtime).
        supports_intermediates: intermediates() returns internal tensors by ONNX name.
        lowers: the target consumes the lowered integer graph (fwedge/lowered/lower.py), so
            ExportOptions.allow_float_fallback decides about int8 nodes without an int8 form.
        options_type: the dataclass of the target's own options (ExportOptions.target_options),
            or None when it has none.
    """

    name: ClassVar[str] = ""
    exact_int8: ClassVar[bool] = False
    supports_intermediates: ClassVar[bool] = False
    lowers: ClassVar[bool] = False
    options_type: ClassVar[type | None] = None
    # Host-runtime bundles run wherever their runtime does: "any". C targets record the
    # architecture they are built for.
    arch: str = "any"

    @property
    def label(self) -> str:
        """The name the user gives on the command line (a C target's architecture)."""
        return self.name

    def check(self, model: onnx.ModelProto, options: ExportOptions | None = None) -> list[tuple[str, str, int]]:
        """Every (node, op, opset) that export() would refuse; empty when it takes the model.

        This is the check export() runs before writing anything (the same code path), so a
        model that passes it is not refused by an emitter later.
        """
        raise NotImplementedError

    def export(self, model: onnx.ModelProto, out_dir, options: ExportOptions | None = None) -> Bundle:
        """Write a bundle of `model` to `out_dir` (atomically); raises UnsupportedOpError listing
        every node check() reports before anything is written."""
        raise NotImplementedError

    def run(self, bundle: Bundle, feeds: dict[str, np.ndarray], *, exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Run a bundle on this host: input name -> [N, ...] NCHW arrays in, output name -> arrays out."""
        raise NotImplementedError

    def intermediates(self, bundle: Bundle, feeds: dict[str, np.ndarray], names: list[str], *,
                      exact_int8: bool = False) -> dict[str, np.ndarray]:
        """Internal tensors by ONNX name (only where supports_intermediates); absent names are left out."""
        raise ExportError(f"bundle '{bundle.path}': target {self.name!r} exposes no intermediate tensors")

    # -- helpers for subclasses ----------------------------------------------------------------

    def own_options(self, options: ExportOptions):
        """options.target_options checked against this target's options_type (defaults when None).

        Raises:
            ExportError: options of another target, or options given to a target without any.
        """
        given = options.target_options
        if self.options_type is None:
            if given is not None:
                raise ExportError(f"target {self.label!r} takes no target options, got {type(given).__name__}")
            return None
        if given is None:
            return self.options_type()
        if not isinstance(given, self.options_type):
            raise ExportError(f"target {self.label!r} takes {self.options_type.__name__}, got {type(given).__name__}")
        return given

    def require_exact(self, bundle: Bundle, exact_int8: bool) -> None:
        """Refuse exact_int8=True on a target without that mode.

        Raises:
            ExportError: naming the targets that have one.
        """
        if exact_int8 and not self.exact_int8:
            raise ExportError(f"bundle '{bundle.path}': target {bundle.target!r} has no exact int8 mode "
                              "(onnx and openvino have one)")


# target name -> class; filled by @target when a target module is imported (fwedge.targets.get_target).
REGISTRY: dict[str, type[Target]] = {}


def target(name: str):
    """Register a Target subclass under `name` (the manifest's target field)."""

    def register(cls: type[Target]) -> type[Target]:
        if not issubclass(cls, Target):
            raise TypeError(f"@target({name!r}): {cls.__name__} is not a Target")
        known = REGISTRY.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"@target({name!r}) is registered twice ({REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return register

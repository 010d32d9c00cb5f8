"""QuantTable: per-tensor activation ranges and int8 parameters, as JSON, ncnn .table or TensorRT cache."""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fwedge.errors import CalibrationError

SCHEMA = "fwedge.quant_table/1"

# int8 activation and weight ranges. Weights use the restricted range [-127, 127] so that the
# symmetric grid is centred on zero (TFLite int8 spec; ORT's symmetric int8 weights).
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_QMAX = 127
# A zero-width range (a tensor that is constant zero over the whole calibration set) still needs
# a valid scale: this one represents zero exactly and keeps s_in*s_w well above denormals.
ZERO_RANGE_SCALE = 1.0
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class TensorQuant:
    """Quantization parameters of one activation tensor.

    Attributes:
        scale: real value of one int8 step.
        zero_point: the int8 code of real 0.0 (0 for symmetric).
        dtype: "int8".
        range: the calibrated (min, max) that the grid covers, always containing 0.
    """

    scale: float
    zero_point: int
    dtype: str = "int8"
    range: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        # Checked here so that every table, loaded or computed, is usable by every target: a NaN
        # or non-positive scale quantizes everything to one code and breaks the exports.
        if not _is_number(self.scale) or not math.isfinite(self.scale) or self.scale <= 0:
            raise CalibrationError(f"scale must be a finite number > 0, got {self.scale!r}")
        if self.dtype not in ACTIVATION_DTYPES:
            raise CalibrationError(f"dtype must be one of {sorted(ACTIVATION_DTYPES)}, got {self.dtype!r}")
        low_code, high_code = ACTIVATION_DTYPES[self.dtype]
        if not _is_integer(self.zero_point) or not low_code <= self.zero_point <= high_code:
            raise CalibrationError(
                f"zero_point must be an integer in {low_code}..{high_code} for {self.dtype}, got {self.zero_point!r}"
            )
        if (not isinstance(self.range, tuple) or len(self.range) != 2
                or not all(_is_number(v) and math.isfinite(v) for v in self.range) or self.range[0] > self.range[1]):
            raise CalibrationError(f"range must be two finite numbers [min, max] with min <= max, got {self.range!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["range"] = [float(self.range[0]), float(self.range[1])]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TensorQuant":
        """Parse one tensor entry; numbers must be JSON numbers (no strings, no booleans).

        Raises:
            CalibrationError: a missing key, a wrong type or a value out of range.
        """
        if not isinstance(data, dict):
            raise CalibrationError(f"expected an object with scale and zero_point, got {type(data).__name__}")
        raw_range = data.get("range", (0.0, 0.0))
        if not isinstance(raw_range, (list, tuple)):
            raise CalibrationError(f"range must be [min, max], got {raw_range!r}")
        scale, zero_point = data["scale"], data["zero_point"]
        if _is_number(scale):
            scale = float(scale)
        if isinstance(zero_point, float) and zero_point.is_integer():
            zero_point = int(zero_point)
        return cls(
            scale=scale,
            zero_point=zero_point,
            dtype=data.get("dtype", "int8"),
            range=tuple(float(v) if _is_number(v) else v for v in raw_range),
        )


# Activation dtypes a table may name, with their code range.
ACTIVATION_DTYPES = {"int8": (INT8_MIN, INT8_MAX), "uint8": (0, 255)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def params_from_range(low: float, high: float, symmetric: bool = False) -> TensorQuant:
    """int8 scale and zero point covering [low, high] (widened to contain 0).

    Asymmetric: scale = (high - low) / 255 and zero_point = round(-128 - low / scale), clamped to
    int8, so that 0.0 is exactly representable (required for zero padding and ReLU).
    Symmetric: scale = max(|low|, |high|) / 127, zero_point 0.
    A zero-width range gets ZERO_RANGE_SCALE instead of a division by zero.

    Raises:
        CalibrationError: the range is NaN or infinite.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise CalibrationError(f"range [{low}, {high}] is not finite")
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if symmetric:
        bound = max(-low, high)
        scale = bound / INT8_MAX if bound > 0 else ZERO_RANGE_SCALE
        return TensorQuant(scale=max(scale, MIN_SCALE), zero_point=0, range=(-bound, bound) if bound else (0.0, 0.0))
    width = high - low
    if width <= 0:
        return TensorQuant(scale=ZERO_RANGE_SCALE, zero_point=0, range=(0.0, 0.0))
    scale = max(width / (INT8_MAX - INT8_MIN), MIN_SCALE)
    zero_point = int(np.clip(round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return TensorQuant(scale=scale, zero_point=zero_point, range=(low, high))


@dataclass
class QuantTable:
    """Activation quantization parameters for one model, computed once and used by every target.

    Attributes:
        model_sha256: sha256 of the source model file the table was calibrated on.
        method: range method name ("kl", "percentile", "minmax", "mse").
        parameters: the method's options and calibration settings (bins, samples, symmetric, ...).
        dataset: dataset fingerprint (fwedge.data.Dataset.fingerprint) and description.
        tensors: tensor name -> TensorQuant, in topological order of the prepared model.
    """

    model_sha256: str
    method: str
    parameters: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    tensors: dict[str, TensorQuant] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "model_sha256": self.model_sha256,
            "method": self.method,
            "parameters": self.parameters,
            "dataset": self.dataset,
            "tensors": {name: quant.to_dict() for name, quant in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "table") -> "QuantTable":
        """Parse a table dict.

        Raises:
            CalibrationError: wrong schema or a malformed entry.
        """
        if not isinstance(data, dict):
            raise CalibrationError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise CalibrationError(f"{source}: schema must be {SCHEMA!r}, got {data.get('schema')!r}")
        entries = data.get("tensors")
        if not isinstance(entries, dict):
            raise CalibrationError(f"{source}: 'tensors' must be an object of tensor name -> entry")
        tensors = {}
        for name, entry in entries.items():
            try:
                tensors[name] = TensorQuant.from_dict(entry)
            except CalibrationError as exc:
                raise CalibrationError(f"{source}: tensor {name!r}: {exc}") from exc
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise CalibrationError(f"{source}: tensor {name!r}: malformed entry ({exc!r})") from exc
        for key in ("parameters", "dataset"):
            if not isinstance(data.get(key, {}), dict):
                raise CalibrationError(f"{source}: '{key}' must be an object")
        try:
            return cls(
                model_sha256=str(data["model_sha256"]),
                method=str(data["method"]),
                parameters=dict(data.get("parameters", {})),
                dataset=dict(data.get("dataset", {})),
                tensors=tensors,
            )
        except KeyError as exc:
            raise CalibrationError(f"{source}: malformed quant table, missing {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically."""
        from fwedge.ir import write_atomic

        return write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantTable":
        """Read a table written by `save`.

        Raises:
            CalibrationError: missing file, not JSON, or wrong schema.
        """
        path = Path(path)
        if path.exists() and not path.is_file():
            # A FIFO or device would block the read or never end.
            raise CalibrationError(f"quant table '{path}': not a regular file")
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise CalibrationError(f"quant table '{path}': cannot read ({exc})") from exc
        except (ValueError, RecursionError) as exc:
            raise CalibrationError(f"quant table '{path}': not JSON ({exc})") from exc
        return cls.from_dict(data, source=f"quant table '{path}'")

    def threshold(self, name: str) -> float:
        """The symmetric dynamic range max(|min|, |max|) of a tensor (what ncnn and TensorRT store)."""
        low, high = self.tensors[name].range
        return max(abs(low), abs(high))


def _float_hex(value: float) -> str:
    """IEEE-754 float32 bits as 8 lowercase hex digits (TensorRT calibration cache encoding)."""
    return struct.pack(">f", value).hex()


def tensorrt_cache(table: QuantTable, version: int = 8601) -> str:
    """The table as a TensorRT calibration cache.

    Format: a header `TRT-<version>-EntropyCalibration2`, then one `tensor: hexscale` line per
    tensor, where hexscale is the float32 bit pattern of the symmetric scale
    threshold / 127 (TensorRT INT8 is symmetric, so the asymmetric zero point is dropped).
    """
    lines = [f"TRT-{version}-EntropyCalibration2"]
    for name in table.tensors:
        threshold = table.threshold(name)
        scale = threshold / WEIGHT_QMAX if threshold > 0 else ZERO_RANGE_SCALE / WEIGHT_QMAX
        lines.append(f"{name}: {_float_hex(scale)}")
    return "\n".join(lines) + "\n"


def read_tensorrt_cache(text: str) -> dict[str, float]:
    """Parse a TensorRT calibration cache into tensor -> scale.

    Raises:
        CalibrationError: a malformed header or line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise CalibrationError("TensorRT cache: first line must be TRT-<version>-<calibrator>")
    scales = {}
    for line in lines[1:]:
        name, sep, hexbits = line.rpartition(": ")
        if not sep or len(hexbits) > 8:
            raise CalibrationError(f"TensorRT cache: malformed line {line!r}")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexbits.zfill(8)))[0]
    return scales


def ncnn_table(table: QuantTable, layers: list["NcnnLayer"]) -> str:
    """The table as an ncnn int8 calibration table (the ncnn2table / ncnn2int8 text format).

    ncnn stores multipliers, not step sizes: scale = 127 / absmax. Per layer it writes
    `<layer>_param_0 s_0 s_1 ...` (one weight scale per output channel), then per layer
    `<layer> s` for the layer's input blob (127 / activation threshold).

    Args:
        table: the activation table.
        layers: the layers with weights, each with its input tensor and per-channel weight absmax.
    """
    weight_lines, blob_lines = [], []
    for layer in layers:
        scales = [WEIGHT_QMAX / a if a > 0 else 0.0 for a in layer.weight_absmax]
        weight_lines.append(f"{layer.name}_param_0 " + " ".join(f"{s:.6f}" for s in scales))
        if layer.input in table.tensors:
            threshold = table.threshold(layer.input)
            blob_lines.append(f"{layer.name} {WEIGHT_QMAX / threshold if threshold > 0 else 1.0:.6f}")
    return "\n".join(weight_lines + blob_lines) + "\n"


@dataclass(frozen=True)
class NcnnLayer:
    """A layer with weights as ncnn's table sees it: name, input blob, per-channel weight absmax."""

    name: str
    input: str
    weight_absmax: tuple[float, ...]

"""Preprocessing: how raw HWC images become model input, and the checks of a batch against a model input."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fwedge.data_files import _REAL_KINDS, MAX_IMAGE_SIDE
from fwedge.errors import DataError


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _shown(value) -> str:
    """A short repr for an error message (hostile values can be long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Preprocess:
    """How raw images (HWC uint8) become model input. Written verbatim into bundle manifests.

    Attributes:
        resize: (height, width) or None to keep the source size.
        color: "grayscale", "rgb", or None to keep the source channels.
        layout: "NCHW" or "NHWC".
        scale: multiplier applied to raw pixel values first (1/255 maps uint8 to [0, 1]).
        mean, std: per-channel normalisation after scaling (one value broadcasts).
        dtype: numpy dtype name of the model input.
    """

    resize: tuple[int, int] | None = None
    color: str | None = None
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"preprocess: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.color not in (None, "grayscale", "rgb"):
            raise DataError(f"preprocess: color must be grayscale or rgb, got {self.color!r}")
        if self.resize is not None:
            # Each image is resized to this size in memory: bound it like a decoded image.
            if (not isinstance(self.resize, tuple) or len(self.resize) != 2
                    or not all(_is_int(side) and 1 <= side <= MAX_IMAGE_SIDE for side in self.resize)):
                raise DataError(
                    f"preprocess: resize must be [height, width], integers in 1..{MAX_IMAGE_SIDE}, "
                    f"got {_shown(self.resize)}"
                )
        if not _is_real(self.scale) or not math.isfinite(self.scale):
            raise DataError(f"preprocess: scale must be a finite number, got {_shown(self.scale)}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if (not isinstance(values, tuple) or len(values) not in (1, 3)
                    or not all(_is_real(v) and math.isfinite(v) for v in values)):
                raise DataError(f"preprocess: {key} must be 1 or 3 finite numbers, got {_shown(values)}")
        if any(value == 0 for value in self.std):
            raise DataError("preprocess: std must be non-zero")
        try:
            kind = np.dtype(self.dtype).kind if isinstance(self.dtype, str) else ""
        except TypeError:
            kind = ""
        if kind not in _REAL_KINDS:
            raise DataError(f"preprocess: dtype must name a real numeric dtype such as float32, got {_shown(self.dtype)}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["resize"] = list(self.resize) if self.resize else None
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        """Parse a preprocessing dict (model metadata, a bundle manifest, --preprocess).

        Raises:
            DataError: not a dict, unknown keys, or a value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise DataError(f"preprocess: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise DataError(f"preprocess: unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
        values = dict(data)
        if values.get("resize") is not None:
            resize = values["resize"]
            values["resize"] = tuple(resize) if isinstance(resize, (list, tuple)) else resize
        for key in ("mean", "std"):
            if key in values:
                raw = values[key]
                values[key] = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
        if "scale" in values and _is_int(values["scale"]):
            values["scale"] = float(values["scale"])
        for key in ("mean", "std"):
            if key in values and all(_is_real(v) for v in values[key]):
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def for_input_shape(cls, shape: Sequence[int | None]) -> "Preprocess":
        """Guess a preprocessing spec from a 4-D model input shape (NCHW if dim 1 is 1 or 3)."""
        if len(shape) != 4:
            return cls()
        if shape[1] in (1, 3):
            channels, height, width, layout = shape[1], shape[2], shape[3], "NCHW"
        else:
            height, width, channels, layout = shape[1], shape[2], shape[3], "NHWC"
        resize = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        color = {1: "grayscale", 3: "rgb"}.get(channels)
        return cls(resize=resize, color=color, layout=layout)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Turn a batch of HWC images (N, H, W, C) into model input."""
        from PIL import Image

        batch = images
        if batch.shape[-1] == 4:
            batch = batch[..., :3]  # RGBA: the alpha channel is not model input
        if self.color is not None:
            want = 1 if self.color == "grayscale" else 3
            if batch.shape[-1] != want:
                if want == 1:
                    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[: batch.shape[-1]]
                    batch = (batch.astype(np.float32) @ (weights / weights.sum()))[..., None]
                    if images.dtype == np.uint8:
                        batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
                else:
                    batch = np.repeat(batch[..., :1], 3, axis=-1)
        if self.resize is not None and tuple(batch.shape[1:3]) != tuple(self.resize):
            height, width = self.resize
            resized = []
            for image in batch:
                mode_image = image[..., 0] if image.shape[-1] == 1 else image
                pil = Image.fromarray(np.ascontiguousarray(mode_image))
                pil = pil.resize((width, height), Image.BILINEAR)
                array = np.asarray(pil)
                resized.append(array[..., None] if array.ndim == 2 else array)
            batch = np.stack(resized)
        out = batch.astype(np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = (out - mean) / std
        if self.layout == "NCHW":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out.astype(self.dtype))


def check_batch_shape(x: np.ndarray, expected: Sequence[int | str | None], source: str, name: str) -> None:
    """Check a batch against a model input shape (dynamic dims match anything).

    Raises:
        DataError: rank or a static dimension differs; the message names both shapes.
    """
    shown = "[" + ",".join("N" if i == 0 else str(d) if isinstance(d, int) else "?" for i, d in enumerate(expected)) + "]"
    got = "[N," + ",".join(str(d) for d in x.shape[1:]) + "]"
    if x.ndim != len(expected) or any(
        isinstance(want, int) and want > 0 and want != have
        for want, have in list(zip(expected, x.shape))[1:]
    ):
        raise DataError(f"data '{source}': input '{name}' expects shape {shown}, got {got}")


def preprocess_from_metadata(model) -> Preprocess | None:
    """The preprocessing spec stored in an ONNX model's metadata (key fwedge.preprocess)."""
    for prop in model.metadata_props:
        if prop.key == "fwedge.preprocess":
            try:
                return Preprocess.from_dict(json.loads(prop.value))
            except DataError as exc:
                raise DataError(f"model metadata fwedge.preprocess: {exc}") from exc
            except (ValueError, TypeError, RecursionError) as exc:
                raise DataError(f"model metadata fwedge.preprocess is malformed ({exc})") from exc
    return None

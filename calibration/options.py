"""Method enum and options shared by the range methods."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable


class Method(str, enum.Enum):
    """Range methods; values are the CLI names."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    KL = "kl"
    MSE = "mse"


@dataclass(frozen=True)
class MethodOptions:
    """Options of the range methods (each method reads the ones it needs).

    Attributes:
        percentile: percentile method: the share of values (in %) kept inside the range.
        num_quantized_bins: kl: levels P is quantized to (128 = the positive half of int8).
        start_bin: kl: the smallest threshold candidate, in bins (TensorRT: 128).
        symmetric: the activations will be quantized symmetrically (mse uses it for the step).
    """

    percentile: float = 99.99
    num_quantized_bins: int = 128
    start_bin: int = 128
    symmetric: bool = False


# Method -> range function (histogram, options) -> (low, high). Filled by @range_method in
# calibration/minmax.py, percentile.py, kl.py and mse.py; fwedge.calibration imports them all.
METHODS: dict[Method, Callable] = {}


def range_method(method: Method):
    """Register a range function under `method`."""

    def register(function: Callable) -> Callable:
        METHODS[method] = function
        return function

    return register

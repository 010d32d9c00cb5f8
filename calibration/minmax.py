"""minmax: the range is the exact [min, max] seen over the calibration set."""
from __future__ import annotations

from fwedge.calibration.histogram import Histogram
from fwedge.calibration.options import Method, MethodOptions, range_method


@range_method(Method.MINMAX)
def minmax_range(histogram: Histogram, options: MethodOptions) -> tuple[float, float]:
    """The observed extremes; no clipping. Sensitive to single outliers, never clips a value.

    Returns:
        (low, high).
    """
    return float(histogram.minimum), float(histogram.maximum)

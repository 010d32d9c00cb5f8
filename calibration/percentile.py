"""percentile: clip the tails so that a given share of the values (default 99.99%) stays inside."""
from __future__ import annotations

import numpy as np

from fwedge.calibration.histogram import Histogram
from fwedge.calibration.options import Method, MethodOptions, range_method
from fwedge.errors import CalibrationError


@range_method(Method.PERCENTILE)
def percentile_range(histogram: Histogram, options: MethodOptions) -> tuple[float, float]:
    """The range that keeps `options.percentile` % of the values.

    For a signed tensor the clipped share (100 - p)% is split evenly between the two tails; for
    a non-negative tensor it is taken from the top only. Bounds are bin edges (the upper edge of
    the bin where the kept share is reached), clamped to the observed extremes.

    Returns:
        (low, high).

    Raises:
        CalibrationError: percentile outside (0, 100].
    """
    p = options.percentile
    if not 0 < p <= 100:
        raise CalibrationError(f"percentile must be in (0, 100], got {p}")
    counts = np.asarray(histogram.counts, dtype=np.float64)
    total = counts.sum()
    if total == 0 or histogram.high <= histogram.low:
        return float(histogram.minimum), float(histogram.maximum)
    clipped = (100.0 - p) / 100.0 * total
    edges = np.linspace(histogram.low, histogram.high, counts.size + 1)
    cumulative = np.cumsum(counts)
    top_share = clipped / 2 if histogram.signed else clipped
    high_bin = int(np.searchsorted(cumulative, total - top_share, side="left"))
    high = min(float(edges[min(high_bin, counts.size - 1) + 1]), histogram.maximum)
    low = histogram.minimum
    if histogram.signed:
        low_bin = int(np.searchsorted(cumulative, clipped / 2, side="right"))
        low = max(float(edges[min(low_bin, counts.size - 1)]), histogram.minimum)
    return float(low), float(high)

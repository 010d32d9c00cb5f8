"""mse: the clipping threshold that minimises the expected quantization mean squared error."""
from __future__ import annotations

import numpy as np

from fwedge.calibration.histogram import Histogram
from fwedge.calibration.options import Method, MethodOptions, range_method


def mse_errors(counts: np.ndarray, absmax: float, minimum: float, maximum: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Expected squared error (summed over values) for every threshold T = i·bin_width, i = 1..B.

    Values inside the range cost step²/12 each (uniform rounding error); values beyond T cost
    (|x| - T)² (clipping), with |x| taken at the bin centre. The range for threshold T is
    [max(min, -T), min(max, T)] with 255 steps (asymmetric) or [-T, T] with 254 (symmetric).
    Clipping sums use prefix sums of counts, counts·x and counts·x², so all thresholds are
    evaluated at once.

    Returns:
        (thresholds, errors).
    """
    h = np.asarray(counts, dtype=np.float64)
    size = h.size
    width = absmax / size
    centres = (np.arange(size) + 0.5) * width
    s0 = np.concatenate([[0.0], np.cumsum(h)])
    s1 = np.concatenate([[0.0], np.cumsum(h * centres)])
    s2 = np.concatenate([[0.0], np.cumsum(h * centres * centres)])
    i = np.arange(1, size + 1)
    thresholds = i * width
    t0, t1, t2 = s0[-1] - s0[i], s1[-1] - s1[i], s2[-1] - s2[i]
    clipping = t2 - 2 * thresholds * t1 + thresholds**2 * t0
    if symmetric:
        step = thresholds / 127.0
    else:
        step = (np.minimum(maximum, thresholds) - np.maximum(minimum, -thresholds)) / 255.0
    rounding = s0[i] * step**2 / 12.0
    return thresholds, np.maximum(clipping, 0.0) + rounding


@range_method(Method.MSE)
def mse_range(histogram: Histogram, options: MethodOptions) -> tuple[float, float]:
    """The range whose magnitude threshold minimises the expected quantization MSE.

    Returns:
        (low, high).
    """
    counts, absmax = histogram.magnitude(drop_zeros=True)  # exact zeros cost nothing on any grid
    if absmax <= 0 or counts.sum() == 0:
        return float(histogram.minimum), float(histogram.maximum)
    thresholds, errors = mse_errors(counts, absmax, histogram.minimum, histogram.maximum, options.symmetric)
    threshold = float(thresholds[int(np.argmin(errors))])
    return max(histogram.minimum, -threshold), min(histogram.maximum, threshold)

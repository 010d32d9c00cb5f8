"""kl: TensorRT entropy calibration, 2048 magnitude bins quantized to 128 levels, vectorised."""
from __future__ import annotations

import numpy as np

from fwedge.calibration.histogram import Histogram
from fwedge.calibration.options import Method, MethodOptions, range_method
from fwedge.errors import CalibrationError

# Where Q has no mass but P has (the folded outliers landing in an all-empty last group), the
# KL term would be infinite; Q is floored at this probability instead, a large finite penalty.
Q_FLOOR = 1e-12


def kl_divergences(
    counts: np.ndarray,
    num_quantized_bins: int = 128,
    start_bin: int = 128,
    point_masses: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """KL(P‖Q) for every threshold candidate i in start_bin..len(counts) (TensorRT's loop).

    For candidate i (keep the first i magnitude bins):
      * P = counts[:i] with the outliers counts[i:] folded into P[i-1] (the outlier fold: clipped
        values saturate to the threshold, so their mass belongs to the last kept bin);
      * Q = counts[:i] (no outliers) merged into num_quantized_bins groups, group j covering bins
        [floor(j·i/n), floor((j+1)·i/n)), then expanded back by spreading each group's mass
        evenly over the bins of the group where P is non-zero (zero-bin handling: bins where
        P is empty stay empty in Q, so they contribute nothing; a group with P mass but no Q
        mass gets Q = Q_FLOOR);
      * both normalised; KL = Σ_{P>0} p log(p/q).

    `point_masses` (same length as counts, default none) are counts taken out of the shape
    comparison: a point mass below the threshold is left out of P and Q, one beyond it still
    folds into P[i-1] like any outlier (see kl_range).

    Vectorised: because Q is constant over the non-zero bins of a group, Σ p log q collapses to a
    sum over the n groups, and every group sum is a difference of prefix sums. All candidates are
    evaluated at once as a (candidates × n) array, no Python loop over thresholds.

    Returns:
        (candidates i, divergences), both 1-D of the same length.
    """
    h = np.asarray(counts, dtype=np.float64)
    size = h.size
    n = num_quantized_bins
    if size < max(n, start_bin):
        raise CalibrationError(f"kl needs at least {max(n, start_bin)} magnitude bins, got {size}")
    candidates = np.arange(max(start_bin, n), size + 1)
    atoms = np.zeros(size) if point_masses is None else np.asarray(point_masses, dtype=np.float64)
    A = np.concatenate([[0.0], np.cumsum(atoms)])
    if h.sum() + atoms.sum() == 0:
        return candidates, np.zeros(candidates.size)
    nonzero = (h > 0).astype(np.float64)
    plogp = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    C = np.concatenate([[0.0], np.cumsum(h)])
    Z = np.concatenate([[0.0], np.cumsum(nonzero)])
    H = np.concatenate([[0.0], np.cumsum(plogp)])
    i = candidates
    bounds = (np.arange(n + 1)[None, :] * i[:, None]) // n  # (candidates, n+1)
    group_mass = C[bounds[:, 1:]] - C[bounds[:, :-1]]  # Q before expansion
    group_nonzero = Z[bounds[:, 1:]] - Z[bounds[:, :-1]]
    tail = (C[-1] - C[i]) + (A[-1] - A[i])  # outliers, point masses beyond i included
    total = C[i] + tail  # the mass of P for this candidate
    last = h[i - 1]
    folded = last + tail
    # P's last bin holds the outliers: P mass of the last group grows by `tail`, and that bin is
    # non-zero in P even when counts[i-1] is zero.
    p_group = group_mass.copy()
    p_group[:, -1] += tail
    group_nonzero[:, -1] += ((last == 0) & (tail > 0)).astype(np.float64)
    in_range = C[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(group_nonzero > 0, group_mass / np.maximum(group_nonzero, 1.0), 0.0)
        q = q / np.where(in_range > 0, in_range, 1.0)[:, None]
        log_q = np.log(np.maximum(q, Q_FLOOR))
    cross = np.sum(np.where(p_group > 0, p_group * log_q, 0.0), axis=1)
    p_entropy = H[i - 1] + np.where(folded > 0, folded * np.log(np.where(folded > 0, folded, 1.0)), 0.0)
    safe_total = np.where(total > 0, total, 1.0)
    divergence = np.where(total > 0, (p_entropy - cross) / safe_total - np.log(safe_total), 0.0)
    return candidates, divergence


# Sample size: the search compares bin-level shapes, so it needs values in the bins. A histogram
# with fewer than MIN_VALUES_PER_BIN values per bin on average is merged 2:1 (repeatedly) down
# to at most 2·levels bins; below that (fewer than MIN_VALUES_PER_BIN · 2 · levels values, e.g.
# the per-sample channel vectors of an SE block over a few hundred samples) the histogram is
# noise and the tensor keeps its observed range.
MIN_VALUES_PER_BIN = 16


def _coarsen(counts: np.ndarray, levels: int, start: int) -> tuple[np.ndarray | None, int]:
    """(counts merged until the bins are populated enough, scaled start) or (None, 0) if too few."""
    total = counts.sum()
    size = counts.size
    factor = 1
    while total < MIN_VALUES_PER_BIN * (size // factor) and size // (2 * factor) >= 2 * levels:
        factor *= 2
    if total < MIN_VALUES_PER_BIN * min(size // factor, 2 * levels) or size % factor:
        return None, 0
    if factor == 1:
        return counts, start
    merged = counts.reshape(-1, factor).sum(axis=1)
    return merged, max(levels, start // factor)


# A bin is a point mass when it holds this many times the median of its neighbours (±8 bins)
# and at least POINT_MASS_SHARE of all values.
POINT_MASS_FACTOR = 4.0
POINT_MASS_SHARE = 1e-3


def point_masses(counts: np.ndarray) -> np.ndarray:
    """The excess of isolated spikes over their neighbourhood (zeros elsewhere).

    Spikes come from exactly repeated values, e.g. a conv's bias on constant background pixels
    after ReLU6, or the saturation value 6. They are Dirac masses, not a density: KL between a
    spike and its 128-level smear depends on whether the spike happens to sit alone in its
    group, so the search would favour thresholds that align the grid with spikes (or put the
    threshold right on one, hiding the folded outliers inside the spike's bin).
    """
    h = np.asarray(counts, dtype=np.float64)
    if h.size < 17 or h.sum() == 0:
        return np.zeros(h.size)
    padded = np.pad(h, 8, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 17)
    neighbours = np.median(np.delete(windows, 8, axis=1), axis=1)
    spike = (h > POINT_MASS_FACTOR * np.maximum(neighbours, 1.0)) & (h > POINT_MASS_SHARE * h.sum())
    return np.where(spike, h - neighbours, 0.0)


@range_method(Method.KL)
def kl_range(histogram: Histogram, options: MethodOptions) -> tuple[float, float]:
    """The range whose magnitude threshold minimises KL(P‖Q) (TensorRT entropy calibration).

    The search runs on the |x| histogram (signed histograms are folded; non-negative ones, e.g.
    ReLU outputs, are used as they are). The threshold is the upper edge of the last kept bin,
    i·bin_width, for the first minimising i; the range is [-T, T] ∩ [min, max].

    Levels: TensorRT is symmetric, so P is quantized to 128 levels (one side of int8). With
    asymmetric activations a non-negative tensor uses all 256 codes on [0, T], so the search
    quantizes P to 2·128 - 1 = 255 levels there (candidates start at 255 bins); otherwise the
    search is TensorRT's.

    Returns:
        (low, high).
    """
    # Zero-bin handling: exact zeros (ReLU's spike, often half of all values) are removed from
    # P before the search. 0.0 is exact on every int8 grid (it is the zero point), so they carry
    # no quantization error; left in, the spike is smeared over its whole group in Q and that
    # one term dominates KL, dragging the threshold down to where bin 0 is a group by itself.
    # Bins that are empty in P stay empty in Q (see kl_divergences). Other point masses
    # (isolated spikes) are likewise left out of the shape comparison but still count as
    # outliers when clipped (see point_masses).
    counts, absmax = histogram.magnitude(drop_zeros=True)
    if absmax <= 0 or counts.sum() == 0:
        return float(histogram.minimum), float(histogram.maximum)
    if histogram.minimum > 0 or histogram.maximum < 0:
        # A tensor that never crosses zero (e.g. all-negative SE logits before a sigmoid) has all
        # its mass away from 0: the threshold just past the smallest magnitude folds every value
        # into one bin, where P and Q are the same spike and KL is 0. The search is meaningless
        # there, so such tensors keep their observed range.
        return float(histogram.minimum), float(histogram.maximum)
    levels, start = options.num_quantized_bins, options.start_bin
    if not histogram.signed and not options.symmetric:
        levels = 2 * options.num_quantized_bins - 1
        start = max(start, levels)
    counts, start = _coarsen(counts, levels, start)
    if counts is None:
        return float(histogram.minimum), float(histogram.maximum)
    atoms = point_masses(counts)
    candidates, divergence = kl_divergences(counts - atoms, levels, start, atoms)
    best = int(candidates[int(np.argmin(divergence))])
    threshold = best * absmax / counts.size
    return max(histogram.minimum, -threshold), min(histogram.maximum, threshold)

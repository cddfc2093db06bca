"""Clipping range minimising the expected quantisation MSE, searched on a streaming histogram.

With bins of counts n_j and centres c_j, a candidate range [a, b] on bin edges and a b-bit grid of step
s = (b - a) / (2^bits - 1) (qparams' asymmetric scale; symmetric: a = -t, b = t, s = t / ((2^bits - 1) / 2)):

    E(a, b) = sum_{c_j < a} n_j (a - c_j)^2  +  sum_{c_j > b} n_j (c_j - b)^2  +  (s^2 / 12) · sum_{a <= c_j <= b} n_j
              (clipping error)                                                  (uniform rounding error)

symmetric:   histogram of |x|, t ranges over every bin edge in (0, max|x|]; one prefix-sum pass, O(bins).
asymmetric:  histogram of x, a over edges <= 0, b over edges >= 0 (at most 512 of each, evenly thinned), all
             pairs evaluated at once from prefix sums of n, n·c, n·c^2: O(1) per pair.

The argmin is returned, clamped to the exact [min(min x, 0), max(max x, 0)].
"""

from __future__ import annotations

import logging
from typing import Self

import numpy as np

from qcompile.calibrators.base import State
from qcompile.calibrators.histogram import DEFAULT_NUM_BINS, Histogram, HistogramCalibratorBase
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)

MAX_CANDIDATES_PER_SIDE = 512


def _prefix(counts: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = counts.astype(np.float64)
    zero = np.zeros(1)
    return (np.concatenate((zero, np.cumsum(n))), np.concatenate((zero, np.cumsum(n * centres))),
            np.concatenate((zero, np.cumsum(n * centres ** 2))))


def expected_mse(counts: np.ndarray, edges: np.ndarray, lo_index: np.ndarray, hi_index: np.ndarray,
                 levels: float) -> np.ndarray:
    """E(edges[lo_index], edges[hi_index]) per the module docstring (broadcasting index arrays), summed over
    values (divide by the count for a mean); ``levels`` = (b - a) / s."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    s0, s1, s2 = _prefix(counts, centres)
    a, b = edges[lo_index], edges[hi_index]
    below = a ** 2 * s0[lo_index] - 2 * a * s1[lo_index] + s2[lo_index]
    above = b ** 2 * (s0[-1] - s0[hi_index]) - 2 * b * (s1[-1] - s1[hi_index]) + (s2[-1] - s2[hi_index])
    inside = s0[hi_index] - s0[lo_index]
    step = (b - a) / levels
    return below + above + step ** 2 / 12.0 * inside


def _thin(indices: np.ndarray) -> np.ndarray:
    if indices.size <= MAX_CANDIDATES_PER_SIDE:
        return indices
    pick = np.unique(np.linspace(0, indices.size - 1, MAX_CANDIDATES_PER_SIDE).round().astype(np.int64))
    return indices[pick]


def mse_symmetric_threshold(hist: Histogram, num_bits: int) -> float:
    """argmin_t E(-t, t) on a histogram of |x|."""
    counts, edges = hist.nonnegative_part()
    hi = np.arange(1, counts.size + 1)
    errors = expected_mse(counts, edges, np.zeros_like(hi), hi, (2 ** num_bits - 1) / 2.0)
    return float(min(edges[hi[int(np.argmin(errors))]], hist.max))


def mse_asymmetric_range(hist: Histogram, num_bits: int) -> tuple[float, float]:
    """argmin_{a <= 0 <= b} E(a, b) on a histogram of x."""
    used = hist.used_bins
    counts, edges = hist.counts[:used], hist.edges[:used + 1]
    zero = -hist.offset  # edges[zero] == 0
    lo = _thin(np.arange(0, zero + 1))
    hi = _thin(np.arange(zero, used + 1))
    errors = expected_mse(counts, edges, lo[:, None], hi[None, :], 2 ** num_bits - 1)
    errors = np.where(edges[hi][None, :] > edges[lo][:, None], errors, np.inf)
    if not np.isfinite(errors).any():  # all values are 0
        return 0.0, 0.0
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(max(edges[lo[i]], min(hist.min, 0.0))), float(min(edges[hi[j]], max(hist.max, 0.0)))


class MseCalibrator(HistogramCalibratorBase):
    """Range minimising expected quantisation MSE for a ``num_bits`` grid. ``samples_seen`` counts elements."""

    def __init__(self, num_bits: int = 8, *, symmetric: bool, num_bins: int = DEFAULT_NUM_BINS) -> None:
        if not 2 <= num_bits <= 16:
            raise ValueError(f"num_bits must be in [2, 16], got {num_bits}")
        super().__init__(num_bins)
        self.num_bits = int(num_bits)
        self.symmetric = bool(symmetric)
        self._absolute = self.symmetric

    def compute(self) -> TensorRange:
        hist = self._require_data()
        if self.symmetric:
            t = mse_symmetric_threshold(hist, self.num_bits)
            lo, hi = -t, t
        else:
            lo, hi = mse_asymmetric_range(hist, self.num_bits)
        logger.debug("mse range [%g, %g] for %d bits (data [%g, %g])", lo, hi, self.num_bits, hist.min, hist.max)
        return TensorRange(lo, hi)

    def _config(self) -> State:
        return {"num_bits": self.num_bits, "symmetric": int(self.symmetric), "num_bins": self._hist.num_bins}

    @classmethod
    def _from_config(cls, state: State) -> Self:
        return cls(int(state["num_bits"]), symmetric=bool(state["symmetric"]), num_bins=int(state["num_bins"]))


def expected_mse_of_range(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float, levels: float,
                          value_min: float | None = None, value_max: float | None = None) -> float:
    """Mean expected quantisation error E(lo, hi) / sum n (module docstring) for any range, not only bin edges.

    Each bin's values sit at its centre, clamped to the exact [value_min, value_max] when given, so that a
    spike of values at the maximum (a saturating Clip) costs no clipping error for a range ending there."""
    n = np.asarray(counts, dtype=np.float64)
    total = n.sum()
    if total == 0:
        return 0.0
    centres = 0.5 * (edges[:-1] + edges[1:])
    if value_min is not None and value_max is not None:
        centres = np.clip(centres, value_min, value_max)
    clipped = np.where(centres < lo, lo - centres, 0.0) + np.where(centres > hi, centres - hi, 0.0)
    inside = n[(centres >= lo) & (centres <= hi)].sum()
    step = (hi - lo) / levels
    return float((np.sum(n * clipped ** 2) + step ** 2 / 12.0 * inside) / total)

"""KL-divergence (entropy) threshold search, TensorRT's calibration algorithm, on a streaming histogram.

Let b_0..b_{n-1} be the histogram of |x| over [0, max|x|] (for unsigned targets: of x over [0, max x]), with
b_0 replaced by b_1 as TensorRT / pytorch-quantization do (so a spike of exact zeros, e.g. after ReLU, does not
dominate), T = sum b, L = num_quant_bins levels (128 for signed int8, 256 for unsigned). For every candidate
i in [128, n] (TensorRT's start_bin; for i < L every bin is its own level), threshold t_i = edge_i:

    P_j = b_j / T for j < i - 1,   P_{i-1} = (b_{i-1} + sum_{j >= i} b_j) / T         (outliers clipped to t_i)
    groups G_k = {j : floor(j·L / i) = k}, k < L                                       (i bins -> L levels)
    Q_j = avg_{j' in G_k, b_j' > 0} b_j'  for b_j > 0, else 0;   Q normalised to sum 1  (expand levels back)
    KL_i = sum_j P_j log(P_j / Q_j)          (inf where P_j > 0 = Q_j: clipping into an empty last bin)

and t = t_{i*} for the last i* minimising KL_i (TensorRT's tie rule), clamped to the exact max. With prefix sums
S = cumsum(b), Z = cumsum(b > 0), B = cumsum(b log b), every KL_i costs O(L):

    KL_i = (B_{i-1} + r log r - sum_k S_k log(S_k / Z_k) - tail · log(S_g / Z_g)) / T + log(S_i / T)

where S_k, Z_k are group sums, g the group holding bin i - 1, r = b_{i-1} + tail, tail = T - S_i. The whole
search is one (n - 127) x (L + 1) array computation: 2048 bins take a few milliseconds.

Signed targets get [-t, t]; unsigned ones [0, t] when x >= 0. Two-sided values on an unsigned grid (a linear
conv's output in u8) get [max(min x, -t), min(max x, t)] with t searched on the histogram of |x| at L / 2 levels:
the grid spends about half its levels on each side, and searching x >= 0 alone at all L levels (what this did
before) modelled a grid twice as fine as the real one and left the negative tail unclipped.
"""

from __future__ import annotations

import logging
from typing import Self

import numpy as np

from qcompile.calibrators.base import State
from qcompile.calibrators.histogram import DEFAULT_NUM_BINS, Histogram, HistogramCalibratorBase
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


START_BIN = 128  # TensorRT's / pytorch-quantization's smallest candidate threshold, in histogram bins


def kl_divergences(counts: np.ndarray, num_quant_bins: int,
                   start_bin: int = START_BIN) -> tuple[np.ndarray, np.ndarray]:
    """(candidate bin counts i = start_bin..n, KL_i) for a histogram starting at 0; see the module docstring."""
    b = np.asarray(counts, dtype=np.float64).copy()
    n, levels = b.size, num_quant_bins
    if n < start_bin:
        return np.empty(0, dtype=np.int64), np.empty(0)
    if n > 1:
        b[0] = b[1]
    total = b.sum()
    cum = np.concatenate(([0.0], np.cumsum(b)))
    nonzero = np.concatenate(([0], np.cumsum(b > 0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        blogb = np.concatenate(([0.0], np.cumsum(np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0))))
        cand = np.arange(start_bin, n + 1, dtype=np.int64)
        k = np.arange(levels + 1, dtype=np.int64)
        starts = (k[None, :] * cand[:, None] + levels - 1) // levels  # ceil(k·i / L), last column = i
        group_sum = cum[starts[:, 1:]] - cum[starts[:, :-1]]
        group_nz = nonzero[starts[:, 1:]] - nonzero[starts[:, :-1]]
        avg = np.where(group_nz > 0, group_sum / np.maximum(group_nz, 1), 1.0)
        cross = np.sum(np.where(group_sum > 0, group_sum * np.log(avg), 0.0), axis=1)
        kept = cum[cand]
        tail = total - kept
        last = b[cand - 1]
        r = last + tail
        r_log_r = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0)
        last_group = ((cand - 1) * levels) // cand  # the level holding bin i - 1 (L - 1 unless i < L)
        last_avg = np.take_along_axis(avg, last_group[:, None], axis=1)[:, 0]
        tail_term = np.where(tail > 0, tail * np.log(last_avg), 0.0)
        kl = (blogb[cand - 1] + r_log_r - cross - tail_term) / total + np.log(kept / total)
        kl = np.where((last == 0) & (tail > 0), np.inf, kl)
        kl = np.where(kept > 0, kl, np.inf)
    return cand, kl


def entropy_threshold(counts: np.ndarray, edges: np.ndarray, num_quant_bins: int, maximum: float) -> float:
    """TensorRT's KL threshold over a histogram whose first edge is 0 (clamped to ``maximum``)."""
    cand, kl = kl_divergences(counts, num_quant_bins)
    if cand.size == 0 or not np.isfinite(kl).any():
        return float(maximum)
    best = cand.size - 1 - int(np.argmin(kl[::-1]))
    return float(min(edges[cand[best]], maximum))


def folded_magnitudes(hist: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of |x| from a histogram of x: bin -k ([-k·w, -(k-1)·w)) holds |x| in ((k-1)·w, k·w],
    which lands in |x|'s bin k - 1 (exact but for values on a bin edge)."""
    zero = -hist.offset                      # position of bin 0
    positive = hist.counts[zero:hist.used_bins] if hist.used_bins > zero else np.zeros(0, np.int64)
    negative = hist.counts[:zero][::-1]      # bins -1, -2, ... -> |x| bins 0, 1, ...
    size = max(positive.size, negative.size, 1)
    counts = np.zeros(size, dtype=np.int64)
    counts[:positive.size] += positive
    counts[:negative.size] += negative
    return counts, np.arange(size + 1, dtype=np.float64) * hist.bin_width


class EntropyCalibrator(HistogramCalibratorBase):
    """KL-divergence threshold calibrator. ``samples_seen`` counts elements.

    ``num_quant_bins`` defaults to 128 (signed int8: levels 0..127 of |x|) or 256 (unsigned: 0..255).
    """

    def __init__(self, num_quant_bins: int | None = None, *, unsigned: bool,
                 num_bins: int = DEFAULT_NUM_BINS) -> None:
        levels = num_quant_bins if num_quant_bins is not None else (256 if unsigned else 128)
        if levels < 2:
            raise ValueError(f"num_quant_bins must be >= 2, got {levels}")
        super().__init__(num_bins)
        self.num_quant_bins = int(levels)
        self.unsigned = bool(unsigned)
        self._absolute = not self.unsigned

    def compute(self) -> TensorRange:
        hist = self._require_data()
        if self.unsigned and hist.min < 0:
            # two-sided values on an unsigned grid: the grid spans [lo, t], so half its levels serve each side;
            # the search runs on |x| with half the levels and clips both tails at t
            counts, edges = folded_magnitudes(hist)
            t = entropy_threshold(counts, edges, self.num_quant_bins // 2, max(-hist.min, hist.max))
            logger.debug("two-sided entropy threshold %g (data [%g, %g])", t, hist.min, hist.max)
            return TensorRange(max(hist.min, -t), min(max(hist.max, 0.0), t))
        counts, edges = hist.nonnegative_part()
        t = entropy_threshold(counts, edges, self.num_quant_bins, max(hist.max, 0.0))
        logger.debug("entropy threshold %g (max %g, %d bins of width %g)", t, hist.max, counts.size,
                     hist.bin_width)
        if self.unsigned:
            return TensorRange(0.0, t)
        return TensorRange(-t, t)

    def _config(self) -> State:
        return {"num_quant_bins": self.num_quant_bins, "unsigned": int(self.unsigned),
                "num_bins": self._hist.num_bins}

    @classmethod
    def _from_config(cls, state: State) -> Self:
        return cls(int(state["num_quant_bins"]), unsigned=bool(state["unsigned"]), num_bins=int(state["num_bins"]))

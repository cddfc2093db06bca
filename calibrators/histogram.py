"""A fixed-size histogram whose bins are aligned by construction, so that adding and merging are exact.

Bins have width w = 2^e and are anchored at 0: bin i is [i·w, (i+1)·w), and value x lies in bin
floor(x / w). The histogram keeps ``num_bins`` = N consecutive bins starting at bin floor(lo / w), where
lo = min(min x, 0) and hi = max(max x, 0) (the span always holds 0, as every quantisation range does, so the
resolution is relative to max(|lo|, |hi|), like the quantisation step), and e is the *smallest* integer >= E_MIN
for which the span fits:

    floor(hi / 2^e) - floor(lo / 2^e) <= N - 1.

Re-binning: when data (from ``add`` or ``merge``) no longer fits, e grows by s and every old bin i moves to
bin i >> s (= floor(i / 2^s)): pairs of bins (2j, 2j+1) are summed into bin j per doubling, which is exactly
where their values belong because floor(floor(x / w) / 2^s) = floor(x / (2^s·w)). Fitting is monotone in e
and e is a function of (lo, hi) alone, so the state (e, counts, min, max, total) depends only on the multiset of
values: streaming in any chunking, all-at-once, and any merge tree give identical histograms (associativity
and commutativity are exact, not approximate). The one caveat is float underflow of x·2^-e, impossible for
float32 inputs. With this rule N bins hold the data's span at a resolution between span/N and 2·span/N.

NaN or Inf in a batch raises ``CalibrationError``. Exact min and max are kept beside the counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Self

import numpy as np

from qcompile.calibrators.base import State, check_finite, check_same, float_array, no_data_error

logger = logging.getLogger(__name__)

E_MIN = -1000  # smallest bin-width exponent: 2^-E_MIN is still a finite float64
DEFAULT_NUM_BINS = 2048


def _span_fits(lo: float, hi: float, e: int, num_bins: int) -> bool:
    return math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) <= num_bins - 1


def _fit_exponent(lo: float, hi: float, e_start: int, num_bins: int) -> int:
    """Smallest e >= e_start for which [lo, hi] (lo <= 0 <= hi) fits in num_bins bins of width 2^e."""
    magnitude = max(hi, -lo)
    e = e_start
    if magnitude > 0:
        # (hi - lo) / 2^e < N + 1 is necessary and hi - lo >= 2^(E-1) with E = frexp exponent of magnitude.
        e = max(e, math.frexp(magnitude)[1] - 1 - num_bins.bit_length())
    while not _span_fits(lo, hi, e, num_bins):
        e += 1
    return e


def _shift_counts(counts: np.ndarray, offset: int, shift: int, new_offset: int, num_bins: int) -> np.ndarray:
    """Coarsen bins by 2^shift (bin i -> i >> shift) and place them in a window starting at new_offset."""
    absolute = offset + np.arange(counts.size, dtype=np.int64)
    position = (absolute >> min(shift, 63)) - new_offset
    out = np.zeros(num_bins, dtype=np.int64)
    nonzero = counts != 0
    np.add.at(out, position[nonzero], counts[nonzero])
    return out


@dataclass(frozen=True, eq=False)
class Histogram:
    """Immutable histogram value object; ``add`` and ``merge`` return new histograms (see module docstring).

    ``counts[k]`` counts values in [edges[k], edges[k+1]), edges = (offset + arange(N + 1))·2^exponent.
    """

    num_bins: int
    exponent: int
    offset: int
    counts: np.ndarray
    min: float
    max: float
    total: int

    def __post_init__(self) -> None:
        if self.num_bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {self.num_bins}")
        if self.counts.shape != (self.num_bins,):
            raise ValueError(f"counts shape {self.counts.shape} does not match num_bins={self.num_bins}")
        self.counts.setflags(write=False)

    @classmethod
    def empty(cls, num_bins: int = DEFAULT_NUM_BINS) -> Histogram:
        return cls(num_bins, E_MIN, 0, np.zeros(num_bins, dtype=np.int64), math.inf, -math.inf, 0)

    # ---- derived views ------------------------------------------------------------------------------

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def edges(self) -> np.ndarray:
        return (self.offset + np.arange(self.num_bins + 1, dtype=np.float64)) * self.bin_width

    @property
    def used_bins(self) -> int:
        """Bins from the first window bin up to (and including) the one holding the maximum (or 0)."""
        if self.total == 0:
            return 0
        return math.floor(math.ldexp(max(self.max, 0.0), -self.exponent)) - self.offset + 1

    def nonnegative_part(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the bins at and above 0, i.e. of [0, max]; edges start exactly at 0."""
        start = -self.offset  # position of bin 0 (offset <= 0 because the span holds 0)
        stop = max(self.used_bins, start + 1)
        return self.counts[start:stop], self.edges[start:stop + 1]

    def quantile(self, q: float) -> float:
        """Value below which a fraction q of the values lie, interpolating linearly inside the bin that holds
        it, clamped to the exact [min, max]."""
        if self.total == 0:
            raise no_data_error("Histogram")
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        cumulative = np.cumsum(self.counts)
        target = q * self.total
        k = int(np.searchsorted(cumulative, target, side="left"))
        k = min(k, self.num_bins - 1)
        before = float(cumulative[k - 1]) if k > 0 else 0.0
        inside = float(self.counts[k])
        fraction = (target - before) / inside if inside > 0 else 0.0
        value = (self.offset + k + fraction) * self.bin_width
        return float(min(max(value, self.min), self.max))

    # ---- building ------------------------------------------------------------------------------------

    def _rebinned(self, exponent: int, offset: int) -> np.ndarray:
        if self.total == 0:
            return np.zeros(self.num_bins, dtype=np.int64)
        if exponent == self.exponent and offset == self.offset:
            return self.counts.copy()
        return _shift_counts(self.counts, self.offset, exponent - self.exponent, offset, self.num_bins)

    def add(self, values: np.ndarray) -> Histogram:
        """A new histogram holding these values too; CalibrationError on NaN/Inf."""
        x = float_array(values).reshape(-1)
        if x.size == 0:
            return self
        vmin, vmax = float(x.min()), float(x.max())
        check_finite(vmin, vmax, "Histogram")
        lo, hi = min(self.min, vmin), max(self.max, vmax)
        span_lo, span_hi = min(lo, 0.0), max(hi, 0.0)
        e = _fit_exponent(span_lo, span_hi, self.exponent, self.num_bins)
        offset = math.floor(math.ldexp(span_lo, -e))
        if e != self.exponent and self.total:
            logger.debug("histogram re-binned: bin width 2^%d -> 2^%d for range [%g, %g]", self.exponent, e, lo, hi)
        counts = self._rebinned(e, offset)
        index = np.floor(x * np.float64(math.ldexp(1.0, -e))).astype(np.int64)
        index -= offset
        counts += np.bincount(index, minlength=self.num_bins)
        return Histogram(self.num_bins, e, offset, counts, lo, hi, self.total + x.size)

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both value multisets (exact; see module docstring)."""
        check_same("num_bins", self.num_bins, other.num_bins)
        if other.total == 0:
            return self
        if self.total == 0:
            return other
        lo, hi = min(self.min, other.min), max(self.max, other.max)
        span_lo, span_hi = min(lo, 0.0), max(hi, 0.0)
        e = _fit_exponent(span_lo, span_hi, max(self.exponent, other.exponent), self.num_bins)
        offset = math.floor(math.ldexp(span_lo, -e))
        counts = self._rebinned(e, offset) + other._rebinned(e, offset)
        return Histogram(self.num_bins, e, offset, counts, lo, hi, self.total + other.total)

    # ---- shipping ------------------------------------------------------------------------------------

    def get_state(self, prefix: str = "hist.") -> State:
        return {f"{prefix}num_bins": self.num_bins, f"{prefix}exponent": self.exponent,
                f"{prefix}offset": self.offset, f"{prefix}counts": self.counts.copy(),
                f"{prefix}min": self.min, f"{prefix}max": self.max, f"{prefix}total": self.total}

    @classmethod
    def from_state(cls, state: State, prefix: str = "hist.") -> Histogram:
        return cls(int(state[f"{prefix}num_bins"]), int(state[f"{prefix}exponent"]), int(state[f"{prefix}offset"]),
                   np.array(state[f"{prefix}counts"], dtype=np.int64), float(state[f"{prefix}min"]),
                   float(state[f"{prefix}max"]), int(state[f"{prefix}total"]))

    def same_as(self, other: Histogram) -> bool:
        """Exact equality of every field."""
        return (self.num_bins, self.exponent, self.offset, self.min, self.max, self.total) == \
            (other.num_bins, other.exponent, other.offset, other.min, other.max, other.total) \
            and bool(np.array_equal(self.counts, other.counts))


class HistogramCalibratorBase:
    """Shared streaming/merging/shipping for calibrators that keep one ``Histogram``.

    Subclasses set ``_absolute`` (histogram of |x| instead of x) in ``__init__``, implement ``compute`` and
    ``_config`` (the configuration as a state mapping) and ``_from_config``. ``samples_seen`` counts elements.
    """

    _absolute: bool

    def __init__(self, num_bins: int) -> None:
        self._hist = Histogram.empty(num_bins)

    @property
    def histogram(self) -> Histogram:
        return self._hist

    @property
    def samples_seen(self) -> int:
        return self._hist.total

    @property
    def absolute(self) -> bool:
        """Whether the histogram holds |x| (symmetric searches) rather than x."""
        return self._absolute

    def update(self, batch: np.ndarray) -> None:
        x = float_array(batch)  # NaN/Inf survive abs, so Histogram.add rejects them
        self._hist = self._hist.add(np.abs(x) if self._absolute else x)

    def merge(self, other: Self) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        check_same("configuration", self._config(), other._config())
        self._hist = self._hist.merge(other._hist)

    def _require_data(self) -> Histogram:
        if self._hist.total == 0:
            raise no_data_error(type(self).__name__)
        return self._hist

    def _config(self) -> State:
        raise NotImplementedError

    @classmethod
    def _from_config(cls, state: State) -> Self:
        raise NotImplementedError

    def get_state(self) -> State:
        return {**self._config(), **self._hist.get_state()}

    @classmethod
    def from_state(cls, state: State) -> Self:
        cal = cls._from_config(state)
        cal._hist = Histogram.from_state(state)
        return cal

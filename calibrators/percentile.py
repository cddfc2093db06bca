"""Percentile clipping on a streaming histogram.

symmetric:   t = Q_{|x|}(p / 100)  (the p-th percentile of |x|);            range [-t, t]
asymmetric:  range [Q_x((100 - p) / 200), Q_x((100 + p) / 200)]            (p % of the values kept, the rest
             clipped equally from both tails: ORT's HistogramCollector convention)

Q is read from the ``Histogram`` (|x| for symmetric, x otherwise) by linear interpolation inside the bin that
holds the quantile and clamped to the exact min/max, so it is within one bin width (<= 2·span / num_bins) of the
exact sample percentile.
"""

from __future__ import annotations

import logging
from typing import Self

from qcompile.calibrators.base import State
from qcompile.calibrators.histogram import DEFAULT_NUM_BINS, HistogramCalibratorBase
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


class PercentileCalibrator(HistogramCalibratorBase):
    """Range clipping the (100 - percentile) % most extreme values. ``samples_seen`` counts elements."""

    def __init__(self, percentile: float = 99.999, *, symmetric: bool, num_bins: int = DEFAULT_NUM_BINS) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(num_bins)
        self.percentile = float(percentile)
        self.symmetric = bool(symmetric)
        self._absolute = self.symmetric

    def compute(self) -> TensorRange:
        hist = self._require_data()
        p = self.percentile / 100.0
        if self.symmetric:
            t = hist.quantile(p)
            lo, hi = -t, t
        else:
            lo, hi = hist.quantile((1.0 - p) / 2.0), hist.quantile((1.0 + p) / 2.0)
        logger.debug("percentile %.4g range [%g, %g] (bin width %g)", self.percentile, lo, hi, hist.bin_width)
        return TensorRange(lo, hi)

    def _config(self) -> State:
        return {"percentile": self.percentile, "symmetric": int(self.symmetric),
                "num_bins": self._hist.num_bins}

    @classmethod
    def _from_config(cls, state: State) -> Self:
        return cls(float(state["percentile"]), symmetric=bool(state["symmetric"]), num_bins=int(state["num_bins"]))

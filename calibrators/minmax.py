"""Running min/max, optionally as an exponential moving average of per-batch extremes.

Plain:           lo = min_b min(x_b),   hi = max_b max(x_b)   (exact; merge = min of mins, max of maxes).
Moving average:  with constant c, the first batch sets (lo, hi) = (min x_1, max x_1), then each batch b does
                 lo <- lo + c·(min x_b - lo),  hi <- hi + c·(max x_b - hi)     (ORT's MinMaxCalibrater
                 convention with moving_average=True, averaging_constant=c, one collect_data per batch).

An EMA depends on batch order, so it has no exact associative merge. ``merge`` therefore defines the combined
state of two shards as their batch-count-weighted mean:  lo = (n_a·lo_a + n_b·lo_b) / (n_a + n_b)  (same for hi,
n = batches seen). This is associative and commutative (up to float rounding) and has the empty calibrator
(n = 0) as identity; for shards of equal length it is the mean of the shards' EMAs.
"""

from __future__ import annotations

import logging
from typing import Self

import numpy as np

from qcompile.calibrators.base import State, check_finite, check_same, float_array, no_data_error
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


class MinMaxCalibrator:
    """Running (or moving-average) min/max of a tensor. ``samples_seen`` counts elements."""

    def __init__(self, moving_average: float | None = None) -> None:
        if moving_average is not None and not 0.0 < moving_average <= 1.0:
            raise ValueError(f"moving_average must be in (0, 1], got {moving_average}")
        self.moving_average = moving_average
        self._min = np.inf
        self._max = -np.inf
        self._elements = 0
        self._batches = 0

    @property
    def samples_seen(self) -> int:
        return self._elements

    @property
    def batches_seen(self) -> int:
        return self._batches

    def update(self, batch: np.ndarray) -> None:
        x = float_array(batch)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        check_finite(lo, hi, "MinMaxCalibrator")  # NaN/Inf show in the min or max: no extra pass
        c = self.moving_average
        if c is None:
            self._min, self._max = min(self._min, lo), max(self._max, hi)
        elif self._batches == 0:
            self._min, self._max = lo, hi
        else:
            self._min += c * (lo - self._min)
            self._max += c * (hi - self._max)
        self._elements += x.size
        self._batches += 1

    def merge(self, other: Self) -> None:
        if not isinstance(other, MinMaxCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into MinMaxCalibrator")
        check_same("moving_average", self.moving_average, other.moving_average)
        if other._batches == 0:
            return
        if self.moving_average is None or self._batches == 0:
            self._min, self._max = min(self._min, other._min), max(self._max, other._max)
        else:
            n_a, n_b = self._batches, other._batches
            self._min = (n_a * self._min + n_b * other._min) / (n_a + n_b)
            self._max = (n_a * self._max + n_b * other._max) / (n_a + n_b)
        self._elements += other._elements
        self._batches += other._batches

    def compute(self) -> TensorRange:
        if self._batches == 0:
            raise no_data_error("MinMaxCalibrator")
        logger.debug("minmax range [%g, %g] from %d elements", self._min, self._max, self._elements)
        return TensorRange(self._min, self._max)

    def get_state(self) -> State:
        return {"moving_average": -1.0 if self.moving_average is None else float(self.moving_average),
                "min": float(self._min), "max": float(self._max),
                "elements": int(self._elements), "batches": int(self._batches)}

    @classmethod
    def from_state(cls, state: State) -> Self:
        c = float(state["moving_average"])
        cal = cls(None if c < 0 else c)
        cal._min, cal._max = float(state["min"]), float(state["max"])
        cal._elements, cal._batches = int(state["elements"]), int(state["batches"])
        return cal

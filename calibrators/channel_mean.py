"""Per-channel mean: m_c = Σ x[..., c, ...] / n_c over every axis but ``axis``; streams as (sum, count).

Used by bias correction: the expected input of each channel. Sums are float64, so merging shards in any
order agrees to float64 rounding.
"""

from __future__ import annotations

import numpy as np

from qcompile.calibrators.base import float_array, no_data_error
from qcompile.errors import CalibrationError
from qcompile.numerics.qparams import TensorRange


class ChannelMeanCalibrator:
    def __init__(self, axis: int) -> None:
        self.axis = axis
        self._sum: np.ndarray | None = None
        self._count = 0

    @property
    def samples_seen(self) -> int:
        return self._count

    def update(self, batch: np.ndarray) -> None:
        x = float_array(batch)
        if x.ndim == 0 or x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            raise CalibrationError("channel mean calibrator got NaN/Inf")
        moved = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        sums = moved.sum(axis=1, dtype=np.float64)
        if self._sum is not None and self._sum.shape != sums.shape:
            raise CalibrationError(f"channel count changed from {self._sum.size} to {sums.size}")
        self._sum = sums if self._sum is None else self._sum + sums
        self._count += moved.shape[1]

    def merge(self, other: "ChannelMeanCalibrator") -> None:
        if other._sum is None:
            return
        if self._sum is None:
            self._sum, self._count = other._sum.copy(), other._count
            return
        if self._sum.shape != other._sum.shape:
            raise CalibrationError("cannot merge channel means with different channel counts")
        self._sum = self._sum + other._sum
        self._count += other._count

    def compute(self) -> TensorRange:
        """The mean per channel, returned as a degenerate range (min = max = mean)."""
        if self._sum is None or self._count == 0:
            raise no_data_error(type(self).__name__)
        mean = self._sum / self._count
        return TensorRange(mean, mean)

    def get_state(self) -> dict:
        return {"axis": self.axis, "count": self._count,
                "sum": self._sum if self._sum is not None else np.zeros(0)}

    @classmethod
    def from_state(cls, state: dict) -> "ChannelMeanCalibrator":
        calibrator = cls(int(state["axis"]))
        if int(state["count"]):
            calibrator._sum = np.asarray(state["sum"], dtype=np.float64)
            calibrator._count = int(state["count"])
        return calibrator

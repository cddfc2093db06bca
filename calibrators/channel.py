"""Per-channel absolute maximum: m_c = max over all batches and all positions of |x[..., c, ...]| along ``axis``.

Used by SmoothQuant (s_c = m_c^alpha / w_c^(1-alpha)) and outlier-channel splitting. The state is one float per
channel; merge is the elementwise max, exact and associative. ``compute`` returns TensorRange(-m, m) with 1-D
arrays. ``samples_seen`` counts elements. ``axis`` may be negative (counted from the last dimension of each
batch); every batch must have the same number of channels.
"""

from __future__ import annotations

import logging
from typing import Self

import numpy as np

from qcompile.calibrators.base import State, check_same, finite_array, no_data_error
from qcompile.errors import CalibrationError
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


class ChannelAbsMaxCalibrator:
    """Running max |x| per channel along ``axis``."""

    def __init__(self, axis: int) -> None:
        self.axis = int(axis)
        self._absmax: np.ndarray | None = None
        self._elements = 0

    @property
    def samples_seen(self) -> int:
        return self._elements

    @property
    def num_channels(self) -> int | None:
        return None if self._absmax is None else int(self._absmax.size)

    def update(self, batch: np.ndarray) -> None:
        x = finite_array(batch, "ChannelAbsMaxCalibrator")
        if not -x.ndim <= self.axis < x.ndim:
            raise CalibrationError(f"ChannelAbsMaxCalibrator: axis {self.axis} is out of range for a batch of "
                                   f"shape {x.shape}")
        if x.size == 0:
            return
        axis = self.axis % x.ndim
        absmax = np.abs(x).max(axis=tuple(d for d in range(x.ndim) if d != axis)).astype(np.float64)
        self._fold(absmax)
        self._elements += x.size

    def _fold(self, absmax: np.ndarray) -> None:
        if self._absmax is None:
            self._absmax = absmax.copy()
        elif self._absmax.shape != absmax.shape:
            raise CalibrationError(f"ChannelAbsMaxCalibrator: channel count changed from {self._absmax.size} "
                                   f"to {absmax.size} along axis {self.axis}")
        else:
            np.maximum(self._absmax, absmax, out=self._absmax)

    def merge(self, other: Self) -> None:
        if not isinstance(other, ChannelAbsMaxCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into ChannelAbsMaxCalibrator")
        check_same("axis", self.axis, other.axis)
        if other._absmax is None:
            return
        self._fold(other._absmax)
        self._elements += other._elements

    def compute(self) -> TensorRange:
        if self._absmax is None:
            raise no_data_error("ChannelAbsMaxCalibrator")
        logger.debug("channel absmax over %d channels, largest %g", self._absmax.size, self._absmax.max())
        return TensorRange(-self._absmax.copy(), self._absmax.copy())

    def get_state(self) -> State:
        return {"axis": self.axis, "elements": self._elements,
                "absmax": np.empty(0) if self._absmax is None else self._absmax.copy(),
                "has_data": int(self._absmax is not None)}

    @classmethod
    def from_state(cls, state: State) -> Self:
        cal = cls(int(state["axis"]))
        cal._elements = int(state["elements"])
        if int(state["has_data"]):
            cal._absmax = np.array(state["absmax"], dtype=np.float64)
        return cal

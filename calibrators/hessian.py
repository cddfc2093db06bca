"""Input second moments of a MatMul, for GPTQ / AWQ / clip search:  H = (1/n) Σ_rows x xᵀ  and  a = (1/n) Σ |x|.

Each batch x of shape [..., K] is flattened to rows X [m, K]; the state is the running sums S = XᵀX (float64,
K×K), A = Σ|X| (K) and the row count n, so memory is O(K²) whatever the number of samples. Merging adds the
sums: exact up to float64 rounding and associative, with the empty calibrator as identity. ``compute`` returns a
``HessianStat`` (H = S/n, a = A/n, n); the layer-wise output error of a weight change ΔW [K, N] on the
calibration inputs is then  (1/n) ‖X ΔW‖²_F = tr(ΔWᵀ H ΔW)  without keeping X.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from qcompile.calibrators.base import State, check_same, finite_array, no_data_error
from qcompile.errors import CalibrationError


@dataclass(frozen=True, eq=False)
class HessianStat:
    """Mean outer product H [K, K] and mean absolute value a [K] of the rows a MatMul saw, over ``rows`` rows."""

    hessian: np.ndarray
    abs_mean: np.ndarray
    rows: int

    @property
    def channels(self) -> int:
        return int(self.abs_mean.size)

    def as_json(self) -> dict:
        return {"rows": self.rows, "channels": self.channels, "trace": float(np.trace(self.hessian))}


class HessianCalibrator:
    """Streaming XᵀX over the last axis (see the module docstring)."""

    def __init__(self) -> None:
        self._sum_xx: np.ndarray | None = None
        self._sum_abs: np.ndarray | None = None
        self._rows = 0

    @property
    def samples_seen(self) -> int:
        return self._rows * (0 if self._sum_abs is None else self._sum_abs.size)

    def update(self, batch: np.ndarray) -> None:
        x = finite_array(batch, "HessianCalibrator")
        if x.ndim == 0:
            raise CalibrationError("HessianCalibrator: a scalar has no channel axis")
        if x.size == 0:
            return
        rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
        self._fold(rows.T @ rows, np.abs(rows).sum(axis=0), rows.shape[0])

    def _fold(self, sum_xx: np.ndarray, sum_abs: np.ndarray, rows: int) -> None:
        if self._sum_xx is None:
            self._sum_xx, self._sum_abs = sum_xx.copy(), sum_abs.copy()
        elif self._sum_abs.shape != sum_abs.shape:
            raise CalibrationError(f"HessianCalibrator: channel count changed from {self._sum_abs.size} "
                                   f"to {sum_abs.size}")
        else:
            self._sum_xx += sum_xx
            self._sum_abs += sum_abs
        self._rows += rows

    def merge(self, other: Self) -> None:
        if not isinstance(other, HessianCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into HessianCalibrator")
        if other._sum_xx is None:
            return
        if self._sum_abs is not None:
            check_same("channel count", self._sum_abs.size, other._sum_abs.size)
        self._fold(other._sum_xx, other._sum_abs, other._rows)

    def compute(self) -> HessianStat:
        if self._sum_xx is None or self._rows == 0:
            raise no_data_error("HessianCalibrator")
        return HessianStat(self._sum_xx / self._rows, self._sum_abs / self._rows, self._rows)

    def get_state(self) -> State:
        empty = self._sum_xx is None
        return {"rows": self._rows, "has_data": int(not empty),
                "sum_xx": np.empty((0, 0)) if empty else self._sum_xx.copy(),
                "sum_abs": np.empty(0) if empty else self._sum_abs.copy()}

    @classmethod
    def from_state(cls, state: State) -> Self:
        cal = cls()
        if int(state["has_data"]):
            cal._sum_xx = np.array(state["sum_xx"], dtype=np.float64)
            cal._sum_abs = np.array(state["sum_abs"], dtype=np.float64)
            cal._rows = int(state["rows"])
        return cal

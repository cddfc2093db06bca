"""Second moments of the rows a weight row multiplies (Conv patches, MatMul/Gemm rows), per group:

    H_g = (1/n) Σ_p P_g(p) P_g(p)ᵀ   [K, K]        μ_g = (1/n) Σ_p P_g(p)   [K]

with P_g(p) the patch of group g at position p (numerics.patches; for a MatMul/Gemm input the last-axis row,
one group). The state is the sums (float64) and the count, O(G·K²) whatever the number of samples; merging
adds them (exact up to float64 rounding, associative, the empty calibrator is the identity). A batch with more
than ``max_rows`` positions contributes a uniform sample of ``max_rows`` of them (drawn by a generator seeded
with the batch's content, calibrators/base.py ``batch_generator``: shards pick the same positions as a single
process), which bounds the
time per batch while keeping H an unbiased estimate. Then a weight change ΔW_o has the mean squared output
effect ΔW_oᵀ H_g(o) ΔW_o (numerics.rounding).
"""

from __future__ import annotations

from typing import Self

import numpy as np

from qcompile.calibrators.base import State, batch_generator, check_same, finite_array, no_data_error
from qcompile.errors import CalibrationError
from qcompile.numerics.patches import PatchGeometry, PatchMoments, conv_patches, conv_positions, matrix_rows


def _to_float32_precision(values: np.ndarray) -> np.ndarray:
    """float64 values rounded to the nearest float32, kept float64 where beyond float32's range."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32).astype(np.float64)
    return np.where(np.isfinite(rounded), rounded, values)


class PatchMomentsCalibrator:
    """Streaming per-group patch moments (see the module docstring); ``geometry`` None: MatMul/Gemm rows."""

    def __init__(self, geometry: PatchGeometry | None = None, max_rows: int = 4096, seed: int = 0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.geometry = geometry
        self.max_rows = int(max_rows)
        self.seed = int(seed)
        self._sum_xx: np.ndarray | None = None
        self._sum_x: np.ndarray | None = None
        self._rows = 0

    @property
    def samples_seen(self) -> int:
        return self._rows * (0 if self._sum_x is None else self._sum_x.size)

    def update(self, batch: np.ndarray) -> None:
        x = finite_array(batch, "PatchMomentsCalibrator")
        if x.size == 0:
            return
        if self.geometry is not None and x.ndim not in (3, 4):
            raise CalibrationError(f"PatchMomentsCalibrator: patches of a {x.ndim - 2}-d Conv input are not supported")
        total = x.size // x.shape[-1] if self.geometry is None else conv_positions(x.shape, self.geometry)
        keep = np.sort(batch_generator(self.seed, x).choice(total, self.max_rows, replace=False)) if total > self.max_rows else None
        if self.geometry is None:
            rows = matrix_rows(x) if keep is None else matrix_rows(x)[keep]
        else:
            rows = conv_patches(x, self.geometry, keep)
        # float32 products per batch (≤ max_rows terms), float64 sums across batches; float64 products where
        # float32 squares could overflow (|x| ≥ 1e15: every finite float32 squares within float64)
        wide = rows.size and float(np.max(np.abs(rows))) >= 1e15
        by_group = rows.astype(np.float64 if wide else np.float32, copy=False).transpose(1, 0, 2)   # [G, P, K]
        self._fold(np.matmul(by_group.transpose(0, 2, 1), by_group).astype(np.float64),
                   by_group.sum(axis=1, dtype=np.float64), rows.shape[0])

    def _fold(self, sum_xx: np.ndarray, sum_x: np.ndarray, rows: int) -> None:
        if self._sum_xx is None:
            self._sum_xx, self._sum_x = sum_xx.copy(), sum_x.copy()
        elif self._sum_x.shape != sum_x.shape:
            raise CalibrationError(f"PatchMomentsCalibrator: patch shape changed from {self._sum_x.shape} "
                                   f"to {sum_x.shape}")
        else:
            self._sum_xx += sum_xx
            self._sum_x += sum_x
        self._rows += rows

    def merge(self, other: Self) -> None:
        if not isinstance(other, PatchMomentsCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into PatchMomentsCalibrator")
        check_same("max_rows", self.max_rows, other.max_rows)
        if other._sum_xx is None:
            return
        self._fold(other._sum_xx, other._sum_x, other._rows)

    def compute(self) -> PatchMoments:
        if self._sum_xx is None or self._rows == 0:
            raise no_data_error("PatchMomentsCalibrator")
        # rounded to float32 (the precision the rounding search works at): float64 sums merged in another
        # order (shards) differ in their last bits, and a greedy rounding search can turn such a difference
        # into another code; after the rounding they agree unless a value sits on a float32 rounding boundary
        return PatchMoments(_to_float32_precision(self._sum_xx / self._rows),
                            _to_float32_precision(self._sum_x / self._rows), self._rows)

    def get_state(self) -> State:
        empty = self._sum_xx is None
        return {"rows": self._rows, "has_data": int(not empty), "max_rows": self.max_rows,
                "sum_xx": np.empty((0, 0, 0)) if empty else self._sum_xx.copy(),
                "sum_x": np.empty((0, 0)) if empty else self._sum_x.copy()}

    @classmethod
    def from_state(cls, state: State) -> Self:
        # the geometry only shapes updates; a rebuilt state is merged, never updated
        cal = cls(max_rows=int(state["max_rows"]))
        if int(state["has_data"]):
            cal._sum_xx = np.array(state["sum_xx"], dtype=np.float64)
            cal._sum_x = np.array(state["sum_x"], dtype=np.float64)
            cal._rows = int(state["rows"])
        return cal

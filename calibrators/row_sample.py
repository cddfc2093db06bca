"""Per-channel min/max plus a bounded uniform sample of rows: what a per-layer search (SmoothQuant α) needs.

A "row" is the vector of a tensor along ``axis`` at one position of every other axis (for a MatMul input
[B, S, K] and axis -1: one token's K features). The calibrator keeps

    lo_c = min over all rows of x[c],   hi_c = max over all rows of x[c]          (exact, O(K))
    a uniform sample of at most R rows                                           (O(R·K), bottom-R sampling)

Bottom-R sampling gives every row a key u ~ U(0, 1) and keeps the R rows with the smallest keys. The keys of a
batch come from a generator seeded by the calibrator's seed and the batch's content (calibrators/base.py
``batch_generator``), so a row's key does not depend on which shard saw its batch or on what came before: a
sharded calibration keeps exactly the rows a single process keeps. Distinct batches get independent keys, so
the kept set is a uniform sample without replacement; merging two calibrators (keep the R smallest keys of the
union) is exact, associative and commutative, so shards reduce in any tree. Memory never depends on the number of calibration samples.

``compute`` returns a ``RowSample``: a TensorRange(lo, hi) with 1-D per-channel arrays that also carries the
sampled rows [n ≤ R, K] (float32) and the number of rows seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import numpy as np

from qcompile.calibrators.base import State, batch_generator, check_same, finite_array, no_data_error
from qcompile.errors import CalibrationError
from qcompile.numerics.qparams import TensorRange


@dataclass(frozen=True)
class RowSample(TensorRange):
    """Per-channel range of a tensor and a uniform sample of its rows."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    rows_seen: int = 0

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(np.asarray(self.min)), np.abs(np.asarray(self.max)))


class RowSampleCalibrator:
    """Streaming per-channel min/max and a bottom-R sample of rows along ``axis``."""

    def __init__(self, axis: int = -1, capacity: int = 512, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.axis = int(axis)
        self.capacity = int(capacity)
        self.seed = int(seed)
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None
        self._keys = np.zeros(0, dtype=np.float64)
        self._rows: np.ndarray | None = None
        self._rows_seen = 0

    @property
    def samples_seen(self) -> int:
        return self._rows_seen * (0 if self._lo is None else self._lo.size)

    def update(self, batch: np.ndarray) -> None:
        x = finite_array(batch, "RowSampleCalibrator")
        if x.ndim == 0:
            raise CalibrationError("RowSampleCalibrator: a scalar has no channel axis")
        if not -x.ndim <= self.axis < x.ndim:
            raise CalibrationError(f"RowSampleCalibrator: axis {self.axis} is out of range for shape {x.shape}")
        if x.size == 0:
            return
        rows = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis]).astype(np.float32, copy=False)
        self._fold(rows.min(axis=0).astype(np.float64), rows.max(axis=0).astype(np.float64),
                   batch_generator(self.seed, x).random(rows.shape[0]), rows, rows.shape[0])

    def _fold(self, lo: np.ndarray, hi: np.ndarray, keys: np.ndarray, rows: np.ndarray, seen: int) -> None:
        if self._lo is None:
            self._lo, self._hi = lo.copy(), hi.copy()
            self._rows = np.zeros((0, lo.size), dtype=np.float32)
        elif self._lo.shape != lo.shape:
            raise CalibrationError(f"RowSampleCalibrator: channel count changed from {self._lo.size} to {lo.size}")
        else:
            np.minimum(self._lo, lo, out=self._lo)
            np.maximum(self._hi, hi, out=self._hi)
        self._rows_seen += seen
        keys = np.concatenate([self._keys, keys])
        rows = np.concatenate([self._rows, rows.astype(np.float32, copy=False)])
        if keys.size > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys, rows = keys[keep], rows[keep]
        order = np.argsort(keys, kind="stable")       # canonical order: merges agree bit for bit
        self._keys, self._rows = keys[order], np.ascontiguousarray(rows[order])

    def merge(self, other: Self) -> None:
        if not isinstance(other, RowSampleCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into RowSampleCalibrator")
        check_same("axis", self.axis, other.axis)
        check_same("capacity", self.capacity, other.capacity)
        if other._lo is None:
            return
        self._fold(other._lo, other._hi, other._keys, other._rows, other._rows_seen)

    def compute(self) -> RowSample:
        if self._lo is None:
            raise no_data_error("RowSampleCalibrator")
        return RowSample(self._lo.copy(), self._hi.copy(), rows=self._rows.copy(), rows_seen=self._rows_seen)

    def get_state(self) -> State:
        empty = self._lo is None
        return {"axis": self.axis, "capacity": self.capacity, "seed": self.seed, "rows_seen": self._rows_seen,
                "has_data": int(not empty), "lo": np.empty(0) if empty else self._lo.copy(),
                "hi": np.empty(0) if empty else self._hi.copy(), "keys": self._keys.copy(),
                "rows": np.zeros((0, 0), np.float32) if empty else self._rows.copy()}

    @classmethod
    def from_state(cls, state: State) -> Self:
        cal = cls(int(state["axis"]), int(state["capacity"]), int(state["seed"]))
        if int(state["has_data"]):
            cal._lo = np.array(state["lo"], dtype=np.float64)
            cal._hi = np.array(state["hi"], dtype=np.float64)
            cal._keys = np.array(state["keys"], dtype=np.float64)
            cal._rows = np.array(state["rows"], dtype=np.float32)
            cal._rows_seen = int(state["rows_seen"])
        return cal

"""Second moments of the rows a weight row multiplies (Conv patches, MatMul/Gemm rows), per group:

    H_g = (1/n) Σ_p P̃_g(p) P̃_g(p)ᵀ,   C_g = (1/n) Σ_p P̃_g(p) P_g(p)ᵀ,   R_g = (1/n) Σ_p P_g(p) P_g(p)ᵀ   [K, K]
    μ̃_g = (1/n) Σ_p P̃_g(p),   μ_g = (1/n) Σ_p P_g(p)   [K]

with P̃_g(p) the patch of group g at position p (numerics.patches; for a MatMul/Gemm input the last-axis row,
one group). ``paired``: each batch is the stack [2, ...] of the tensor in the quantised model (P̃) and in the
float model (P) on the same sample, so the cross moment C pairs them position by position; unpaired, P = P̃.
The state is the sums (float64) and the count, O(G·K²) whatever the number of samples; merging adds them
(exact up to float64 rounding, associative, the empty calibrator is the identity). A batch with more than
``max_rows`` positions contributes a uniform sample of ``max_rows`` of them (seeded, the same positions in
both members of a pair), which bounds the time per batch while keeping the moments unbiased.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from qcompile.calibrators.base import State, check_same, finite_array, no_data_error
from qcompile.errors import CalibrationError
from qcompile.numerics.patches import PatchGeometry, PatchMoments, conv_patches, conv_positions, matrix_rows


class PatchMomentsCalibrator:
    """Streaming per-group patch moments (see the module docstring); ``geometry`` None: MatMul/Gemm rows."""

    def __init__(self, geometry: PatchGeometry | None = None, max_rows: int = 4096, seed: int = 0,
                 paired: bool = False) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.geometry = geometry
        self.paired = bool(paired)
        self.max_rows = int(max_rows)
        self._rng = np.random.default_rng(seed)
        self._sums: dict[str, np.ndarray] | None = None      # "aa", "ab", "bb", "a", "b" (a: quantised, b: float)
        self._rows = 0

    @property
    def samples_seen(self) -> int:
        return self._rows * (0 if self._sums is None else self._sums["a"].size)

    def update(self, batch: np.ndarray) -> None:
        x = finite_array(batch, "PatchMomentsCalibrator")
        if x.size == 0:
            return
        if self.paired and (x.ndim < 2 or x.shape[0] != 2):
            raise CalibrationError(f"PatchMomentsCalibrator: a pair is a stack of 2 tensors, got shape {x.shape}")
        members = (x[0], x[1]) if self.paired else (x,)
        if self.geometry is not None and members[0].ndim not in (3, 4):
            raise CalibrationError(f"PatchMomentsCalibrator: patches of a {members[0].ndim - 2}-d Conv input "
                                   "are not supported")
        first = members[0]
        total = first.size // first.shape[-1] if self.geometry is None else conv_positions(first.shape, self.geometry)
        keep = np.sort(self._rng.choice(total, self.max_rows, replace=False)) if total > self.max_rows else None
        # float32 products per batch (≤ max_rows terms), float64 sums across batches; [G, P, K] per member
        a, b = (self._rows_of(m, keep).astype(np.float32, copy=False).transpose(1, 0, 2) for m in
                (members[0], members[-1]))
        a_t = a.transpose(0, 2, 1)
        aa = np.matmul(a_t, a).astype(np.float64)
        sums = {"aa": aa, "a": a.sum(axis=1, dtype=np.float64)}
        if self.paired:
            sums.update(ab=np.matmul(a_t, b).astype(np.float64), bb=np.matmul(b.transpose(0, 2, 1), b).astype(np.float64),
                        b=b.sum(axis=1, dtype=np.float64))
        self._fold(sums, a.shape[1])

    def _rows_of(self, x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        if self.geometry is None:
            rows = matrix_rows(x)
            return rows if keep is None else rows[keep]
        return conv_patches(x, self.geometry, keep)

    def _fold(self, sums: dict[str, np.ndarray], rows: int) -> None:
        if self._sums is None:
            self._sums = {key: value.copy() for key, value in sums.items()}
        elif self._sums["a"].shape != sums["a"].shape or self._sums.keys() != sums.keys():
            raise CalibrationError(f"PatchMomentsCalibrator: patch shape changed from {self._sums['a'].shape} "
                                   f"to {sums['a'].shape}")
        else:
            for key, value in sums.items():
                self._sums[key] += value
        self._rows += rows

    def merge(self, other: Self) -> None:
        if not isinstance(other, PatchMomentsCalibrator):
            raise TypeError(f"cannot merge {type(other).__name__} into PatchMomentsCalibrator")
        check_same("max_rows", self.max_rows, other.max_rows)
        check_same("paired", self.paired, other.paired)
        if other._sums is None:
            return
        self._fold(other._sums, other._rows)

    def compute(self) -> PatchMoments:
        if self._sums is None or self._rows == 0:
            raise no_data_error("PatchMomentsCalibrator")
        mean = {key: value / self._rows for key, value in self._sums.items()}
        return PatchMoments(hessian=mean["aa"], cross=mean.get("ab", mean["aa"]),
                            reference_hessian=mean.get("bb", mean["aa"]), mean=mean["a"],
                            reference_mean=mean.get("b", mean["a"]), rows=self._rows)

    def get_state(self) -> State:
        state: State = {"rows": self._rows, "has_data": int(self._sums is not None), "max_rows": self.max_rows,
                        "paired": int(self.paired)}
        for key, value in (self._sums or {}).items():
            state[f"sum_{key}"] = value.copy()
        return state

    @classmethod
    def from_state(cls, state: State) -> Self:
        # the geometry only shapes updates; a rebuilt state is merged, never updated
        cal = cls(max_rows=int(state["max_rows"]), paired=bool(int(state["paired"])))
        if int(state["has_data"]):
            keys = ("aa", "a", "ab", "bb", "b") if cal.paired else ("aa", "a")
            cal._sums = {key: np.array(state[f"sum_{key}"], dtype=np.float64) for key in keys}
            cal._rows = int(state["rows"])
        return cal

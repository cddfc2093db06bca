"""The calibrator protocol: streaming, mergeable statistics of one tensor.

A calibrator sees a tensor's values batch by batch and condenses them into a state whose size depends only
on its configuration (bins, channels), never on the number of samples. States combine with ``merge``, an
associative operation with the empty calibrator as identity, so calibration data may be sharded over workers
and reduced in any tree:  merge(a, merge(b, c)) == merge(merge(a, b), c).  ``compute`` turns the state into a
``TensorRange``. ``get_state``/``from_state`` express the state as a flat mapping of numpy arrays and Python
scalars, so it can cross process boundaries without pickle (e.g. ``np.savez``).

``samples_seen`` counts *elements* (scalar values) seen, not batches, in every qcompile calibrator.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, Self, runtime_checkable

import numpy as np

from qcompile.errors import CalibrationError
from qcompile.numerics.qparams import TensorRange

State = dict[str, "np.ndarray | float | int"]


@runtime_checkable
class Calibrator(Protocol):
    """One per tensor (or per channel group). See the module docstring for the contract."""

    def update(self, batch: np.ndarray) -> None:
        """Fold one batch into the state: O(bins) or O(channels) memory, never O(samples)."""

    def merge(self, other: Self) -> None:
        """Fold another calibrator of the same type and configuration into this one (associative;
        merging an empty calibrator is a no-op)."""

    def compute(self) -> TensorRange:
        """The calibrated range; ``CalibrationError`` if the calibrator saw no data."""

    @property
    def samples_seen(self) -> int:
        """Number of elements seen (summed over merges)."""

    def get_state(self) -> State:
        """Configuration and statistics as numpy arrays and Python scalars (no pickle needed)."""

    @classmethod
    def from_state(cls, state: State) -> Self:
        """Rebuild a calibrator from ``get_state()``'s output."""


def float_array(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a float32 or float64 array (float16 and small integers widen to float32, others to float64)."""
    x = np.asarray(batch)
    if not np.issubdtype(x.dtype, np.floating) or x.dtype.itemsize < 4:
        x = x.astype(np.float32 if x.dtype.itemsize <= 2 else np.float64)
    return x


def check_finite(lo: float, hi: float, owner: str) -> None:
    """Given a batch's min and max: NaN propagates through both, ±Inf shows in one of them."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CalibrationError(f"{owner}: calibration batch holds NaN or Inf values")


def finite_array(batch: np.ndarray, owner: str) -> np.ndarray:
    """``float_array(batch)``; ``CalibrationError`` if it holds NaN or Inf (one min and one max reduction)."""
    x = float_array(batch)
    if x.size:
        check_finite(x.min(), x.max(), owner)
    return x


def no_data_error(owner: str) -> CalibrationError:
    return CalibrationError(f"{owner} saw no data: cannot compute a range")


def check_same(kind: str, mine: object, theirs: object) -> None:
    """Merging calibrators configured differently is a programming error, not a user error."""
    if mine != theirs:
        raise ValueError(f"cannot merge calibrators with different {kind}: {mine!r} vs {theirs!r}")


def batch_generator(seed: int, batch: np.ndarray) -> np.random.Generator:
    """A generator seeded by ``seed`` and the batch's content (dtype, shape, bytes), not by its position in the
    stream: a sampling calibrator then draws the same sample of a batch whichever shard sees it and after
    whatever batches came before, so sharded and single-process calibration agree bit for bit."""
    x = np.ascontiguousarray(batch)
    digest = hashlib.blake2b(x.view(np.uint8).reshape(-1), digest_size=8,
                             person=f"{x.dtype.str}{x.shape}"[:16].encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest, "little")])

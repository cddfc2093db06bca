"""Checks one raw calibration item against the model inputs and returns the coerced, read-only feed dict.

Each failure is a one-line ``CalibrationDataError`` naming the file or item, the input, expected and found:
input names (missing and unexpected), dtype (rules below), rank, fixed dims, symbolic dims > 0, empty batch,
axis-0 agreement between inputs sharing the same symbolic batch dim name, NaN/Inf in float data.

Dtype rules (data dtype -> model dtype)

- same dtype: passed through unchanged;
- float -> float (float64 -> float32, float16 -> float32, float32 -> float16 ...): cast; an error if the cast
  overflows to inf;
- integer -> float: cast (token ids or pixel values fed to a float input are common); an error on overflow;
- integer -> integer: cast when always safe (int32 -> int64, uint8 -> int32 ...), otherwise only when every
  value fits the model's type (int64 -> int32);
- float -> integer, bool -> anything else, anything else -> bool, and all other combinations: error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from qcompile.data.specs import Feed, InputSpec, data_error, format_names, format_shape, past_sequence_axis


def coerce_dtype(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``arr`` cast to the input's dtype by the rules in the module docstring, or a one-line error."""
    have, want = arr.dtype, spec.dtype
    if have == want:
        return arr
    hk, wk = have.kind, want.kind
    mismatch = f"{where}: input '{spec.name}': expected dtype {want}, found {have}"
    if wk == "f" and hk in "fiu":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want)
        if out.size and not np.isfinite(out).all():
            raise data_error(f"{mismatch}: values overflow {want}")
        return out
    if wk in "iu" and hk in "iu":
        if np.can_cast(have, want, "safe"):
            return arr.astype(want)
        info = np.iinfo(want)
        if arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max):
            return arr.astype(want)
        raise data_error(f"{mismatch}: values in [{int(arr.min())}, {int(arr.max())}] do not fit {want}")
    if wk in "iu" and hk == "f":
        raise data_error(f"{mismatch}: float data cannot feed an integer input")
    raise data_error(f"{mismatch}: no safe conversion")


def check_finite(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    """Float data holds no NaN or Inf."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise data_error(f"{where}: input '{spec.name}' holds {bad} non-finite value(s) (NaN or Inf) "
                         f"out of {arr.size}")


def check_shape(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    """The model's rank, its fixed dims, symbolic dims > 0 and a non-empty batch; a past KV cache's sequence
    axis may be 0 (the prefill of a decoder starts from an empty cache)."""
    expected = f"expected shape {format_shape(spec.shape)}, found {tuple(arr.shape)}"
    if spec.shape is not None and arr.ndim != len(spec.shape):
        raise data_error(f"{where}: input '{spec.name}': rank {arr.ndim} != model rank {len(spec.shape)} "
                         f"({expected})")
    if arr.ndim and arr.shape[0] == 0 and (spec.shape is None or not isinstance(spec.shape[0], int)):
        raise data_error(f"{where}: input '{spec.name}': empty batch (dim 0 is 0; {expected})")
    if spec.shape is None:
        return
    may_be_empty = past_sequence_axis(spec)
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, int):
            if got != want:
                raise data_error(f"{where}: input '{spec.name}': dim {axis} is {got}, model fixes it to {want} "
                                 f"({expected})")
        elif got <= 0 and not (got == 0 and axis == may_be_empty):
            raise data_error(f"{where}: input '{spec.name}': dim {axis} is {got}, must be > 0 ({expected})")


def as_array(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    """``value`` as a numeric ndarray (lists and scalars are converted), or a one-line error."""
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise data_error(f"{where}: input '{spec.name}': not an array ({type(value).__name__}: {exc})") from None
    if arr.dtype.kind == "O" and spec.dtype.kind != "O":
        raise data_error(f"{where}: input '{spec.name}': not a numeric array ({type(value).__name__})")
    return arr


class FeedValidator:
    """Checks one raw item against the model inputs and returns the coerced, read-only feed dict."""

    def __init__(self, specs: Sequence[InputSpec]):
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]

    def names(self, found: Iterable[str], where: str, holder: str) -> None:
        """Every model input is there and nothing else is."""
        found = set(found)
        missing = set(self.order) - found
        if missing:
            raise data_error(f"{where}: missing input(s) {format_names(missing)}; the model needs "
                             f"{format_names(self.order)}, the {holder} has {format_names(found)}")
        extra = found - set(self.order)
        if extra:
            raise data_error(f"{where}: unexpected name(s) {format_names(extra)}; the model's inputs are "
                             f"{format_names(self.order)}")

    def to_mapping(self, item: Any, where: str) -> Mapping[str, Any]:
        """A mapping as is; a bare array feeds the only input of a single-input model."""
        if isinstance(item, Mapping):
            return item
        if isinstance(item, np.ndarray) and len(self.order) == 1:
            return {self.order[0]: item}
        if isinstance(item, np.ndarray):
            raise data_error(f"{where}: a bare array can only feed a single-input model; this model has inputs "
                             f"{format_names(self.order)}, pass a dict of arrays keyed by input name")
        raise data_error(f"{where}: expected a mapping of input name to array, found {type(item).__name__}")

    def __call__(self, item: Any, where: str) -> Feed:
        mapping = self.to_mapping(item, where)
        bad_keys = [k for k in mapping if not isinstance(k, str)]
        if bad_keys:
            raise data_error(f"{where}: keys must be input names (str), found {bad_keys[0]!r}")
        self.names(mapping.keys(), where, "item" if where.startswith("item") else "file")
        feed: Feed = {}
        batch_seen: dict[str, tuple[str, int]] = {}
        for name in self.order:
            spec = self.specs[name]
            arr = as_array(mapping[name], spec, where)
            if arr.dtype.kind == "f" and spec.dtype.kind == "f":
                check_finite(arr, spec, where)
            arr = coerce_dtype(arr, spec, where)  # checks casts for overflow itself
            check_shape(arr, spec, where)
            if spec.shape and isinstance(spec.shape[0], str) and arr.ndim:
                dim_name = spec.shape[0]
                if dim_name in batch_seen and batch_seen[dim_name][1] != arr.shape[0]:
                    other, n = batch_seen[dim_name]
                    raise data_error(f"{where}: inputs '{other}' and '{name}' share batch dim '{dim_name}' but "
                                     f"have {n} and {arr.shape[0]} rows")
                batch_seen.setdefault(dim_name, (name, arr.shape[0]))
            view = arr.view()
            view.flags.writeable = False
            feed[name] = view
        return feed

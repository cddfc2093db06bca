"""Sample rows of a calibration item and the ``num_samples`` cap.

A sample is one row along axis 0. An item is divisible (it may be cut to its first rows) only when every input
with rank >= 1 has the same axis-0 length and the model leaves that axis symbolic; then it holds that many rows.
Otherwise (fixed batch, disagreeing axis 0, scalars only) it is indivisible and counts as one sample when its
axis-0 lengths disagree or it holds only scalars. Under a cap of n rows, items are taken in order; the item that
would pass the cap is cut to the rows left when divisible and kept whole otherwise (it is never dropped), and
iteration stops once the cap is reached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from qcompile.data.specs import Feed, InputSpec


def item_rows(shapes: Mapping[str, tuple[int, ...]], specs: Mapping[str, InputSpec]) -> tuple[int, bool]:
    """(sample rows in one item, whether it may be cut along axis 0)."""
    lengths = {name: shape[0] for name, shape in shapes.items() if name in specs and len(shape) >= 1}
    if not lengths or len(set(lengths.values())) != 1:
        return 1, False
    divisible = all(specs[n].shape is None or not isinstance(specs[n].shape[0], int) for n in lengths)
    return next(iter(lengths.values())), divisible


def rows_to_take(rows: int, divisible: bool, remaining: int | None) -> int:
    """How many rows of an item are yielded when ``remaining`` rows are left under the cap (None: no cap)."""
    if remaining is None or not divisible:
        return rows
    return min(rows, remaining)


def first_rows(feed: Feed, keep: int) -> Feed:
    """The item cut to its first ``keep`` rows (scalars are kept as they are)."""
    return {name: (arr[:keep] if arr.ndim else arr) for name, arr in feed.items()}


def capped_total(rows: Iterable[tuple[int, bool]], cap: int | None) -> int:
    """Rows yielded from items of ``(rows, divisible)`` under the cap."""
    total, remaining = 0, cap
    for r, divisible in rows:
        keep = rows_to_take(r, divisible, remaining)
        total += keep
        if remaining is not None:
            remaining -= keep
            if remaining <= 0:
                break
    return total

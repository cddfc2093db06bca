"""Held-out eval data: items read from a folder (any --calib format), an .npz file or an iterable of feed dicts.

An .npz file holds arrays keyed by input name; item i is row i of every input array (batch 1, axis 0 kept), for
i < min(rows, max_items). Arrays that are not inputs (labels, texts) are ignored. For a single-input model whose
name is not in the file, the one numeric array with the input's rank is used. Every item is validated like
calibration data (validate.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.config import ImageOptions
from qcompile.data.readers import check_npz_headers
from qcompile.data.source import open_calibration_source
from qcompile.data.specs import Feed, InputSpec
from qcompile.errors import CalibrationDataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    items: tuple[Feed, ...]
    description: str
    held_out: bool = True             # False: calibration items stand in for held-out data


def load_eval_data(data: Any, specs: Sequence[InputSpec], max_items: int,
                   image: ImageOptions = ImageOptions()) -> EvalData:
    """At most ``max_items`` validated eval items from a folder, an .npz file or an iterable (module docstring)."""
    if isinstance(data, (str, Path)) and Path(data).is_file():
        path = Path(data)
        if path.suffix != ".npz":
            raise CalibrationDataError(f"eval data {path} must be a folder or an .npz file")
        items, description = _npz_items(path, specs, max_items)
        source = open_calibration_source(items, specs)
    else:
        source = open_calibration_source(data, specs, num_samples=max_items, image=image)
        description = source.description
    items = tuple(source)
    if not items:
        raise CalibrationDataError(f"eval data {description} holds no items")
    return EvalData(items=items, description=description)


def _npz_items(path: Path, specs: Sequence[InputSpec], max_items: int) -> tuple[list[Feed], str]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationDataError(f"cannot read eval data {path}: {exc}") from None
    with archive:
        check_npz_headers(archive, archive.files, f"eval data {path}")
        names = {spec.name: spec.name for spec in specs if spec.name in archive.files}
        if len(specs) == 1 and not names:
            rank = len(specs[0].shape) if specs[0].shape is not None else None
            candidates = [k for k in archive.files if archive[k].dtype.kind in "fiub"
                          and (rank is None or archive[k].ndim == rank)]
            if len(candidates) == 1:
                names = {specs[0].name: candidates[0]}
                logger.info("eval data %s: using array %r for input %r", path, candidates[0], specs[0].name)
        missing = [s.name for s in specs if s.name not in names]
        if missing:
            raise CalibrationDataError(f"eval data {path} has no array for input(s) {missing} "
                                       f"(arrays: {sorted(archive.files)})")
        arrays = {name: archive[key] for name, key in names.items()}
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) != 1 or any(a.ndim == 0 for a in arrays.values()):
        raise CalibrationDataError(f"eval data {path}: the input arrays disagree on axis 0 ({sorted(rows)})")
    count = min(rows.pop(), max_items)
    items = [{name: array[i:i + 1] for name, array in arrays.items()} for i in range(count)]
    used = ", ".join(f"{name}={key}" if name != key else name for name, key in names.items())
    return items, f"{path} ({used}; first {count} rows)"

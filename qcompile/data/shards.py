"""Shards of a folder source for distributed calibration: runs of whole files with about equal rows.

``plan_shards(source, k)`` reads each file's rows from its header (no array is read) and keeps the files the
``num_samples`` cap reaches: files past it belong to no shard and the file it cuts ends the last shard, which
carries the cut as its own cap. With r_i the rows kept of file i and R = Σ r_i, shard j (0 < j < k) starts at
the first file i after shard j−1's first with Σ_{m<i} r_m ≥ j·R/k, leaving every later shard at least one file
(so there are min(k, files kept) shards). Iterating the shards in order yields exactly the source's feeds. ``open_calibration_shard`` opens one on a worker, which reads
the files itself, so arrays never pass through the driver.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.config import ImageOptions
from qcompile.data.readers import KIND_BY_SUFFIX, FileKind, npy_shape, npz_shapes
from qcompile.data.samples import item_rows, rows_to_take
from qcompile.data.source import CalibrationSource, FolderFiles, folder_source
from qcompile.data.specs import InputSpec, data_error


@dataclass(frozen=True)
class CalibrationShard:
    """A contiguous run of a folder source's files that a worker opens itself (``open_calibration_shard``),
    capped at ``num_samples`` rows. Plain data (names, not arrays): it crosses process boundaries small.
    Iterating the shards of ``plan_shards(source, k)`` in order yields exactly the feeds ``source`` yields."""

    folder: str
    files: tuple[str, ...]
    num_samples: int
    inputs: tuple[InputSpec, ...]
    image: ImageOptions


def _file_rows(files: FolderFiles, path: Path, specs: Mapping[str, InputSpec]) -> tuple[int, bool]:
    """(rows, divisible) of one file from its header; (1, False) when unreadable (the worker reports why)."""
    try:
        if files.kind is FileKind.NPZ:
            return item_rows(npz_shapes(path), specs)
        if files.kind is FileKind.NPY:
            return item_rows({next(iter(specs)): npy_shape(path)}, specs)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        pass
    return 1, False


def plan_shards(source: CalibrationSource, count: int) -> list[CalibrationShard]:
    """Split a folder source into at most ``count`` shards of whole files with about equal rows (module docstring)."""
    files = source.folder_files
    if files is None:
        raise data_error(f"distributed calibration needs a calibration folder that every worker can read; "
                         f"{source.description} is not one")
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    inputs = source.inputs
    specs = {s.name: s for s in inputs}
    kept: list[tuple[Path, int]] = []
    remaining = source.sample_cap
    for path in files.paths:
        rows, divisible = _file_rows(files, path, specs)
        keep = rows_to_take(rows, divisible, remaining)
        kept.append((path, keep))
        if remaining is not None:
            remaining -= keep
            if remaining <= 0:
                break
    count = min(count, len(kept))
    starts = np.concatenate([[0], np.cumsum([rows for _, rows in kept])])
    total = int(starts[-1])
    bounds = [0]
    for k in range(1, count):  # first file of shard k: where the rows pass k/count of the total
        i = bounds[-1] + 1
        while i < len(kept) - (count - k) and starts[i] < total * k / count:
            i += 1
        bounds.append(i)
    bounds.append(len(kept))
    return [CalibrationShard(str(files.folder), tuple(p.name for p, _ in kept[a:b]), int(starts[b] - starts[a]),
                             inputs, files.image) for a, b in zip(bounds, bounds[1:])]


def _named_files(folder: Path, names: Sequence[str]) -> tuple[FileKind, list[Path]]:
    """The shard's files in ``folder``; each must be there, as every worker must see the driver's folder."""
    if not names or any(Path(n).name != n for n in names):
        raise ValueError(f"a shard names plain files of its folder, got {list(names)[:3]}")
    paths = [folder / name for name in names]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise data_error(f"calibration file {missing} is not there: every worker must see the calibration folder "
                         f"at the path the driver gave ({folder})")
    return KIND_BY_SUFFIX[Path(names[0]).suffix.lower()], paths


def open_calibration_shard(shard: CalibrationShard) -> CalibrationSource:
    """The validated, streaming source of one shard, read from the worker's own view of the folder."""
    folder = Path(shard.folder)
    kind, paths = _named_files(folder, shard.files)
    return folder_source(folder, kind, paths, shard.inputs, shard.num_samples, shard.image)

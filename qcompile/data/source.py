"""Calibration sources: a folder of .npz / .npy / image files, or any iterable of feed dicts.

``open_calibration_source(calib, inputs)`` turns what the user passed into a ``CalibrationSource``: an iterable
of validated feed dicts ``{input name: ndarray}``, one per file or item, each possibly carrying a batch of
several samples along axis 0. Data is streamed: files are opened one at a time when the iteration reaches
them and iterables are pulled lazily, so peak memory is one item whatever the sample count.

What ``calib`` may be

- a folder (``str`` or ``Path``) of ``.npz`` files (arrays keyed by input name), or ``.npy`` files (single-input
  models only), or images ``.png/.jpg/.jpeg`` (models with one float input of rank 4); see readers.py.
- a list or tuple of feed dicts (re-iterable), or any other iterable of feed dicts. A one-shot iterator
  (a generator) is never materialised: the source can be iterated once, a second iteration raises
  ``CalibrationDataError``. For single-input models an item may be a bare ndarray, and a single feed dict
  (or a bare ndarray) passed as ``calib`` counts as a one-item list.

Each item is checked by validate.py; ``num_samples`` caps the rows as samples.py states.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qcompile.config import ImageOptions
from qcompile.data.readers import (FileKind, image_plan, load_image, load_npy, load_npz, npy_shape, npz_shapes,
                                   scan_folder)
from qcompile.data.samples import capped_total, first_rows, item_rows, rows_to_take
from qcompile.data.specs import Feed, InputSpec, data_error, format_names
from qcompile.data.validate import FeedValidator

_RawItems = Callable[[], Iterator[tuple[str, Any]]]


@dataclass(frozen=True)
class FolderFiles:
    """The files a folder source reads, in order, and how images among them are decoded."""

    folder: Path
    kind: FileKind
    paths: tuple[Path, ...]
    image: ImageOptions


class CalibrationSource:
    """Validated feed dicts, one per file or item; re-iterable unless built on a one-shot iterator."""

    def __init__(self, raw_items: _RawItems, specs: Sequence[InputSpec], *, description: str,
                 cap: int | None, one_shot: bool, count: Callable[[], int | None] | None = None,
                 files: FolderFiles | None = None):
        self._raw_items = raw_items
        self._files = files
        self._validate = FeedValidator(specs)
        self._specs = {s.name: s for s in specs}
        self._description = description
        self._cap = cap
        self._one_shot = one_shot
        self._started = False
        self._count = count
        self._count_cache: tuple[int | None] | None = None

    @property
    def description(self) -> str:
        return self._description

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        """The model inputs every feed is validated against, in graph order."""
        return tuple(self._specs.values())

    @property
    def sample_cap(self) -> int | None:
        """The ``num_samples`` cap on rows (None: every row)."""
        return self._cap

    @property
    def folder_files(self) -> FolderFiles | None:
        """The files of a folder source (what plan_shards splits); None for an iterable source."""
        return self._files

    @property
    def num_samples(self) -> int | None:
        """Rows the iteration yields (after the cap), or None when unknown without reading the data."""
        if self._count_cache is None:
            self._count_cache = (self._count() if self._count is not None else None,)
        return self._count_cache[0]

    def __iter__(self) -> Iterator[Feed]:
        if self._one_shot:
            if self._started:
                raise data_error(f"calibration data {self._description} is a one-shot iterator and was already "
                                 "consumed; pass a list or a folder to iterate it more than once")
            self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[Feed]:
        remaining = self._cap
        yielded = 0
        for where, raw in self._raw_items():
            feed = self._validate(raw, where)
            rows, divisible = item_rows({n: a.shape for n, a in feed.items()}, self._specs)
            keep = rows_to_take(rows, divisible, remaining)
            if keep < rows:
                feed = first_rows(feed, keep)
            yielded += 1
            yield feed
            if remaining is not None:
                remaining -= keep
                if remaining <= 0:
                    return
        if not yielded:
            raise data_error(f"calibration data is empty: {self._description} yielded no items")

    def __repr__(self) -> str:
        return f"CalibrationSource({self._description})"


def folder_source(folder: Path, kind: FileKind, paths: Sequence[Path], specs: Sequence[InputSpec],
                  cap: int | None, image: ImageOptions) -> CalibrationSource:
    """The streaming source over ``paths`` (files of one kind in ``folder``), read one file at a time."""
    label = f"{len(paths)} {kind.value} file{'s' if len(paths) != 1 else ''}"
    description = f"folder {folder.as_posix().rstrip('/')}/ ({label}" + (f", first {cap} samples)" if cap else ")")
    spec_map = {s.name: s for s in specs}
    validator = FeedValidator(specs)

    if kind is FileKind.NPY:
        if len(specs) != 1:
            raise data_error(f"calibration folder {folder} holds .npy files, which feed single-input models only; "
                             f"this model has inputs {format_names(spec_map)} (use .npz files keyed by input name)")
        name = specs[0].name

        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", {name: load_npy(path)}

        def count() -> int | None:
            try:
                return capped_total((item_rows({name: npy_shape(p)}, spec_map) for p in paths), cap)
            except (OSError, ValueError, EOFError):
                return None

    elif kind is FileKind.NPZ:
        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", load_npz(path, validator)

        def count() -> int | None:
            try:
                return capped_total((item_rows(npz_shapes(p), spec_map) for p in paths), cap)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
                return None

    else:
        plan = image_plan(specs, image, folder)

        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", load_image(path, plan)

        def count() -> int | None:
            return len(paths) if cap is None else min(cap, len(paths))

    return CalibrationSource(raw, specs, description=description, cap=cap, one_shot=False, count=count,
                             files=FolderFiles(folder, kind, tuple(paths), image))


def _iterable_source(calib: Iterable[Any], specs: Sequence[InputSpec], cap: int | None) -> CalibrationSource:
    spec_map = {s.name: s for s in specs}
    one_shot = iter(calib) is calib if not isinstance(calib, (list, tuple)) else False
    if isinstance(calib, (list, tuple)):
        if not calib:
            raise data_error(f"calibration data is empty: an empty {type(calib).__name__}")
        description = f"{type(calib).__name__} of {len(calib)} item{'s' if len(calib) != 1 else ''}"
    elif one_shot:
        description = f"{type(calib).__name__} (one-shot iterator)"
    else:
        description = f"iterable {type(calib).__name__}"
    if cap:
        description += f", first {cap} samples"

    def raw() -> Iterator[tuple[str, Any]]:
        for index, item in enumerate(calib):
            yield f"item {index}", item

    def count() -> int | None:
        if not isinstance(calib, (list, tuple)):
            return None
        rows = []
        for item in calib:
            if isinstance(item, np.ndarray) and len(specs) == 1:
                item = {specs[0].name: item}
            if not isinstance(item, Mapping):
                return None
            try:
                shapes = {k: np.shape(v) for k, v in item.items() if k in spec_map}
            except (ValueError, TypeError):  # ragged lists: validation names the item when it is reached
                return None
            rows.append(item_rows(shapes, spec_map))
        return capped_total(rows, cap)

    return CalibrationSource(raw, specs, description=description, cap=cap, one_shot=one_shot, count=count)


def open_calibration_source(calib: Any, inputs: Sequence[InputSpec], *, num_samples: int | None = None,
                            image: ImageOptions = ImageOptions()) -> CalibrationSource:
    """Wrap ``calib`` (folder path, or iterable of feed dicts) as a validated, streaming CalibrationSource.

    Nothing is loaded here except the folder listing; validation happens item by item during iteration.
    """
    specs = list(inputs)
    if not specs:
        raise data_error("the model has no inputs to feed with calibration data")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise data_error(f"model input names are not unique: {names}")
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
        raise data_error(f"num_samples must be >= 1, got {num_samples}")
    if isinstance(calib, CalibrationSource):
        return calib
    if isinstance(calib, (str, os.PathLike)):
        folder = Path(calib)
        kind, paths = scan_folder(folder)
        return folder_source(folder, kind, paths, specs, num_samples, image)
    if isinstance(calib, (Mapping, np.ndarray)):
        return _iterable_source([calib], specs, num_samples)
    if isinstance(calib, (bytes, bytearray)) or not isinstance(calib, Iterable):
        raise data_error(f"calibration data must be a folder path or an iterable of feed dicts, "
                         f"found {type(calib).__name__}")
    return _iterable_source(calib, specs, num_samples)

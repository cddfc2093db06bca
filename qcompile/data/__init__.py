"""Calibration data sources: a folder of .npz / .npy / image files, or any iterable of feed dicts.

``open_calibration_source(calib, inputs)`` turns what the user passed into a ``CalibrationSource``: an iterable
of validated feed dicts ``{input name: ndarray}``, one per file or item, each possibly carrying a batch of
several samples along axis 0. Data is streamed: files are opened one at a time when the iteration reaches
them and iterables are pulled lazily, so peak memory is one item whatever the sample count.

What ``calib`` may be

- a folder (``str`` or ``Path``) of ``.npz`` files (arrays keyed by input name), or ``.npy`` files (single-input
  models only), or images ``.png/.jpg/.jpeg`` (models with one float input of rank 4). Files are taken in
  name order, subfolders and files of other kinds are ignored, and mixing kinds is an error.
  ``np.load`` always runs with ``allow_pickle=False``.
- a list or tuple of feed dicts (re-iterable), or any other iterable of feed dicts. A one-shot iterator
  (a generator) is never materialised: the source can be iterated once, a second iteration raises
  ``CalibrationDataError``. For single-input models an item may be a bare ndarray, and a single feed dict
  (or a bare ndarray) passed as ``calib`` counts as a one-item list.

Samples and ``num_samples``

A sample is one row along axis 0. ``num_samples`` caps the rows: an item whose rows would pass the cap is cut
to its first rows. An item is cut only when every input with rank >= 1 has the same axis-0 length and the
model leaves that axis symbolic; otherwise (fixed batch, disagreeing axis 0, scalars only) it is indivisible:
an item whose axis-0 lengths disagree, or that holds only scalars, counts as one sample, and an indivisible
item is yielded whole even when it overshoots the cap (it is never dropped).

Shards (distributed calibration)

``plan_shards(source, k)`` cuts a folder source into at most k runs of whole files with about equal rows (read
from file headers) and the same ``num_samples`` cap; ``open_calibration_shard`` opens one on a worker, which
reads the files itself, so arrays never pass through the driver.

Validation (each failure is a one-line ``CalibrationDataError`` naming the file or item, the input, expected
and found): input names (missing and unexpected), dtype (rules below), rank, fixed dims, symbolic dims > 0,
empty batch, axis-0 agreement between inputs sharing the same symbolic batch dim name, NaN/Inf in float data.

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

import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from qcompile.config import ImageLayout, ImageOptions
from qcompile.errors import CalibrationDataError, UnsupportedModelError

__all__ = ["InputSpec", "CalibrationSource", "open_calibration_source", "CalibrationShard", "plan_shards",
           "open_calibration_shard"]

logger = logging.getLogger(__name__)

_NPZ, _NPY, _IMAGE = "npz", "npy", "image"
_KIND_BY_SUFFIX = {".npz": _NPZ, ".npy": _NPY, ".png": _IMAGE, ".jpg": _IMAGE, ".jpeg": _IMAGE}
_KIND_LABEL = {_NPZ: ".npz", _NPY: ".npy", _IMAGE: "image"}

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """What the model expects on one graph input: its name, numpy dtype and shape (ints fixed, str/None symbolic).

    ``shape`` is ``None`` only when the model does not state the rank; then the rank is not checked.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    @classmethod
    def from_value_info(cls, value_info: onnx.ValueInfoProto) -> "InputSpec":
        kind = value_info.type.WhichOneof("value")
        if kind != "tensor_type":
            raise UnsupportedModelError(
                f"input '{value_info.name}' is a {kind or 'untyped value'}, not a tensor; "
                "calibration feeds tensors only")
        tensor_type = value_info.type.tensor_type
        if tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            raise UnsupportedModelError(f"input '{value_info.name}' has no element type")
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if not tensor_type.HasField("shape"):
            return cls(value_info.name, dtype, None)  # type: ignore[arg-type]
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(None)  # unnamed dynamic dim (also -1 written by some exporters)
        return cls(value_info.name, dtype, tuple(dims))


# ---- messages -----------------------------------------------------------------------------------------

def _error(message: str) -> CalibrationDataError:
    """A CalibrationDataError whose message is guaranteed to be one line."""
    return CalibrationDataError(" ".join(str(message).split("\n")).replace("\r", " "))


def _fmt_shape(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "[any rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fmt_names(names: Iterable[str]) -> str:
    return "[" + ", ".join(repr(n) for n in sorted(names)) + "]"


# ---- validation ---------------------------------------------------------------------------------------

def _coerce_dtype(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    have, want = arr.dtype, spec.dtype
    if have == want:
        return arr
    hk, wk = have.kind, want.kind
    mismatch = f"{where}: input '{spec.name}': expected dtype {want}, found {have}"
    if wk == "f" and hk in "fiu":
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want)
        if out.size and not np.isfinite(out).all():
            raise _error(f"{mismatch}: values overflow {want}")
        return out
    if wk in "iu" and hk in "iu":
        if np.can_cast(have, want, "safe"):
            return arr.astype(want)
        info = np.iinfo(want)
        if arr.size == 0 or (int(arr.min()) >= info.min and int(arr.max()) <= info.max):
            return arr.astype(want)
        raise _error(f"{mismatch}: values in [{int(arr.min())}, {int(arr.max())}] do not fit {want}")
    if wk in "iu" and hk == "f":
        raise _error(f"{mismatch}: float data cannot feed an integer input")
    raise _error(f"{mismatch}: no safe conversion")


def _check_finite(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _error(f"{where}: input '{spec.name}' holds {bad} non-finite value(s) (NaN or Inf) "
                     f"out of {arr.size}")


def _check_shape(arr: np.ndarray, spec: InputSpec, where: str) -> None:
    expected = f"expected shape {_fmt_shape(spec.shape)}, found {tuple(arr.shape)}"
    if spec.shape is not None and arr.ndim != len(spec.shape):
        raise _error(f"{where}: input '{spec.name}': rank {arr.ndim} != model rank {len(spec.shape)} ({expected})")
    if arr.ndim and arr.shape[0] == 0 and (spec.shape is None or not isinstance(spec.shape[0], int)):
        raise _error(f"{where}: input '{spec.name}': empty batch (dim 0 is 0; {expected})")
    if spec.shape is None:
        return
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
        if isinstance(want, int):
            if got != want:
                raise _error(f"{where}: input '{spec.name}': dim {axis} is {got}, model fixes it to {want} "
                             f"({expected})")
        elif got <= 0:
            raise _error(f"{where}: input '{spec.name}': dim {axis} is {got}, must be > 0 ({expected})")


def _as_array(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _error(f"{where}: input '{spec.name}': not an array ({type(value).__name__}: {exc})") from None
    if arr.dtype.kind == "O" and spec.dtype.kind != "O":
        raise _error(f"{where}: input '{spec.name}': not a numeric array ({type(value).__name__})")
    return arr


class _Validator:
    """Checks one raw item against the model inputs and returns the coerced, read-only feed dict."""

    def __init__(self, specs: Sequence[InputSpec]):
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]

    def names(self, found: Iterable[str], where: str, holder: str) -> None:
        found = set(found)
        missing = set(self.order) - found
        if missing:
            raise _error(f"{where}: missing input(s) {_fmt_names(missing)}; the model needs {_fmt_names(self.order)},"
                         f" the {holder} has {_fmt_names(found)}")
        extra = found - set(self.order)
        if extra:
            raise _error(f"{where}: unexpected name(s) {_fmt_names(extra)}; the model's inputs are "
                         f"{_fmt_names(self.order)}")

    def to_mapping(self, item: Any, where: str) -> Mapping[str, Any]:
        if isinstance(item, Mapping):
            return item
        if isinstance(item, np.ndarray) and len(self.order) == 1:
            return {self.order[0]: item}
        if isinstance(item, np.ndarray):
            raise _error(f"{where}: a bare array can only feed a single-input model; this model has inputs "
                         f"{_fmt_names(self.order)}, pass a dict of arrays keyed by input name")
        raise _error(f"{where}: expected a mapping of input name to array, found {type(item).__name__}")

    def __call__(self, item: Any, where: str) -> dict[str, np.ndarray]:
        mapping = self.to_mapping(item, where)
        bad_keys = [k for k in mapping if not isinstance(k, str)]
        if bad_keys:
            raise _error(f"{where}: keys must be input names (str), found {bad_keys[0]!r}")
        self.names(mapping.keys(), where, "item" if where.startswith("item") else "file")
        feed: dict[str, np.ndarray] = {}
        batch_seen: dict[str, tuple[str, int]] = {}
        for name in self.order:
            spec = self.specs[name]
            arr = _as_array(mapping[name], spec, where)
            if arr.dtype.kind == "f" and spec.dtype.kind == "f":
                _check_finite(arr, spec, where)
            arr = _coerce_dtype(arr, spec, where)  # checks casts for overflow itself
            _check_shape(arr, spec, where)
            if spec.shape and isinstance(spec.shape[0], str) and arr.ndim:
                dim_name = spec.shape[0]
                if dim_name in batch_seen and batch_seen[dim_name][1] != arr.shape[0]:
                    other, n = batch_seen[dim_name]
                    raise _error(f"{where}: inputs '{other}' and '{name}' share batch dim '{dim_name}' but have "
                                 f"{n} and {arr.shape[0]} rows")
                batch_seen.setdefault(dim_name, (name, arr.shape[0]))
            view = arr.view()
            view.flags.writeable = False
            feed[name] = view
        return feed


# ---- rows and the num_samples cap ---------------------------------------------------------------------

def _rows(shapes: Mapping[str, tuple[int, ...]], specs: Mapping[str, InputSpec]) -> tuple[int, bool]:
    """(sample rows in one item, whether it may be cut along axis 0)."""
    lengths = {name: shape[0] for name, shape in shapes.items() if name in specs and len(shape) >= 1}
    if not lengths or len(set(lengths.values())) != 1:
        return 1, False
    divisible = all(specs[n].shape is None or not isinstance(specs[n].shape[0], int) for n in lengths)
    return next(iter(lengths.values())), divisible


def _take(rows: int, divisible: bool, remaining: int | None) -> int:
    """How many rows of an item are yielded when ``remaining`` rows are left under the cap (None: no cap)."""
    if remaining is None or not divisible:
        return rows
    return min(rows, remaining)


def _cut(feed: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    return {name: (arr[:keep] if arr.ndim else arr) for name, arr in feed.items()}


# ---- the source ---------------------------------------------------------------------------------------

_RawItems = Callable[[], Iterator[tuple[str, Any]]]


class CalibrationSource:
    """Validated feed dicts, one per file or item; re-iterable unless built on a one-shot iterator."""

    def __init__(self, raw_items: _RawItems, specs: Sequence[InputSpec], *, description: str,
                 cap: int | None, one_shot: bool, count: Callable[[], int | None] | None = None,
                 files: _FolderFiles | None = None):
        self._raw_items = raw_items
        self._files = files  # set for folder sources: what plan_shards splits
        self._validate = _Validator(specs)
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
    def num_samples(self) -> int | None:
        """Rows the iteration yields (after the cap), or None when unknown without reading the data."""
        if self._count_cache is None:
            self._count_cache = (self._count() if self._count is not None else None,)
        return self._count_cache[0]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._one_shot:
            if self._started:
                raise _error(f"calibration data {self._description} is a one-shot iterator and was already "
                             "consumed; pass a list or a folder to iterate it more than once")
            self._started = True
        return self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        remaining = self._cap
        yielded = 0
        for where, raw in self._raw_items():
            feed = self._validate(raw, where)
            rows, divisible = _rows({n: a.shape for n, a in feed.items()}, self._specs)
            keep = _take(rows, divisible, remaining)
            if keep < rows:
                feed = _cut(feed, keep)
            yielded += 1
            yield feed
            if remaining is not None:
                remaining -= keep
                if remaining <= 0:
                    return
        if not yielded:
            raise _error(f"calibration data is empty: {self._description} yielded no items")

    def __repr__(self) -> str:
        return f"CalibrationSource({self._description})"


def _capped_total(rows: Iterable[tuple[int, bool]], cap: int | None) -> int:
    total, remaining = 0, cap
    for r, divisible in rows:
        keep = _take(r, divisible, remaining)
        total += keep
        if remaining is not None:
            remaining -= keep
            if remaining <= 0:
                break
    return total


# ---- folders ------------------------------------------------------------------------------------------

def _scan_folder(folder: Path) -> tuple[str, list[Path]]:
    if not folder.exists():
        raise _error(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise _error(f"calibration data {folder} is not a folder (expected a folder of .npz, .npy or image files)")
    try:
        entries = sorted((e for e in os.scandir(folder) if e.is_file()), key=lambda e: e.name)
    except OSError as exc:
        raise _error(f"cannot list calibration folder {folder}: {exc.strerror or exc}") from None
    by_kind: dict[str, list[Path]] = {}
    for entry in entries:
        kind = _KIND_BY_SUFFIX.get(Path(entry.name).suffix.lower())
        if kind is None:
            logger.debug("ignoring %s: not a calibration file", entry.path)
            continue
        by_kind.setdefault(kind, []).append(Path(entry.path))
    if not by_kind:
        raise _error(f"calibration folder {folder} is empty: no .npz, .npy, .png, .jpg or .jpeg files")
    if len(by_kind) > 1:
        counts = ", ".join(f"{len(paths)} {_KIND_LABEL[k]}" for k, paths in sorted(by_kind.items()))
        raise _error(f"calibration folder {folder} mixes file kinds ({counts}); keep one kind per folder")
    (kind, paths), = by_kind.items()
    return kind, paths


def _load_npz(path: Path, validator: _Validator) -> dict[str, np.ndarray]:
    where = f"file {path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _error(f"{where}: unreadable or corrupt .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _error(f"{where}: not a .npz archive (found a single array; name it .npy)")
    with loaded:
        validator.names(loaded.files, where, "file")
        out = {}
        for key in loaded.files:
            try:
                out[key] = loaded[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
                raise _error(f"{where}: array '{key}' cannot be read without pickle or is corrupt "
                             f"({type(exc).__name__}: {exc})") from None
        return out


def _load_npy(path: Path) -> np.ndarray:
    where = f"file {path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _error(f"{where}: unreadable or corrupt .npy file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise _error(f"{where}: not a .npy array (found a .npz archive; name it .npz)")
    return loaded


def _read_header_shape(fp: Any) -> tuple[int, ...]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(fp)
    return tuple(shape)


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as fp:
                    shapes[info.filename[:-4]] = _read_header_shape(fp)
    return shapes


def _npy_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as fp:
        return _read_header_shape(fp)


# ---- images -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImagePlan:
    name: str
    mode: str        # "RGB" or "L"
    size: tuple[int, int]  # (h, w)
    mean: np.ndarray
    std: np.ndarray
    layout: ImageLayout


def _image_plan(specs: Sequence[InputSpec], image: ImageOptions, folder: Path) -> _ImagePlan:
    where = f"calibration folder {folder} holds images"
    if len(specs) != 1:
        raise _error(f"{where}, but the model has {len(specs)} inputs {_fmt_names(s.name for s in specs)}; "
                     "images feed models with one float input of rank 4 (use .npz files)")
    spec = specs[0]
    if spec.dtype.kind != "f" or spec.shape is None or len(spec.shape) != 4:
        raise _error(f"{where}, but input '{spec.name}' is {spec.dtype} {_fmt_shape(spec.shape)}; "
                     "images need one float input of rank 4 (use .npz files)")
    if image.layout is ImageLayout.NCHW:
        channels, h, w = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        h, w, channels = spec.shape[1], spec.shape[2], spec.shape[3]
    if isinstance(channels, int) and channels not in (1, 3):
        raise _error(f"{where}, but input '{spec.name}' {_fmt_shape(spec.shape)} has {channels} channels in "
                     f"layout {image.layout.value}; images give 1 (L) or 3 (RGB)")
    n_channels = 1 if channels == 1 else 3
    if image.size is not None:
        size = (int(image.size[0]), int(image.size[1]))
    elif isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        size = (h, w)
    else:
        raise _error(f"{where}, but input '{spec.name}' {_fmt_shape(spec.shape)} does not fix height and width; "
                     "set the image size")
    mean = np.asarray(image.mean, dtype=np.float32)
    std = np.asarray(image.std, dtype=np.float32)
    if len(mean) != n_channels:
        if len(mean) >= 1 and np.all(mean == mean[0]) and np.all(std == std[0]):
            mean, std = mean[:1].repeat(n_channels), std[:1].repeat(n_channels)
        else:
            raise _error(f"{where}: image mean/std have {len(mean)} values but input '{spec.name}' takes "
                         f"{n_channels} channel(s)")
    return _ImagePlan(spec.name, "L" if n_channels == 1 else "RGB", size, mean, std, image.layout)


def _load_image(path: Path, plan: _ImagePlan) -> dict[str, np.ndarray]:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert(plan.mode)
            h, w = plan.size
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _error(f"file {path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    x = (pixels / 255.0 - plan.mean) / plan.std          # HWC
    if plan.layout is ImageLayout.NCHW:
        x = x.transpose(2, 0, 1)
    return {plan.name: np.ascontiguousarray(x[None], dtype=np.float32)}


# ---- shards (distributed calibration) ------------------------------------------------------------------

@dataclass(frozen=True)
class _FolderFiles:
    """The files a folder source reads, in order, and how images among them are decoded."""

    folder: Path
    kind: str
    paths: tuple[Path, ...]
    image: ImageOptions


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


def _file_rows(files: _FolderFiles, path: Path, specs: Mapping[str, InputSpec]) -> tuple[int, bool]:
    """(rows, divisible) of one file from its header; (1, False) when unreadable (the worker reports why)."""
    try:
        if files.kind == _NPZ:
            return _rows(_npz_shapes(path), specs)
        if files.kind == _NPY:
            return _rows({next(iter(specs)): _npy_shape(path)}, specs)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        pass
    return 1, False


def plan_shards(source: CalibrationSource, count: int) -> list[CalibrationShard]:
    """Split a folder source into at most ``count`` shards of whole files with about equal rows.

    Rows come from file headers (no array is read). The ``num_samples`` cap keeps its meaning: files past
    it belong to no shard and the file it cuts ends the last shard, which carries the cut as its own cap.
    """
    files = source._files
    if files is None:
        raise _error(f"distributed calibration needs a calibration folder that every worker can read; "
                     f"{source.description} is not one")
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    kept: list[tuple[Path, int]] = []
    remaining = source._cap
    for path in files.paths:
        rows, divisible = _file_rows(files, path, source._specs)
        keep = _take(rows, divisible, remaining)
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
    inputs = tuple(source._specs.values())
    return [CalibrationShard(str(files.folder), tuple(p.name for p, _ in kept[a:b]), int(starts[b] - starts[a]),
                             inputs, files.image) for a, b in zip(bounds, bounds[1:])]


def _named_files(folder: Path, names: Sequence[str]) -> tuple[str, list[Path]]:
    if not names or any(Path(n).name != n for n in names):
        raise ValueError(f"a shard names plain files of its folder, got {list(names)[:3]}")
    paths = [folder / name for name in names]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise _error(f"calibration file {missing} is not there: every worker must see the calibration folder "
                     f"at the path the driver gave ({folder})")
    return _KIND_BY_SUFFIX[Path(names[0]).suffix.lower()], paths


def open_calibration_shard(shard: CalibrationShard) -> CalibrationSource:
    """The validated, streaming source of one shard, read from the worker's own view of the folder."""
    return _folder_source(Path(shard.folder), shard.inputs, shard.num_samples, shard.image, names=shard.files)


# ---- entry point --------------------------------------------------------------------------------------

def _folder_source(folder: Path, specs: Sequence[InputSpec], cap: int | None,
                   image: ImageOptions, names: Sequence[str] | None = None) -> CalibrationSource:
    kind, paths = _scan_folder(folder) if names is None else _named_files(folder, names)
    label = f"{len(paths)} {_KIND_LABEL[kind]} file{'s' if len(paths) != 1 else ''}"
    description = f"folder {folder.as_posix().rstrip('/')}/ ({label}" + (f", first {cap} samples)" if cap else ")")
    spec_map = {s.name: s for s in specs}
    validator = _Validator(specs)

    if kind == _NPY:
        if len(specs) != 1:
            raise _error(f"calibration folder {folder} holds .npy files, which feed single-input models only; "
                         f"this model has inputs {_fmt_names(spec_map)} (use .npz files keyed by input name)")
        name = specs[0].name

        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", {name: _load_npy(path)}

        def count() -> int | None:
            try:
                return _capped_total((_rows({name: _npy_shape(p)}, spec_map) for p in paths), cap)
            except (OSError, ValueError, EOFError):
                return None

    elif kind == _NPZ:
        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", _load_npz(path, validator)

        def count() -> int | None:
            try:
                return _capped_total((_rows(_npz_shapes(p), spec_map) for p in paths), cap)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
                return None

    else:
        plan = _image_plan(specs, image, folder)

        def raw() -> Iterator[tuple[str, Any]]:
            for path in paths:
                yield f"file {path}", _load_image(path, plan)

        def count() -> int | None:
            return len(paths) if cap is None else min(cap, len(paths))

    return CalibrationSource(raw, specs, description=description, cap=cap, one_shot=False, count=count,
                             files=_FolderFiles(folder, kind, tuple(paths), image))


def _iterable_source(calib: Iterable[Any], specs: Sequence[InputSpec], cap: int | None) -> CalibrationSource:
    spec_map = {s.name: s for s in specs}
    one_shot = iter(calib) is calib if not isinstance(calib, (list, tuple)) else False
    if isinstance(calib, (list, tuple)):
        if not calib:
            raise _error(f"calibration data is empty: an empty {type(calib).__name__}")
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
            rows.append(_rows(shapes, spec_map))
        return _capped_total(rows, cap)

    return CalibrationSource(raw, specs, description=description, cap=cap, one_shot=one_shot, count=count)


def open_calibration_source(calib: Any, inputs: Sequence[InputSpec], *, num_samples: int | None = None,
                            image: ImageOptions = ImageOptions()) -> CalibrationSource:
    """Wrap ``calib`` (folder path, or iterable of feed dicts) as a validated, streaming CalibrationSource.

    Nothing is loaded here except the folder listing; validation happens item by item during iteration.
    """
    specs = list(inputs)
    if not specs:
        raise _error("the model has no inputs to feed with calibration data")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _error(f"model input names are not unique: {names}")
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
        raise _error(f"num_samples must be >= 1, got {num_samples}")
    if isinstance(calib, CalibrationSource):
        return calib
    if isinstance(calib, (str, os.PathLike)):
        return _folder_source(Path(calib), specs, num_samples, image)
    if isinstance(calib, (Mapping, np.ndarray)):
        return _iterable_source([calib], specs, num_samples)
    if isinstance(calib, (bytes, bytearray)) or not isinstance(calib, Iterable):
        raise _error(f"calibration data must be a folder path or an iterable of feed dicts, "
                     f"found {type(calib).__name__}")
    return _iterable_source(calib, specs, num_samples)


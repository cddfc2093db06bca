"""Reading calibration files: folder listing, .npz / .npy arrays and their headers, images.

A folder's files are taken in name order; subfolders and files of other kinds are ignored and mixing kinds is
an error. ``np.load`` always runs with ``allow_pickle=False``; header reads (shape only) never load an array.

An image becomes one float32 sample  x = (pixels / full_scale − mean) / std  per channel (full_scale 255 for 8-bit
images, 65535 for 16-bit PNGs, whose range is kept), in the model's layout (NCHW or NHWC) with a leading batch of
1: EXIF orientation applied, converted to RGB (3 channels) or L (1), resized bilinearly to the model's fixed
height and width (or the configured size). Every array header and image size is checked against
qcompile/data/limits.py before anything is allocated.
"""

from __future__ import annotations

import enum
import logging
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from qcompile.config import ImageLayout, ImageOptions
from qcompile.data.limits import check_array_header, check_image_size
from qcompile.data.specs import Feed, InputSpec, data_error, format_names, format_shape
from qcompile.data.validate import FeedValidator

logger = logging.getLogger(__name__)


class FileKind(enum.Enum):
    """One kind of calibration file; the value is how messages name it."""

    NPZ = ".npz"
    NPY = ".npy"
    IMAGE = "image"


KIND_BY_SUFFIX = {".npz": FileKind.NPZ, ".npy": FileKind.NPY, ".png": FileKind.IMAGE, ".jpg": FileKind.IMAGE,
                  ".jpeg": FileKind.IMAGE}


def scan_folder(folder: Path) -> tuple[FileKind, list[Path]]:
    """The one kind of calibration file in ``folder`` and its files in name order."""
    if not folder.exists():
        raise data_error(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise data_error(f"calibration data {folder} is not a folder (expected a folder of .npz, .npy or image "
                         "files)")
    try:
        entries = sorted((e for e in os.scandir(folder) if e.is_file()), key=lambda e: e.name)
    except OSError as exc:
        raise data_error(f"cannot list calibration folder {folder}: {exc.strerror or exc}") from None
    by_kind: dict[FileKind, list[Path]] = {}
    for entry in entries:
        kind = KIND_BY_SUFFIX.get(Path(entry.name).suffix.lower())
        if kind is None:
            logger.debug("ignoring %s: not a calibration file", entry.path)
            continue
        by_kind.setdefault(kind, []).append(Path(entry.path))
    if not by_kind:
        raise data_error(f"calibration folder {folder} is empty: no .npz, .npy, .png, .jpg or .jpeg files")
    if len(by_kind) > 1:
        counts = ", ".join(f"{len(paths)} {kind.value}"
                           for kind, paths in sorted(by_kind.items(), key=lambda kv: kv[0].name))
        raise data_error(f"calibration folder {folder} mixes file kinds ({counts}); keep one kind per folder")
    (kind, paths), = by_kind.items()
    return kind, paths


def load_npz(path: Path, validator: FeedValidator) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, its names checked against the model's inputs before any array is read."""
    where = f"file {path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise data_error(f"{where}: unreadable or corrupt .npz file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise data_error(f"{where}: not a .npz archive (found a single array; name it .npy)")
    with loaded:
        validator.names(loaded.files, where, "file")
        out = {}
        check_npz_headers(loaded, loaded.files, where)
        for key in loaded.files:
            try:
                out[key] = loaded[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
                raise data_error(f"{where}: array '{key}' cannot be read without pickle or is corrupt "
                                 f"({type(exc).__name__}: {exc})") from None
        return out


def check_npz_headers(archive: Any, keys: Sequence[str], where: str) -> None:
    """Every array ``keys`` of an open NpzFile is within the limits, from its header alone."""
    for key in keys:
        try:
            with archive.zip.open(f"{key}.npy") as fp:
                shape, dtype = _header(fp)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise data_error(f"{where}: array '{key}' has an unreadable header ({type(exc).__name__}: "
                             f"{exc})") from None
        check_array_header(shape, dtype, f"{where}: array '{key}'")


def load_npy(path: Path) -> np.ndarray:
    """The array of an .npy file."""
    where = f"file {path}"
    try:
        with open(path, "rb") as fp:
            shape, dtype = _header(fp)
    except (OSError, ValueError, EOFError) as exc:
        raise data_error(f"{where}: unreadable or corrupt .npy file ({type(exc).__name__}: {exc})") from None
    check_array_header(shape, dtype, where)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise data_error(f"{where}: unreadable or corrupt .npy file ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise data_error(f"{where}: not a .npy array (found a .npz archive; name it .npz)")
    return loaded


def _header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """An .npy header's shape and dtype (nothing else is read)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(shape), dtype


def _header_shape(fp: Any) -> tuple[int, ...]:
    return _header(fp)[0]


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every array in an .npz file, from the headers."""
    shapes = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as fp:
                    shapes[info.filename[:-4]] = _header_shape(fp)
    return shapes


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape of the array in an .npy file, from its header."""
    with open(path, "rb") as fp:
        return _header_shape(fp)


@dataclass(frozen=True)
class ImagePlan:
    """How every image of a folder becomes the model's one input."""

    name: str
    mode: str              # "RGB" or "L"
    size: tuple[int, int]  # (h, w)
    mean: np.ndarray
    std: np.ndarray
    layout: ImageLayout


def image_plan(specs: Sequence[InputSpec], image: ImageOptions, folder: Path) -> ImagePlan:
    """The plan for a model with one float input of rank 4, or a one-line error saying why images cannot feed it."""
    where = f"calibration folder {folder} holds images"
    if len(specs) != 1:
        raise data_error(f"{where}, but the model has {len(specs)} inputs {format_names(s.name for s in specs)}; "
                         "images feed models with one float input of rank 4 (use .npz files)")
    spec = specs[0]
    if spec.dtype.kind != "f" or spec.shape is None or len(spec.shape) != 4:
        raise data_error(f"{where}, but input '{spec.name}' is {spec.dtype} {format_shape(spec.shape)}; "
                         "images need one float input of rank 4 (use .npz files)")
    if image.layout is ImageLayout.NCHW:
        channels, h, w = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        h, w, channels = spec.shape[1], spec.shape[2], spec.shape[3]
    if isinstance(channels, int) and channels not in (1, 3):
        raise data_error(f"{where}, but input '{spec.name}' {format_shape(spec.shape)} has {channels} channels in "
                         f"layout {image.layout.value}; images give 1 (L) or 3 (RGB)")
    n_channels = 1 if channels == 1 else 3
    if image.size is not None:
        size = (int(image.size[0]), int(image.size[1]))
    elif isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        size = (h, w)
    else:
        raise data_error(f"{where}, but input '{spec.name}' {format_shape(spec.shape)} does not fix height and "
                         "width; pass --image-size N or HxW (API: ImageOptions(size=(h, w)))")
    mean = np.asarray(image.mean, dtype=np.float32)
    std = np.asarray(image.std, dtype=np.float32)
    if len(mean) != n_channels:
        if len(mean) >= 1 and np.all(mean == mean[0]) and np.all(std == std[0]):
            mean, std = mean[:1].repeat(n_channels), std[:1].repeat(n_channels)
        else:
            raise data_error(f"{where}: image mean/std have {len(mean)} values but input '{spec.name}' takes "
                             f"{n_channels} channel(s)")
    return ImagePlan(spec.name, "L" if n_channels == 1 else "RGB", size, mean, std, image.layout)


#: Pillow's modes of 16-bit single-channel images (PNG); their pixels run to 65535.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _unit_pixels(img: Image.Image, plan: ImagePlan) -> np.ndarray:
    """The image as HWC float32 in [0, 1], resized to the plan's size."""
    h, w = plan.size
    if img.mode in _SIXTEEN_BIT_MODES:   # converting to "L" would clip at 255: resize in float instead
        unit = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0, mode="F")
        if unit.size != (w, h):
            unit = unit.resize((w, h), Image.Resampling.BILINEAR)
        pixels = np.asarray(unit, dtype=np.float32)[:, :, None]
        return pixels.repeat(3, axis=2) if plan.mode == "RGB" else pixels
    img = img.convert(plan.mode)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def load_image(path: Path, plan: ImagePlan) -> Feed:
    """One image as the feed ``{input: x}`` of the module docstring."""
    try:
        with warnings.catch_warnings():
            # our own size limit decides (below); Pillow's bomb warning would print before the error line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_image_size(*img.size, f"file {path}")
                img = ImageOps.exif_transpose(img)
                pixels = _unit_pixels(img, plan)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise data_error(f"file {path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None
    x = (pixels - plan.mean) / plan.std                  # HWC
    if plan.layout is ImageLayout.NCHW:
        x = x.transpose(2, 0, 1)
    return {plan.name: np.ascontiguousarray(x[None], dtype=np.float32)}


def data_file_paths(path: str | os.PathLike | None) -> list[Path]:
    """The files a data argument names: the file itself, or a folder's calibration files (a listing only; the
    output guard protects them, and the readers report an unreadable folder)."""
    if not path:
        return []
    p = Path(path)
    if not p.is_dir():
        return [p]
    try:
        return [Path(e.path) for e in os.scandir(p) if e.is_file() and Path(e.name).suffix.lower() in KIND_BY_SUFFIX]
    except OSError:
        return []

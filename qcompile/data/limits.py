"""The limits every calibration / eval file is read under, checked against its header before any allocation.

    .npy / .npz array:  prod(shape) * itemsize ≤ MAX_ARRAY_BYTES      (from the array header; nothing is read)
    image:              max(h, w) ≤ MAX_IMAGE_SIDE  and  h * w ≤ MAX_IMAGE_PIXELS   (the file's own size, from its
                        header, and the size it is resized to); decoding happens only under both
"""

from __future__ import annotations

import math

import numpy as np

from qcompile.config.calibration import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from qcompile.data.specs import data_error

__all__ = ["MAX_ARRAY_BYTES", "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "check_array_header", "check_image_size"]

#: One array of a calibration file; a larger one is refused before it is read.
MAX_ARRAY_BYTES = 4 << 30


def check_array_header(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """A one-line error if the header claims an array over MAX_ARRAY_BYTES."""
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise data_error(f"{where}: its header claims a {dtype} array of shape {tuple(shape)} ({nbytes:,} bytes), "
                         f"over the limit of {MAX_ARRAY_BYTES:,} bytes per array")


def check_image_size(width: int, height: int, where: str) -> None:
    """A one-line error if an image of ``width`` x ``height`` pixels is over the limits."""
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise data_error(f"{where}: {width}x{height} pixels, over the limit of {MAX_IMAGE_SIDE} per side and "
                         f"{MAX_IMAGE_PIXELS:,} in all")

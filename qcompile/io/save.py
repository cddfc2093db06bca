"""Saving a model atomically (through qcompile.io.staging), with its large initializers in external data.

A model whose serialized size is over ``EXTERNAL_DATA_THRESHOLD`` keeps every initializer of at least
``EXTERNAL_DATA_MIN_TENSOR_BYTES`` raw bytes in ONE fresh ``<output stem>.onnx.data`` file next to the output
(protobuf cannot serialize a message over 2 GiB); tensors of at least ``EXTERNAL_ALIGN_MIN_BYTES`` start at offsets
that are multiples of ``EXTERNAL_ALIGNMENT``.  Smaller models are written inline, external references
included: a tensor that refers to external data must hold that data in memory, or saving fails.  The
caller's proto is never modified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from qcompile.errors import ModelSaveError
from qcompile.io.limits import (
    EXTERNAL_ALIGN_MIN_BYTES,
    EXTERNAL_ALIGNMENT,
    EXTERNAL_DATA_MIN_TENSOR_BYTES,
    EXTERNAL_DATA_THRESHOLD,
)
from qcompile.io.messages import one_line
from qcompile.io.staging import StagedFiles, _check_destination, _finish
from qcompile.io.tensors import (
    _copy_message_fields,
    _copy_scalar_fields,
    _external_location,
    _holds_tensors,
    _iter_model_tensors,
    _raw_nbytes,
    _uses_external,
    model_size_bytes,
)

__all__ = ["save_model"]

logger = logging.getLogger(__name__)


def _external_data_path(dest: Path) -> Path:
    """``<stem>.onnx.data`` next to ``dest`` (``<stem>.onnx``)."""
    stem = dest.name[: -len(".onnx")] if dest.name.endswith(".onnx") else dest.stem
    return dest.with_name(f"{stem}.onnx.data")


class _StaleExternalData(Exception):
    """A tensor refers to external data that is not loaded in memory (turned into ModelSaveError)."""


TensorHook = Callable[[onnx.TensorProto, onnx.TensorProto, bool], None]


def _copy_for_save(src, dst, hook: TensorHook, field: str = "") -> None:
    """Copy ``src`` into the empty ``dst``; every TensorProto is copied by ``hook(src, dst, is_initializer)``."""
    if isinstance(src, onnx.TensorProto):
        hook(src, dst, field == "initializer")
        return
    if not _holds_tensors(src):
        dst.CopyFrom(src)
        return
    _copy_scalar_fields(src, dst)
    for fd in src.DESCRIPTOR.fields:
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            target = getattr(dst, fd.name)
            for item in getattr(src, fd.name):
                _copy_for_save(item, target.add(), hook, fd.name)
        elif src.HasField(fd.name):
            sub = getattr(dst, fd.name)
            sub.SetInParent()
            _copy_for_save(getattr(src, fd.name), sub, hook, fd.name)


_TENSOR_DATA_FIELDS = frozenset({"raw_data", "data_location", "external_data"})


def _copy_tensor_meta(src: onnx.TensorProto, dst: onnx.TensorProto) -> None:
    """Everything but the raw data and its location."""
    _copy_scalar_fields(src, dst, skip=_TENSOR_DATA_FIELDS)
    _copy_message_fields(src, dst, skip=_TENSOR_DATA_FIELDS)


def _check_not_stale(t: onnx.TensorProto) -> None:
    if _uses_external(t) and not t.HasField("raw_data"):
        raise _StaleExternalData(f"tensor '{t.name}' refers to external data '{_external_location(t)}' that is "
                                 "not loaded in memory")


def _inline_hook(src: onnx.TensorProto, dst: onnx.TensorProto, is_initializer: bool) -> None:
    _check_not_stale(src)
    if not _uses_external(src):
        dst.CopyFrom(src)
        return
    _copy_tensor_meta(src, dst)
    dst.raw_data = src.raw_data


def _serialize(model: onnx.ModelProto, dest: Path) -> bytes:
    try:
        return model.SerializeToString()
    except Exception as e:  # EncodeError / ValueError above protobuf's 2 GiB limit
        raise ModelSaveError(one_line(f"cannot save model to {dest}: cannot serialize it ({e})")) from e


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               protected: Sequence[str | os.PathLike] = (), staging: StagedFiles | None = None) -> list[Path]:
    """Write ``model`` to ``path`` atomically; return the files written (the .onnx and its data file, if any).

    Models over EXTERNAL_DATA_THRESHOLD bytes keep their initializers of EXTERNAL_DATA_MIN_TENSOR_BYTES or
    more in ``<stem>.onnx.data`` next to ``path``.  The caller's proto is never modified.  With ``staging``
    the files are only staged there, for the caller to commit together with others (or clean up).
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"save_model expects an onnx.ModelProto, not {type(model).__name__}")
    dest = Path(os.path.abspath(os.fspath(path)))
    _check_destination(dest, protected, what="model")
    external = model_size_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_path = _external_data_path(dest)
    if external:
        if data_path == dest:
            raise ModelSaveError(one_line(f"cannot save model to {dest}: its name clashes with its data file"))
        _check_destination(data_path, protected, what="external data file")
    own_staging = staging is None
    staging = staging if staging is not None else StagedFiles()
    try:
        written = [dest]
        if external:
            out = onnx.ModelProto()
            with staging.open(data_path) as f:
                count = 0

                def hook(src: onnx.TensorProto, dst: onnx.TensorProto, is_initializer: bool) -> None:
                    nonlocal count
                    _check_not_stale(src)
                    if not (is_initializer and src.HasField("raw_data")
                            and _raw_nbytes(src) >= EXTERNAL_DATA_MIN_TENSOR_BYTES):
                        _inline_hook(src, dst, is_initializer)
                        return
                    _copy_tensor_meta(src, dst)
                    data = src.raw_data
                    offset = f.tell()
                    if len(data) >= EXTERNAL_ALIGN_MIN_BYTES and offset % EXTERNAL_ALIGNMENT:
                        f.write(b"\0" * (EXTERNAL_ALIGNMENT - offset % EXTERNAL_ALIGNMENT))
                        offset = f.tell()
                    f.write(data)
                    dst.data_location = onnx.TensorProto.EXTERNAL
                    for key, value in (("location", data_path.name), ("offset", str(offset)),
                                       ("length", str(len(data)))):
                        entry = dst.external_data.add()
                        entry.key, entry.value = key, value
                    count += 1

                _copy_for_save(model, out, hook)
                _finish(f)
            if count:
                written.append(data_path)
            else:
                staging.discard(data_path)  # nothing was large enough: no data file
        elif any(_uses_external(t) for t, _ in _iter_model_tensors(model)):
            out = onnx.ModelProto()
            _copy_for_save(model, out, _inline_hook)
        else:
            out = model
        data = _serialize(out, dest)
        del out
        with staging.open(dest) as f:
            f.write(data)
            _finish(f)
        del data
        if own_staging:
            staging.commit()
    except _StaleExternalData as e:
        staging.cleanup()
        raise ModelSaveError(one_line(f"cannot save model to {dest}: {e}")) from None
    except OSError as e:
        staging.cleanup()
        raise ModelSaveError(one_line(f"cannot save model to {dest}: {e.strerror or e}")) from e
    except BaseException:
        staging.cleanup()
        raise
    logger.debug("saved %s", ", ".join(map(str, written)))
    return written



"""Opening a model without reading its external data: the checks of ``load_model``, the bytes left on disk.

For a path, the model file is read and parsed and every external reference is checked by
qcompile.io.external's rules (``resolve_external_refs``), but no referenced byte is read: the caller reads one
tensor at a time (``ExternalRef.read``). Bytes and ModelProto sources hold their data already and are loaded
by ``load_model``. Peak memory is the model file (its inline tensors) rather than the model with its data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcompile.io.external import ExternalRef, resolve_external_refs
from qcompile.io.limits import DEFAULT_MAX_BYTES, EXTERNAL_DATA_MIN_TENSOR_BYTES
from qcompile.io.load import _check_inline_sizes, _check_structure, _parse, _read_model_file, load_model
from qcompile.io.messages import load_error
from qcompile.io.tensors import model_size_bytes
from qcompile.io.wire import WireFormatError, detach_inline_weights

__all__ = ["LazyModel", "open_model_lazily"]


@dataclass(frozen=True)
class LazyModel:
    """A model whose external tensors still point at their (checked) files; ``refs`` says where each is."""

    model: onnx.ModelProto
    path: Path | None
    size_bytes: int                   # with the external data
    refs: tuple[ExternalRef, ...]

    @property
    def source_files(self) -> tuple[Path, ...]:
        files = tuple(dict.fromkeys(r.file for r in self.refs))
        return ((self.path,) if self.path is not None else ()) + files


def open_model_lazily(source: str | os.PathLike | bytes | onnx.ModelProto, *,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> LazyModel:
    """Open ``source`` like ``load_model`` (same one-line ModelLoadErrors) without reading external data."""
    if not isinstance(source, (str, os.PathLike)):
        loaded = load_model(source, max_bytes=max_bytes)
        return LazyModel(loaded.model, None, loaded.size_bytes, ())
    name = os.fspath(source)
    if not name:
        raise load_error("''", "empty path")
    path = Path(os.path.abspath(name))
    _, file_size = _read_model_file(path, name, max_bytes, read=False)
    try:   # inline weights become references into the model file itself (qcompile.io.wire)
        data, _ = detach_inline_weights(path, EXTERNAL_DATA_MIN_TENSOR_BYTES)
    except (WireFormatError, OSError):
        data, file_size = _read_model_file(path, name, max_bytes)
    model = _parse(data, name)
    skeleton_size = len(data)
    del data
    _check_inline_sizes(model, name)
    refs = resolve_external_refs(model, path.parent, name, max_bytes, skeleton_size)
    _check_structure(model, name)
    size = model_size_bytes(model) + sum(r.length for r in refs)
    if size > max_bytes:
        raise load_error(name, f"the model takes {size} bytes, more than the limit of {max_bytes}")
    return LazyModel(model, path, size, tuple(refs))

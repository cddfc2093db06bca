"""Loading a model from a path, its bytes or a ModelProto into a ``LoadedModel`` whose tensors are all in memory.

Rules, each failure a one-line ModelLoadError: the input exists, is a regular non-empty file (or non-empty
bytes) of at most ``max_bytes`` and at most protobuf's ``PROTOBUF_MAX_BYTES`` (refused before it is read); it
parses as ONNX (otherwise the error says what it looks like: PNG, zip, text, ...; messages nested past
protobuf's recursion limit are named as such); it has a graph with at least one node; every in-memory
``raw_data`` holds exactly prod(dims) * itemsize bytes (sizes are computed from shapes elsewhere, so a lying
shape is refused here); external data passes qcompile.io.external's rules; sparse initializers become dense
(qcompile.io.sparse).  Graph-level validation (data flow,
onnx.checker) is qcompile.io.validate's job.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcompile.io.external import _load_external_data, _reject_external
from qcompile.io.limits import DEFAULT_MAX_BYTES, PROTOBUF_MAX_BYTES
from qcompile.io.messages import load_error
from qcompile.io.sparse import densify_sparse_initializers
from qcompile.io.tensors import _iter_model_tensors, _known_nbytes, _uses_external, model_size_bytes

__all__ = ["LoadedModel", "load_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model with every tensor's data in memory.

    ``external_data_files`` lists the (resolved) external data files that were read; callers pass
    ``source_files`` as ``protected`` to ``save_model`` so the output never overwrites its own input.
    """

    model: onnx.ModelProto
    path: Path | None
    size_bytes: int
    external_data_files: tuple[Path, ...] = ()

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The input model file and its external data files (empty for bytes / ModelProto sources)."""
        return ((self.path,) if self.path is not None else ()) + self.external_data_files


def _sniff(data: bytes) -> str | None:
    """A hint of what a non-ONNX file is, for the error message."""
    head = data[:16]
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch checkpoint?)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    sample = data[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return None


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise load_error(name, "it is empty (0 bytes)")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the backend
        kind = _sniff(data)
        reason = f"not an ONNX model (looks like {kind})" if kind else f"not a valid ONNX protobuf ({e})"
        if "MaxDepth" in str(e) or "recursion" in str(e).lower():
            reason = "messages nested deeper than protobuf's recursion limit (subgraphs within subgraphs)"
        raise load_error(name, reason) from e
    if not model.HasField("graph"):
        kind = _sniff(data)
        raise load_error(name, f"not an ONNX model (looks like {kind})" if kind else "the model has no graph")
    return model


def _check_structure(model: onnx.ModelProto, name: str) -> None:
    if not model.HasField("graph"):
        raise load_error(name, "the model has no graph")
    if len(model.graph.node) == 0:
        raise load_error(name, "the model's graph has no nodes")


def _check_inline_sizes(model: onnx.ModelProto, name: str) -> None:
    """Every in-memory raw_data holds exactly the bytes its dtype and shape need (sizes are computed from
    shapes elsewhere, so a lying shape must not get past loading)."""
    for t, where in _iter_model_tensors(model):
        if _uses_external(t) or not t.HasField("raw_data"):
            continue
        expected = _known_nbytes(t)
        if expected is not None and len(t.raw_data) != expected:
            raise load_error(name, f"{where} holds {len(t.raw_data)} bytes of data but its dtype and shape "
                                   f"need {expected}")


def _read_model_file(path: Path, name: str, max_bytes: int) -> tuple[bytes, int]:
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise load_error(name, "no such file") from None
    except IsADirectoryError:
        raise load_error(name, "it is a directory, not a file") from None
    except OSError as e:
        raise load_error(name, e.strerror or str(e)) from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise load_error(name, "it is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise load_error(name, "not a regular file")
        if st.st_size == 0:
            raise load_error(name, "the file is empty")
        if st.st_size > max_bytes:
            raise load_error(name, f"the file is {st.st_size} bytes, more than the limit of {max_bytes}")
        if st.st_size > PROTOBUF_MAX_BYTES:  # refused before reading it into memory
            raise load_error(name, f"the file is {st.st_size} bytes, over protobuf's 2 GiB limit for one message "
                                   "(models this large keep their weights in external data files)")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read()
        except OSError as e:
            raise load_error(name, e.strerror or str(e)) from e
    if len(data) > max_bytes:  # grew after fstat
        raise load_error(name, f"the file is {len(data)} bytes, more than the limit of {max_bytes}")
    return data, st.st_size


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto, *,
               max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedModel:
    """Load a model from a path, its serialized bytes or a ModelProto (deep-copied), validated.

    Raises ModelLoadError (one line) for a missing/unreadable/empty/corrupt/non-ONNX/too large input, a model
    without graph or nodes, and any external data reference that is unsafe or cannot be resolved.
    """
    path: Path | None = None
    files: tuple[Path, ...] = ()
    if isinstance(source, onnx.ModelProto):
        name = "<ModelProto>"
        _reject_external(source, name)
        _check_inline_sizes(source, name)
        size = model_size_bytes(source)
        if size > max_bytes:
            raise load_error(name, f"the model takes {size} bytes, more than the limit of {max_bytes}")
        model = onnx.ModelProto()
        model.CopyFrom(source)  # upb's CopyFrom is a deep copy that also works above 2 GiB
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "<bytes>"
        data = bytes(source)
        if len(data) > max_bytes:
            raise load_error(name, f"{len(data)} bytes, more than the limit of {max_bytes}")
        model = _parse(data, name)
        del data
        _reject_external(model, name)
        _check_inline_sizes(model, name)
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not name:
            raise load_error("''", "empty path")
        path = Path(os.path.abspath(name))
        data, file_size = _read_model_file(path, name, max_bytes)
        model = _parse(data, name)
        del data
        _check_inline_sizes(model, name)  # before external data is read into raw_data (checked there)
        files = _load_external_data(model, path.parent, name, max_bytes, file_size, model_path=path)
    else:
        raise TypeError(f"load_model expects a path, bytes or onnx.ModelProto, not {type(source).__name__}")
    _check_structure(model, name)
    densify_sparse_initializers(model, name, max_bytes)
    size = model_size_bytes(model)
    if size > max_bytes:
        raise load_error(name, f"the model takes {size} bytes, more than the limit of {max_bytes}")
    logger.debug("loaded %s (%d bytes, %d external data files)", name, size, len(files))
    return LoadedModel(model=model, path=path, size_bytes=size, external_data_files=files)


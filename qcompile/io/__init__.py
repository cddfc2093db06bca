"""Loading and saving ONNX models: size limits, external data, safe paths, atomic writes.

This is the only module in qcompile that touches ``onnx.load*`` / ``onnx.save*`` / ``onnx.external_data_helper``.

Loading
    ``load_model`` accepts a path, the serialized bytes or a ``ModelProto`` and returns a ``LoadedModel`` whose
    proto holds every tensor in memory (``raw_data``).  External data is never loaded by onnx's own loader: every
    reference is validated here first (relative location inside the model's folder, no ``..``, no symlink or
    hard link that could alias a file outside it, integer offset/length inside the file, byte count matching
    the tensor's shape) and then read slice by slice.  Tensors inside subgraphs (If/Loop/Scan), functions,
    training info and sparse tensors are covered.  In-memory tensors must hold exactly the bytes their dtype
    and shape need (sizes are computed from shapes, so a lying shape is refused here); a file over protobuf's
    2 GiB message limit is refused before it is read, and messages nested past protobuf's recursion limit are
    named as such.  Graph-level validation (data flow, onnx.checker) is qcompile.io.validate's job.

Saving
    ``save_model`` / ``write_text_atomic`` write to a temporary file in the destination folder and
    ``os.replace`` it into place, so a failure (any exception, KeyboardInterrupt included) leaves no temporary
    file and an existing destination untouched.  They refuse to write over any of the ``protected`` paths (the
    input model and its external data files).  Models over ``EXTERNAL_DATA_THRESHOLD`` bytes store their
    initializers larger than ``EXTERNAL_DATA_MIN_TENSOR_BYTES`` in ONE fresh ``<output stem>.onnx.data`` file
    next to the output; protobuf cannot serialize a message over 2 GiB.

Sizes
    ``model_size_bytes`` gives the serialized size without ever encoding a > 2 GiB message (upb's ``ByteSize``
    encodes the whole message and raises ``EncodeError`` above 2 GiB): large tensors are measured from their
    shape and the rest of the proto with ``ByteSize`` on small shells.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcompile.errors import ModelLoadError, ModelSaveError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EXTERNAL_DATA_MIN_TENSOR_BYTES",
    "EXTERNAL_DATA_THRESHOLD",
    "LoadedModel",
    "load_model",
    "model_size_bytes",
    "save_model",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 2**30
#: Above this serialized size save_model moves initializers to an external data file (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
#: Initializers at least this large (bytes) go to the external data file when one is written.
EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024
#: Tensors whose raw data is larger than this are written at offsets aligned to _EXTERNAL_ALIGNMENT.
_ALIGN_MIN_BYTES = 64 * 1024
_EXTERNAL_ALIGNMENT = 4096
#: Messages whose tensors hold fewer bytes than this are measured with protobuf's own ByteSize.
_BYTESIZE_DIRECT_LIMIT = 64 * 2**20
#: Protobuf cannot parse one message larger than this.
_PROTOBUF_MAX_BYTES = 2**31 - 1
#: ONNX Runtime's marker for external initializers that live in process memory; meaningless in a file.
_ORT_MEM_ADDR_MARKER = "*/_ORT_MEM_ADDR_/*"

_TP = onnx.TensorProto
_EXTERNAL = _TP.EXTERNAL


# ----------------------------------------------------------------------------------------------------------------
# public types


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


# ----------------------------------------------------------------------------------------------------------------
# helpers shared by load and save


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _known_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes of ``raw_data`` implied by dtype and dims, or None when not computable (strings, odd dtypes)."""
    n = 1
    for d in t.dims:
        if d < 0:
            return None
        n *= d
    dt = t.data_type
    size = _ITEMSIZE.get(dt)
    if size is not None:
        return n * size
    per_byte = _SUBBYTE_PER_BYTE.get(dt)
    if per_byte is not None:
        return -(-n // per_byte)
    return None


def _build_itemsize() -> tuple[dict[int, int], dict[int, int]]:
    whole = {
        "FLOAT": 4, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "INT32": 4, "INT64": 8, "BOOL": 1,
        "FLOAT16": 2, "DOUBLE": 8, "UINT32": 4, "UINT64": 8, "COMPLEX64": 8, "COMPLEX128": 16, "BFLOAT16": 2,
        "FLOAT8E4M3FN": 1, "FLOAT8E4M3FNUZ": 1, "FLOAT8E5M2": 1, "FLOAT8E5M2FNUZ": 1, "FLOAT8E8M0": 1,
    }
    sub = {"UINT4": 2, "INT4": 2, "FLOAT4E2M1": 2, "UINT2": 4, "INT2": 4}
    return (
        {getattr(_TP, k): v for k, v in whole.items() if hasattr(_TP, k)},
        {getattr(_TP, k): v for k, v in sub.items() if hasattr(_TP, k)},
    )


_ITEMSIZE, _SUBBYTE_PER_BYTE = _build_itemsize()


def _raw_nbytes(t: onnx.TensorProto) -> int:
    """Length of ``t.raw_data`` — from the shape when possible, since reading the field copies it."""
    if not t.HasField("raw_data"):
        return 0
    n = _known_nbytes(t)
    return n if n is not None else len(t.raw_data)


def _uses_external(t: onnx.TensorProto) -> bool:
    return t.data_location == _EXTERNAL or len(t.external_data) > 0


def _iter_graph_tensors(g: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    for t in g.initializer:
        yield t, f"{where}initializer '{t.name}'"
    for st in g.sparse_initializer:
        yield from _iter_sparse(st, f"{where}sparse initializer '{st.values.name}'")
    yield from _iter_node_tensors(g.node, where)


def _iter_sparse(st: onnx.SparseTensorProto, label: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    if st.HasField("values"):
        yield st.values, f"{label} values"
    if st.HasField("indices"):
        yield st.indices, f"{label} indices"


def _iter_node_tensors(nodes, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
    for node in nodes:
        for a in node.attribute:
            label = f"{where}node '{node.name or node.op_type}' attribute '{a.name}'"
            if a.HasField("t"):
                yield a.t, label
            for t in a.tensors:
                yield t, label
            if a.HasField("sparse_tensor"):
                yield from _iter_sparse(a.sparse_tensor, label)
            for st in a.sparse_tensors:
                yield from _iter_sparse(st, label)
            if a.HasField("g"):
                yield from _iter_graph_tensors(a.g, f"{label}: ")
            for sub in a.graphs:
                yield from _iter_graph_tensors(sub, f"{label}: ")


def _iter_model_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every TensorProto in the model (graph, subgraphs, sparse tensors, functions, training info)."""
    if model.HasField("graph"):
        yield from _iter_graph_tensors(model.graph, "")
    for f in model.functions:
        yield from _iter_node_tensors(f.node, f"function '{f.name}': ")
    for ti in model.training_info:
        if ti.HasField("initialization"):
            yield from _iter_graph_tensors(ti.initialization, "training initialization: ")
        if ti.HasField("algorithm"):
            yield from _iter_graph_tensors(ti.algorithm, "training algorithm: ")


# ----------------------------------------------------------------------------------------------------------------
# size


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _tag_size(field_number: int) -> int:
    return _varint_size(field_number << 3)


# Message types that can (transitively) hold tensors; everything else is measured or copied whole.
_CONTAINERS = (
    onnx.ModelProto, onnx.GraphProto, onnx.NodeProto, onnx.AttributeProto, onnx.FunctionProto,
    onnx.TrainingInfoProto, onnx.SparseTensorProto,
)


def _node_has_tensors(node: onnx.NodeProto) -> bool:
    for a in node.attribute:
        if a.HasField("t") or a.HasField("g") or a.HasField("sparse_tensor"):
            return True
        if len(a.tensors) or len(a.graphs) or len(a.sparse_tensors):
            return True
    return False


def _copy_scalar_fields(src, dst, skip: frozenset[str] = frozenset()) -> None:
    for fd in src.DESCRIPTOR.fields:
        if fd.message_type is not None or fd.name in skip:
            continue
        if fd.is_repeated:
            values = getattr(src, fd.name)
            if len(values):
                getattr(dst, fd.name).extend(values)
        elif src.HasField(fd.name):
            setattr(dst, fd.name, getattr(src, fd.name))


def _message_size(msg) -> int:
    if isinstance(msg, onnx.TensorProto):
        n = _raw_nbytes(msg)
        if n <= _BYTESIZE_DIRECT_LIMIT:
            return msg.ByteSize()
        shell = onnx.TensorProto()
        _copy_scalar_fields(msg, shell, skip=frozenset({"raw_data"}))
        for fd in msg.DESCRIPTOR.fields:  # small sub-messages: segment, external_data, metadata_props
            if fd.message_type is not None:
                if fd.is_repeated:
                    for item in getattr(msg, fd.name):
                        getattr(shell, fd.name).add().CopyFrom(item)
                elif msg.HasField(fd.name):
                    getattr(shell, fd.name).CopyFrom(getattr(msg, fd.name))
        raw_field = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
        return shell.ByteSize() + _tag_size(raw_field) + _varint_size(n) + n
    if not isinstance(msg, _CONTAINERS) or (isinstance(msg, onnx.NodeProto) and not _node_has_tensors(msg)):
        return msg.ByteSize()
    shell = type(msg)()
    _copy_scalar_fields(msg, shell)
    total = shell.ByteSize()
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is None:
            continue
        if fd.is_repeated:
            items = list(getattr(msg, fd.name))
        elif msg.HasField(fd.name):
            items = [getattr(msg, fd.name)]
        else:
            continue
        for item in items:
            n = _message_size(item)
            total += _tag_size(fd.number) + _varint_size(n) + n
    return total


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of ``model`` in bytes, counting every tensor's ``raw_data``.

    Works for protos over 2 GiB (which protobuf cannot serialize): large tensors are measured from their dtype
    and shape instead of encoding them.  Tensors stored externally count only their reference.
    """
    estimate = 0
    for t, _ in _iter_model_tensors(model):
        estimate += _raw_nbytes(t) + 8 * (
            len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data) + len(t.uint64_data))
        if estimate > _BYTESIZE_DIRECT_LIMIT:
            return _message_size(model)
    return model.ByteSize()


# ----------------------------------------------------------------------------------------------------------------
# load


def _load_error(name: str, reason: str) -> ModelLoadError:
    return ModelLoadError(_one_line(f"cannot load model {name}: {reason}"))


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
        raise _load_error(name, "it is empty (0 bytes)")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the backend
        kind = _sniff(data)
        reason = f"not an ONNX model (looks like {kind})" if kind else f"not a valid ONNX protobuf ({e})"
        if "MaxDepth" in str(e) or "recursion" in str(e).lower():
            reason = "messages nested deeper than protobuf's recursion limit (subgraphs within subgraphs)"
        raise _load_error(name, reason) from e
    if not model.HasField("graph"):
        kind = _sniff(data)
        raise _load_error(name, f"not an ONNX model (looks like {kind})" if kind else "the model has no graph")
    return model


def _check_structure(model: onnx.ModelProto, name: str) -> None:
    if not model.HasField("graph"):
        raise _load_error(name, "the model has no graph")
    if len(model.graph.node) == 0:
        raise _load_error(name, "the model's graph has no nodes")


def _check_inline_sizes(model: onnx.ModelProto, name: str) -> None:
    """Every in-memory raw_data holds exactly the bytes its dtype and shape need (sizes are computed from
    shapes elsewhere, so a lying shape must not get past loading)."""
    for t, where in _iter_model_tensors(model):
        if _uses_external(t) or not t.HasField("raw_data"):
            continue
        expected = _known_nbytes(t)
        if expected is not None and len(t.raw_data) != expected:
            raise _load_error(name, f"{where} holds {len(t.raw_data)} bytes of data but its dtype and shape "
                                    f"need {expected}")


def _reject_external(model: onnx.ModelProto, name: str) -> None:
    for t, where in _iter_model_tensors(model):
        if _uses_external(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise _load_error(
                name,
                f"{where} refers to external data '{loc}', which needs a model path to resolve; "
                "load the model from its file instead",
            )


_UINT = re.compile(r"[0-9]+")


@dataclass
class _Ref:
    tensor: onnx.TensorProto
    where: str
    file: Path
    offset: int
    length: int


def _external_info(t: onnx.TensorProto, where: str, name: str) -> tuple[str, int, int | None]:
    entries: dict[str, str] = {}
    for e in t.external_data:
        if e.key in entries:
            raise _load_error(name, f"{where}: duplicate external data key '{e.key}'")
        entries[e.key] = e.value
    location = entries.get("location", "")
    if not location:
        raise _load_error(name, f"{where}: external data without a location")
    if t.data_type == _TP.STRING:
        raise _load_error(name, f"{where}: string tensors cannot use external data")
    numbers: dict[str, int | None] = {}
    for key in ("offset", "length"):
        value = entries.get(key)
        if value is None:
            numbers[key] = None
        elif _UINT.fullmatch(value.strip()):
            numbers[key] = int(value.strip())
        else:
            raise _load_error(name, f"{where}: external data {key} {value!r} is not a non-negative integer")
    return location, numbers["offset"] or 0, numbers["length"]


def _resolve_location(location: str, base_dir: Path, base_real: str, where: str, name: str) -> str:
    if "_ORT_MEM_ADDR_" in location:
        raise _load_error(
            name, f"{where}: external data location {location!r} is ONNX Runtime's in-memory marker, "
            "not a file")
    if "\x00" in location:
        raise _load_error(name, f"{where}: external data location contains a NUL byte")
    norm = location.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(location) or re.match(r"^[A-Za-z]:", norm):
        raise _load_error(name, f"{where}: external data location {location!r} is an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _load_error(name, f"{where}: external data location {location!r} leaves the model's folder")
    if not parts:
        raise _load_error(name, f"{where}: external data location {location!r} names no file")
    real = os.path.realpath(os.path.join(base_dir, *parts))
    if real == base_real or os.path.commonpath([real, base_real]) != base_real:
        raise _load_error(
            name, f"{where}: external data location {location!r} resolves outside the model's folder "
            f"(to {real}; symlink?)")
    return real


def _open_external(real: str, location: str, where: str, name: str) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise _load_error(name, f"{where}: external data file {location!r} not found") from None
    except OSError as e:
        raise _load_error(name, f"{where}: cannot open external data file {location!r}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _load_error(name, f"{where}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise _load_error(
                name, f"{where}: external data file {location!r} has {st.st_nlink} hard links; refusing a file "
                "that may alias one outside the model's folder")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_exact(fd: int, offset: int, length: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as f:  # BufferedReader.read loops past the 2 GiB per-syscall cap
        f.seek(offset)
        return f.read(length)


def _load_external_data(model: onnx.ModelProto, base_dir: Path, name: str, max_bytes: int,
                        file_size: int) -> tuple[Path, ...]:
    externals = [(t, where) for t, where in _iter_model_tensors(model) if _uses_external(t)]
    if not externals:
        return ()
    base_real = os.path.realpath(base_dir)
    opened: dict[str, tuple[int, os.stat_result]] = {}
    try:
        refs: list[_Ref] = []
        for t, where in externals:
            location, offset, length = _external_info(t, where, name)
            real = _resolve_location(location, base_dir, base_real, where, name)
            if real not in opened:
                opened[real] = _open_external(real, location, where, name)
            size = opened[real][1].st_size
            if offset > size:
                raise _load_error(name, f"{where}: external data offset {offset} is past the end of "
                                        f"{location!r} ({size} bytes)")
            if length is None:
                length = size - offset
            if offset + length > size:
                raise _load_error(name, f"{where}: external data [{offset}, {offset + length}) runs past the end "
                                        f"of {location!r} ({size} bytes)")
            expected = _known_nbytes(t)
            if expected is not None and expected != length:
                raise _load_error(name, f"{where}: external data holds {length} bytes but the tensor's shape "
                                        f"needs {expected}")
            refs.append(_Ref(t, where, Path(real), offset, length))
        total = file_size + sum(r.length for r in refs)
        if total > max_bytes:
            raise _load_error(name, f"the model and its external data take {total} bytes, more than the "
                                    f"limit of {max_bytes}")
        for r in refs:
            data = _read_exact(opened[str(r.file)][0], r.offset, r.length)
            if len(data) != r.length:
                raise _load_error(name, f"{r.where}: external data file {r.file.name!r} shrank while reading")
            r.tensor.raw_data = data
            del data
            r.tensor.ClearField("external_data")
            r.tensor.ClearField("data_location")
    finally:
        for fd, _ in opened.values():
            os.close(fd)
    return tuple(Path(p) for p in opened)


def _read_model_file(path: Path, name: str, max_bytes: int) -> tuple[bytes, int]:
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _load_error(name, "no such file") from None
    except IsADirectoryError:
        raise _load_error(name, "it is a directory, not a file") from None
    except OSError as e:
        raise _load_error(name, e.strerror or str(e)) from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _load_error(name, "it is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise _load_error(name, "not a regular file")
        if st.st_size == 0:
            raise _load_error(name, "the file is empty")
        if st.st_size > max_bytes:
            raise _load_error(name, f"the file is {st.st_size} bytes, more than the limit of {max_bytes}")
        if st.st_size > _PROTOBUF_MAX_BYTES:  # refused before reading it into memory
            raise _load_error(name, f"the file is {st.st_size} bytes, over protobuf's 2 GiB limit for one message "
                                    "(models this large keep their weights in external data files)")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read()
        except OSError as e:
            raise _load_error(name, e.strerror or str(e)) from e
    if len(data) > max_bytes:  # grew after fstat
        raise _load_error(name, f"the file is {len(data)} bytes, more than the limit of {max_bytes}")
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
            raise _load_error(name, f"the model takes {size} bytes, more than the limit of {max_bytes}")
        model = onnx.ModelProto()
        model.CopyFrom(source)  # upb's CopyFrom is a deep copy that also works above 2 GiB
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "<bytes>"
        data = bytes(source)
        if len(data) > max_bytes:
            raise _load_error(name, f"{len(data)} bytes, more than the limit of {max_bytes}")
        model = _parse(data, name)
        del data
        _reject_external(model, name)
        _check_inline_sizes(model, name)
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not name:
            raise _load_error("''", "empty path")
        path = Path(os.path.abspath(name))
        data, file_size = _read_model_file(path, name, max_bytes)
        model = _parse(data, name)
        del data
        _check_inline_sizes(model, name)  # before external data is read into raw_data (checked there)
        files = _load_external_data(model, path.parent, name, max_bytes, file_size)
    else:
        raise TypeError(f"load_model expects a path, bytes or onnx.ModelProto, not {type(source).__name__}")
    _check_structure(model, name)
    size = model_size_bytes(model)
    if size > max_bytes:
        raise _load_error(name, f"the model takes {size} bytes, more than the limit of {max_bytes}")
    logger.debug("loaded %s (%d bytes, %d external data files)", name, size, len(files))
    return LoadedModel(model=model, path=path, size_bytes=size, external_data_files=files)


# ----------------------------------------------------------------------------------------------------------------
# save


def _default_file_mode() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _check_destination(dest: Path, protected: Sequence[str | os.PathLike], *, what: str) -> None:
    parent = dest.parent
    if not parent.is_dir():
        raise ModelSaveError(_one_line(f"cannot write {what} {dest}: folder {parent} does not exist"))
    if dest.is_dir():
        raise ModelSaveError(_one_line(f"cannot write {what} {dest}: it is a directory"))
    if dest.exists() and not dest.is_file():  # renaming over /dev/null or a FIFO would replace the node itself
        raise ModelSaveError(_one_line(f"cannot write {what} {dest}: it exists and is not a regular file"))
    real = os.path.realpath(dest)
    for p in protected:
        if os.path.realpath(p) == real or (dest.exists() and os.path.exists(p) and os.path.samefile(p, dest)):
            raise ModelSaveError(_one_line(
                f"refusing to overwrite the input model file {p} with {what} {dest}; choose another output path"))


def _external_data_path(dest: Path) -> Path:
    stem = dest.name[: -len(".onnx")] if dest.name.endswith(".onnx") else dest.stem
    return dest.with_name(f"{stem}.onnx.data")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few renames (main thread only); a held signal goes to its handler on exit.

    The Python-level handlers are swapped for one that only records, rather than masking the signals: a mask
    covers the calling thread only, and the kernel hands a process-directed signal to any thread that does not
    mask it (ORT's pool threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:       # None: a handler not installed from Python; leave it
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)              # e.g. KeyboardInterrupt, raised here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])       # the default action, now that the files are in place


class StagedFiles:
    """Temporary files in the destination folders, moved into place together by commit() or removed by cleanup().

    commit() renames every file with SIGINT/SIGTERM held back, and if anything interrupts it (a rename fails, or a
    held signal arrives as the signals are released) it removes the files it had moved into place, so a Ctrl-C
    leaves either all of them or none."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, Path]] = []

    def open(self, dest: Path):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        self._pending.append((tmp, dest))
        try:
            os.fchmod(fd, _default_file_mode())
        except OSError:
            pass
        return os.fdopen(fd, "wb")

    def discard(self, dest: Path) -> None:
        """Drop the staged file for ``dest`` (written, then found not to be needed)."""
        for tmp, staged in [p for p in self._pending if p[1] == dest]:
            self._pending.remove((tmp, staged))
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def commit(self) -> None:
        placed: list[Path] = []
        try:
            with _signals_held():
                while self._pending:
                    tmp, dest = self._pending[0]
                    os.replace(tmp, dest)
                    self._pending.pop(0)
                    placed.append(dest)
                for parent in {dest.parent for dest in placed}:  # make the renames durable; best effort
                    _fsync_folder(parent)
        except BaseException:
            for dest in placed:
                with contextlib.suppress(OSError):
                    dest.unlink()
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()


def _fsync_folder(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _finish(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class _StaleExternalData(Exception):
    pass


TensorHook = Callable[[onnx.TensorProto, onnx.TensorProto, bool], None]


def _copy_for_save(src, dst, hook: TensorHook, field: str = "") -> None:
    """Copy ``src`` into the empty ``dst``; every TensorProto is copied by ``hook(src, dst, is_initializer)``."""
    if isinstance(src, onnx.TensorProto):
        hook(src, dst, field == "initializer")
        return
    if not isinstance(src, _CONTAINERS) or (isinstance(src, onnx.NodeProto) and not _node_has_tensors(src)):
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
    for fd in src.DESCRIPTOR.fields:
        if fd.message_type is None or fd.name in _TENSOR_DATA_FIELDS:
            continue
        if fd.is_repeated:
            for item in getattr(src, fd.name):
                getattr(dst, fd.name).add().CopyFrom(item)
        elif src.HasField(fd.name):
            getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))


def _check_not_stale(t: onnx.TensorProto) -> None:
    if _uses_external(t) and not t.HasField("raw_data"):
        loc = next((e.value for e in t.external_data if e.key == "location"), "?")
        raise _StaleExternalData(f"tensor '{t.name}' refers to external data '{loc}' that is not loaded in memory")


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
        raise ModelSaveError(_one_line(f"cannot save model to {dest}: cannot serialize it ({e})")) from e


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
            raise ModelSaveError(_one_line(f"cannot save model to {dest}: its name clashes with its data file"))
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
                    if len(data) >= _ALIGN_MIN_BYTES and offset % _EXTERNAL_ALIGNMENT:
                        f.write(b"\0" * (_EXTERNAL_ALIGNMENT - offset % _EXTERNAL_ALIGNMENT))
                        offset = f.tell()
                    f.write(data)
                    dst.data_location = _EXTERNAL
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
        raise ModelSaveError(_one_line(f"cannot save model to {dest}: {e}")) from None
    except OSError as e:
        staging.cleanup()
        raise ModelSaveError(_one_line(f"cannot save model to {dest}: {e.strerror or e}")) from e
    except BaseException:
        staging.cleanup()
        raise
    logger.debug("saved %s", ", ".join(map(str, written)))
    return written


def write_text_atomic(path: str | os.PathLike, text: str, *, protected: Sequence[str | os.PathLike] = (),
                      staging: StagedFiles | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, refusing any ``protected`` path (with ``staging``: staged
    there only, as in save_model)."""
    dest = Path(os.path.abspath(os.fspath(path)))
    _check_destination(dest, protected, what="file")
    own_staging = staging is None
    staging = staging if staging is not None else StagedFiles()
    try:
        with staging.open(dest) as f:
            f.write(text.encode("utf-8"))
            _finish(f)
        if own_staging:
            staging.commit()
    except OSError as e:
        staging.cleanup()
        raise ModelSaveError(_one_line(f"cannot write {dest}: {e.strerror or e}")) from e
    except BaseException:
        staging.cleanup()
        raise

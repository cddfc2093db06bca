"""Reading external tensor data into memory, with the safety rules that make a hostile reference harmless.

onnx's own loader never sees a reference; every one is checked here first, then read slice by slice:

- its location is relative, has no ``..`` part, no NUL byte, no drive letter and names a file; resolved through
  symlinks it stays strictly inside the model's folder;
- ONNX Runtime's in-memory marker (``*/_ORT_MEM_ADDR_/*``) is refused: it means nothing in a file;
- the file is opened without following a final symlink, is a regular file with one hard link (so it cannot
  alias a file outside the folder);
- ``offset`` and ``length`` are non-negative integers with offset + length <= file size, and length equals
  the bytes the tensor's dtype and shape need; string tensors cannot be external;
- the location is not the model file itself (its protobuf bytes are no tensor's data);
- the model file plus every referenced slice is at most ``max_bytes``.

A model given as bytes or a ModelProto has no folder to resolve against, so any reference in it is refused.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcompile.io.messages import load_error
from qcompile.io.tensors import _external_location, _iter_model_tensors, _known_nbytes, _uses_external

__all__: list[str] = []

_UINT = re.compile(r"[0-9]+")
#: Part of ONNX Runtime's location for external initializers that live in process memory.
_ORT_MEMORY_MARKER = "_ORT_MEM_ADDR_"


@dataclass
class _Ref:
    tensor: onnx.TensorProto
    where: str
    file: Path
    offset: int
    length: int


def _reject_external(model: onnx.ModelProto, name: str) -> None:
    for t, where in _iter_model_tensors(model):
        if _uses_external(t):
            raise load_error(
                name,
                f"{where} refers to external data '{_external_location(t)}', which needs a model path to resolve; "
                "load the model from its file instead",
            )


def _external_info(t: onnx.TensorProto, where: str, name: str) -> tuple[str, int, int | None]:
    entries: dict[str, str] = {}
    for e in t.external_data:
        if e.key in entries:
            raise load_error(name, f"{where}: duplicate external data key '{e.key}'")
        entries[e.key] = e.value
    location = entries.get("location", "")
    if not location:
        raise load_error(name, f"{where}: external data without a location")
    if t.data_type == onnx.TensorProto.STRING:
        raise load_error(name, f"{where}: string tensors cannot use external data")
    numbers: dict[str, int | None] = {}
    for key in ("offset", "length"):
        value = entries.get(key)
        if value is None:
            numbers[key] = None
        elif _UINT.fullmatch(value.strip()):
            numbers[key] = int(value.strip())
        else:
            raise load_error(name, f"{where}: external data {key} {value!r} is not a non-negative integer")
    return location, numbers["offset"] or 0, numbers["length"]


def _resolve_location(location: str, base_dir: Path, base_real: str, where: str, name: str) -> str:
    if _ORT_MEMORY_MARKER in location:
        raise load_error(
            name, f"{where}: external data location {location!r} is ONNX Runtime's in-memory marker, "
            "not a file")
    if "\x00" in location:
        raise load_error(name, f"{where}: external data location contains a NUL byte")
    norm = location.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(location) or re.match(r"^[A-Za-z]:", norm):
        raise load_error(name, f"{where}: external data location {location!r} is an absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise load_error(name, f"{where}: external data location {location!r} leaves the model's folder")
    if not parts:
        raise load_error(name, f"{where}: external data location {location!r} names no file")
    real = os.path.realpath(os.path.join(base_dir, *parts))
    if real == base_real or os.path.commonpath([real, base_real]) != base_real:
        raise load_error(
            name, f"{where}: external data location {location!r} resolves outside the model's folder "
            f"(to {real}; symlink?)")
    return real


def _open_external(real: str, location: str, where: str, name: str) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise load_error(name, f"{where}: external data file {location!r} not found") from None
    except OSError as e:
        raise load_error(name, f"{where}: cannot open external data file {location!r}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise load_error(name, f"{where}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise load_error(
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
                        file_size: int, model_path: Path | None = None) -> tuple[Path, ...]:
    """Check every external reference in ``model`` and read its data into ``raw_data``; return the files read."""
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
            if model_path is not None and real == os.path.realpath(model_path):
                raise load_error(name, f"{where}: external data location {location!r} is the model file itself")
            if real not in opened:
                opened[real] = _open_external(real, location, where, name)
            size = opened[real][1].st_size
            if offset > size:
                raise load_error(name, f"{where}: external data offset {offset} is past the end of "
                                       f"{location!r} ({size} bytes)")
            if length is None:
                length = size - offset
            if offset + length > size:
                raise load_error(name, f"{where}: external data [{offset}, {offset + length}) runs past the end "
                                       f"of {location!r} ({size} bytes)")
            expected = _known_nbytes(t)
            if expected is not None and expected != length:
                raise load_error(name, f"{where}: external data holds {length} bytes but the tensor's shape "
                                       f"needs {expected}")
            refs.append(_Ref(t, where, Path(real), offset, length))
        total = file_size + sum(r.length for r in refs)
        if total > max_bytes:
            raise load_error(name, f"the model and its external data take {total} bytes, more than the "
                                   f"limit of {max_bytes}")
        for r in refs:
            data = _read_exact(opened[str(r.file)][0], r.offset, r.length)
            if len(data) != r.length:
                raise load_error(name, f"{r.where}: external data file {r.file.name!r} shrank while reading")
            r.tensor.raw_data = data
            del data
            r.tensor.ClearField("external_data")
            r.tensor.ClearField("data_location")
    finally:
        for fd, _ in opened.values():
            os.close(fd)
    return tuple(Path(p) for p in opened)

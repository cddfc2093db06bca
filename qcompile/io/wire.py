"""Finding the inline weights of a model file on disk, so they can be read one at a time instead of all at once.

Parsing an ONNX file holds every tensor in memory (and upb's arena frees nothing until the whole message goes).
``detach_inline_weights`` walks the protobuf wire format of the file instead (memory-mapped) and writes a
skeleton: the same bytes, except that every main-graph initializer whose ``raw_data`` (field 9) has at least
``min_bytes`` loses that field and gains an external reference to its own bytes in the model file:

    TensorProto{dims, data_type, name, raw_data = file[o : o + n]}
        → TensorProto{dims, data_type, name, external_data = {location: <model file>, offset: o, length: n},
                      data_location = EXTERNAL}

Lengths of the enclosing GraphProto and ModelProto.graph are re-encoded. The skeleton's references then go
through qcompile.io.external's checks like any external data (inside the folder, a regular file, in range, the
length the dtype and shape need). Wire format: tag = varint(field << 3 | type), type 0 varint, 1 fixed64,
2 length-delimited, 5 fixed32.
"""

from __future__ import annotations

import mmap
from pathlib import Path

__all__ = ["detach_inline_weights"]

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 9, 13, 14
_LENGTH_DELIMITED = 2


class WireFormatError(ValueError):
    """The bytes are not a protobuf message this walker understands (the caller parses the file normally)."""


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, field start, value start, value end) for each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, value_end = _varint(buf, pos)
        elif wire == 1:
            value_end = pos + 8
        elif wire == 5:
            value_end = pos + 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos)
            value_end = pos + length
        else:
            raise WireFormatError(f"unsupported wire type {wire}")
        if value_end > end:
            raise WireFormatError("field runs past its message")
        yield field, wire, field_start, pos, value_end
        pos = value_end


def _delimited(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    return _delimited(1, key.encode()) + _delimited(2, value.encode())


def _tensor(buf, start: int, end: int, location: str, min_bytes: int) -> tuple[bytes, bool]:
    fields = list(_fields(buf, start, end))
    raw = [f for f in fields if f[0] == _TENSOR_RAW_DATA and f[1] == _LENGTH_DELIMITED]
    external = any(f[0] in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION) for f in fields)
    if len(raw) != 1 or external or raw[0][4] - raw[0][3] < min_bytes:
        return bytes(buf[start:end]), False
    _, _, _, offset, stop = raw[0]
    out = bytearray()
    for field in fields:
        if field is not raw[0]:
            out += buf[field[2]:field[4]]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(stop - offset))):
        out += _delimited(_TENSOR_EXTERNAL_DATA, _entry(key, value))
    out += _encode_varint(_TENSOR_DATA_LOCATION << 3) + _encode_varint(1)       # EXTERNAL
    return bytes(out), True


def _graph(buf, start: int, end: int, location: str, min_bytes: int) -> tuple[bytes, int]:
    out, moved = bytearray(), 0
    for field, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if field == _GRAPH_INITIALIZER and wire == _LENGTH_DELIMITED:
            tensor, detached = _tensor(buf, value_start, value_end, location, min_bytes)
            out += _delimited(field, tensor)
            moved += detached
        else:
            out += buf[field_start:value_end]
    return bytes(out), moved


def detach_inline_weights(path: Path, min_bytes: int) -> tuple[bytes, int]:
    """(skeleton bytes, number of tensors detached) for the model file at ``path`` (module docstring).
    Raises WireFormatError when the file is not a message this walker reads."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        out, moved = bytearray(), 0
        for field, wire, field_start, value_start, value_end in _fields(buf, 0, len(buf)):
            if field == _MODEL_GRAPH and wire == _LENGTH_DELIMITED:
                graph, moved = _graph(buf, value_start, value_end, path.name, min_bytes)
                out += _delimited(field, graph)
            else:
                out += buf[field_start:value_end]
        return bytes(out), moved

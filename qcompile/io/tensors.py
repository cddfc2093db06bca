"""Every TensorProto of a model, and the model's serialized size computed without encoding it.

The walk covers the graph's initializers and sparse initializers, node attributes (tensors, sparse tensors,
subgraphs of If/Loop/Scan, recursively), model-local functions and training info.

Sizes: a tensor's ``raw_data`` holds prod(dims) * itemsize bytes (ceil(prod(dims) / k) for the sub-byte types
packing k values per byte).  A protobuf message takes sum over its fields of tag + length varint + payload, so
``model_size_bytes`` measures large tensors from their shape and everything else with ``ByteSize`` on small
shells: upb's ``ByteSize`` encodes the whole message and raises ``EncodeError`` above 2 GiB.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from qcompile.io.limits import BYTESIZE_DIRECT_LIMIT

__all__ = ["model_size_bytes"]

_TP = onnx.TensorProto
_EXTERNAL = _TP.EXTERNAL


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


#: Bytes per element of each whole-byte dtype, and elements per byte of each sub-byte dtype.
_ITEMSIZE, _SUBBYTE_PER_BYTE = _build_itemsize()


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


def _raw_nbytes(t: onnx.TensorProto) -> int:
    """Length of ``t.raw_data`` — from the shape when possible, since reading the field copies it."""
    if not t.HasField("raw_data"):
        return 0
    n = _known_nbytes(t)
    return n if n is not None else len(t.raw_data)


def _uses_external(t: onnx.TensorProto) -> bool:
    return t.data_location == _EXTERNAL or len(t.external_data) > 0


def _external_location(t: onnx.TensorProto) -> str:
    """The ``location`` entry of ``t``'s external data reference, "?" when there is none."""
    return next((e.value for e in t.external_data if e.key == "location"), "?")


# ----------------------------------------------------------------------------------------------------------------
# the tensor walk


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
# message structure, shared with save's copy


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


def _holds_tensors(msg) -> bool:
    """Whether ``msg`` may hold a tensor below it, so it must be walked field by field."""
    return isinstance(msg, _CONTAINERS) and not (isinstance(msg, onnx.NodeProto) and not _node_has_tensors(msg))


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


def _copy_message_fields(src, dst, skip: frozenset[str] = frozenset()) -> None:
    """Copy ``src``'s sub-message fields not in ``skip`` into ``dst`` whole."""
    for fd in src.DESCRIPTOR.fields:
        if fd.message_type is None or fd.name in skip:
            continue
        if fd.is_repeated:
            for item in getattr(src, fd.name):
                getattr(dst, fd.name).add().CopyFrom(item)
        elif src.HasField(fd.name):
            getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))


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


def _message_size(msg) -> int:
    """Serialized size of ``msg``: tag + length varint + payload summed over its fields, recursively."""
    if isinstance(msg, onnx.TensorProto):
        n = _raw_nbytes(msg)
        if n <= BYTESIZE_DIRECT_LIMIT:
            return msg.ByteSize()
        shell = onnx.TensorProto()
        _copy_scalar_fields(msg, shell, skip=frozenset({"raw_data"}))
        _copy_message_fields(msg, shell)  # small sub-messages: segment, external_data, metadata_props
        raw_field = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
        return shell.ByteSize() + _tag_size(raw_field) + _varint_size(n) + n
    if not _holds_tensors(msg):
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
        if estimate > BYTESIZE_DIRECT_LIMIT:
            return _message_size(model)
    return model.ByteSize()

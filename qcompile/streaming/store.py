"""The tensors of a model kept outside its proto, read one at a time.

``detach(lazy)`` turns the model into a skeleton: every main-graph initializer (and Constant node, which becomes an
initializer) of at least ``min_bytes`` keeps its name, dtype and dims in the proto, marked external at a location
that exists nowhere, while its bytes stay where they were (an external data file, read on demand) or move into the
store (inline data; each tensor is copied out and cleared, so the process holds it once). Graph edits on the
skeleton then cost nothing, and the store hands out a tensor as a numpy array when a step needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from qcompile.io.external import ExternalRef
from qcompile.io.lazy import LazyModel
from qcompile.io.limits import EXTERNAL_DATA_MIN_TENSOR_BYTES

DETACHED_LOCATION = "qcompile-detached-tensor"


@dataclass(frozen=True)
class TensorMeta:
    data_type: int
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.data_type))


class WeightStore:
    """Bytes of the detached tensors by name: inline (moved out of the proto) or a checked external reference."""

    def __init__(self) -> None:
        self._inline: dict[str, bytes] = {}
        self._external: dict[str, ExternalRef] = {}
        self.meta: dict[str, TensorMeta] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.meta

    def names(self) -> list[str]:
        return list(self.meta)

    def nbytes(self, name: str) -> int:
        ref = self._external.get(name)
        return ref.length if ref is not None else len(self._inline[name])

    def raw(self, name: str) -> bytes:
        ref = self._external.get(name)
        return ref.read() if ref is not None else self._inline[name]

    def array(self, name: str) -> np.ndarray:
        """The tensor as a (read-only) numpy array; external data is read from its file each time."""
        meta = self.meta[name]
        return np.frombuffer(self.raw(name), dtype=meta.numpy_dtype).reshape(meta.dims)

    def release(self, name: str) -> None:
        """Forget a tensor the output no longer needs (its inline bytes are freed)."""
        self._inline.pop(name, None)
        self._external.pop(name, None)
        self.meta.pop(name, None)

    def _add(self, tensor: onnx.TensorProto, ref: ExternalRef | None) -> None:
        self.meta[tensor.name] = TensorMeta(tensor.data_type, tuple(int(d) for d in tensor.dims))
        if ref is not None:
            self._external[tensor.name] = ref
        else:
            self._inline[tensor.name] = tensor.raw_data
        _make_stub(tensor)


def _make_stub(tensor: onnx.TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "external_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=DETACHED_LOCATION)


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Main-graph Constant nodes holding a tensor become initializers of the same name (no data is copied
    twice: the TensorProto is moved)."""
    kept, moved = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None \
                and len(node.attribute) == 1 and len(node.output) == 1:
            tensor = graph.initializer.add()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            moved += 1
            continue
        kept.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
    return moved


def detach(lazy: LazyModel, min_bytes: int = EXTERNAL_DATA_MIN_TENSOR_BYTES) -> tuple[onnx.ModelProto, WeightStore]:
    """(skeleton, store) for ``lazy`` (see the module docstring). The proto is modified in place."""
    model, store = lazy.model, WeightStore()
    _constants_to_initializers(model.graph)
    by_name = {r.tensor.name: r for r in lazy.refs}
    for tensor in model.graph.initializer:
        ref = by_name.pop(tensor.name, None)
        if ref is not None:
            store._add(tensor, ref)
        elif tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
            store._add(tensor, None)
        elif not tensor.HasField("raw_data") and _typed_field_bytes(tensor) >= min_bytes:
            tensor.raw_data = onnx.numpy_helper.to_array(tensor).tobytes()
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
            store._add(tensor, None)
    for ref in by_name.values():   # external tensors elsewhere (subgraph attributes): read in place
        ref.tensor.raw_data = ref.read()
        ref.tensor.ClearField("external_data")
        ref.tensor.ClearField("data_location")
    return model, store


def _typed_field_bytes(tensor: onnx.TensorProto) -> int:
    return 4 * (len(tensor.float_data) + len(tensor.int32_data)) + 8 * (
        len(tensor.int64_data) + len(tensor.double_data) + len(tensor.uint64_data))

"""A graph without its large weights, for work that needs the structure (shape inference, ORT sessions of
models over protobuf's 2 GB limit): each main-graph constant of >= min_bytes becomes a typed graph input of
the same name, and the arrays are returned beside it, shared with the graph (nothing large is copied)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile.graph.edits import replace_uses

DEFAULT_MIN_BYTES = 1 << 16


def constant_nbytes(constant: gs.Constant) -> int:
    # from shape and dtype: reading .values would load a lazily imported weight
    return int(np.prod(constant.shape, dtype=np.int64)) * np.dtype(constant.dtype).itemsize


def total_constant_bytes(graph: gs.Graph) -> int:
    return sum(constant_nbytes(t) for t in graph.tensors().values() if isinstance(t, gs.Constant))


def weightless_model(graph: gs.Graph, min_bytes: int = DEFAULT_MIN_BYTES, *, load: bool = False
                     ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(model whose large constants are graph inputs, {name: array} when ``load``; else an empty dict)."""
    skeleton = graph.copy()        # copies nodes and tensors, shares the weight arrays
    arrays: dict[str, np.ndarray] = {}
    for tensor in list(skeleton.tensors().values()):
        if isinstance(tensor, gs.Constant) and constant_nbytes(tensor) >= min_bytes:
            placeholder = gs.Variable(tensor.name, dtype=tensor.dtype, shape=list(tensor.shape))
            replace_uses(tensor, placeholder)
            skeleton.inputs.append(placeholder)
            if load:
                arrays[tensor.name] = tensor.values
    return gs.export_onnx(skeleton, do_type_check=False), arrays

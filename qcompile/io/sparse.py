"""Sparse initializers become dense ones at load, so every pass sees an ordinary constant.

A SparseTensorProto holds ``values`` [NNZ], ``indices`` [NNZ] (linear, row-major) or [NNZ, rank] (coordinates)
and ``dims``; its dense form is

    D = zeros(dims, values.dtype);  D.flat[i_k] = v_k       (coordinates: i_k = ravel_multi_index(idx_k, dims))

checked first: the dense size is at most the load limit, indices are integers inside dims, shapes agree.
Anything else is a one-line ModelLoadError. Sparse tensors inside subgraphs or Constant nodes are refused.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from qcompile.io.messages import load_error

__all__ = ["densify_sparse_initializers"]


def _dense(sparse: onnx.SparseTensorProto, name: str, max_bytes: int) -> onnx.TensorProto:
    where = f"sparse initializer '{sparse.values.name}'"
    dims = tuple(int(d) for d in sparse.dims)
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    indices = numpy_helper.to_array(sparse.indices) if sparse.HasField("indices") else np.arange(values.size)
    if any(d < 0 for d in dims):
        raise load_error(name, f"{where}: negative dims {list(dims)}")
    size = math.prod(dims)
    if size * values.dtype.itemsize > max_bytes:
        raise load_error(name, f"{where}: its dense form takes {size * values.dtype.itemsize:,} bytes, more than "
                               f"the limit of {max_bytes:,}")
    if indices.dtype.kind not in "iu":
        raise load_error(name, f"{where}: indices must be integers, found {indices.dtype}")
    if indices.ndim == 2 and indices.shape == (values.size, len(dims)):
        if ((indices < 0) | (indices >= np.asarray(dims))).any():
            raise load_error(name, f"{where}: an index lies outside dims {list(dims)}")
        flat = np.ravel_multi_index(tuple(indices.T), dims) if values.size else np.zeros(0, np.int64)
    elif indices.ndim == 1 and indices.size == values.size:
        if values.size and (indices.min() < 0 or indices.max() >= size):
            raise load_error(name, f"{where}: an index lies outside the {size} elements of dims {list(dims)}")
        flat = indices
    else:
        raise load_error(name, f"{where}: indices of shape {list(indices.shape)} do not match {values.size} "
                               f"values in {len(dims)} dims")
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    return numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


def _has_nested_sparse(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("sparse_tensor") or len(attr.sparse_tensors):
                return True
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            if any(g.sparse_initializer or _has_nested_sparse(g) for g in subgraphs):
                return True
    return False


def densify_sparse_initializers(model: onnx.ModelProto, name: str, max_bytes: int) -> None:
    """Replace the main graph's sparse initializers by dense ones, in place (module docstring)."""
    graph = model.graph
    if _has_nested_sparse(graph):
        raise load_error(name, "sparse tensors in subgraphs or Constant nodes are not supported; store them dense")
    if not graph.sparse_initializer:
        return
    dense = [_dense(sparse, name, max_bytes) for sparse in graph.sparse_initializer]
    del graph.sparse_initializer[:]
    graph.initializer.extend(dense)

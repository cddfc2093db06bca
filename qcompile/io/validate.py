"""Input model validation: a malformed or hostile graph is rejected with one clear line before any work starts.

``check_model_structure(model, name)`` runs, in order:

1. the main graph's data flow, with messages that name the node: every node input is produced by exactly one
   node, graph input or initializer (no dangling reference, no tensor written twice), the node dependencies
   form no cycle, and every graph output is produced (a graph without outputs computes nothing);
2. ``onnx.checker`` (IR and opset versions, operator schemas, attributes, subgraph scoping, model-local
   function recursion, tensor byte counts) on the serialized model — on a topologically sorted copy when the
   graph is valid but written out of order, which ONNX Runtime accepts.

It returns the serialized model ready for ONNX Runtime (``None`` above ``SERIALISABLE_BYTES``, protobuf's 2 GiB
limit less its margin, where these checks are skipped: such a model cannot be serialized as one message). ``with_unique_node_names`` gives the copy
ONNX Runtime can load when the main graph repeats a node name (ORT refuses that; the compiler renames them).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque

import onnx

from qcompile.io.limits import SERIALISABLE_BYTES
from qcompile.errors import ModelLoadError
from qcompile.io.messages import load_error

__all__ = ["check_model_structure", "with_unique_node_names"]

logger = logging.getLogger(__name__)

#: Checker messages can hold whole node dumps; the error line keeps their start.
_MAX_ERROR_CHARS = 800


def _error(name: str, reason: str) -> ModelLoadError:
    return load_error(name, reason, _MAX_ERROR_CHARS)


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"node #{index} ({node.op_type})"


def _check_data_flow(graph: onnx.GraphProto, name: str) -> bool:
    """Raise on dangling inputs, tensors written twice, cycles and missing outputs; return True if sorted."""
    if len(graph.output) == 0:
        raise _error(name, "the graph has no outputs, so it computes nothing")
    sources = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    sources |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in sources:
                raise _error(name, f"{_label(node, index)} writes '{out}', which is already a graph input or "
                                   "initializer; ONNX tensors have exactly one producer")
            if out in producer:
                first = graph.node[producer[out]]
                raise _error(name, f"tensor '{out}' is written by {_label(first, producer[out])} and by "
                                   f"{_label(node, index)}; ONNX tensors have exactly one producer")
            producer[out] = index
    consumers: dict[int, set[int]] = defaultdict(set)
    pending = [0] * len(graph.node)
    in_order = True
    for index, node in enumerate(graph.node):
        for inp in node.input:
            if not inp or inp in sources:
                continue
            if inp not in producer:
                raise _error(name, f"{_label(node, index)} reads '{inp}', which no node, graph input or "
                                   "initializer produces")
            src = producer[inp]
            in_order &= src < index
            if index not in consumers[src]:
                consumers[src].add(index)
                pending[index] += 1
    for out in graph.output:
        if out.name not in producer and out.name not in sources:
            raise _error(name, f"graph output '{out.name}' is not produced by any node")
    if in_order:
        return True
    ready = deque(i for i, n in enumerate(pending) if n == 0)
    done = 0
    while ready:
        i = ready.popleft()
        done += 1
        for j in consumers[i]:
            pending[j] -= 1
            if pending[j] == 0:
                ready.append(j)
    if done < len(graph.node):
        stuck = [_label(graph.node[i], i) for i, n in enumerate(pending) if n > 0]
        raise _error(name, f"the graph has a cycle through {len(stuck)} node(s): {', '.join(stuck[:4])}"
                           + (", ..." if len(stuck) > 4 else ""))
    return False


def _sorted_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its main graph's nodes in dependency order (the graph is known to be acyclic)."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order: list[int] = []
    state = [0] * len(graph.node)  # 0 new, 1 on the stack, 2 emitted
    for root in range(len(graph.node)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            deps = [producer[x] for x in graph.node[i].input if x in producer and state[producer[x]] == 0]
            if deps:
                stack.extend(deps)
            else:
                state[i] = 2
                order.append(i)
                stack.pop()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[i] for i in order]
    sorted_nodes = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(sorted_nodes, nodes):
        dst.CopyFrom(src)
    del copy.graph.node[:]
    copy.graph.node.extend(sorted_nodes)
    return copy


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when no two main-graph nodes share a non-empty name, else a copy with later holders renamed."""
    names = [n.name for n in model.graph.node]
    if len(set(n for n in names if n)) == sum(1 for n in names if n):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    taken = set(names)
    seen: set[str] = set()
    for node in copy.graph.node:
        if not node.name:
            continue
        if node.name in seen:
            k = 1
            while f"{node.name}_{k}" in taken:
                k += 1
            node.name = f"{node.name}_{k}"
            taken.add(node.name)
        seen.add(node.name)
    return copy


def check_model_structure(model: onnx.ModelProto, name: str, size_bytes: int) -> bytes | None:
    """Validate ``model`` (see module docstring); return its serialized form for ONNX Runtime, or None when
    it is too large to serialize as one message (then only the data-flow check ran)."""
    in_order = _check_data_flow(model.graph, name)
    if size_bytes > SERIALISABLE_BYTES:
        logger.info("model %s is %d bytes: onnx.checker skipped (protobuf's 2 GiB message limit)", name, size_bytes)
        return None
    runnable = with_unique_node_names(model)
    data = runnable.SerializeToString()
    checked = data if in_order else _sorted_copy(runnable).SerializeToString()
    try:
        onnx.checker.check_model(checked)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise _error(name, f"not a valid ONNX model: {exc}") from None
    return data

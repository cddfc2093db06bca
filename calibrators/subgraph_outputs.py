"""Expose tensors that live inside If/Loop/Scan bodies as outputs of the main graph, for calibration.

ORT returns only main-graph outputs, so a body tensor t is threaded out through its owner node:

    If    t in one branch  -> an extra If output; the branch that holds t returns t, the other branch
                              returns an empty tensor of t's type (shape (0,)·rank): calibrators skip empty
                              arrays, so the values seen are exactly those of the executed branch.
    Loop  t in the body    -> an extra scan output: the Loop stacks t over iterations, [T, *shape(t)].
    Scan  t in the body    -> an extra scan output (scan_output_axes/directions extended with 0), [T, *shape(t)].

Nesting composes: a tensor k Loop/Scan levels deep comes out with k leading stacking axes, which the collector
merges into the first data axis ([T1·...·Tk·d0, d1, ...]) so per-tensor and per-channel statistics (whose
channel axis is >= 1 or negative) are those of the tensor over every execution. Every threaded variable
carries the shape [T1, ..., Tk, *shape(t)] (ORT's Scan needs the shape of each body output).

One composition is impossible: a tensor of an If branch inside a Loop/Scan body (at any depth). The branch
taken may change between iterations, so one iteration yields shape(t) and the next the empty (0,)·rank, and a
Loop/Scan output must keep one shape over its iterations. Such tensors (``conditional_in_stacking_names``) are
not exposed; the bodies that hold them stay float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

_STACKING_OPS = frozenset({"Loop", "Scan"})
EXPOSED_SUFFIX = "__calib"


@dataclass(frozen=True)
class ExposedTensor:
    """A requested tensor as the main graph now outputs it."""

    requested: str
    output: gs.Variable
    stacked_axes: int          # leading axes added by enclosing Loop/Scan nodes


def own_tensors(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """Tensors produced in ``graph`` itself (its inputs and its nodes' outputs), not in its subgraphs."""
    tensors: dict[str, gs.Tensor] = {t.name: t for t in graph.inputs}
    for node in graph.nodes:
        tensors.update((t.name, t) for t in node.outputs)
    return tensors


def subgraph_tensor_names(graph: gs.Graph) -> set[str]:
    """Names of tensors produced inside any (nested) subgraph of ``graph``."""
    names: set[str] = set()
    for body in graph.subgraphs(recursive=True):
        names.update(own_tensors(body))
    return names


def conditional_in_stacking_names(graph: gs.Graph) -> set[str]:
    """Names of tensors produced in an If branch that lies, at any depth, inside a Loop or Scan body."""
    names: set[str] = set()

    def walk(current: gs.Graph, under_stacking: bool) -> None:
        for node in current.nodes:
            for body in (value for value in node.attrs.values() if isinstance(value, gs.Graph)):
                if node.op == "If" and under_stacking:
                    names.update(own_tensors(body))
                    names.update(subgraph_tensor_names(body))
                else:
                    walk(body, under_stacking or node.op in _STACKING_OPS)

    walk(graph, False)
    return names


def merge_stacked_axes(array: np.ndarray, stacked_axes: int) -> np.ndarray:
    """[T1, ..., Tk, d0, d1, ...] -> [T1·...·Tk·d0, d1, ...] (a stacked scalar becomes a vector)."""
    if stacked_axes == 0:
        return array
    if array.ndim <= stacked_axes:
        return array.reshape(-1)
    merged = int(np.prod(array.shape[:stacked_axes + 1]))   # explicit: -1 is ambiguous for empty arrays
    return array.reshape((merged,) + array.shape[stacked_axes + 1:])


def expose_subgraph_tensors(graph: gs.Graph, names: Iterable[str]) -> dict[str, ExposedTensor]:
    """Rewrite ``graph`` (a copy: this mutates it) so each named body tensor reaches a main-graph output.

    Names not found in any subgraph are left out of the result; the caller decides what that means. The
    caller leaves out ``conditional_in_stacking_names(graph)`` (see module docstring).
    """
    found = _expose(graph, set(names))
    exposed = {}
    for requested, (variable, stacked) in found.items():
        graph.outputs.append(variable)
        exposed[requested] = ExposedTensor(requested, variable, stacked)
    return exposed


def _expose(graph: gs.Graph, wanted: set[str]) -> dict[str, tuple[gs.Variable, int]]:
    """Thread ``wanted`` tensors of nested bodies out to ``graph``'s level: name -> (variable here, stacking)."""
    result: dict[str, tuple[gs.Variable, int]] = {}
    remaining = set(wanted)
    for node in list(graph.nodes):
        if not remaining:
            break
        bodies = [(key, value) for key, value in node.attrs.items() if isinstance(value, gs.Graph)]
        if not bodies:
            continue
        per_body: list[dict[str, tuple[gs.Variable, int]]] = []
        for _, body in bodies:
            here = {name: t for name, t in own_tensors(body).items() if name in remaining}
            inner = _expose(body, remaining - here.keys())
            level = {name: (_as_body_output(body, t), 0) for name, t in here.items()}
            level.update(inner)
            per_body.append(level)
            remaining -= level.keys()
        stacking = 1 if node.op in _STACKING_OPS else 0
        for index, level in enumerate(per_body):
            for name, (inner_variable, stacked) in level.items():
                for other_index, (_, other_body) in enumerate(bodies):
                    if other_index == index:
                        other_body.outputs.append(inner_variable)
                    else:  # the other If branch returns an empty tensor of the same type
                        other_body.outputs.append(_empty_like(other_body, inner_variable))
                if node.op == "Scan":
                    for attr in ("scan_output_axes", "scan_output_directions"):
                        if attr in node.attrs:
                            node.attrs[attr] = list(node.attrs[attr]) + [0]
                outer = gs.Variable(f"{inner_variable.name}{EXPOSED_SUFFIX}", dtype=inner_variable.dtype,
                                    shape=_stacked_shape(inner_variable.shape, stacking))
                node.outputs.append(outer)
                result[name] = (outer, stacked + stacking)
    return result


def _stacked_shape(shape, stacking: int):
    """The shape of a threaded variable: one unknown leading axis per stacking level (None stays unknown)."""
    return None if shape is None else [None] * stacking + list(shape)


def _as_body_output(body: gs.Graph, tensor: gs.Tensor) -> gs.Variable:
    """A variable that can be appended to the body's outputs (a body input or an existing output is copied)."""
    if tensor in body.inputs or tensor in body.outputs or isinstance(tensor, gs.Constant):
        copy = gs.Variable(f"{tensor.name}_copy{EXPOSED_SUFFIX}", dtype=tensor.dtype, shape=tensor.shape)
        body.nodes.append(gs.Node("Identity", name=f"{tensor.name}_Identity{EXPOSED_SUFFIX}",
                                  inputs=[tensor], outputs=[copy]))
        return copy
    if tensor.dtype is None:
        tensor.dtype = np.float32
    return tensor


def _empty_like(body: gs.Graph, variable: gs.Variable) -> gs.Variable:
    rank = len(variable.shape) if variable.shape is not None else 1
    values = np.zeros((0,) * max(rank, 1), dtype=variable.dtype or np.float32)
    empty = gs.Variable(f"{variable.name}_empty{EXPOSED_SUFFIX}", dtype=values.dtype, shape=list(values.shape))
    body.nodes.append(gs.Node("Identity", name=f"{variable.name}_Empty{EXPOSED_SUFFIX}",
                              inputs=[gs.Constant(f"{variable.name}_empty_value{EXPOSED_SUFFIX}", values)],
                              outputs=[empty]))
    return empty

"""Graph edits shared by the passes: rewiring readers of a tensor, fresh names for what a pass adds.

``replace_uses(a, b, readers)`` makes every input slot of ``readers`` that holds a hold b instead:

    node.inputs[i] = b   for every reader node and every i with node.inputs[i] is a

(identity, not name equality: graphsurgeon compares tensors by name). Readers default to all of a's readers.
Graph outputs are left alone; a caller that moves a graph output says so itself. ``Namer(graph)`` hands out
names no tensor or node of the graph has yet.
"""

from __future__ import annotations

from typing import Iterable, MutableSequence

import numpy as np
import onnx_graphsurgeon as gs


class Namer:
    """Fresh tensor/node names, deterministic for a given graph: ``base``, else ``base_1``, ``base_2`` ..."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken = set(graph.tensors()) | {n.name for n in graph.nodes}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def constant(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self(base), np.asarray(values, order="C"))     # keeps 0-d scalars 0-d


def substitute(tensors: MutableSequence[gs.Tensor], old: gs.Tensor, new: gs.Tensor) -> int:
    """Every slot of ``tensors`` (a node's input or output list) holding ``old`` now holds ``new``; returns how many."""
    replaced = 0
    for index, tensor in enumerate(list(tensors)):
        if tensor is old:
            tensors[index] = new
            replaced += 1
    return replaced


def replace_uses(old: gs.Tensor, new: gs.Tensor, readers: Iterable[gs.Node] | None = None) -> int:
    """``readers`` (default: every reader of ``old``) read ``new`` wherever they read ``old``; returns the slots."""
    # a copy: rewiring a slot removes the node from old.outputs while we iterate
    nodes = list(old.outputs if readers is None else readers)
    return sum(substitute(node.inputs, old, new) for node in nodes)


__all__ = ["Namer", "replace_uses", "substitute"]

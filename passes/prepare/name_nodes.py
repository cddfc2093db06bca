"""Node naming: give every node a unique, stable name so selectors, overrides and the report can refer to it.

A node with an empty or repeated name n (k-th of its op type t) becomes ``t_k`` (or ``n_k`` if n was set),
skipping names already taken. Names that are already unique are kept as they are. Nodes inside
If/Loop/Scan bodies share one namespace with the main graph.
"""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from qcompile.graph.scopes import all_nodes
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


def unique_names(names: list[str], op_types: list[str]) -> list[str]:
    """Replace empty and duplicate names with fresh ones; the first holder of a name keeps it."""
    taken = set(n for n in names if n)
    seen: set[str] = set()
    counters: Counter[str] = Counter()
    result = []
    for name, op in zip(names, op_types):
        if name and name not in seen:
            seen.add(name)
            result.append(name)
            continue
        stem = name or op
        while True:
            counters[stem] += 1
            candidate = f"{stem}_{counters[stem]}"
            if candidate not in taken:
                break
        taken.add(candidate)
        seen.add(candidate)
        result.append(candidate)
    return result


class NameNodesPass(GraphPass):
    """Unique names for all nodes, bodies included (see module docstring)."""

    ensures = frozenset({GraphProperty.NAMED_NODES})
    invalidates = frozenset()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        # one namespace for the whole model: selectors and the report name nodes inside If/Loop bodies too
        nodes = all_nodes(graph)
        old = [n.name for n in nodes]
        new = unique_names(old, [n.op for n in nodes])
        renamed = 0
        for node, name in zip(nodes, new):
            if node.name != name:
                node.name = name
                renamed += 1
        return PassResult(modified=False, stats={"renamed": renamed})

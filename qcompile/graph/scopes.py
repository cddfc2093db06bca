"""Walking a graph and the If/Loop/Scan bodies nested in it.

A model is a tree of scopes: the main graph G₀, and for every control-flow node n and graph attribute a of a
scope, the body n.a, itself a scope. The helpers here enumerate that tree:

    all_graphs(G)    G, then every body at any depth (graphsurgeon's order)
    bodies(G)        every body as (parent scope, owner node, attribute, body), outer before inner
    own_tensors(B)   the tensors B produces itself (its inputs and its nodes' outputs): a name B reads that is
                     not among them comes from an enclosing scope
    proto_graphs(g)  the same walk as all_graphs over an onnx GraphProto, depth first
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import onnx
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Body:
    """One If/Loop/Scan body: ``graph`` is attribute ``attr`` of ``node``, a node of ``parent``."""

    parent: gs.Graph
    node: gs.Node
    attr: str
    graph: gs.Graph

    @property
    def owner(self) -> str:
        """'<node>.<attribute>', how reports and reasons name the body."""
        return f"{self.node.name}.{self.attr}"


def all_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """``graph`` and every (nested) body."""
    yield graph
    yield from graph.subgraphs(recursive=True)


def all_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The nodes of ``graph`` and of every (nested) body, main graph first."""
    return [node for g in all_graphs(graph) for node in g.nodes]


def has_subgraphs(graph: gs.Graph) -> bool:
    return any(True for _ in graph.subgraphs())


def bodies(graph: gs.Graph) -> Iterator[Body]:
    """Every body of ``graph``, breadth first: a body comes after the scope that holds it."""
    scopes = [graph]
    index = 0
    while index < len(scopes):
        scope = scopes[index]
        for node in scope.nodes:
            for attr, value in node.attrs.items():
                if isinstance(value, gs.Graph):
                    scopes.append(value)
                    yield Body(scope, node, attr, value)
        index += 1


def own_tensors(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """Tensors produced in ``graph`` itself (its inputs and its nodes' outputs), not in its subgraphs."""
    tensors: dict[str, gs.Tensor] = {t.name: t for t in graph.inputs}
    for node in graph.nodes:
        tensors.update((t.name, t) for t in node.outputs)
    return tensors


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from proto_graphs(g)


__all__ = ["Body", "all_graphs", "all_nodes", "bodies", "has_subgraphs", "own_tensors", "proto_graphs"]

"""Constant folding: every node whose inputs are all constant is evaluated once and replaced by its value.

    Constant() -> c                         becomes the initializer c
    Identity(c) -> c'                       becomes c' = c  (Paddle-style weight chains)
    f(c_1, ..., c_k) -> c'                  becomes c' = f(c_1, ..., c_k)   (e.g. Shape→Gather→Sub→Concat pads)

Shape-only subgraphs are folded wherever the dims they read are static (fold_shapes), so Pad amounts and
Reshape targets computed from Shape become constants even when the batch dim is symbolic.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult

logger = logging.getLogger(__name__)


class FoldConstantsPass(GraphPass):
    """Evaluate every node whose inputs are all constant (see module docstring)."""

    ensures = frozenset({GraphProperty.CONSTANTS_FOLDED})
    invalidates = frozenset()      # folded outputs become constants; other tensors keep their annotations

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = len(graph.nodes)
        constants_before = sum(1 for n in graph.nodes if n.op == "Constant")
        graph.fold_constants(fold_shapes=True, recurse_subgraphs=True, error_ok=True)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        after = len(graph.nodes)
        return PassResult(modified=after != before, stats={
            "nodes_removed": before - after, "constant_nodes_before": constants_before})

"""Cleanup: remove what earlier rewrites left unused and restore topological order.

A node is kept iff some graph output depends on it (graphsurgeon's cleanup, bodies included); the remaining
nodes are sorted so that every node comes after the producers of its inputs.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, PassContext, PassResult


class CleanupPass(GraphPass):
    """graph.cleanup().toposort(); the stats say how many nodes went."""

    invalidates = frozenset()      # removal and reordering keep every annotation

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before = len(graph.nodes)
        graph.cleanup().toposort()
        return PassResult(modified=len(graph.nodes) != before, stats={"removed": before - len(graph.nodes)})

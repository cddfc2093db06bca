"""Shape and type inference: annotate every tensor with its element type and (possibly symbolic) shape.

Runs ONNX's inference from scratch (intermediate annotations dropped first, so shapes that became known after
a fold replace stale unknown dims) with data propagation, over the main graph and every If/Loop/Scan body,
and keeps what it found. Symbolic dims ("batch", "sequence") stay symbolic. ONNX cannot type the outputs of
ops it has no schema for (com.microsoft contrib ops, custom domains): their tensors, and everything after
them, stay untyped. Large weights are handed to ONNX as typed inputs, not values, so models over
protobuf's 2 GB limit are inferred too. When that happens the pass names the first node whose outputs could not be typed, in a
warning, and goes on: the graph keeps what it had, and later passes treat untyped tensors conservatively.
"""

from __future__ import annotations

import logging
import onnx
import onnx_graphsurgeon as gs

from qcompile.graph.scopes import all_graphs
from qcompile.graph.weights import weightless_model
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult

logger = logging.getLogger(__name__)


def _all_variables(graph: gs.Graph) -> dict[str, gs.Variable]:
    variables: dict[str, gs.Variable] = {}
    for g in all_graphs(graph):
        for node in g.nodes:
            for tensor in node.outputs:
                if isinstance(tensor, gs.Variable):
                    variables.setdefault(tensor.name, tensor)
    return variables


def first_untyped_node(graph: gs.Graph) -> gs.Node | None:
    """The first node (in graph order, bodies after the main graph) with an output of unknown element type."""
    for g in all_graphs(graph):
        for node in g.nodes:
            if any(isinstance(t, gs.Variable) and t.dtype is None for t in node.outputs):
                return node
    return None


class InferShapesPass(GraphPass):
    """ONNX shape and type inference over the graph and its bodies (see module docstring)."""

    ensures = frozenset({GraphProperty.SHAPES_INFERRED})
    invalidates = frozenset()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        model, _ = weightless_model(graph)
        # infer from scratch: stale intermediate shapes (e.g. unknown dims from before a fold) would be kept
        del model.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception as exc:  # onnx raises several types; inference is best-effort by design
            message = f"shape inference failed, continuing without it: {str(exc).splitlines()[0]}"
            logger.warning(message)
            ctx.warnings.append(message)
            return PassResult(modified=False, stats={"failed": 1})
        known = _all_variables(gs.import_onnx(inferred))
        inputs = {t.name for g in all_graphs(graph) for t in g.inputs}
        annotated = 0
        for name, tensor in _all_variables(graph).items():
            other = known.get(name)
            if other is None:
                continue
            if tensor.dtype is None and other.dtype is not None:
                tensor.dtype = other.dtype
                annotated += 1
            if other.shape is not None and name not in inputs:
                tensor.shape = other.shape
        stats = {"annotated": annotated}
        blocked = first_untyped_node(graph)
        if blocked is not None:
            untyped = sum(1 for t in _all_variables(graph).values() if t.dtype is None)
            domain = f" (domain {blocked.domain})" if blocked.domain else ""
            message = (f"shape inference could not type {untyped} tensor(s), starting at node {blocked.name!r} "
                       f"(op {blocked.op}{domain}); continuing: nodes reading untyped tensors are treated as float")
            if message not in ctx.warnings:
                logger.warning(message)
                ctx.warnings.append(message)
            stats["untyped_tensors"] = untyped
        return PassResult(modified=False, stats=stats)

"""Q/DQ insertion in the main graph and in every If/Loop/Scan body it contains.

For the main graph G and each (nested) body B, the same rewrite as InsertQDQPass runs on that graph alone:

    x -> DQ(Q(x)),  W -> DQ(W_q),  b -> DQ(b_q)        for the selected compute nodes of that graph

with activation ranges calibrated on the executions of that body (the collector threads body tensors out of
If/Loop/Scan nodes, see calibrators/subgraph_outputs.py). Weights that live in a body (its initializers) and
weights read from an outer scope are both constants here. A body whose tensors never ran on the calibration
data (an If branch no sample takes) has no statistics and stays float, with that reason in the report.

The final-classifier rule applies inside an If branch only when the If's output itself reaches a model output
(then the branch computes the logits); inside Loop and Scan bodies it never applies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompile.calibrators.subgraph_outputs import conditional_in_stacking_names
from qcompile.graph.ops import COMPUTE_OPS
from qcompile.graph.scopes import bodies
from qcompile.pass_infra import CalibratedPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult
from qcompile.passes.quantize.insert_qdq import InsertQDQPass
from qcompile.selection import reaches_output


@dataclass(frozen=True)
class _Scope:
    graph: gs.Graph
    owner: str | None               # "node.attr" of the control-flow node holding it, None for the main graph
    classifier_rule: bool


def graph_scopes(graph: gs.Graph) -> list[_Scope]:
    """The main graph, then every body, outer before inner."""
    scopes = [_Scope(graph, None, True)]
    rule_of = {id(graph): True}        # a scope's classifier rule, for the bodies it holds
    for body in bodies(graph):
        outputs = {t.name for t in body.parent.outputs}
        feeds_logits = rule_of[id(body.parent)] and body.node.op == "If" and any(
            reaches_output(t, outputs) for t in body.node.outputs)
        rule_of.setdefault(id(body.graph), feeds_logits)
        scopes.append(_Scope(body.graph, body.owner, feeds_logits))
    return scopes


class QuantizeAllGraphsPass(CalibratedPass):
    """InsertQDQPass on the main graph and on each If/Loop/Scan body (see module docstring)."""

    requires = InsertQDQPass.requires | {GraphProperty.BODY_INPUTS_LOCAL}   # each body owns what it quantises
    ensures = InsertQDQPass.ensures
    invalidates = InsertQDQPass.invalidates

    def __init__(self) -> None:
        self._passes: dict[int, tuple[_Scope, InsertQDQPass]] = {}

    def _scopes(self, graph: gs.Graph) -> list[tuple[_Scope, InsertQDQPass]]:
        if not self._passes:
            for scope in graph_scopes(graph):
                self._passes[id(scope.graph)] = (scope, InsertQDQPass(
                    subgraph=scope.owner is not None, classifier_rule=scope.classifier_rule))
        return list(self._passes.values())

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        requests = []
        for scope, graph_pass in self._scopes(graph):
            requests.extend(r for r in graph_pass.stat_requests(scope.graph, ctx) if r not in requests)
        return requests

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        modified = False
        unstackable = conditional_in_stacking_names(graph)
        for scope, graph_pass in self._scopes(graph):
            if scope.owner is not None:
                missing = [r for r in graph_pass.stat_requests(scope.graph, ctx) if r not in ctx.statistics]
                if missing:
                    self._keep_float(scope, ctx, stats, any(r.tensor in unstackable for r in missing))
                    continue
            result = graph_pass.run(scope.graph, ctx)
            modified |= result.modified
            for key, value in result.stats.items():
                stats[key if scope.owner is None else f"subgraph_{key}"] += value
            if scope.owner is not None and result.stats.get("quantized"):
                stats["subgraphs_quantized"] += 1
        return PassResult(modified=modified, stats=dict(stats))

    @staticmethod
    def _keep_float(scope: _Scope, ctx: PassContext, stats: Counter, unstackable: bool) -> None:
        reason = (f"{scope.owner} is an If branch inside a Loop/Scan body: the branch taken may change per "
                  "iteration, so its tensors cannot be stacked out for calibration" if unstackable else
                  f"{scope.owner} never ran on the calibration data (no statistics for its tensors)")
        for node in scope.graph.nodes:
            if node.op in COMPUTE_OPS:
                ctx.decide(NodeDecision(node.name, node.op, NodeStatus.SKIPPED, reason))
                stats["subgraph_skipped"] += 1
        stats["subgraphs_not_run"] += 1

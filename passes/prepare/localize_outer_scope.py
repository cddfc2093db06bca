"""Give If/Loop/Scan bodies their own copy of the outer-scope activations their compute nodes read.

A body node may read a tensor x of an enclosing graph directly (ONNX outer-scope reference). For every such
x read as the activation input of a compute node, the body gets

    x_local = Identity(x)        (inside the body; the body's compute nodes read x_local)

so that the body owns a tensor to quantise: its Q/DQ pair gets a name no other graph uses (two If branches
quantising the same x would otherwise both emit ``x_q``), and its range is calibrated over the executions of
that body only. ORT removes the Identity when it optimises the graph.
"""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from qcompile.graph.ops import COMPUTE_OPS
from qcompile.graph.scopes import bodies, own_tensors
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


def _localize(body: gs.Graph, owner: str, stats: Counter) -> bool:
    owned = own_tensors(body)
    local: dict[str, gs.Variable] = {}
    changed = False
    for node in list(body.nodes):
        if node.op not in COMPUTE_OPS or not node.inputs:
            continue
        tensor = node.inputs[0]
        if not isinstance(tensor, gs.Variable) or tensor.name in owned:
            continue
        if tensor.name not in local:
            copy = gs.Variable(f"{tensor.name}_in_{owner}", dtype=tensor.dtype, shape=tensor.shape)
            body.nodes.append(gs.Node("Identity", name=f"{tensor.name}_Identity_in_{owner}",
                                      inputs=[tensor], outputs=[copy]))
            local[tensor.name] = copy
            stats["localized"] += 1
        node.inputs[0] = local[tensor.name]
        changed = True
    if changed:
        body.toposort()
    return changed


class LocalizeOuterScopeInputsPass(GraphPass):
    """An Identity copy in each body of the outer-scope activations its compute nodes read (module docstring)."""

    requires = frozenset({GraphProperty.NAMED_NODES})         # copies are named after their body's owner node
    ensures = frozenset({GraphProperty.BODY_INPUTS_LOCAL})
    invalidates = frozenset()      # each copy carries its source's type and shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        changed = False
        for body in bodies(graph):
            changed |= _localize(body.graph, f"{body.node.name}_{body.attr}", stats)
        return PassResult(modified=changed, stats=dict(stats))

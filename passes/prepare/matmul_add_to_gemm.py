"""Fold a bias Add into the MatMul before it, as a Gemm, when the activation is a matrix:

    y = MatMul(x, W) + b,   x: [M, K],  W: [K, N] constant,  b: [N] or [1, N] constant
      ->  y = Gemm(x, W, b)          (alpha = beta = 1, no transposes)

ORT does the same rewrite itself (MatMulAddFusion) before its Q/DQ fusions run, and a DequantizeLinear ->
MatMul whose float Add has become a Gemm bias is left unfused (a float Gemm on dequantised weights, slower than
FP32). Doing it here lets the quantiser treat the node as a Gemm: int32 bias, re-quantised output, QGemm.
The node keeps the MatMul's name, so selectors and the report still find it. Higher-rank activations are left
alone (MatMulIntegerToFloat takes the bias Add with them).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.scopes import all_graphs
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


def _bias_of(add: gs.Node, matmul_out: gs.Variable, columns: int) -> np.ndarray | None:
    others = [t for t in add.inputs if t is not matmul_out]
    if len(others) != 1 or not isinstance(others[0], gs.Constant):
        return None
    values = others[0].values
    if values.dtype != np.float32 or values.shape not in ((columns,), (1, columns)):
        return None
    return values.reshape(columns)


def _rewrite(graph: gs.Graph, stats: Counter) -> bool:
    outputs = set(id(t) for t in graph.outputs)
    changed = False
    for node in list(graph.nodes):
        if node.op != "MatMul" or len(node.inputs) != 2:
            continue
        x, weight = node.inputs
        out = node.outputs[0]
        # shape and dtype, not .values: reading values would load a lazily imported weight for nothing
        if not (isinstance(weight, gs.Constant) and len(weight.shape) == 2 and np.dtype(weight.dtype) == np.float32):
            continue
        if not isinstance(x, gs.Variable) or x.shape is None or len(x.shape) != 2:
            stats["skipped_not_matrix"] += 1
            continue
        if id(out) in outputs or len(out.outputs) != 1 or out.outputs[0].op != "Add":
            continue
        add = out.outputs[0]
        bias = _bias_of(add, out, int(weight.shape[1]))
        if bias is None:
            continue
        gemm_out = add.outputs[0]
        add.outputs.clear()
        node.outputs.clear()
        graph.nodes.append(gs.Node("Gemm", name=node.name, inputs=[x, weight, gs.Constant(f"{node.name}_bias", bias)],
                                   outputs=[gemm_out]))
        node.inputs.clear()
        add.inputs.clear()
        stats["folded"] += 1
        changed = True
    return changed


class MatMulAddToGemmPass(GraphPass):
    """MatMul + bias Add on a matrix -> Gemm (see module docstring)."""

    requires = frozenset({GraphProperty.SHAPES_INFERRED})     # only rank-2 activations are rewritten
    invalidates = frozenset()      # the Gemm writes the Add's output tensor

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        changed = False
        for scope in all_graphs(graph):
            changed |= _rewrite(scope, stats)
        if changed:
            graph.cleanup().toposort()
        return PassResult(modified=changed, stats=dict(stats))

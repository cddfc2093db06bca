"""Keep the compute nodes qcompile leaves float actually float in ONNX Runtime.

ORT's level-1 WeightBiasQuantization transformer rewrites every Conv, ConvTranspose and Gemm whose activation
input comes straight from a DequantizeLinear with a scalar scale: a float weight W becomes
DQ(Q(W; s = max|W|/127)), symmetric per-tensor INT8, the bias becomes INT32, and with a Q on the output the
group then runs as QLinearConv. A node left float on purpose (--exclude, an accuracy fallback, the classifier)
would silently get per-tensor INT8 weights, coarser than anything qcompile emits. Measured on a 3-Conv model
whose middle Conv was excluded: relative output error 0.112 under ORT's optimiser vs 0.003 as written.

For each such node n = op(DQ(q), W, b) with W a float constant the pass inserts a single-input Max,

    n = op(Max(DQ(q)), W, b)        Max(x) = x exactly,

so n's input no longer comes from a DequantizeLinear. Max is used because ORT's optimiser removes the other
exact copies (Identity, Cast to the same type, Mul by 1) before the transformer runs. The cost is one copy of
the activation per guarded node. Bodies of If/Loop/Scan are treated like the main graph.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.ops import BIASED_OPS, WEIGHT_INPUT
from qcompile.graph.scopes import all_graphs
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult

# WeightBiasQuantization rewrites the compute ops that take a bias
GUARDED_OPS = BIASED_OPS


def needs_guard(node: gs.Node) -> bool:
    """A float Conv/ConvTranspose/Gemm (constant float weight) whose input is a DequantizeLinear's output."""
    if node.op not in GUARDED_OPS or len(node.inputs) <= WEIGHT_INPUT:
        return False
    weight = node.inputs[WEIGHT_INPUT]
    if not isinstance(weight, gs.Constant) or weight.values.dtype != np.float32:
        return False
    source = node.inputs[0]
    producer = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
    return producer is not None and producer.op == "DequantizeLinear"


class KeepFloatPass(GraphPass):
    """Insert x' = Max(x) between a DequantizeLinear and a float Conv/ConvTranspose/Gemm (module docstring)."""

    requires = frozenset({GraphProperty.QUANTIZED})       # it guards what the quantize step left float
    invalidates = frozenset()      # the guard's output carries its input's type and shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        for body in all_graphs(graph):
            for node in [n for n in body.nodes if needs_guard(n)]:
                source = node.inputs[0]
                guarded = gs.Variable(f"{node.name}_float_input", dtype=source.dtype, shape=source.shape)
                body.nodes.append(gs.Node("Max", name=f"{node.name}_KeepFloat", inputs=[source], outputs=[guarded]))
                node.inputs[0] = guarded
                stats["guarded"] += 1
                stats[f"guarded_{node.op}"] += 1
        if stats:
            graph.toposort()
        return PassResult(modified=bool(stats), stats=dict(stats))

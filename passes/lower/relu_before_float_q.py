"""Keep a Relu that feeds an FP8 QuantizeLinear from being dropped by ONNX Runtime.

ORT's level-2 ReluQuantFusion removes Relu → QuantizeLinear's Relu unless the Q's zero point is an int8 ≠ -128
or a uint8 ≠ 0: it assumes the Q clamps at its zero point, which an integer Q with zero point at the bottom
of its range does. A FLOAT8E4M3FN Q is signed with zero point 0 and clamps at ±448·s, so the negative half
survives and the model is wrong (measured: logits cosine 0.99 as written, −0.21 under ORT's optimiser on a
small CNN). ORT's level-1 QDQPropagation first copies a Q backwards through MaxPool, Reshape, Transpose,
Squeeze, Unsqueeze and Slice (onnxruntime/core/optimizer/qdq_transformer/qdq_propagation.cc), so a Relu that
reaches the Q through a single-consumer chain of those ops is dropped as well (measured on fmnist_cnn:
Relu → MaxPool → Q). For each Relu that reaches such a Q that way the pass writes the same function as

    Relu(x)  →  Max(x, 0)          exact: max(x, 0) = relu(x) for every float x, NaN included,

which no Q fusion matches. The cost on the CPU EP is the Conv+Relu fusion of that node. Bodies of If/Loop/Scan
are treated like the main graph.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.scopes import all_graphs
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


# Ops ORT's QDQPropagation copies a QuantizeLinear backwards through (its CanNodePropagate)
QDQ_PROPAGATION_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"})


def feeds_float_quantize(node: gs.Node) -> bool:
    """A Relu that reaches a QuantizeLinear with a float (FP8) zero point through single-consumer edges,
    passing only ops ORT propagates a Q through."""
    if node.op != "Relu":
        return False
    current = node
    while len(current.outputs) == 1 and len(current.outputs[0].outputs) == 1:
        consumer = current.outputs[0].outputs[0]
        if consumer.op == "QuantizeLinear":
            zero_point = consumer.inputs[2] if len(consumer.inputs) > 2 else None
            return isinstance(zero_point, gs.Constant) and np.dtype(zero_point.values.dtype).kind not in "iub"
        if consumer.op not in QDQ_PROPAGATION_OPS or consumer.inputs[0] is not current.outputs[0]:
            return False
        current = consumer
    return False


class ReluBeforeFloatQuantizePass(GraphPass):
    """Relu(x) → Max(x, 0) where the Relu reaches an FP8 QuantizeLinear (module docstring)."""

    requires = frozenset({GraphProperty.QUANTIZED})
    invalidates = frozenset()      # same output tensor, type and shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        for body in all_graphs(graph):
            for node in [n for n in body.nodes if feeds_float_quantize(n)]:
                dtype = node.inputs[0].dtype if node.inputs[0].dtype is not None else np.float32
                zero = gs.Constant(f"{node.name}_zero", np.zeros((), dtype=dtype))
                node.op = "Max"
                node.inputs.append(zero)
                stats["relu_as_max"] += 1
        return PassResult(modified=bool(stats), stats=dict(stats))

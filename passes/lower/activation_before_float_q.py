"""Keep a Relu or Clip that feeds an FP8 QuantizeLinear out of ONNX Runtime's Q fusions.

ORT's level-2 ReluQuantFusion removes Relu → QuantizeLinear's Relu unless the Q's zero point is an int8 ≠ -128
or a uint8 ≠ 0: it assumes the Q clamps at its zero point, which an integer Q with zero point at the bottom
of its range does. A FLOAT8E4M3FN Q is signed with zero point 0 and clamps at ±448·s, so the negative half
survives and the model is wrong (measured: logits cosine 0.99 as written, −0.21 under ORT's optimiser on a
small CNN). ORT's level-1 QDQPropagation first copies a Q backwards through MaxPool, Reshape, Transpose,
Squeeze, Unsqueeze and Slice (onnxruntime/core/optimizer/qdq_transformer/qdq_propagation.cc), so a Relu that
reaches the Q through a single-consumer chain of those ops is dropped as well (measured on fmnist_cnn:
Relu → MaxPool → Q). For each Relu that reaches such a Q that way the pass writes the same function as

    Relu(x)  →  Max(x, 0)          exact: max(x, 0) = relu(x) for every float x, NaN included,

which no Q fusion matches. ORT's ClipQuantFusion fails outright on a Clip → FP8 Q (session creation stops
with "Unexpected data type for QuantizeLinear input y_zero_point of 17"), so such a Clip with constant bounds
is written the same way, exactly:

    Clip(x, a, b)  →  Min(Max(x, a), b)      (a missing bound drops its half)

The cost on the CPU EP is the Conv+Relu/Clip fusion of that node. Bodies of If/Loop/Scan are treated like the
main graph.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.scopes import all_graphs
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


# Ops ORT's QDQPropagation copies a QuantizeLinear backwards through (its CanNodePropagate)
QDQ_PROPAGATION_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"})


def _constant_bounds(node: gs.Node) -> bool:
    return all(isinstance(t, gs.Constant) or not t.name for t in node.inputs[1:3])


def feeds_float_quantize(node: gs.Node) -> bool:
    """A Relu (or a Clip with constant bounds) that reaches a QuantizeLinear with a float (FP8) zero point
    through single-consumer edges, passing only ops ORT propagates a Q through."""
    if node.op not in ("Relu", "Clip") or (node.op == "Clip" and not _constant_bounds(node)):
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


class ActivationBeforeFloatQuantizePass(GraphPass):
    """Relu → Max(x, 0) and Clip → Min(Max(x, a), b) where they reach an FP8 QuantizeLinear (module docstring)."""

    requires = frozenset({GraphProperty.QUANTIZED})
    invalidates = frozenset()      # same output tensor, type and shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        for body in all_graphs(graph):
            for node in [n for n in body.nodes if feeds_float_quantize(n)]:
                if node.op == "Relu":
                    _relu_as_max(node)
                    stats["relu_as_max"] += 1
                else:
                    _clip_as_min_max(body, node)
                    stats["clip_as_min_max"] += 1
        if stats:
            graph.toposort()
        return PassResult(modified=bool(stats), stats=dict(stats))


def _relu_as_max(node: gs.Node) -> None:
    dtype = node.inputs[0].dtype if node.inputs[0].dtype is not None else np.float32
    node.op = "Max"
    node.inputs.append(gs.Constant(f"{node.name}_zero", np.zeros((), dtype=dtype)))


def _clip_as_min_max(graph: gs.Graph, node: gs.Node) -> None:
    x, bounds = node.inputs[0], list(node.inputs[1:3]) + [None] * (3 - len(node.inputs))
    low, high = (b if isinstance(b, gs.Constant) else None for b in bounds[:2])
    out = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.remove(node)
    current = x
    if low is not None:
        lowered = gs.Variable(f"{node.name}_max", dtype=x.dtype, shape=x.shape) if high is not None else out
        graph.nodes.append(gs.Node("Max", name=f"{node.name}_Max", inputs=[current, low], outputs=[lowered]))
        current = lowered
    if high is not None:
        graph.nodes.append(gs.Node("Min", name=f"{node.name}_Min", inputs=[current, high], outputs=[out]))
    if low is None and high is None:
        graph.nodes.append(gs.Node("Identity", name=f"{node.name}_Identity", inputs=[x], outputs=[out]))

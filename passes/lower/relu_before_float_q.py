"""Keep a Relu that feeds an FP8 QuantizeLinear from being dropped by ONNX Runtime.

ORT's level-2 ReluQuantFusion removes Relu → QuantizeLinear's Relu unless the Q's zero point is an int8 ≠ -128
or a uint8 ≠ 0: it assumes the Q clamps at its zero point, which an integer Q with zero point at the bottom
of its range does. A FLOAT8E4M3FN Q is signed with zero point 0 and clamps at ±448·s, so the negative half
survives and the model is wrong (measured: logits cosine 0.99 as written, −0.21 under ORT's optimiser on a
small CNN). For each Relu whose only consumer is such a Q the pass writes the same function as

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


def feeds_float_quantize(node: gs.Node) -> bool:
    """A Relu whose single consumer is a QuantizeLinear with a float (FP8) zero point."""
    if node.op != "Relu" or len(node.outputs) != 1 or len(node.outputs[0].outputs) != 1:
        return False
    consumer = node.outputs[0].outputs[0]
    if consumer.op != "QuantizeLinear" or len(consumer.inputs) < 3:
        return False
    zero_point = consumer.inputs[2]
    return isinstance(zero_point, gs.Constant) and np.dtype(zero_point.values.dtype).kind not in "iub"


class ReluBeforeFloatQuantizePass(GraphPass):
    """Relu(x) → Max(x, 0) where the Relu feeds an FP8 QuantizeLinear (module docstring)."""

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

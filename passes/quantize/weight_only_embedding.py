"""Embedding tables at 8 bits for the weight-only presets: quantise the table, gather integers, dequantise rows.

For y = Gather(E, ids) with a constant float table E [V, D] (axis 0, at least ``embedding.min_elements`` values;
the same eligibility rules as the static pipeline's passes/quantize_gather.py, exclusions included):

    s_v = max_d |E[v, d]| / 127,   E_q[v, d] = clip(round(E[v, d] / s_v), -127, 127)            (int8, per row)
    y   = DequantizeLinear(Gather(E_q, ids), Gather(s, ids); axis = -1, block_size = D)

so only the gathered rows are dequantised at run time (a DequantizeLinear before the Gather would dequantise the
whole table on every call: ORT does not fuse DQ -> Gather). One scale per row (per token) rather than per column
because row norms spread widely in vocabularies: on MiniLM's 30522×384 table the relative error is 0.73 % per row
vs 1.11 % per column. Per-row scales after a Gather need the blocked DequantizeLinear of opset 21, which the
weight-only presets use anyway. A table read by anything but Gathers stays float (a tied lm_head reads its own
copy, quantised by the MatMul pass).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult
from qcompile.passes.quantize.quantize_gather import skip_reason


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (codes [V, D] int8, scales [V, 1] float32); an all-zero row gets scale 1."""
    absmax = np.abs(table.astype(np.float64)).max(axis=1, keepdims=True)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return codes, scale


class WeightOnlyEmbeddingPass(GraphPass):
    """int8 per-row embedding tables (see the module docstring); runs when weight_only.embedding_bits is 8."""

    requires = frozenset({GraphProperty.NAMED_NODES})     # exclusions match node names

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if ctx.config.weight_only.embedding_bits is None:
            return PassResult(modified=False, stats={"kept_float_by_config": 1})
        stats: Counter[str] = Counter()
        outputs = {t.name for t in graph.outputs}
        cache: dict[str, tuple[gs.Constant, gs.Constant]] = {}
        for node in [n for n in graph.nodes if n.op == "Gather"]:
            reason = skip_reason(node, outputs, ctx.config)
            if reason:
                table = node.inputs[0]
                if isinstance(table, gs.Constant) and table.values.size >= ctx.config.embedding.min_elements:
                    ctx.decide(NodeDecision(node.name, node.op, NodeStatus.SKIPPED, reason))
                    stats["skipped"] += 1
                continue
            table = node.inputs[0]
            if table.name not in cache:
                codes, scale = quantize_rows_int8(table.values)
                cache[table.name] = (gs.Constant(f"{table.name}_q", codes), gs.Constant(f"{table.name}_scale", scale))
            codes_const, scale_const = cache[table.name]
            ids, y = node.inputs[1], node.outputs[0]
            rows = gs.Variable(f"{node.name}_rows_q", dtype=np.int8)
            row_scales = gs.Variable(f"{node.name}_rows_scale", dtype=np.float32)
            node.inputs[0], node.outputs = codes_const, [rows]
            graph.nodes.append(gs.Node("Gather", name=f"{node.name}_scale", attrs={"axis": 0},
                                       inputs=[scale_const, ids], outputs=[row_scales]))
            graph.nodes.append(gs.Node("DequantizeLinear", name=f"{node.name}_DQ",
                                       attrs={"axis": -1, "block_size": int(table.values.shape[1])},
                                       inputs=[rows, row_scales], outputs=[y]))
            ctx.decide(NodeDecision(node.name, node.op, NodeStatus.QUANTIZED, "weight-only int8 embedding",
                                    {"bits": 8, "granularity": "row", "rows": int(table.values.shape[0]),
                                     "form": "Gather(int8)+DequantizeLinear"}))
            stats["quantized"] += 1
        graph.cleanup().toposort()
        return PassResult(modified=bool(stats["quantized"]), stats=dict(stats))

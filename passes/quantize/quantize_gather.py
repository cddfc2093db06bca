"""Embedding tables at int8 in the static W8A8 pipeline: quantise the table, Gather integers, dequantise after.

For y = Gather(E, ids) on axis 0 of a constant float table E [V, D] with at least ``min_elements`` values:

    per channel (column d):  s_d = max_v |E[v, d]| / 127       per tensor:  s = max |E| / 127
    E_q = clip(round(E / s), -127, 127)  (int8, symmetric)
    y   = DequantizeLinear(Gather(E_q, ids), s, 0; axis = -1)

ORT runs the Gather on the int8 table (4x fewer bytes moved) and dequantises only the gathered rows; a
DequantizeLinear before the Gather would dequantise the whole table on every call. One scale per column
follows the feature dimensions of transformer embeddings, whose few outlier dimensions would otherwise set
one scale for all. Per-column DequantizeLinear needs opset 13 (per-row scales would need blocked DQ, opset
21, which the weight-only presets use, see weight_only_embedding.py). A table read by anything but Gathers
stays float (tied output projections keep one float copy instead of two).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import CompileConfig, Granularity
from qcompile.graph.edits import Namer
from qcompile.pass_infra import GraphPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult
from qcompile.selection import matches_node


def quantize_table(table: np.ndarray, per_column: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes and scales ([D] per column, scalar per tensor); an all-zero column gets scale 1."""
    absmax = np.abs(table.astype(np.float64)).max(axis=0 if per_column else None)
    # floor at the smallest normal float32: a column of subnormals would otherwise get scale 0 after the cast
    scale = np.where(absmax > 0, np.maximum(absmax / 127.0, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    codes = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return codes, scale


def _excluded(name: str, config: CompileConfig) -> bool:
    return any(matches_node(p, name) for p in config.exclude) or any(
        o.skip and matches_node(o.pattern, name) for o in config.overrides)


def skip_reason(node: gs.Node, graph_outputs: set[str], config: CompileConfig) -> str:
    table = node.inputs[0]
    if not isinstance(table, gs.Constant):
        return "table is not a constant"
    if table.values.dtype != np.float32 or table.values.ndim != 2:
        return f"table is {table.values.dtype} of rank {table.values.ndim} (needs a float32 matrix)"
    if node.attrs.get("axis", 0) not in (0, -2):
        return "Gather along the columns"
    if table.values.size < config.embedding.min_elements:
        return f"table smaller than {config.embedding.min_elements} values"
    if any(c.op != "Gather" for c in table.outputs) or table.name in graph_outputs:
        return "table is also read by a non-Gather op"
    if _excluded(node.name, config):
        return "excluded by --exclude or an override"
    return ""


class QuantizeGatherPass(GraphPass):
    """int8 embedding tables in the static pipeline (see the module docstring); on when config.embedding.enabled."""

    requires = frozenset({GraphProperty.NAMED_NODES})     # exclusions match node names
    invalidates = frozenset()      # the gathered int8 rows carry the output's shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config = ctx.config.embedding
        if not config.enabled:
            return PassResult(modified=False, stats={"kept_float_by_config": 1})
        per_column = config.granularity is Granularity.CHANNEL
        stats: Counter[str] = Counter()
        outputs = {t.name for t in graph.outputs}
        cache: dict[str, tuple[gs.Constant, gs.Constant, gs.Constant]] = {}
        namer = Namer(graph)
        for node in [n for n in graph.nodes if n.op == "Gather"]:
            reason = skip_reason(node, outputs, ctx.config)
            if reason:
                table = node.inputs[0]
                if isinstance(table, gs.Constant) and table.values.size >= config.min_elements:
                    ctx.decide(NodeDecision(node.name, node.op, NodeStatus.SKIPPED, reason))  # only large tables
                stats[f"skipped: {reason}"] += 1
                continue
            table = node.inputs[0]
            if table.name not in cache:
                codes, scale = quantize_table(table.values, per_column)
                cache[table.name] = (namer.constant(f"{table.name}_int8", codes),
                                     namer.constant(f"{table.name}_int8_scale", scale),
                                     namer.constant(f"{table.name}_int8_zp", np.zeros(scale.shape, np.int8)))
            codes_const, scale_const, zp_const = cache[table.name]
            y = node.outputs[0]
            rows = gs.Variable(namer(f"{y.name}_int8"), dtype=np.int8, shape=y.shape)
            node.inputs[0], node.outputs = codes_const, [rows]
            graph.nodes.append(gs.Node("DequantizeLinear", name=namer(f"{node.name}_DQ"),
                                       attrs={"axis": -1} if per_column else {},
                                       inputs=[rows, scale_const, zp_const], outputs=[y]))
            ctx.decide(NodeDecision(node.name, node.op, NodeStatus.QUANTIZED, "int8 embedding table",
                                    {"weight_dtype": "int8", "granularity": "column" if per_column else "tensor",
                                     "table_shape": list(table.values.shape),
                                     "form": "Gather(int8)+DequantizeLinear"}))
            stats["quantized"] += 1
        if stats["quantized"]:
            graph.cleanup().toposort()
        return PassResult(modified=bool(stats["quantized"]), stats=dict(stats))

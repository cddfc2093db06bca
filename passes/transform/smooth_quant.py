"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights, exactly, before quantisation.

For a group of MatMul/Gemm nodes c reading one activation X [..., K] with constant weights W_c [K, N_c]
(see channel_rewrite.py), with a_j = max|X_j| over the calibration data and w_j = max_c max_n |W_c[j, n]|:

    s_j = a_j^α / w_j^(1-α)                 (a_j, w_j floored at 1e-5 of their maximum, so s stays finite)
    X W_c = (X · diag(1/s)) · (diag(s) · W_c)      for every c: one s for the whole group (Q/K/V share X)

diag(s) scales the weights' rows; diag(1/s) is folded into X's producer where X feeds only the group
(LayerNormalization γ/β, a MatMul/Gemm's output columns, a per-channel Mul/Add constant), otherwise a
Mul(X, 1/s) is inserted in front of the group so that other readers of X (residual streams) keep X.

α = None ("auto") searches α per group on a uniform sample R of X's rows (calibrators/row_sample.py):

    E(s) = Σ_c ‖R W_c − Q_a(R/s) · Q_w(diag(s) W_c)‖² / ‖R W_c‖²

with Q_a the per-tensor activation fake-quantiser over the calibrated range of X/s (exact: per-channel min/max
over all data divided by s) and Q_w the per-output-channel weight fake-quantiser, as the quantize step will
emit them. Candidates: every α of the grid and no smoothing at all (s = 1), so the search never picks a
rewrite that is worse than leaving the group alone on the sample.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import Granularity, QuantSpec, SmoothScope
from qcompile.graph.ops import NORMALIZATION_OPS
from qcompile.pass_infra import (CalibratedPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult,
                                 StatKind, StatRequest)
from qcompile.graph.edits import Namer
from qcompile.passes.transform.channel_rewrite import ChannelConsumer, consumer_groups, insert_channel_mul, plan_fold
from qcompile.numerics.qparams import QuantDType, compute_qparams, dequantize, quantize, weight_range
from qcompile.selection import select_nodes

logger = logging.getLogger(__name__)

_FLOOR = 1e-5


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = a_j^α / w_j^(1-α), both maxima floored at _FLOOR of their largest value (s = 1 if all zero)."""
    a = np.asarray(act_absmax, dtype=np.float64)
    w = np.asarray(weight_absmax, dtype=np.float64)
    if a.max(initial=0.0) <= 0.0 or w.max(initial=0.0) <= 0.0:
        return np.ones_like(a)
    a = np.maximum(a, _FLOOR * a.max())
    w = np.maximum(w, _FLOOR * w.max())
    return a ** alpha / w ** (1.0 - alpha)


@dataclass(frozen=True)
class FakeQuant:
    """The formats the quantize step will emit for a group: activation per tensor, weights per column."""

    act_dtype: QuantDType
    act_symmetric: bool
    weight_dtype: QuantDType
    weight_symmetric: bool
    weight_per_channel: bool
    reduce_range: bool

    def activation(self, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
        params = compute_qparams(lo, hi, self.act_dtype, symmetric=self.act_symmetric)
        return dequantize(quantize(x, params), params)

    def weight(self, w: np.ndarray) -> np.ndarray:
        axis = 1 if self.weight_per_channel else None
        rng = weight_range(w, axis)
        params = compute_qparams(rng.min, rng.max, self.weight_dtype, symmetric=self.weight_symmetric,
                                 reduce_range=self.reduce_range, axis=axis)
        return dequantize(quantize(w, params), params)


def group_error(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, weights: list[np.ndarray], s: np.ndarray,
                fq: FakeQuant, references: list[np.ndarray] | None = None) -> float:
    """E(s) of the module docstring: summed relative output error of the group on the sampled rows."""
    s32 = s.astype(np.float32)
    x_q = fq.activation(rows / s32, float(np.min(lo / s)), float(np.max(hi / s)))
    references = references or [rows @ w for w in weights]
    total = 0.0
    for w, reference in zip(weights, references):
        approx = x_q @ fq.weight(w * s32[:, None])
        total += float(np.sum(np.square(reference - approx)) / max(float(np.sum(np.square(reference))), 1e-30))
    return total


def search_alpha(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, weights: list[np.ndarray],
                 grid: tuple[float, ...], fq: FakeQuant) -> tuple[float | None, float, float]:
    """(best α or None for 'no smoothing', its error, the error without smoothing)."""
    w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    a_absmax = np.maximum(np.abs(lo), np.abs(hi))
    references = [rows @ w for w in weights]
    baseline = group_error(rows, lo, hi, weights, np.ones_like(a_absmax), fq, references)
    best: tuple[float | None, float] = (None, baseline)
    for alpha in grid:
        error = group_error(rows, lo, hi, weights, smoothing_scales(a_absmax, w_absmax, alpha), fq, references)
        if error < best[1]:
            best = (alpha, error)
    return best[0], best[1], baseline


def is_transformer(graph: gs.Graph) -> bool:
    """A graph with a normalisation over the feature axis (LayerNorm and its fused/RMS forms)."""
    return any(n.op in NORMALIZATION_OPS for n in graph.nodes)


@dataclass
class SmoothGroup:
    tensor: gs.Variable
    consumers: list[ChannelConsumer]
    alpha: float | None

    @property
    def channels(self) -> int:
        return self.consumers[0].oriented_shape[0]

    def request(self, sample_rows: int) -> StatRequest:
        if self.alpha is None:
            return StatRequest(self.tensor.name, StatKind.ROW_SAMPLE, axis=-1, sample_rows=sample_rows)
        return StatRequest(self.tensor.name, StatKind.CHANNEL_ABSMAX, axis=-1)


def find_groups(graph: gs.Graph, ctx: PassContext, declined: Counter) -> list[SmoothGroup]:
    config = ctx.config.smoothquant
    if config.scope is SmoothScope.OFF or (config.scope is SmoothScope.TRANSFORMER and not is_transformer(graph)):
        return []
    rejected: dict[str, list[gs.Node]] = {}
    members = consumer_groups(graph, select_nodes(graph, ctx.config), rejected)
    for reason, nodes in rejected.items():
        declined[reason] += len(nodes)
        for node in nodes:
            ctx.decide(NodeDecision(node.name, node.op, NodeStatus.SKIPPED, reason,
                                    {"smoothquant": f"declined: {reason}"}))
    groups = []
    for consumers in members.values():
        alphas = [config.alpha_for(c.node.op) for c in consumers]
        # one s for the group: one 'auto' member makes it a searched one, else the smallest fixed α
        alpha = None if None in alphas else min(alphas)
        groups.append(SmoothGroup(consumers[0].node.inputs[0], consumers, alpha))
    return groups


def _fake_quant(ctx: PassContext) -> FakeQuant:
    """The global formats (per-node overrides are not modelled by the search)."""
    act: QuantSpec = ctx.config.activation
    weight: QuantSpec = ctx.config.weight
    symmetric = act.symmetric or ctx.target.activation_symmetric
    return FakeQuant(act.dtype or ctx.target.activation_dtype, symmetric, weight.dtype, weight.symmetric,
                     weight.granularity is Granularity.CHANNEL, bool(ctx.target.reduce_range))


class SmoothQuantPass(CalibratedPass):
    """Per-channel smoothing of MatMul/Gemm inputs (see module docstring)."""

    requires = frozenset({GraphProperty.NAMED_NODES, GraphProperty.SHAPES_INFERRED})   # selection; channel counts
    invalidates = frozenset()      # an inserted Mul's output carries its input's type and shape

    def __init__(self) -> None:
        self._groups: list[SmoothGroup] | None = None
        self._declined: Counter[str] = Counter()

    def _groups_for(self, graph: gs.Graph, ctx: PassContext) -> list[SmoothGroup]:
        if self._groups is None:
            self._groups = find_groups(graph, ctx, self._declined)
        return self._groups

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        sample_rows = ctx.config.smoothquant.sample_rows
        return [g.request(sample_rows) for g in self._groups_for(graph, ctx)]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        groups = self._groups_for(graph, ctx)
        config = ctx.config.smoothquant
        stats: Counter[str] = Counter({f"declined: {k}": v for k, v in self._declined.items()})
        namer = Namer(graph)
        graph_outputs = {t.name for t in graph.outputs}
        for group in groups:
            stat = ctx.range_of(group.request(config.sample_rows))
            weights = [c.oriented() for c in group.consumers]
            lo, hi = np.asarray(stat.min, dtype=np.float64), np.asarray(stat.max, dtype=np.float64)
            if lo.shape != (group.channels,):
                stats["declined: channel count differs from the calibrated tensor"] += len(group.consumers)
                continue
            detail: dict[str, object] = {}
            if group.alpha is None:
                alpha, error, baseline = search_alpha(stat.rows, lo, hi, weights, config.auto_grid,
                                                      _fake_quant(ctx))
                detail.update(alpha="none" if alpha is None else alpha, sample_error=error,
                              sample_error_unsmoothed=baseline, sample_rows=int(stat.rows.shape[0]))
                stats["searched"] += 1
            else:
                alpha = group.alpha
                detail["alpha"] = alpha
            if alpha is None:
                stats["kept_unsmoothed"] += 1       # no α beat leaving the group alone on the sample
                self._record(ctx, group, detail)
                continue
            w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
            s = smoothing_scales(np.maximum(np.abs(lo), np.abs(hi)), w_absmax, alpha)
            for consumer, weight in zip(group.consumers, weights):
                consumer.set_oriented(weight * s[:, None].astype(np.float32), namer, "smoothed")
            readers = {c.node.name for c in group.consumers}
            edits = plan_fold(group.tensor, readers, graph_outputs, group.channels, namer)
            inverse = (1.0 / s).astype(np.float32)
            if edits is not None:
                for edit in edits:
                    edit(inverse)
                detail["folded_into"] = group.tensor.inputs[0].op
                stats["folded"] += 1
            else:
                insert_channel_mul(graph, group.tensor, [c.node for c in group.consumers], inverse, namer,
                                   "smooth")
                detail["folded_into"] = "inserted Mul"
                stats["mul_inserted"] += 1
            detail["scale_range"] = [float(s.min()), float(s.max())]
            stats["smoothed_groups"] += 1
            stats["smoothed_nodes"] += len(group.consumers)
            self._record(ctx, group, detail)
        if stats["smoothed_groups"]:
            graph.cleanup().toposort()
        return PassResult(modified=stats["smoothed_groups"] > 0, stats=dict(stats))

    @staticmethod
    def _record(ctx: PassContext, group: SmoothGroup, detail: dict[str, object]) -> None:
        # provisional status: the quantize step decides the node's final status and keeps this detail
        for consumer in group.consumers:
            node = consumer.node
            ctx.decide(NodeDecision(node.name, node.op, NodeStatus.SKIPPED, "smoothed, not yet quantised",
                                    {"smoothquant": dict(detail, group=group.tensor.name)}))

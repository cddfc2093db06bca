"""Outlier-channel splitting (Zhao et al., 2019): duplicate an input channel and halve it; the function is unchanged.

For a group (X [..., K] read by MatMul/Gemm nodes with constant weights W_c [K, N_c], see channel_rewrite.py)
and split channels j_1..j_m (m ≤ max(1, ⌊ρ·K⌋), ρ = ``expand_ratio``):

    weight split of j:      X' = [X, X_j],         W'_c = [W_c with row j halved; W_c[j] / 2]
    activation split of j:  X' = [X·h, X_j / 2],   W'_c = [W_c; W_c[j]]           (h halves channel j)

    X' W'_c = X W_c, since  X_j W_c[j] = X_j (W_c[j]/2) + X_j (W_c[j]/2) = (X_j/2) W_c[j] + (X_j/2) W_c[j].

X' = Concat(X·h, Gather(X·h, [j_1, .., j_m], axis=-1), axis=-1) (ORT's Gather copies element by element along the
last axis: gathering all K + m channels cost 13x more than gathering the m copies and concatenating rows);
h is folded into X's producer where it reads only the group (channel_rewrite.plan_fold, e.g. the Mul
SmoothQuant inserted), else a Mul is inserted first.

Which channels (greedy, one at a time, each channel at most once):
- weights, per output column n (or per tensor): int8 noise of column n is ∝ m_n², m_n = max_k |W[k, n]|.
  Halving row j turns m_n into max(second-largest_n, |W[j, n]|/2) where row j holds the max. Split the row
  with the largest Σ_c Σ_n (m_n² − m_n'²) / Σ_n m_n², while that gain is positive;
- activations, per tensor: the step is ∝ max_j hi_j − min_j lo_j (0 included). Halve the channel whose
  halving shrinks that range most, while it shrinks it.
With both on, activation splits take up to half of the budget and weight splits the rest.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.config import Granularity
from qcompile.pass_infra import (CalibratedPass, GraphProperty, NodeDecision, NodeStatus, PassContext, PassResult,
                                 StatKind, StatRequest)
from qcompile.graph.edits import Namer
from qcompile.passes.transform.channel_rewrite import ChannelConsumer, consumer_groups, insert_channel_mul, plan_fold
from qcompile.selection import select_nodes


def split_budget(channels: int, expand_ratio: float) -> int:
    return max(1, int(np.floor(expand_ratio * channels)))


def weight_split_gain(weights: list[np.ndarray], per_channel: bool) -> np.ndarray:
    """Relative drop of Σ_n m_n² (per consumer, summed) if each row were halved: [K]."""
    gain = np.zeros(weights[0].shape[0])
    for w in weights:
        a = np.abs(w.astype(np.float64))
        if not per_channel:
            a = a.max(axis=1, keepdims=True)                  # per tensor: one "column" of row maxima
        top2 = np.sort(np.vstack([np.zeros((1, a.shape[1])), a]), axis=0)[-2:]
        first, second = top2[1], top2[0]
        arg = a.argmax(axis=0)
        total = float(np.sum(first ** 2)) or 1.0
        reduced = np.maximum(second, first / 2.0)
        np.add.at(gain, arg, (first ** 2 - reduced ** 2) / total)
    return gain


def choose_weight_splits(weights: list[np.ndarray], budget: int, per_channel: bool,
                         taken: set[int] = frozenset()) -> list[int]:
    """Greedy row choice (module docstring); rows in ``taken`` are not split again."""
    weights = [w.astype(np.float64).copy() for w in weights]
    chosen: list[int] = []
    for _ in range(budget):
        gain = weight_split_gain(weights, per_channel)
        gain[list(set(chosen) | set(taken))] = -np.inf
        j = int(np.argmax(gain))
        if not gain[j] > 0:
            break
        chosen.append(j)
        for w in weights:
            w[j] /= 2.0
    return chosen


def activation_range(lo: np.ndarray, hi: np.ndarray) -> float:
    return float(max(hi.max(), 0.0) - min(lo.min(), 0.0))


def choose_activation_splits(lo: np.ndarray, hi: np.ndarray, budget: int) -> list[int]:
    """Greedy channel choice for per-tensor activation ranges (module docstring)."""
    lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    chosen: list[int] = []
    for _ in range(budget):
        current = activation_range(lo, hi)
        best, best_range = -1, current
        for j in np.unique([int(np.argmax(hi)), int(np.argmin(lo))]):
            if j in chosen:
                continue
            lo_j, hi_j = lo[j], hi[j]
            lo[j], hi[j] = lo_j / 2, hi_j / 2
            if activation_range(lo, hi) < best_range:
                best, best_range = j, activation_range(lo, hi)
            lo[j], hi[j] = lo_j, hi_j
        if best < 0:
            break
        chosen.append(best)
        lo[best] /= 2
        hi[best] /= 2
    return chosen


def split_weight(w: np.ndarray, weight_rows: list[int], act_rows: list[int]) -> np.ndarray:
    """W' of the module docstring ([K + m, N]) for the oriented weight ``w`` [K, N]."""
    out = w.astype(np.float32).copy()
    out[weight_rows] /= 2.0
    return np.vstack([out, out[weight_rows], w[act_rows].astype(np.float32)])


def _insert_split(graph: gs.Graph, tensor: gs.Variable, source: gs.Variable, rows: list[int],
                  namer: Namer) -> gs.Variable:
    """X' = Concat(S, Gather(S, rows, axis=-1), axis=-1) with S = ``source`` (X, or X·h); returns X'."""
    index = np.asarray(rows, dtype=np.int64)
    shape = list(tensor.shape) if tensor.shape is not None else None
    copies = gs.Variable(namer(f"{tensor.name}_split_copies"), dtype=tensor.dtype,
                         shape=shape[:-1] + [int(index.size)] if shape else None)
    if shape:
        shape[-1] = shape[-1] + int(index.size) if isinstance(shape[-1], int) else None
    split = gs.Variable(namer(f"{tensor.name}_split"), dtype=tensor.dtype, shape=shape)
    graph.nodes.append(gs.Node("Gather", name=namer(f"{tensor.name}_split_Gather"), attrs={"axis": -1},
                               inputs=[source, namer.constant(f"{tensor.name}_split_index", index)],
                               outputs=[copies]))
    graph.nodes.append(gs.Node("Concat", name=namer(f"{tensor.name}_split_Concat"), attrs={"axis": -1},
                               inputs=[source, copies], outputs=[split]))
    return split


class SplitOutlierChannelsPass(CalibratedPass):
    """Outlier-channel splitting of MatMul/Gemm inputs (see module docstring); off unless configured."""

    requires = frozenset({GraphProperty.NAMED_NODES, GraphProperty.SHAPES_INFERRED})   # selection; channel counts
    invalidates = frozenset()      # the split tensors get the shapes [..., K + m] they have

    def __init__(self) -> None:
        self._groups: dict[str, list[ChannelConsumer]] | None = None

    def _groups_for(self, graph: gs.Graph, ctx: PassContext) -> dict[str, list[ChannelConsumer]]:
        if self._groups is None:
            self._groups = {} if not ctx.config.outlier_split.enabled else \
                consumer_groups(graph, select_nodes(graph, ctx.config), {})
        return self._groups

    @staticmethod
    def _request(name: str) -> StatRequest:
        # per-channel min/max (the row sample is kept at its minimum)
        return StatRequest(name, StatKind.ROW_SAMPLE, axis=-1, sample_rows=1)

    def stat_requests(self, graph: gs.Graph, ctx: PassContext):
        if not ctx.config.outlier_split.activations:
            return []
        return [self._request(name) for name in self._groups_for(graph, ctx)]

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config = ctx.config.outlier_split
        stats: Counter[str] = Counter()
        namer = Namer(graph)
        outputs = {t.name for t in graph.outputs}
        per_channel = ctx.config.weight.granularity is Granularity.CHANNEL
        for name, consumers in self._groups_for(graph, ctx).items():
            tensor = consumers[0].node.inputs[0]
            weights = [c.oriented() for c in consumers]
            channels = weights[0].shape[0]
            budget = split_budget(channels, config.expand_ratio)
            act_rows: list[int] = []
            if config.activations:
                stat = ctx.range_of(self._request(name))
                act_budget = (budget + 1) // 2 if config.weights else budget
                act_rows = choose_activation_splits(np.asarray(stat.min), np.asarray(stat.max), act_budget)
            weight_rows = choose_weight_splits(weights, budget - len(act_rows), per_channel, set(act_rows)) \
                if config.weights else []
            if not act_rows and not weight_rows:
                stats["groups_without_outliers"] += 1
                continue
            source = tensor
            if act_rows:
                halve = np.ones(channels, np.float32)
                halve[act_rows] = 0.5
                edits = plan_fold(tensor, {c.node.name for c in consumers}, outputs, channels, namer)
                if edits is not None:
                    for edit in edits:
                        edit(halve)
                    stats["halving_folded"] += 1
                else:
                    source = insert_channel_mul(graph, tensor, [c.node for c in consumers], halve, namer, "ocs")
                    stats["halving_mul_inserted"] += 1
            split = _insert_split(graph, tensor, source, weight_rows + act_rows, namer)
            for consumer, weight in zip(consumers, weights):
                consumer.node.inputs[0] = split
                consumer.set_oriented(split_weight(weight, weight_rows, act_rows), namer, "split")
                ctx.decide(NodeDecision(consumer.node.name, consumer.node.op, NodeStatus.SKIPPED,
                                        "split, not yet quantised",
                                        {"outlier_split": {"weight_channels": len(weight_rows),
                                                           "activation_channels": len(act_rows),
                                                           "input_channels": channels, "group": name}}))
            stats["split_groups"] += 1
            stats["split_weight_channels"] += len(weight_rows)
            stats["split_activation_channels"] += len(act_rows)
        if stats["split_groups"]:
            graph.cleanup().toposort()
        return PassResult(modified=stats["split_groups"] > 0, stats=dict(stats))

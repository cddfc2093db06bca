"""Rules every calibrated activation range obeys, whatever method computed it.

(a) Bounded producers. Some ops bound their output whatever the input:

        Relu             [0, +inf)        Clip(x, lo, hi), ReLU6   [lo, hi]
        Sigmoid, HardSigmoid, Softmax     [0, 1]                    Tanh    [-1, 1]

    and ops whose outputs lie in the convex hull of their inputs (data movement, Max/Average pooling,
    ReduceMax/Min/Mean, Concat of bounded inputs) pass the bound on. For a tensor with bound [B_lo, B_hi]
    the range [a, b] becomes

        a' = B_lo  if min x reaches B_lo (saturation) else max(a, B_lo)
        b' = B_hi  if max x reaches B_hi (saturation) else min(b, B_hi)

    "Reaches" is min x <= B_lo + eps (resp. max x >= B_hi - eps), eps = 1e-6·max(1, |B|): a Clip that
    saturates on calibration data holds a spike of values exactly at its bound, and the range must end there
    so that the spike is a grid point (error 0); a histogram method that clips below it moves every saturated
    value (entropy does: KL ignores the spike's size relative to the tail it models). Where the data does
    not reach the bound, the observed (tighter) range is kept: it is what min-max would take, and the bound
    can only widen the grid's step for values that never occurred.

(b) No histogram method loses to min-max on its own measure. With the tensor's histogram (counts n_j, bin
    centres c_j), the k-bit grid the emitter will use (k from the activation type: 8, or 16 for a16w8;
    asymmetric: 2^k - 1 steps over [min(a, 0), max(b, 0)]; symmetric: steps of t / (2^(k-1) - 1) over [-t, t],
    t = max(|a|, |b|)) and

        E(a, b) = (1 / sum n) · [ sum_{c_j outside [a, b]} n_j·dist(c_j, [a, b])^2 + (s^2 / 12)·sum_{inside} n_j ]

    the method's range is kept iff E(method) <= E(min-max), min-max being the histogram's exact [min, max];
    otherwise min-max's range is used. Histograms of |x| (symmetric searches) are measured on [0, t].
    E's rounding term treats exact zeros (post-ReLU) as uniformly spread in their bin, which overstates the
    cost of a wide range equally for both candidates, so the rule leans, if anything, towards clipping.

Min-max and statistics other than activation ranges pass through unchanged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.calibrators.histogram import HistogramCalibratorBase
from qcompile.calibrators.mse import expected_mse_of_range
from qcompile.graph.ops import DATA_MOVEMENT_OPS
from qcompile.graph.scopes import all_nodes
from qcompile.numerics.qparams import TensorRange
from qcompile.pass_infra import StatKind, StatRequest

logger = logging.getLogger(__name__)

ACTIVATION_BITS = 8
SATURATION_TOLERANCE = 1e-6

_FIXED_BOUNDS = {"Relu": (0.0, np.inf), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0),
                 "Tanh": (-1.0, 1.0)}
# y lies in the convex hull of x's values (and, for average pooling with padding, of 0)
_HULL_OPS = DATA_MOVEMENT_OPS | {"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "ReduceMean"}
_HULL_WITH_ZERO_OPS = frozenset({"AveragePool", "GlobalAveragePool"})


@dataclass(frozen=True)
class Bound:
    """Values of a tensor lie in [lo, hi] for every input (either end may be infinite)."""

    lo: float
    hi: float

    def hull(self, other: Bound) -> Bound:
        return Bound(min(self.lo, other.lo), max(self.hi, other.hi))


def _scalar(tensor) -> float | None:
    if isinstance(tensor, gs.Constant) and tensor.values.size == 1:
        return float(tensor.values.reshape(()))
    return None


def _clip_bound(node: gs.Node) -> Bound | None:
    """Clip's constant bounds (inputs since opset 11, attributes before); None if one is not constant."""
    if "min" in node.attrs or "max" in node.attrs:
        return Bound(float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf)))
    ends = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        tensor = node.inputs[index] if len(node.inputs) > index else None
        if tensor is None or (isinstance(tensor, gs.Variable) and not tensor.name):
            ends.append(default)
            continue
        value = _scalar(tensor)
        if value is None:
            return None
        ends.append(value)
    return Bound(*ends)


def _node_bound(node: gs.Node, bound_of) -> Bound | None:
    if node.op in _FIXED_BOUNDS:
        return Bound(*_FIXED_BOUNDS[node.op])
    if node.op == "Clip":
        return _clip_bound(node)
    if node.op == "Concat":
        inputs = [bound_of(t) for t in node.inputs]
        if not inputs or any(b is None for b in inputs):
            return None
        hull = inputs[0]
        for b in inputs[1:]:
            hull = hull.hull(b)
        return hull
    source = bound_of(node.inputs[0]) if node.inputs and node.op in _HULL_OPS | _HULL_WITH_ZERO_OPS else None
    if source is None:
        return None
    return source.hull(Bound(0.0, 0.0)) if node.op in _HULL_WITH_ZERO_OPS else source


def tensor_bounds(graph: gs.Graph) -> dict[str, Bound]:
    """{tensor name: Bound} for every tensor of ``graph`` (bodies included) that a bounded op produces."""
    memo: dict[str, Bound | None] = {}

    def bound_of(tensor) -> Bound | None:
        if tensor.name not in memo:
            memo[tensor.name] = None   # a cycle (impossible in ONNX) would read as unbounded
            producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None
            memo[tensor.name] = _node_bound(producer, bound_of) if producer is not None else None
        return memo[tensor.name]

    for node in all_nodes(graph):
        for output in node.outputs:
            bound_of(output)
    return {name: bound for name, bound in memo.items() if bound is not None}


def _reaches(observed: float, bound: float) -> bool:
    return bool(np.isfinite(bound)) and abs(observed - bound) <= SATURATION_TOLERANCE * max(1.0, abs(bound))


def bounded_range(rng: TensorRange, bound: Bound, observed: TensorRange) -> TensorRange:
    """Rule (a): ``rng`` clamped to ``bound``, ending exactly at a bound the data saturates at."""
    lo = bound.lo if _reaches(float(observed.min), bound.lo) else float(np.clip(rng.min, bound.lo, bound.hi))
    hi = bound.hi if _reaches(float(observed.max), bound.hi) else float(np.clip(rng.max, bound.lo, bound.hi))
    return TensorRange(lo, hi)


def grid_error(calibrator: HistogramCalibratorBase, rng: TensorRange, symmetric: bool,
               num_bits: int = ACTIVATION_BITS) -> float:
    """E of rule (b) for ``rng`` on the calibrator's histogram and the emitter's ``num_bits`` grid."""
    hist = calibrator.histogram
    steps = float((1 << num_bits) - 1)
    if calibrator.absolute or symmetric:
        t = max(abs(float(rng.min)), abs(float(rng.max)))
        if calibrator.absolute:   # histogram of |x|: the half grid [0, t]
            return expected_mse_of_range(hist.counts, hist.edges, 0.0, t, steps // 2, hist.min, hist.max)
        return expected_mse_of_range(hist.counts, hist.edges, -t, t, 2 * (steps // 2), hist.min, hist.max)
    lo, hi = min(float(rng.min), 0.0), max(float(rng.max), 0.0)
    return expected_mse_of_range(hist.counts, hist.edges, lo, hi, steps, hist.min, hist.max)


def guarded_range(calibrator: HistogramCalibratorBase, rng: TensorRange, symmetric: bool,
                  bound: Bound | None, num_bits: int = ACTIVATION_BITS) -> tuple[TensorRange, str]:
    """Rules (a) and (b) for one histogram calibrator's range: (range, which rule decided)."""
    hist = calibrator.histogram
    observed = TensorRange(-hist.max, hist.max) if calibrator.absolute else TensorRange(hist.min, hist.max)
    minmax = observed
    rule = "method"
    if bound is not None and not calibrator.absolute:
        rng, minmax = bounded_range(rng, bound, observed), bounded_range(observed, bound, observed)
        rule = "bounded"
    if grid_error(calibrator, rng, symmetric, num_bits) > grid_error(calibrator, minmax, symmetric, num_bits):
        return minmax, "minmax"
    return rng, rule


def apply_range_rules(graph: gs.Graph, calibrators: Mapping[StatRequest, object],
                      ranges: Mapping[StatRequest, TensorRange]) -> dict[StatRequest, TensorRange]:
    """Every activation range after rules (a) and (b) (module docstring); other statistics unchanged."""
    bounds = tensor_bounds(graph)
    decided: Counter[str] = Counter()
    out = dict(ranges)
    for request, rng in ranges.items():
        calibrator = calibrators[request]
        if request.kind is not StatKind.RANGE or rng.per_channel:
            continue
        bound = bounds.get(request.tensor)
        if isinstance(calibrator, HistogramCalibratorBase):
            out[request], rule = guarded_range(calibrator, rng, request.symmetric, bound, request.num_bits)
        elif bound is not None:
            out[request], rule = bounded_range(rng, bound, rng), "bounded"
        else:
            continue
        decided[rule] += 1
        if rule == "minmax":
            logger.debug("%s: %s range [%g, %g] has a larger expected error than min-max's: min-max kept",
                         request.tensor, request.method.value, float(rng.min), float(rng.max))
    if decided:
        logger.info("activation range rules: %s", dict(decided))
    return out

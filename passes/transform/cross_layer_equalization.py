"""Cross-layer equalisation (Nagel et al., 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction"): move per-channel weight range between consecutive convolutions.

For a pair y = conv2(f(conv1(x; W1, b1)); W2) with f positively homogeneous (f(x/s) = f(x)/s for s > 0: the
identity or Relu) and channel i of conv1's output read by input channel i of conv2, any s_i > 0 gives

    W1'[i] = W1[i] / s_i,   b1'[i] = b1[i] / s_i,   W2'[:, i] = W2[:, i]·s_i       (depthwise conv2: W2'[i]·s_i)

and the same function. With r1_i = max|W1[i]| and r2_i = max|W2[:, i]|, s_i = sqrt(r1_i / r2_i) makes both
ranges sqrt(r1_i·r2_i): the channels of conv1's output and of conv2's input get the same relative precision
under a per-tensor weight grid (per-channel weight grids already see each output channel's own range, so
the gain is mostly there). Chains conv1 -> conv2 -> conv3 are equalised in sweeps until the scales settle
(at most MAX_SWEEPS).

Pairs declined, with a reason in the stats:
  - f = Clip/ReLU6 (any finite bound): clip(x/s, 0, 6) ≠ clip(x, 0, 6)/s. Equalising would need a
    per-channel bound 6/s_i, which Clip cannot hold (scalar min/max) and which would stop ORT folding the
    activation into the requantisation (QLinearConv). The pair is skipped: exactness first.
  - conv1's output (or f's) feeds anything besides conv2, grouped conv2 other than depthwise, weights that
    are not constants or are shared with another node.

High-bias absorption (the paper's companion step) needs the pre-activation's distribution per channel; it is
not done here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult

logger = logging.getLogger(__name__)

MAX_SWEEPS = 8
CONVERGED = 1e-3            # a sweep whose scales all lie within 1 ± CONVERGED changes nothing worth a sweep
_HOMOGENEOUS = frozenset({"Relu"})
_BOUNDED = frozenset({"Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish"})


@dataclass
class ConvPair:
    """conv1 -> [activation] -> conv2 with channel i of conv1's output read by conv2's input channel i."""

    first: gs.Node
    second: gs.Node
    depthwise_second: bool


def equalization_scales(first_range: np.ndarray, second_range: np.ndarray) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i); 1 where either range is 0 (a dead channel has nothing to balance)."""
    r1, r2 = np.asarray(first_range, np.float64), np.asarray(second_range, np.float64)
    ok = (r1 > 0) & (r2 > 0)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    """max|W[i]| per output channel i (axis 0)."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def input_channel_ranges(weight: np.ndarray, depthwise: bool) -> np.ndarray:
    """max|W[:, i]| per input channel i (for a depthwise conv, input channel i is its output channel i)."""
    if depthwise:
        return output_channel_ranges(weight)
    return np.abs(np.moveaxis(weight, 1, 0)).reshape(weight.shape[1], -1).max(axis=1)


def rescale_pair(w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray, scales: np.ndarray, depthwise: bool
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(W1 / s, b1 / s, W2·s) per the module docstring."""
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    new_w1 = (w1 / scales.reshape(shape1)).astype(w1.dtype)
    new_b1 = (b1 / scales).astype(b1.dtype) if b1 is not None else None
    shape2 = (-1,) + (1,) * (w2.ndim - 1) if depthwise else (1, -1) + (1,) * (w2.ndim - 2)
    new_w2 = (w2 * scales.reshape(shape2)).astype(w2.dtype)
    return new_w1, new_b1, new_w2


def _only_consumer(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _conv_constants(node: gs.Node, weight_users: Counter) -> bool:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return isinstance(weight, gs.Constant) and weight_users[weight.name] == 1 and weight.values.ndim >= 3 \
        and (bias is None or isinstance(bias, gs.Constant))


def find_pairs(graph: gs.Graph) -> tuple[list[ConvPair], Counter]:
    """Equalisable pairs and a count of declined candidates by reason."""
    outputs = {t.name for t in graph.outputs}
    weight_users = Counter(t.name for n in graph.nodes for t in n.inputs if isinstance(t, gs.Constant))
    pairs: list[ConvPair] = []
    declined: Counter[str] = Counter()
    for first in graph.nodes:
        if first.op != "Conv" or not _conv_constants(first, weight_users):
            continue
        nxt = _only_consumer(first.outputs[0], outputs)
        if nxt is not None and nxt.op in _BOUNDED:
            declined["bounded_activation"] += 1
            continue
        if nxt is not None and nxt.op in _HOMOGENEOUS:
            nxt = _only_consumer(nxt.outputs[0], outputs)
        if nxt is None or nxt.op != "Conv":
            continue
        if not _conv_constants(nxt, weight_users):
            declined["second_weight_not_constant"] += 1
            continue
        channels = first.inputs[1].values.shape[0]
        group = int(nxt.attrs.get("group", 1))
        w2 = nxt.inputs[1].values
        depthwise = group > 1 and group == channels and w2.shape[0] == channels and w2.shape[1] == 1
        if (group != 1 and not depthwise) or (group == 1 and w2.shape[1] != channels):
            declined["grouped_second_conv"] += 1
            continue
        pairs.append(ConvPair(first, nxt, depthwise))
    return pairs, declined


def _equalize(pair: ConvPair) -> float:
    """Equalise one pair in place; the largest |log s_i| (0 when nothing moved)."""
    w1, w2 = pair.first.inputs[1].values, pair.second.inputs[1].values
    b1 = pair.first.inputs[2].values if len(pair.first.inputs) > 2 else None
    scales = equalization_scales(output_channel_ranges(w1), input_channel_ranges(w2, pair.depthwise_second))
    new_w1, new_b1, new_w2 = rescale_pair(w1, b1, w2, scales, pair.depthwise_second)
    pair.first.inputs[1].values = new_w1
    if b1 is not None:
        pair.first.inputs[2].values = new_b1
    pair.second.inputs[1].values = new_w2
    return float(np.max(np.abs(np.log(scales)))) if scales.size else 0.0


class CrossLayerEqualizationPass(GraphPass):
    """Cross-layer equalisation of Conv -> [Relu] -> Conv pairs (see module docstring); off unless configured."""

    requires = frozenset({GraphProperty.CONSTANTS_FOLDED})   # BatchNorm folded first: its scale is in W1
    invalidates = frozenset()      # only constant values change

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if not ctx.config.cross_layer_equalization:
            return PassResult(modified=False)
        pairs, declined = find_pairs(graph)
        sweeps = 0
        for sweeps in range(1, MAX_SWEEPS + 1):
            moved = max((_equalize(pair) for pair in pairs), default=0.0)
            if moved < CONVERGED:
                break
        stats = {"equalized_pairs": len(pairs), "sweeps": sweeps if pairs else 0,
                 **{f"declined_{k}": v for k, v in declined.items()}}
        return PassResult(modified=bool(pairs), stats=stats)

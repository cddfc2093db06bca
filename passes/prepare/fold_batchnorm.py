"""BatchNormalization folding into the preceding Conv, ConvTranspose or Gemm.

For y = γ·(conv(x, W) + b - μ)/√(σ² + ε) + β, with k = γ/√(σ² + ε) per output channel c:

    W'[c] = k[c]·W[c],     b'[c] = k[c]·(b[c] - μ[c]) + β[c]

so conv(x, W') + b' = y exactly (up to float rounding). A Gemm y = α·A·op(W) + β_g·C (BatchNorm1d after a
Linear) is the same with b = β_g·C, the output channel on op(W)'s columns (W's axis 0 with transB, else 1) and
β_g set to 1; C must broadcast as a per-column vector. Folded only when W, b and the BN parameters are
constants, the producer's output feeds nothing but the BN, and BN is in inference mode (one output).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.graph.ops import BIASED_OPS
from qcompile.pass_infra import GraphPass, GraphProperty, PassContext, PassResult


def fold_bn_into_weights(weight: np.ndarray, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                         mean: np.ndarray, var: np.ndarray, epsilon: float, channel_axis: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """W' = k·W along channel_axis, b' = k·(b - μ) + β with k = γ/√(σ²+ε)."""
    k = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    shape = [1] * weight.ndim
    shape[channel_axis] = -1
    new_weight = (weight.astype(np.float64) * k.reshape(shape)).astype(weight.dtype)
    new_bias = (k * (bias.astype(np.float64) - mean) + beta).astype(weight.dtype)
    return new_weight, new_bias


class FoldBatchNormPass(GraphPass):
    """BatchNormalization into the Conv/ConvTranspose/Gemm before it (see module docstring)."""

    requires = frozenset({GraphProperty.CONSTANTS_FOLDED})    # BN parameters from Constant nodes are initializers
    invalidates = frozenset()      # the producer takes over the BN's output tensor

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        folded = 0
        declined = 0
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            producer = bn.inputs[0].inputs[0] if bn.inputs[0].inputs else None
            if producer is None or producer.op not in BIASED_OPS or len(bn.outputs) != 1:
                declined += 1
                continue
            params = bn.inputs[1:5]
            weight = producer.inputs[1]
            if len(producer.outputs[0].outputs) != 1 or not isinstance(weight, gs.Constant) \
                    or not all(isinstance(p, gs.Constant) for p in params) \
                    or (len(producer.inputs) > 2 and not isinstance(producer.inputs[2], gs.Constant)):
                declined += 1
                continue
            out_channels = params[0].values.shape[0]
            axis = 0
            if producer.op == "ConvTranspose":
                group = int(producer.attrs.get("group", 1))
                if group != 1:
                    declined += 1
                    continue
                axis = 1
            bias = producer.inputs[2].values if len(producer.inputs) > 2 else np.zeros(out_channels, np.float32)
            if producer.op == "Gemm":
                if bias.size not in (1, out_channels) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
                    declined += 1   # a C that varies per row is not a per-channel bias
                    continue
                axis = 0 if producer.attrs.get("transB", 0) else 1
                bias = np.broadcast_to(float(producer.attrs.get("beta", 1.0)) * bias.reshape(-1),
                                       (out_channels,)).astype(np.float32)
                producer.attrs["beta"] = 1.0
            new_w, new_b = fold_bn_into_weights(weight.values, bias, *(p.values for p in params),
                                                float(bn.attrs.get("epsilon", 1e-5)), axis)
            producer.inputs[1] = gs.Constant(f"{weight.name}_bnfolded_{producer.name}", new_w)
            bias_const = gs.Constant(f"{producer.name}_bias_bnfolded", new_b)
            if len(producer.inputs) > 2:
                producer.inputs[2] = bias_const
            else:
                producer.inputs.append(bias_const)
            producer.outputs = bn.outputs
            bn.outputs = []
            folded += 1
        if folded:
            graph.cleanup().toposort()
        return PassResult(modified=folded > 0, stats={"folded": folded, "declined": declined})

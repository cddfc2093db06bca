"""Op-type sets: which ONNX ops compute, which only move data, which carry a bias; one home for each.

    COMPUTE_OPS          y = f(x, W[, b]) with a weight operand: the ops static Q/DQ is about (the default
                         ``op_types`` of the configuration, from which the set is taken)
    RECURRENT_OPS        LSTM / GRU / RNN: weights W, R quantised, the recurrence stays float (also default)
    BIASED_OPS           compute ops whose input 2 is an optional bias b added per output channel
    DATA_MOVEMENT_OPS    y is a re-arrangement of x's values (no arithmetic): y = x up to layout
    QDQ_OPS              QuantizeLinear / DequantizeLinear
    NORMALIZATION_OPS    normalisation over the feature axis (LayerNorm and its fused / RMS forms)
    SHAPE_ONLY_READERS   ops that read only a tensor's shape, never its values
    LOOPING_OPS          control flow whose body runs once per iteration (its outputs stack over iterations)

Sets that describe what one runtime does with these ops (which Q/DQ pairs ORT drops, which activations it
folds into a Q) are target facts and live with the target profiles in runtime_ext.
"""

from __future__ import annotations

from qcompile.config import RECURRENT_OP_TYPES, STATIC_COMPUTE_OP_TYPES

COMPUTE_OPS: frozenset[str] = frozenset(STATIC_COMPUTE_OP_TYPES)
RECURRENT_OPS: frozenset[str] = frozenset(RECURRENT_OP_TYPES)
BIASED_OPS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm"})
WEIGHT_INPUT = 1          # input index of W in every compute op
BIAS_INPUT = 2            # input index of b in every biased op

DATA_MOVEMENT_OPS: frozenset[str] = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})
QDQ_OPS: frozenset[str] = frozenset({"QuantizeLinear", "DequantizeLinear"})
NORMALIZATION_OPS: frozenset[str] = frozenset({"LayerNormalization", "SimplifiedLayerNormalization",
                                               "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                                               "RMSNormalization"})
SHAPE_ONLY_READERS: frozenset[str] = frozenset({"Shape", "Size"})
LOOPING_OPS: frozenset[str] = frozenset({"Loop", "Scan"})

__all__ = ["BIASED_OPS", "BIAS_INPUT", "COMPUTE_OPS", "DATA_MOVEMENT_OPS", "LOOPING_OPS", "NORMALIZATION_OPS",
           "QDQ_OPS", "RECURRENT_OPS", "SHAPE_ONLY_READERS", "WEIGHT_INPUT"]

"""A small CNN with one node built to be quantisation-sensitive, for the per-layer analysis and fallback tests.

    input [N,4,8,8] -> conv_a(8) -> Relu -> conv_b(8) -> Relu -> conv_c(8) -> Relu -> GlobalAveragePool
    -> Flatten -> Gemm(10) (the classifier, kept float by default) -> logits

conv_a's channel 0 has a bias of -100, so after the Relu it is always 0. conv_b reads that dead channel with
weight 50: in FP32 the weight never matters, but it sets every per-channel weight scale of conv_b to 50/127,
so conv_b's real weights (|w| < 0.5) round to 0 or ±0.39. Quantising conv_b alone therefore ruins the output,
while conv_a and conv_c quantise well: conv_b must rank first by sensitivity and be the one to fall back.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SENSITIVE_NODE = "conv_b"


def outlier_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    wa = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    ba = rng.uniform(0.0, 0.5, 8).astype(np.float32)
    ba[0] = -100.0
    wb = rng.normal(0, 0.15, (8, 8, 3, 3)).astype(np.float32)
    wb[:, 0] = 50.0
    bb = rng.uniform(0.0, 0.3, 8).astype(np.float32)
    wc = rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    bc = rng.uniform(0.0, 0.3, 8).astype(np.float32)
    wfc = rng.normal(0, 0.5, (8, 10)).astype(np.float32)
    bfc = np.zeros(10, np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in
             (("wa", wa), ("ba", ba), ("wb", wb), ("bb", bb), ("wc", wc), ("bc", bc), ("wfc", wfc), ("bfc", bfc))]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "wa", "ba"], ["a"], name="conv_a", **conv),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", **conv),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        helper.make_node("Conv", ["rb", "wc", "bc"], ["c"], name="conv_c", **conv),
        helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
        helper.make_node("GlobalAveragePool", ["rc"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "outlier_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def outlier_samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.uniform(0.0, 1.0, (1, 4, 8, 8)).astype(np.float32)} for _ in range(n)]

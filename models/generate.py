"""Deterministic generators of small ONNX test models (and their calibration / evaluation data).

Every generator returns an ``onnx.ModelProto`` built with ``onnx.helper`` from fixed seeds, so two calls give
byte-identical serialisations. Weights are non-trivial on purpose: the CNNs get a data-dependent ("LSUV-like")
initialisation from a numpy forward pass over synthetic images, so BatchNorm running statistics match the data,
channels have diverse ranges (lognormal gains) and no channel is dead; the transformer has BERT-like outlier
hidden dimensions (large LayerNorm gains on two channels). Quantization error is therefore measurable.

Models
    tiny_cnn                 opset 17  input [N,3,32,32] -> logits [N,10]      Conv+BN, ReLU6, residual, Gemm
    tiny_transformer         opset 17  input_ids, attention_mask [N,S] int64 -> last_hidden_state [N,S,64],
                                       sentence_embedding [N,64]               2 BERT encoder layers, Erf-GELU
    constant_weights_cnn     opset 13  input [N,3,16,16] -> logits [N,10]      weights in Constant nodes
    opset11_cnn              opset 11  input [N,3,16,16] -> logits [N,10]
    if_subgraph_model        opset 17  x [N,16], use_a bool [] -> y [N,8]      MatMuls with weights in If branches
    multi_dtype_inputs       opset 17  tokens int32 [N,S], state [N,16], temperature [] -> logits [N,8],
                                       new_state [N,16]
    shape_computed_pad_cnn   opset 13  input [N,3,32,32] -> logits [N,10]      TF-"SAME" pads from Shape arithmetic
    loop_scan_model          opset 17  seq [N,T,8] -> y [N,4], states [T,N,16]   MatMuls in Scan and Loop bodies
    large_external           opset 17  x [N,H] -> y [N,H]                      MatMul chain, external data file

Data files
    <name>_calib/sample_0000.npz ...   one sample per file (batch 1), arrays keyed by input name
    <name>_eval.npz                    held-out samples, each input stacked along a NEW leading axis:
                                       key "input" has shape [n, *sample_shape]; sample i is {k: v[i]}.
                                       tiny_transformer eval samples are all padded to S=24 (mask 0 on padding)
                                       so that they stack; loop_scan_model eval sequences have T=6.

CLI
    python models/generate.py OUT_DIR [--only NAME ...] [--calib-samples 32] [--eval-samples 64]
                                      [--large-bytes 8388608]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

CALIB_SEED = 1000
EVAL_SEED = 2000
DEFAULT_CALIB_SAMPLES = 32
DEFAULT_EVAL_SAMPLES = 64
DEFAULT_LARGE_BYTES = 8 * 1024 * 1024
LARGE_HIDDEN = 1024
_EXTERNAL_ALIGN = 65536  # offsets aligned to the largest common mmap allocation granularity

VOCAB = 100
D_MODEL = 64
N_HEADS = 4
D_FF = 256
MAX_POS = 64
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
TRANSFORMER_MIN_S, TRANSFORMER_MAX_S = 8, 24
MULTI_DTYPE_SEQ = 12

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)


# --------------------------------------------------------------------------------------------- graph builder


class _Builder:
    """Tiny helper around onnx.helper: unique deterministic names, initializers, nodes."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        i = self._counts.get(base, 0)
        self._counts[base] = i + 1
        return f"{self.prefix}{base}_{i}"

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        """A Constant node (as Paddle / some exporters emit) instead of an initializer."""
        name = self.name(base)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name + "_value")
        self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_node", value=tensor))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str] | str | None = None,
             n_out: int = 1, **attrs) -> str | list[str]:
        base = op.lower()
        if outputs is None:
            outputs = [self.name(base) for _ in range(n_out)]
        elif isinstance(outputs, str):
            outputs = [outputs]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=self.name(op), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def graph(self, name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, list(inputs), list(outputs), initializer=self.initializers)


def _model(graph: onnx.GraphProto, opset: int, doc: str) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="qcompile.models.generate",
                              producer_version="1", doc_string=doc)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def _round_sig(x: np.ndarray, sig: int = 4) -> np.ndarray:
    """Round data-derived statistics so BLAS last-bit differences between machines do not leak into weights."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.where(x == 0, 1.0, 10.0 ** np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x)))))
    return np.round(x / mag, sig - 1) * mag


# --------------------------------------------------------------------------------------------- numpy helpers


def _conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, pad: int = 1, group: int = 1) -> np.ndarray:
    """Reference NCHW conv (float64), used only for the data-dependent initialisation."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    if group == 1:
        out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # N,Ho,Wo,O
        return out.transpose(0, 3, 1, 2)
    assert group == x.shape[1] == w.shape[0] and w.shape[1] == 1  # depthwise only
    return np.einsum("nchwij,cij->nchw", win, w[:, 0])


def _he(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _lsuv(pre: np.ndarray, w: np.ndarray, gains: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale conv weights per output channel so that pre-activation channel c has std gains[c] and mean
    gains[c]*shifts[c] on the reference data: w' = w g/s, b' = g (shift - m/s)."""
    m = _round_sig(pre.mean(axis=(0, 2, 3)))
    s = _round_sig(pre.std(axis=(0, 2, 3)) + 1e-6)
    factor = gains / s
    w2 = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
    b2 = gains * shifts - m * factor
    return w2, b2


def _standardized_fc(rng: np.random.Generator, feats: np.ndarray, n_out: int,
                     gain: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Classifier [n_out, d] acting on standardised features, so logits are centred with std ~gain and
    argmax varies across inputs: W' = W / std, b' = -W' mean + noise."""
    f_mean, f_std = _round_sig(feats.mean(axis=0)), _round_sig(feats.std(axis=0) + 1e-6)
    w = rng.standard_normal((n_out, feats.shape[1])) / f_std[None, :] * (gain / math.sqrt(feats.shape[1]))
    return w, -w @ f_mean + rng.normal(0, 0.1, n_out)


def _natural_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Smooth, colour-correlated synthetic photos with a few hard-edged shapes, ImageNet-normalised."""
    grid = 5
    pos = np.linspace(0, grid - 1, size)
    lo = np.floor(pos).astype(int).clip(0, grid - 2)
    frac = pos - lo
    interp = np.zeros((size, grid))
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    imgs = np.empty((n, 3, size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        lum = interp @ rng.standard_normal((grid, grid)) @ interp.T * 0.18 + rng.uniform(0.3, 0.7)
        tint = rng.uniform(-0.15, 0.15, size=3)
        img = np.stack([lum + tint[c] + 0.06 * (interp @ rng.standard_normal((grid, grid)) @ interp.T)
                        for c in range(3)])
        for _ in range(int(rng.integers(1, 4))):
            color = rng.uniform(0, 1, size=3)
            if rng.random() < 0.5:
                y0, x0 = rng.integers(0, size - 4, size=2)
                h, w = rng.integers(4, size // 2, size=2)
                mask = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            else:
                cy, cx = rng.uniform(0, size, size=2)
                r = rng.uniform(3, size / 4)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[:, mask] = color[:, None] * 0.8 + img[:, mask] * 0.2
        img += rng.normal(0, 0.02, size=img.shape)
        imgs[i] = img.clip(0, 1)
    imgs = (imgs - _IMAGENET_MEAN[None, :, None, None]) / _IMAGENET_STD[None, :, None, None]
    return imgs.astype(np.float32)


# --------------------------------------------------------------------------------------------- tiny_cnn


def tiny_cnn() -> onnx.ModelProto:
    """input [N,3,32,32] -> Conv(16)+BN+Relu -> Conv(32,s2)+Clip(0,6) -> residual(Conv+Relu, Conv, Add, Relu)
    -> MaxPool(2) -> GlobalAveragePool -> Flatten -> Gemm(10) -> logits [N,10]."""
    rng = np.random.default_rng(17)
    x = _natural_images(np.random.default_rng(4242), 32).astype(np.float64)

    # conv1 (no bias) + BatchNormalization whose running stats are the data's.
    w1 = _he(rng, (16, 3, 3, 3))
    pre1 = _conv2d(x, w1)
    bn_mean = _round_sig(pre1.mean(axis=(0, 2, 3)))
    bn_var = _round_sig(pre1.var(axis=(0, 2, 3)) + 1e-6)
    bn_gamma = np.exp(rng.normal(0.0, 0.5, 16))
    bn_beta = rng.uniform(-0.2, 0.6, 16) * bn_gamma
    a1 = np.maximum(bn_gamma[None, :, None, None] * (pre1 - bn_mean[None, :, None, None])
                    / np.sqrt(bn_var[None, :, None, None] + 1e-5) + bn_beta[None, :, None, None], 0)

    # conv2 stride 2 + ReLU6: lognormal gains around 1.2, so the widest channels saturate at 6 now and then.
    w2 = _he(rng, (32, 16, 3, 3))
    w2, b2 = _lsuv(_conv2d(a1, w2, stride=2), w2, np.exp(rng.normal(math.log(1.2), 0.6, 32)),
                   rng.uniform(0.0, 0.8, 32))
    a2 = np.clip(_conv2d(a1, w2, stride=2) + b2[None, :, None, None], 0, 6)

    # residual block
    w3 = _he(rng, (32, 32, 3, 3))
    w3, b3 = _lsuv(_conv2d(a2, w3), w3, np.exp(rng.normal(0.0, 0.4, 32)), rng.uniform(-0.3, 0.7, 32))
    a3 = np.maximum(_conv2d(a2, w3) + b3[None, :, None, None], 0)
    w4 = _he(rng, (32, 32, 3, 3))
    w4, b4 = _lsuv(_conv2d(a3, w4), w4, np.exp(rng.normal(0.0, 0.4, 32)), rng.uniform(-0.5, 0.3, 32))
    a4 = np.maximum(_conv2d(a3, w4) + b4[None, :, None, None] + a2, 0)

    pooled = a4.reshape(32, 32, 8, 2, 8, 2).max(axis=(3, 5))
    feats = pooled.mean(axis=(2, 3))
    wfc, bfc = _standardized_fc(rng, feats, 10)

    b = _Builder()
    h = b.node("Conv", ["input", b.init("conv1.weight", _f32(w1))], "conv1_out",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("BatchNormalization", [h, b.init("bn1.scale", _f32(bn_gamma)), b.init("bn1.bias", _f32(bn_beta)),
                                      b.init("bn1.mean", _f32(bn_mean)), b.init("bn1.var", _f32(bn_var))],
               "bn1_out", epsilon=1e-5)
    h = b.node("Relu", [h], "relu1_out")
    h = b.node("Conv", [h, b.init("conv2.weight", _f32(w2)), b.init("conv2.bias", _f32(b2))], "conv2_out",
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    skip = b.node("Clip", [h, b.init("relu6.min", _f32(0.0)), b.init("relu6.max", _f32(6.0))], "relu6_out")
    h = b.node("Conv", [skip, b.init("res.conv1.weight", _f32(w3)), b.init("res.conv1.bias", _f32(b3))],
               "res_conv1_out", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], "res_relu1_out")
    h = b.node("Conv", [h, b.init("res.conv2.weight", _f32(w4)), b.init("res.conv2.bias", _f32(b4))],
               "res_conv2_out", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Add", [h, skip], "res_add_out")
    h = b.node("Relu", [h], "res_relu2_out")
    h = b.node("MaxPool", [h], "maxpool_out", kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("GlobalAveragePool", [h], "gap_out")
    h = b.node("Flatten", [h], "flatten_out", axis=1)
    b.node("Gemm", [h, b.init("fc.weight", _f32(wfc)), b.init("fc.bias", _f32(bfc))], "logits", transB=1)
    graph = b.graph("tiny_cnn",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    return _model(graph, 17, "tiny CNN with BN, ReLU6 and a residual block (data-dependent init)")


# --------------------------------------------------------------------------------------------- tiny_transformer


def _layer_norm(b: _Builder, x: str, rng: np.random.Generator, prefix: str) -> str:
    gamma = 1.0 + 0.1 * rng.standard_normal(D_MODEL)
    gamma[[7, 42]] = rng.uniform(4.0, 6.0, 2)  # BERT-like outlier hidden dimensions
    beta = 0.05 * rng.standard_normal(D_MODEL)
    return b.node("LayerNormalization", [x, b.init(prefix + ".weight", _f32(gamma)),
                                         b.init(prefix + ".bias", _f32(beta))], axis=-1, epsilon=1e-12)


def _linear(b: _Builder, x: str, rng: np.random.Generator, prefix: str, d_in: int, d_out: int,
            gain: float = 1.0) -> str:
    w = rng.standard_normal((d_in, d_out)) * gain / math.sqrt(d_in)
    bias = 0.02 * rng.standard_normal(d_out)
    h = b.node("MatMul", [x, b.init(prefix + ".weight", _f32(w))])
    return b.node("Add", [h, b.init(prefix + ".bias", _f32(bias))])


def _encoder_layer(b: _Builder, x: str, mask_bias: str, rng: np.random.Generator, i: int) -> str:
    p = f"layer{i}"
    d_head = D_MODEL // N_HEADS
    heads_shape = b.init(p + ".heads_shape", _i64([0, 0, N_HEADS, d_head]))
    q = _linear(b, x, rng, p + ".attn.q", D_MODEL, D_MODEL, gain=1.5)
    k = _linear(b, x, rng, p + ".attn.k", D_MODEL, D_MODEL, gain=1.5)
    v = _linear(b, x, rng, p + ".attn.v", D_MODEL, D_MODEL)
    q = b.node("Transpose", [b.node("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])  # N,H,S,dh
    k = b.node("Transpose", [b.node("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])  # N,H,dh,S
    v = b.node("Transpose", [b.node("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])  # N,H,S,dh
    scores = b.node("MatMul", [q, k])
    scores = b.node("Div", [scores, b.init(p + ".attn.scale", _f32(math.sqrt(d_head)))])
    scores = b.node("Add", [scores, mask_bias])
    probs = b.node("Softmax", [scores], axis=-1)
    ctx = b.node("MatMul", [probs, v])
    ctx = b.node("Transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = b.node("Reshape", [ctx, b.init(p + ".merge_shape", _i64([0, 0, D_MODEL]))])
    attn = _linear(b, ctx, rng, p + ".attn.out", D_MODEL, D_MODEL)
    x = _layer_norm(b, b.node("Add", [attn, x]), rng, p + ".attn.ln")
    h = _linear(b, x, rng, p + ".ffn.in", D_MODEL, D_FF)
    # GELU exactly as BERT exports it: x * 0.5 * (1 + erf(x / sqrt(2)))
    e = b.node("Erf", [b.node("Div", [h, b.init(p + ".gelu.sqrt2", _f32(math.sqrt(2.0)))])])
    e = b.node("Add", [e, b.init(p + ".gelu.one", _f32(1.0))])
    h = b.node("Mul", [b.node("Mul", [h, e]), b.init(p + ".gelu.half", _f32(0.5))])
    h = _linear(b, h, rng, p + ".ffn.out", D_FF, D_MODEL)
    return _layer_norm(b, b.node("Add", [h, x]), rng, p + ".ffn.ln")


def tiny_transformer(n_layers: int = 2) -> onnx.ModelProto:
    """BERT-like encoder: input_ids, attention_mask int64 [N,S] -> last_hidden_state [N,S,64] and masked
    mean-pooled sentence_embedding [N,64]."""
    rng = np.random.default_rng(23)
    b = _Builder()
    word = rng.standard_normal((VOCAB, D_MODEL))
    pos = 0.5 * rng.standard_normal((MAX_POS, D_MODEL))
    emb = b.node("Gather", [b.init("embeddings.word", _f32(word)), "input_ids"], axis=0)  # N,S,D
    seq = b.node("Slice", [b.node("Shape", ["input_ids"]), b.init("slice.one", _i64([1])),
                           b.init("slice.two", _i64([2]))])  # [S]
    pos_s = b.node("Slice", [b.init("embeddings.position", _f32(pos)), b.init("slice.zero", _i64([0])), seq,
                             b.init("slice.axis0", _i64([0]))])  # S,D
    h = _layer_norm(b, b.node("Add", [emb, pos_s]), rng, "embeddings.ln")

    mask_f = b.node("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # N,S
    inv = b.node("Sub", [b.init("mask.one", _f32(1.0)), mask_f])
    bias = b.node("Mul", [inv, b.init("mask.neg", _f32(-10000.0))])
    mask_bias = b.node("Unsqueeze", [bias, b.init("mask.axes", _i64([1, 2]))])  # N,1,1,S

    for i in range(n_layers):
        h = _encoder_layer(b, h, mask_bias, rng, i)
    b.node("Identity", [h], "last_hidden_state")

    mask3 = b.node("Unsqueeze", [mask_f, b.init("pool.axes2", _i64([2]))])  # N,S,1
    axis1 = b.init("pool.axis1", _i64([1]))
    summed = b.node("ReduceSum", [b.node("Mul", ["last_hidden_state", mask3]), axis1], keepdims=0)  # N,D
    count = b.node("ReduceSum", [mask3, axis1], keepdims=0)  # N,1
    count = b.node("Max", [count, b.init("pool.eps", _f32(1e-9))])
    b.node("Div", [summed, count], "sentence_embedding")
    graph = b.graph(
        "tiny_transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", D_MODEL]),
         helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", D_MODEL])])
    return _model(graph, 17, f"BERT-like encoder, {n_layers} layers, d={D_MODEL}, {N_HEADS} heads")


# --------------------------------------------------------------------------------------------- robustness patterns


def _small_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return _natural_images(rng, n, size=16)


def constant_weights_cnn() -> onnx.ModelProto:
    """Paddle-style: every weight is a Constant node; conv2's weight reaches it through Identity->Identity.
    input [N,3,16,16] -> Conv(8)+Relu -> Conv(16,s2)+Relu -> GAP -> Flatten -> MatMul+Add -> logits [N,10]."""
    rng = np.random.default_rng(31)
    x = _small_images(np.random.default_rng(4243), 32).astype(np.float64)
    w1, b1 = _he(rng, (8, 3, 3, 3)), rng.uniform(0, .2, 8)
    w2, b2 = _he(rng, (16, 8, 3, 3)), rng.uniform(0, .2, 16)
    a1 = np.maximum(_conv2d(x, w1) + b1[None, :, None, None], 0)
    a2 = np.maximum(_conv2d(a1, w2, stride=2) + b2[None, :, None, None], 0)
    wfc, bfc = _standardized_fc(rng, a2.mean(axis=(2, 3)), 10)

    b = _Builder()
    h = b.node("Conv", ["input", b.const("conv1.w", _f32(w1)), b.const("conv1.b", _f32(b1))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h])
    w2_name = b.node("Identity", [b.node("Identity", [b.const("conv2.w", _f32(w2))])])
    h = b.node("Conv", [h, w2_name, b.const("conv2.b", _f32(b2))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    h = b.node("Relu", [h])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    h = b.node("MatMul", [h, b.const("fc.w", _f32(wfc.T))])
    b.node("Add", [h, b.const("fc.b", _f32(bfc))], "logits")
    graph = b.graph("constant_weights_cnn",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    return _model(graph, 13, "weights held in Constant nodes (one via an Identity chain), as Paddle exports")


def opset11_cnn() -> onnx.ModelProto:
    """opset 11: input [N,3,16,16] -> Conv(8)+Relu -> Conv(16,s2)+Clip(0,6) -> MaxPool -> GAP -> Flatten
    -> Gemm(10) -> logits [N,10]."""
    rng = np.random.default_rng(11)
    x = _small_images(np.random.default_rng(4244), 32).astype(np.float64)
    w1, b1 = _he(rng, (8, 3, 3, 3)), rng.uniform(0, .2, 8)
    w2, b2 = _he(rng, (16, 8, 3, 3)) * 2.0, rng.uniform(0, .3, 16)
    a1 = np.maximum(_conv2d(x, w1) + b1[None, :, None, None], 0)
    a2 = np.clip(_conv2d(a1, w2, stride=2) + b2[None, :, None, None], 0, 6)
    feats = a2.reshape(32, 16, 4, 2, 4, 2).max(axis=(3, 5)).mean(axis=(2, 3))
    wfc, bfc = _standardized_fc(rng, feats, 10)

    b = _Builder()
    h = b.node("Conv", ["input", b.init("conv1.weight", _f32(w1)), b.init("conv1.bias", _f32(b1))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h])
    h = b.node("Conv", [h, b.init("conv2.weight", _f32(w2)), b.init("conv2.bias", _f32(b2))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    h = b.node("Clip", [h, b.init("clip.min", _f32(0.0)), b.init("clip.max", _f32(6.0))])
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    b.node("Gemm", [h, b.init("fc.weight", _f32(wfc)), b.init("fc.bias", _f32(bfc))], "logits", transB=1)
    graph = b.graph("opset11_cnn",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    return _model(graph, 11, "opset 11 CNN (per-channel DequantizeLinear needs 13)")


def if_subgraph_model() -> onnx.ModelProto:
    """x [N,16] -> h = Relu(x W0 + b0) [N,32] (outer scope) -> If(use_a): then y = h Wa + ba, else
    y = Relu(h Wb + bb) + x Wx; Wa/ba/Wb/bb/Wx are initializers of the branch subgraphs. y [N,8]."""
    rng = np.random.default_rng(41)
    b = _Builder()
    h = b.node("MatMul", ["x", b.init("outer.weight", _f32(rng.standard_normal((16, 32)) / 4.0))])
    h = b.node("Relu", [b.node("Add", [h, b.init("outer.bias", _f32(rng.uniform(0, 0.3, 32)))])], "h")

    tb = _Builder("then/")
    t = tb.node("MatMul", ["h", tb.init("a.weight", _f32(rng.standard_normal((32, 8)) / math.sqrt(32)))])
    tb.node("Add", [t, tb.init("a.bias", _f32(0.1 * rng.standard_normal(8)))], "then_y")
    then_g = tb.graph("then_branch", [], [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)])

    eb = _Builder("else/")
    e = eb.node("MatMul", ["h", eb.init("b.weight", _f32(rng.standard_normal((32, 8)) / math.sqrt(16)))])
    e = eb.node("Relu", [eb.node("Add", [e, eb.init("b.bias", _f32(0.1 * rng.standard_normal(8)))])])
    s = eb.node("MatMul", ["x", eb.init("x.weight", _f32(rng.standard_normal((16, 8)) / 4.0))])
    eb.node("Add", [e, s], "else_y")
    else_g = eb.graph("else_branch", [], [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)])

    b.node("If", ["use_a"], "y", then_branch=then_g, else_branch=else_g)
    graph = b.graph("if_subgraph_model",
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
                     helper.make_tensor_value_info("use_a", TensorProto.BOOL, [])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    return _model(graph, 17, "compute inside If branches with subgraph initializers and outer-scope inputs")


def loop_scan_model() -> onnx.ModelProto:
    """seq [N,T,8] -> s0 = tanh(mean_T(seq) W0) [N,16]; Scan over T: s_t = tanh(x_t Wx + s_{t-1} Ws) (weights
    are Scan-body initializers); Loop 2 times: h <- Relu(h Wl + bl) with Wl an OUTER-scope initializer read
    from the body; y = h Wo [N,4]; states = the Scan's stacked s_t [T,N,16]."""
    rng = np.random.default_rng(67)
    b = _Builder()
    mean = b.node("ReduceMean", ["seq"], axes=[1], keepdims=0)                          # N,8
    s0 = b.node("Tanh", [b.node("MatMul", [mean, b.init("init.weight", _f32(rng.standard_normal((8, 16)) / 2))])])

    sb = _Builder("scan/")
    xt = sb.node("MatMul", ["x_t", sb.init("x.weight", _f32(rng.standard_normal((8, 16)) / math.sqrt(8)))])
    st = sb.node("MatMul", ["s_in", sb.init("s.weight", _f32(rng.standard_normal((16, 16)) / math.sqrt(32)))])
    sb.node("Tanh", [sb.node("Add", [xt, st])], "s_out")
    sb.node("Identity", ["s_out"], "s_scan")
    scan_body = sb.graph("scan_body",
                         [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["batch", 16]),
                          helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["batch", 8])],
                         [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["batch", 16]),
                          helper.make_tensor_value_info("s_scan", TensorProto.FLOAT, ["batch", 16])])
    b.node("Scan", [s0, "seq"], ["s_final", "states"], body=scan_body, num_scan_inputs=1,
           scan_input_axes=[1])

    loop_weight = b.init("loop.weight", _f32(rng.standard_normal((16, 16)) / math.sqrt(8)))
    lb = _Builder("loop/")
    lb.node("Identity", ["cond_in"], "cond_out")
    h = lb.node("MatMul", ["h_in", loop_weight])
    lb.node("Relu", [lb.node("Add", [h, lb.init("l.bias", _f32(rng.uniform(0, 0.2, 16)))])], "h_out")
    loop_body = lb.graph("loop_body",
                         [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                          helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                          helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 16])],
                         [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                          helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 16])])
    # scalars (rank 0) as Loop expects; _Builder.init would make them rank 1
    b.initializers += [numpy_helper.from_array(np.array(2, dtype=np.int64), "loop.trip_count"),
                       numpy_helper.from_array(np.array(True), "loop.cond")]
    h_final = b.node("Loop", ["loop.trip_count", "loop.cond", "s_final"], body=loop_body)
    b.node("MatMul", [h_final, b.init("out.weight", _f32(rng.standard_normal((16, 4)) / 2))], "y")
    graph = b.graph("loop_scan_model",
                    [helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["batch", "time", 8])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                     helper.make_tensor_value_info("states", TensorProto.FLOAT, ["time", "batch", 16])])
    return _model(graph, 17, "compute inside Scan and Loop bodies, weights in the body and in the outer scope")


def multi_dtype_inputs() -> onnx.ModelProto:
    """tokens int32 [N,S], state [N,16], temperature [] -> e = mean_S(Emb[tokens]); z = tanh((e+state) W1 + b1);
    logits = (z W2 + b2) / temperature [N,8]; new_state = tanh(z W3) [N,16]."""
    rng = np.random.default_rng(53)
    b = _Builder()
    e = b.node("Gather", [b.init("emb", _f32(rng.standard_normal((50, 16)))), "tokens"], axis=0)  # N,S,16
    e = b.node("ReduceMean", [e], axes=[1], keepdims=0)
    z = b.node("MatMul", [b.node("Add", [e, "state"]), b.init("w1", _f32(rng.standard_normal((16, 32)) / 3.0))])
    z = b.node("Tanh", [b.node("Add", [z, b.init("b1", _f32(0.1 * rng.standard_normal(32)))])])
    lg = b.node("Add", [b.node("MatMul", [z, b.init("w2", _f32(rng.standard_normal((32, 8)) / 2.0))]),
                        b.init("b2", _f32(0.1 * rng.standard_normal(8)))])
    b.node("Div", [lg, "temperature"], "logits")
    b.node("Tanh", [b.node("MatMul", [z, b.init("w3", _f32(rng.standard_normal((32, 16)) / 3.0))])], "new_state")
    graph = b.graph("multi_dtype_inputs",
                    [helper.make_tensor_value_info("tokens", TensorProto.INT32, ["batch", "sequence"]),
                     helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 16]),
                     helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8]),
                     helper.make_tensor_value_info("new_state", TensorProto.FLOAT, ["batch", 16])])
    return _model(graph, 17, "int32, float32 and scalar inputs feeding a MatMul path")


def _same_pad(b: _Builder, x: str, kernel: int, stride: int) -> str:
    """TF 'SAME' padding computed at run time from the input shape, as EfficientNet exports do:
    total = max((ceil(hw/s)-1)*s + k - hw, 0); pads = [0,0,floor(total/2), 0,0,total-floor(total/2)]."""
    hw = b.node("Gather", [b.node("Shape", [x]), b.init("pad.hw_idx", _i64([2, 3]))], axis=0)  # int64 [2]
    hw_f = b.node("Cast", [hw], to=TensorProto.FLOAT)
    out = b.node("Ceil", [b.node("Div", [hw_f, b.init("pad.stride", _f32(stride))])])
    span = b.node("Add", [b.node("Mul", [b.node("Sub", [out, b.init("pad.one", _f32(1.0))]),
                                         b.init("pad.stride", _f32(stride))]), b.init("pad.k", _f32(kernel))])
    total = b.node("Max", [b.node("Sub", [span, hw_f]), b.init("pad.zero", _f32(0.0))])
    begin = b.node("Floor", [b.node("Div", [total, b.init("pad.two", _f32(2.0))])])
    end = b.node("Sub", [total, begin])
    zeros = b.init("pad.nc", _f32([0.0, 0.0]))
    pads = b.node("Cast", [b.node("Concat", [zeros, begin, zeros, end], axis=0)], to=TensorProto.INT64)
    return b.node("Pad", [x, pads], mode="constant")


def shape_computed_pad_cnn() -> onnx.ModelProto:
    """input [N,3,32,32] -> SAME-Pad -> Conv(16,k3,s2) -> Swish -> SAME-Pad -> depthwise Conv(k3) -> Swish
    -> Conv1x1(24) -> Relu -> GAP -> Flatten -> Gemm(10) -> logits [N,10]; pads come from Shape arithmetic."""
    rng = np.random.default_rng(61)
    x = _natural_images(np.random.default_rng(4245), 32).astype(np.float64)
    w_stem, b_stem = _he(rng, (16, 3, 3, 3)), rng.uniform(0, .3, 16)
    w_dw, b_dw = _he(rng, (16, 1, 3, 3)), rng.uniform(0, .3, 16)
    w_pw, b_pw = _he(rng, (24, 16, 1, 1)), rng.uniform(0, .2, 24)

    def np_swish(t: np.ndarray) -> np.ndarray:
        return t / (1.0 + np.exp(-t))

    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))  # SAME for 32 -> 16 with k3 s2: pads (0, 1)
    a = np_swish(_conv2d(xp, w_stem, stride=2, pad=0) + b_stem[None, :, None, None])
    a = np_swish(_conv2d(a, w_dw, pad=1, group=16) + b_dw[None, :, None, None])
    a = np.maximum(_conv2d(a, w_pw, pad=0) + b_pw[None, :, None, None], 0)
    wfc, bfc = _standardized_fc(rng, a.mean(axis=(2, 3)), 10)

    b = _Builder()

    def swish(t: str) -> str:
        return b.node("Mul", [t, b.node("Sigmoid", [t])])

    h = b.node("Conv", [_same_pad(b, "input", 3, 2), b.init("stem.weight", _f32(w_stem)),
                        b.init("stem.bias", _f32(b_stem))], kernel_shape=[3, 3], strides=[2, 2])
    h = swish(h)
    h = b.node("Conv", [_same_pad(b, h, 3, 1), b.init("dw.weight", _f32(w_dw)), b.init("dw.bias", _f32(b_dw))],
               kernel_shape=[3, 3], group=16)
    h = swish(h)
    h = b.node("Conv", [h, b.init("pw.weight", _f32(w_pw)), b.init("pw.bias", _f32(b_pw))], kernel_shape=[1, 1])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Relu", [h])])], axis=1)
    b.node("Gemm", [h, b.init("fc.weight", _f32(wfc)), b.init("fc.bias", _f32(bfc))], "logits", transB=1)
    graph = b.graph("shape_computed_pad_cnn",
                    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    return _model(graph, 13, "Pad whose pads are computed from Shape->Gather->Sub->Concat->Cast (EfficientNet)")


# --------------------------------------------------------------------------------------------- large_external


def large_external_model(out_dir: str | Path, size_bytes: int, *, hidden: int = LARGE_HIDDEN,
                         name: str = "large_external", seed: int = 71, gain: float = 1.0) -> Path:
    """Write OUT_DIR/<name>.onnx + OUT_DIR/<name>.onnx.data: x [N,hidden] -> (MatMul W_i -> Tanh) x L -> y.

    L = ceil(size_bytes / (4 hidden^2)), so the float32 weights total at least size_bytes. Each W_i is
    generated and written on its own (in row chunks of <= 16 MiB), so peak memory stays bounded whatever
    size_bytes is; the tensors reference the file through external_data (location, offset, length), offsets
    aligned to 64 KiB. Returns the .onnx path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer_bytes = hidden * hidden * 4
    n_layers = max(1, -(-int(size_bytes) // layer_bytes))
    data_name = f"{name}.onnx.data"
    rows_per_chunk = max(1, (16 * 1024 * 1024) // (hidden * 4))
    # gain 1 puts the Tanh chain at the edge of chaos: a perturbation such as quantisation error adds up over
    # depth instead of growing exponentially (measured at hidden 1024, 33 layers: cosine 0.998 at gain 1.0,
    # 0.975 at gain 1.5), so the output fidelity tests the quantiser, not the chain's sensitivity.
    scale = np.float32(gain / math.sqrt(hidden))

    b = _Builder()
    h = "x"
    offset = 0
    with open(out_dir / data_name, "wb") as f:
        for i in range(n_layers):
            pad = (-offset) % _EXTERNAL_ALIGN
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            rng = np.random.default_rng([seed, i])
            for r0 in range(0, hidden, rows_per_chunk):
                rows = min(rows_per_chunk, hidden - r0)
                chunk = rng.standard_normal((rows, hidden), dtype=np.float32)
                chunk *= scale
                f.write(chunk.astype("<f4", copy=False).tobytes())
            tensor = TensorProto(name=f"layer{i}.weight", data_type=TensorProto.FLOAT, dims=[hidden, hidden])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(layer_bytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            b.initializers.append(tensor)
            offset += layer_bytes
            h = b.node("MatMul", [h, tensor.name])
            h = b.node("Tanh", [h], "y" if i == n_layers - 1 else None)
    graph = b.graph(name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])])
    model = _model(graph, 17, f"{n_layers} x MatMul[{hidden},{hidden}] with external data")
    path = out_dir / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    logger.info("wrote %s (%d layers, %d weight bytes in %s)", path, n_layers, n_layers * layer_bytes, data_name)
    return path


# --------------------------------------------------------------------------------------------- data


def _tiny_cnn_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": _natural_images(rng, 1)}


def _small_cnn_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": _small_images(rng, 1)}


def _token_sequence(rng: np.random.Generator, length: int, vocab: int) -> np.ndarray:
    """[CLS] zipf-distributed tokens [SEP]; ids 0..2 are special."""
    ranks = np.arange(1, vocab - 2)
    p = 1.0 / ranks ** 1.1
    body = rng.choice(np.arange(3, vocab), size=length - 2, p=p / p.sum())
    return np.concatenate([[CLS_ID], body, [SEP_ID]])


def _transformer_sample(rng: np.random.Generator, seq_len: int | None = None) -> dict[str, np.ndarray]:
    s = int(rng.integers(TRANSFORMER_MIN_S, TRANSFORMER_MAX_S + 1))
    real = int(rng.integers(max(3, s // 2), s + 1))
    total = s if seq_len is None else seq_len
    ids = np.full((1, total), PAD_ID, dtype=np.int64)
    mask = np.zeros((1, total), dtype=np.int64)
    ids[0, :real] = _token_sequence(rng, real, VOCAB)
    mask[0, :real] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _if_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": _f32(rng.standard_normal((1, 16)) * rng.uniform(0.5, 2.0)),
            "use_a": np.array(bool(rng.random() < 0.5))}


def _loop_scan_sample(rng: np.random.Generator, steps: int | None = None) -> dict[str, np.ndarray]:
    length = int(rng.integers(3, 7))
    return {"seq": _f32(rng.standard_normal((1, steps or length, 8)) * rng.uniform(0.5, 1.5))}


def _multi_dtype_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"tokens": rng.integers(0, 50, size=(1, MULTI_DTYPE_SEQ)).astype(np.int32),
            "state": _f32(np.tanh(rng.standard_normal((1, 16)))),
            "temperature": _f32(rng.uniform(0.5, 2.0))}


def _large_sample(rng: np.random.Generator, hidden: int = LARGE_HIDDEN) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((1, hidden), dtype=np.float32)}


# --------------------------------------------------------------------------------------------- nested control flow

BODY_KINDS: tuple[str, ...] = ("If", "Loop", "Scan")
BODY_OP_KINDS: tuple[str, ...] = ("Conv", "MatMul", "LSTM", "GRU")
CONTROL_FLOW_OPSET = 16
_ENCLOSING_KINDS = ("Scan", "Loop", "If")        # the levels around a family member's innermost body, outer first
_RECURRENT_HIDDEN = 8
_FEATURE_SHAPES = {"MatMul": ("batch", 8), "Conv": ("batch", 4, 6, 6), "LSTM": ("time", "batch", 8),
                   "GRU": ("time", "batch", 8)}
_SAMPLE_SHAPES = {"MatMul": (1, 8), "Conv": (1, 4, 6, 6), "LSTM": (5, 1, 8), "GRU": (5, 1, 8)}


def _inline_prefix(owner: str, attr: str, index: int) -> str:
    """Tensor names as an ONNX function inliner writes them: <node>_<attr>__Inline_<k>__/<scope>/."""
    return f"{owner}_{attr}__Inline_{index}__/decoder/"


def _emit(b: _Builder, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str | list[str]:
    """A node named <prefix><Op>_<i> whose outputs are <node name>_output_<k> (exporter/inliner style)."""
    name = b.name(op)
    outputs = [f"{name}_output_{k}" for k in range(n_out)]
    b.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, **attrs))
    return outputs[0] if n_out == 1 else outputs


def _scalar_init(b: _Builder, base: str, value) -> str:
    name = b.name(base)
    b.initializers.append(numpy_helper.from_array(np.array(value), name))
    return name


def _float_vi(name: str, shape: Sequence[int | str] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _recurrent(b: _Builder, op: str, x: str, rng: np.random.Generator, weights: _Builder,
               bidirectional: bool = False) -> str:
    """LSTM/GRU over time-major x [T,N,8] -> h [T,N,8] (forward: hidden 8; bidirectional: 2 x hidden 4)."""
    directions = 2 if bidirectional else 1
    hidden = _RECURRENT_HIDDEN // directions
    gates = 4 if op == "LSTM" else 3
    w = weights.init(f"{op.lower()}.W", _f32(rng.standard_normal((directions, gates * hidden, 8)) / math.sqrt(8)))
    r = weights.init(f"{op.lower()}.R",
                     _f32(rng.standard_normal((directions, gates * hidden, hidden)) / math.sqrt(hidden)))
    bias = weights.init(f"{op.lower()}.B", _f32(0.1 * rng.standard_normal((directions, 2 * gates * hidden))))
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward"}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    y = _emit(b, op, [x, w, r, bias], **attrs)                                     # [T, D, N, hidden]
    if bidirectional:
        y = _emit(b, "Transpose", [y], perm=[0, 2, 1, 3])                          # [T, N, 2, hidden]
        return _emit(b, "Reshape", [y, b.init("shape", _i64([0, 0, -1]))])
    return _emit(b, "Squeeze", [y, b.init("axes", _i64([1]))])


def _compute_block(b: _Builder, op: str, x: str, rng: np.random.Generator, weights: _Builder | None = None) -> str:
    """tanh-bounded op(x) of x's shape; ``weights`` is the builder holding the weights (an enclosing graph's
    builder makes them outer-scope references)."""
    w = weights or b
    if op in ("LSTM", "GRU"):
        return _recurrent(b, op, x, rng, w)          # h = o ⊙ tanh(c) (LSTM), a convex mix of tanh's (GRU)
    if op == "MatMul":
        y = _emit(b, "MatMul", [x, w.init("fc.weight", _f32(rng.standard_normal((8, 8)) / math.sqrt(8)))])
        y = _emit(b, "Add", [y, w.init("fc.bias", _f32(0.1 * rng.standard_normal(8)))])
    else:
        y = _emit(b, "Conv", [x, w.init("conv.weight", _f32(rng.standard_normal((4, 4, 3, 3)) / 6.0)),
                              w.init("conv.bias", _f32(0.1 * rng.standard_normal(4)))],
                  kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return _emit(b, "Tanh", [y])


def _branch_condition(b: _Builder, x: str, rng: np.random.Generator, last_dim: int) -> str:
    """mean(x ⊙ s) > 0 for a random sign pattern s over the last axis: data-dependent, and nearly independent
    between levels, so calibration data reaches every branch."""
    signs = b.init("branch.signs", _f32(rng.choice([-1.0, 1.0], size=last_dim)))
    mean = _emit(b, "ReduceMean", [_emit(b, "Mul", [x, signs])], keepdims=0)
    return _emit(b, "Greater", [mean, _scalar_init(b, "branch.threshold", np.float32(0.0))])


def _control_level(b: _Builder, levels: Sequence[str], op: str, x: str, x_main: str, rng: np.random.Generator,
                   main: _Builder) -> str:
    """Build levels[0] in b reading x, its body holding levels[1:]; the innermost body computes
    (op(x) + op'(x_main)) / 2 where x_main and op''s weights are read from the main graph across every level."""
    if not levels:
        local = _compute_block(b, op, x, rng)
        remote = _compute_block(b, op, x_main, rng, weights=main)
        return _emit(b, "Mul", [_emit(b, "Add", [local, remote]), _scalar_init(b, "half", np.float32(0.5))])
    kind, inner = levels[0], levels[1:]
    name = b.name(kind)
    last_dim = _FEATURE_SHAPES[op][-1]
    if kind == "If":   # then: the next level (x read from the outer scope); else: op on its own weights
        cond = _branch_condition(b, x, rng, last_dim)
        tb, eb = _Builder(_inline_prefix(name, "then_branch", 0)), _Builder(_inline_prefix(name, "else_branch", 1))
        then_y = _control_level(tb, inner, op, x, x_main, rng, main)
        else_y = _compute_block(eb, op, x, rng)
        b.nodes.append(helper.make_node(
            "If", [cond], [f"{name}_output_0"], name=name,
            then_branch=tb.graph(f"{name}_then", [], [_float_vi(then_y)]),
            else_branch=eb.graph(f"{name}_else", [], [_float_vi(else_y)])))
        return f"{name}_output_0"
    body = _Builder(_inline_prefix(name, "body", 0))
    if kind == "Loop":  # 2 iterations of x <- level(x)
        iteration, cond_in, x_in = (f"{body.prefix}{n}" for n in ("iteration_num", "cond_in", "x_in"))
        cond_out = _emit(body, "Identity", [cond_in])
        x_out = _control_level(body, inner, op, x_in, x_main, rng, main)
        graph = body.graph(f"{name}_body", [helper.make_tensor_value_info(iteration, TensorProto.INT64, []),
                                            helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
                                            _float_vi(x_in)],
                           [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []), _float_vi(x_out)])
        trip, keep = _scalar_init(b, "loop.trip_count", np.int64(2)), _scalar_init(b, "loop.cond", True)
        b.nodes.append(helper.make_node("Loop", [trip, keep, x], [f"{name}_output_0"], name=name, body=graph))
        return f"{name}_output_0"
    # Scan over u = [x, -x]: s_t = level((s_{t-1} + u_t) / 2), s_0 = x; also stacks s_t
    axes = b.init("unsqueeze.axes", _i64([0]))
    seq = _emit(b, "Concat", [_emit(b, "Unsqueeze", [x, axes]),
                              _emit(b, "Unsqueeze", [_emit(b, "Neg", [x]), axes])], axis=0)
    s_in, u_t = f"{body.prefix}state_in", f"{body.prefix}x_t"
    mixed = _emit(body, "Mul", [_emit(body, "Add", [s_in, u_t]), _scalar_init(body, "half", np.float32(0.5))])
    s_out = _control_level(body, inner, op, mixed, x_main, rng, main)
    stacked = _emit(body, "Identity", [s_out])
    shape = _FEATURE_SHAPES[op]                      # ORT's Scan needs the body outputs' shapes
    graph = body.graph(f"{name}_body", [_float_vi(s_in, shape), _float_vi(u_t, shape)],
                       [_float_vi(s_out, shape), _float_vi(stacked, shape)])
    b.nodes.append(helper.make_node("Scan", [x, seq], [f"{name}_output_0", f"{name}_output_1"], name=name,
                                    body=graph, num_scan_inputs=1))
    return f"{name}_output_0"


def control_flow_levels(depth: int, innermost: str) -> tuple[str, ...]:
    """The body kinds, outermost first, of the family member of this depth (1-4) and innermost kind:
    depth 4 is Scan > Loop > If > innermost (so 'If in If in Loop in Scan' for innermost If)."""
    if not 1 <= depth <= len(_ENCLOSING_KINDS) + 1 or innermost not in BODY_KINDS:
        raise ValueError(f"depth must be 1..{len(_ENCLOSING_KINDS) + 1} and innermost one of {BODY_KINDS}")
    return _ENCLOSING_KINDS[len(_ENCLOSING_KINDS) - depth + 1:] + (innermost,)


CONTROL_FLOW_FAMILY: tuple[tuple[tuple[str, ...], str], ...] = tuple(
    (control_flow_levels(depth, kind), op) for depth in range(1, 5) for kind in BODY_KINDS for op in BODY_OP_KINDS)
"""(levels outermost first, op kind) of every member: depth 1-4 x innermost body kind x op kind (48 models)."""


def nested_control_flow(levels: Sequence[str], op: str) -> onnx.ModelProto:
    """x -> a = tanh(x) -> control-flow nesting ``levels`` (outermost first, each If/Loop/Scan) around a body
    computing (op(a_level) + op'(a)) / 2, with a and op''s weights read from the main graph across every level
    -> y = op''(...) in the main graph. op is Conv (x [N,4,6,6]), MatMul (x [N,8]) or LSTM/GRU (x [T,N,8],
    time-major). Every If's else branch applies op on its own weights. Names are inliner-style
    (``If_0_then_branch__Inline_0__/decoder/...``). opset 16."""
    if op not in BODY_OP_KINDS or any(kind not in BODY_KINDS for kind in levels):
        raise ValueError(f"op must be one of {BODY_OP_KINDS}, levels of {BODY_KINDS}")
    rng = np.random.default_rng([73, BODY_OP_KINDS.index(op), *(BODY_KINDS.index(k) for k in levels)])
    b = _Builder("/encoder/")
    a = _emit(b, "Tanh", ["x"])
    y = _control_level(b, list(levels), op, a, a, rng, b)
    b.nodes.append(helper.make_node("Identity", [_compute_block(b, op, y, rng)], ["y"], name="/head/Identity"))
    shape = list(_FEATURE_SHAPES[op])
    graph = b.graph("nested_control_flow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return _model(graph, CONTROL_FLOW_OPSET, f"{' > '.join(levels)} bodies around {op}")


def control_flow_samples(op: str, n: int, seed: int = CALIB_SEED) -> list[dict[str, np.ndarray]]:
    """n feeds {"x": ...} (batch 1; T=5 for LSTM/GRU) for nested_control_flow(..., op) or nested_if_lstm_model
    (op "LSTM"): standard normal, scaled 0.5-1.5 and shifted by -0.5..0.5 per sample."""
    rng = np.random.default_rng([seed, BODY_OP_KINDS.index(op)])
    return [{"x": _f32(rng.standard_normal(_SAMPLE_SHAPES[op]) * rng.uniform(0.5, 1.5) + rng.uniform(-0.5, 0.5))}
            for _ in range(n)]


def _inner_if(b: _Builder, name: str, x: str, rng: np.random.Generator, main: _Builder, then_fn, else_fn) -> str:
    """If(cond(x)) with branches returning (y, sigmoid(y)); returns y ⊙ sigmoid(y) computed in b."""
    cond = _branch_condition(b, x, rng, 8)
    branches = {}
    for index, (attr, fn) in enumerate((("then_branch", then_fn), ("else_branch", else_fn))):
        body = _Builder(_inline_prefix(name, attr, index))
        y = fn(body)
        gate = _emit(body, "Sigmoid", [y])
        branches[attr] = body.graph(f"{name}_{attr}", [], [_float_vi(y), _float_vi(gate)])
    outputs = [f"{name}_output_0", f"{name}_output_1"]
    b.nodes.append(helper.make_node("If", [cond], outputs, name=name, **branches))
    return _emit(b, "Mul", outputs)


def nested_if_lstm_model() -> onnx.ModelProto:
    """The shape of issue 18's failing export (opset 16, inliner names): x [T,N,8] -> h = tanh(x W0) ->
    If_0(mean(h⊙s0) > 0): then If_1: (BiLSTM(h) + h W_outer | tanh(h W + b)); else If_1: (Conv1d over time |
    LSTM(h)), where the inner Ifs return two outputs (y, sigmoid(y)) and h / W_outer are read across two
    levels -> y = (If_0 output) W_out [T,N,4]. Samples: control_flow_samples("LSTM", n)."""
    rng = np.random.default_rng(79)
    b = _Builder("/encoder/")
    h = _emit(b, "Tanh", [_emit(b, "MatMul", ["x", b.init("in.weight", _f32(rng.standard_normal((8, 8)) / 2.0))])])
    cond = _branch_condition(b, h, rng, 8)

    def bilstm_plus_skip(body: _Builder) -> str:
        seq = _recurrent(body, "LSTM", h, rng, body, bidirectional=True)
        skip = _emit(body, "MatMul", [h, b.init("skip.weight", _f32(rng.standard_normal((8, 8)) / 4.0))])
        return _emit(body, "Add", [seq, skip])

    def conv_over_time(body: _Builder) -> str:
        nct = _emit(body, "Transpose", [h], perm=[1, 2, 0])                            # [N, 8, T]
        y = _emit(body, "Conv", [nct, body.init("conv.weight", _f32(rng.standard_normal((8, 8, 3)) / 5.0)),
                                 body.init("conv.bias", _f32(0.1 * rng.standard_normal(8)))],
                  kernel_shape=[3], pads=[1, 1])
        return _emit(body, "Transpose", [_emit(body, "Tanh", [y])], perm=[2, 0, 1])    # [T, N, 8]

    branches = {}
    inner = {"then_branch": (bilstm_plus_skip, lambda body: _compute_block(body, "MatMul", h, rng)),
             "else_branch": (conv_over_time, lambda body: _recurrent(body, "LSTM", h, rng, body))}
    for index, (attr, (then_fn, else_fn)) in enumerate(inner.items()):
        outer = _Builder(_inline_prefix("If_0", attr, index))
        y = _inner_if(outer, f"{outer.prefix}If_1", h, rng, b, then_fn, else_fn)
        branches[attr] = outer.graph(f"If_0_{attr}", [], [_float_vi(y)])
    b.nodes.append(helper.make_node("If", [cond], ["If_0_output_0"], name="If_0", **branches))
    b.node("MatMul", ["If_0_output_0", b.init("out.weight", _f32(rng.standard_normal((8, 4)) / 2.0))], "y")
    graph = b.graph("nested_if_lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", 8])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["time", "batch", 4])])
    return _model(graph, CONTROL_FLOW_OPSET, "nested If with LSTM/Conv/MatMul in the inner bodies, inliner names")


MODELS: Mapping[str, Callable[[], onnx.ModelProto]] = {
    "tiny_cnn": tiny_cnn,
    "tiny_transformer": tiny_transformer,
    "constant_weights_cnn": constant_weights_cnn,
    "opset11_cnn": opset11_cnn,
    "if_subgraph_model": if_subgraph_model,
    "multi_dtype_inputs": multi_dtype_inputs,
    "shape_computed_pad_cnn": shape_computed_pad_cnn,
    "loop_scan_model": loop_scan_model,
}
"""In-memory generators (name -> zero-argument builder). large_external writes to disk; see ALL_NAMES."""

ALL_NAMES: tuple[str, ...] = (*MODELS, "large_external")

_SAMPLERS: Mapping[str, Callable[..., dict[str, np.ndarray]]] = {
    "tiny_cnn": _tiny_cnn_sample,
    "tiny_transformer": _transformer_sample,
    "constant_weights_cnn": _small_cnn_sample,
    "opset11_cnn": _small_cnn_sample,
    "if_subgraph_model": _if_sample,
    "multi_dtype_inputs": _multi_dtype_sample,
    "shape_computed_pad_cnn": _tiny_cnn_sample,
    "loop_scan_model": _loop_scan_sample,
    "large_external": _large_sample,
}


def _sampler(model_name: str) -> Callable[..., dict[str, np.ndarray]]:
    try:
        return _SAMPLERS[model_name]
    except KeyError:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(ALL_NAMES)}") from None


def make_samples(model_name: str, n: int, seed: int = CALIB_SEED, **kwargs) -> list[dict[str, np.ndarray]]:
    """n feed dicts (batch 1) of realistic inputs for model_name, deterministic in seed. kwargs go to the
    sampler (large_external: hidden=...)."""
    sample = _sampler(model_name)
    rng = np.random.default_rng([seed, ALL_NAMES.index(model_name)])
    return [sample(rng, **kwargs) for _ in range(n)]


def write_calibration(model_name: str, out_dir: str | Path, n: int = DEFAULT_CALIB_SAMPLES,
                      seed: int = CALIB_SEED, **kwargs) -> list[Path]:
    """Write out_dir/sample_0000.npz ... (one batch-1 sample per file, arrays keyed by input name)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, feed in enumerate(make_samples(model_name, n, seed, **kwargs)):
        path = out_dir / f"sample_{i:04d}.npz"
        np.savez(path, **feed)
        paths.append(path)
    logger.info("wrote %d calibration samples to %s", n, out_dir)
    return paths


def write_eval(model_name: str, path: str | Path, n: int = DEFAULT_EVAL_SAMPLES, seed: int = EVAL_SEED,
               **kwargs) -> Path:
    """Write one .npz of n held-out samples, each input stacked along a new leading axis ([n, *sample_shape]).
    tiny_transformer samples are padded to S=24 so they stack."""
    if model_name == "tiny_transformer":
        kwargs.setdefault("seq_len", TRANSFORMER_MAX_S)
    if model_name == "loop_scan_model":
        kwargs.setdefault("steps", 6)
    samples = make_samples(model_name, n, seed, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    logger.info("wrote %d eval samples to %s", n, path)
    return path


def read_calibration(folder: str | Path) -> list[dict[str, np.ndarray]]:
    """Load a folder written by write_calibration, in file-name order."""
    out = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as z:
            out.append({k: z[k] for k in z.files})
    return out


def read_eval(path: str | Path) -> list[dict[str, np.ndarray]]:
    """Split an eval .npz written by write_eval back into per-sample feed dicts."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(next(iter(arrays.values())))
    return [{k: v[i, ...] for k, v in arrays.items()} for i in range(n)]


def generate(out_dir: str | Path, names: Iterable[str] | None = None, n_calib: int = DEFAULT_CALIB_SAMPLES,
             n_eval: int = DEFAULT_EVAL_SAMPLES, large_bytes: int = DEFAULT_LARGE_BYTES) -> dict[str, list[Path]]:
    """Write <name>.onnx, <name>_calib/ and <name>_eval.npz for each name; returns name -> written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for name in (ALL_NAMES if names is None else list(names)):
        _sampler(name)  # validate the name before writing anything
        if name == "large_external":
            model_path = large_external_model(out_dir, large_bytes)
            files = [model_path, out_dir / "large_external.onnx.data"]
        else:
            model_path = out_dir / f"{name}.onnx"
            model_path.write_bytes(MODELS[name]().SerializeToString())
            logger.info("wrote %s", model_path)
            files = [model_path]
        write_calibration(name, out_dir / f"{name}_calib", n_calib)
        files += [out_dir / f"{name}_calib", write_eval(name, out_dir / f"{name}_eval.npz", n_eval)]
        written[name] = files
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python models/generate.py",
                                     description="Write qcompile's small deterministic test models and their data.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--only", action="append", choices=ALL_NAMES, metavar="NAME",
                        help=f"generate only this model (repeatable); one of: {', '.join(ALL_NAMES)}")
    parser.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES)
    parser.add_argument("--eval-samples", type=int, default=DEFAULT_EVAL_SAMPLES)
    parser.add_argument("--large-bytes", type=int, default=DEFAULT_LARGE_BYTES,
                        help="weight bytes of large_external (default 8 MiB; > 2 GiB for the big-model tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    written = generate(args.out_dir, args.only, args.calib_samples, args.eval_samples, args.large_bytes)
    logger.info("generated %d models (%s) in %s in %.1f s", len(written), ", ".join(written), args.out_dir,
                time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

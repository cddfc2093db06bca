"""Int8 weight codes that cannot saturate the u8·s8 pair sums of x86 GEMM kernels without VNNI.

MLAS's u8s8 GEMM on AVX2 / AVX-512 without VNNI multiplies with VPMADDUBSW: for the uint8 activations a_k and
int8 weight codes c_k along the reduction axis K, it forms t_j = a_{2j}·c_{2j} + a_{2j+1}·c_{2j+1} in a
saturating int16 and then adds the t_j in int32. With a ∈ [0, 255] the extremes of t_j are

    max t_j = 255 · (c⁺_{2j} + c⁺_{2j+1})        min t_j = −255 · (c⁻_{2j} + c⁻_{2j+1})      (c⁺ = max(c, 0), c⁻ = max(−c, 0))

so t_j can never saturate iff  c⁺_{2j} + c⁺_{2j+1} ≤ 128  and  c⁻_{2j} + c⁻_{2j+1} ≤ 128  (255·128 = 32640 ≤
32767). The usual remedy (ORT's reduce_range) takes a bit from every weight: codes in [−63, 63]. Here only the
pairs that break the bound change: a same-sign pair whose magnitudes sum to m > 128 is projected onto
|c_{2j}| + |c_{2j+1}| = 128, the nearest point of that line to the unrounded values (w/s): both shrink by half
the excess, then one of them is rounded and the other takes the rest. Every other code keeps its 8-bit value;
per-channel symmetric scales put a channel's largest weight at 127, and a partner of the same sign above half
of it is rare, so few pairs move.

The K order is the one ORT packs (onnxruntime QLinearConv's filter reorder; MatMul/Gemm's B rows):

    Conv W [M, C/g, k…]     K index = kernel position · (C/g) + input channel      (per group, NHWC im2col)
    MatMul B [K, N]         K = axis 0        Gemm B: axis 0, or axis 1 with transB = 1

Pairs start at K index 0 of each group's filter (MLAS pads K to a multiple of 4 with zeros).
"""

from __future__ import annotations

import numpy as np

PAIR_LIMIT = 128      # 255 · 128 = 32640 ≤ 32767


def limit_pair_rows(codes: np.ndarray, targets: np.ndarray, limit: int = PAIR_LIMIT) -> np.ndarray:
    """Codes [rows, K] (int) with every same-sign pair (2j, 2j+1) of each row within ``limit`` in magnitude
    sum; ``targets`` [rows, K] are the unrounded values w/s the codes came from."""
    rows, k = codes.shape
    padded = k + (k % 2)
    c = np.zeros((rows, padded), np.int64)
    t = np.zeros((rows, padded), np.float64)
    c[:, :k], t[:, :k] = codes, targets
    first, second = c[:, 0::2], c[:, 1::2]
    out_first, out_second = first.copy(), second.copy()
    for sign in (1, -1):
        a, b = sign * first, sign * second                      # the pair's magnitudes on this side
        over = (a > 0) & (b > 0) & (a + b > limit)
        if not over.any():
            continue
        ta, tb = sign * t[:, 0::2][over], sign * t[:, 1::2][over]
        # the nearest point of a + b = limit to the unrounded pair, rounded; the partner takes the rest (≤ 127)
        new_a = np.clip(np.rint(ta - (ta + tb - limit) / 2), limit - 127, 127)
        out_first[over] = sign * new_a
        out_second[over] = sign * (limit - new_a)
    c[:, 0::2], c[:, 1::2] = out_first, out_second
    return c[:, :k].astype(codes.dtype)


def to_rows(op: str, weight: np.ndarray, trans_b: bool = False) -> np.ndarray:
    """The weight laid out as [output channels, K] with K in ORT's packing order (a view where the layout
    allows; a Conv row is one output channel, so one group's filter)."""
    if op == "Conv":
        # [M, C/g, k…] -> [M, k…, C/g] -> [M, K]: kernel position major, input channel minor
        return np.moveaxis(weight, 1, -1).reshape(weight.shape[0], -1)
    if op == "Gemm" and trans_b:
        return weight                                           # [N, K]
    return weight.reshape(weight.shape[0], -1).T                # [K, N] -> [N, K]


def from_rows(op: str, rows: np.ndarray, shape: tuple[int, ...], trans_b: bool = False) -> np.ndarray:
    """``to_rows`` undone: [output channels, K] back to the weight's own layout ``shape``."""
    if op == "Conv":
        return np.moveaxis(rows.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
    if op == "Gemm" and trans_b:
        return rows.reshape(shape)
    return rows.T.reshape(shape)


def nearest_limited_codes(rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Nearest int8 codes of weight rows [channels, K] on scales [channels, 1] (or one), pairs limited."""
    targets = rows / scale
    return limit_pair_rows(np.clip(np.rint(targets), -127, 127).astype(np.int64), targets)


def limit_pair_sums(op: str, codes: np.ndarray, targets: np.ndarray, trans_b: bool = False) -> tuple[np.ndarray, int]:
    """The weight's codes with no saturating pair (module docstring), and how many codes changed."""
    limited = from_rows(op, limit_pair_rows(to_rows(op, codes, trans_b), to_rows(op, targets, trans_b)),
                        codes.shape, trans_b)
    return np.ascontiguousarray(limited), int(np.count_nonzero(limited != codes))


# the grid ends tried per output channel: 127 (all 8 bits, pairs limited) down to 63 (ORT's reduce_range,
# where no pair can exceed the limit)
GRID_ENDS = (127, 111, 95, 79, 63)


def pair_safe_scales(op: str, values: np.ndarray, scale: np.ndarray, trans_b: bool = False,
                     per_channel: bool = True) -> np.ndarray:
    """The scale among s·127/e (e in GRID_ENDS, s the symmetric 8-bit scale: per output channel, or one for the
    tensor) whose nearest codes, pairs limited, reconstruct the weights with the least squared error; chosen
    per output channel when ``per_channel``, else one for the whole tensor.

    Why a choice: pair limiting moves only the pairs above the limit, which is nearly free for peaked weight
    distributions (few large same-sign partners) and costly for flat ones (many pairs near the grid's end),
    where a coarser grid that no pair can break is better. Scales only grow, so a bias-safe scale stays safe."""
    return pair_safe_row_scales(to_rows(op, values, trans_b), scale, per_channel)


def pair_safe_row_scales(rows: np.ndarray, scale: np.ndarray, per_channel: bool = True) -> np.ndarray:
    """``pair_safe_scales`` for weights already laid out as [output channels, K] in packing order."""
    w = rows.astype(np.float64)
    base = np.asarray(scale, np.float64)
    if per_channel and base.size != w.shape[0]:
        raise ValueError(f"{base.size} scales for {w.shape[0]} output channels")
    base = np.broadcast_to(base.reshape(-1, 1), (w.shape[0], 1))
    errors, scales = [], []
    for end in GRID_ENDS:
        s = base * (127.0 / end)
        codes = nearest_limited_codes(w, s)
        errors.append(((codes * s - w) ** 2).sum(axis=1))
        scales.append(s[:, 0])
    errors, scales = np.array(errors), np.array(scales)                 # [ends, channels]
    if per_channel:
        return scales[np.argmin(errors, axis=0), np.arange(w.shape[0])].astype(np.float32)
    return np.asarray(scales[np.argmin(errors.sum(axis=1)), 0], np.float32)

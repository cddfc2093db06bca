"""Sub-byte packing and the NF4 code book: pure numpy, no graph.

ONNX INT4/UINT4 tensors (and ORT's MatMulNBits) store two 4-bit codes per byte, the FIRST element of each pair
in the LOW nibble:   byte_j = (c_{2j} & 0xF) | (c_{2j+1} & 0xF) << 4,   over the flattened (row-major) tensor;
an odd count leaves the last high nibble 0. Signed codes are stored in two's complement (-8..7 -> 0x8..0x7).

MatMulNBits (com.microsoft) wants the weight W [K, N] of y = x·W transposed and blocked along K:

    B[n, b, :]  = pack(u[n, b·bs : (b+1)·bs])        u = W_q^T padded with zeros to k_blocks·bs along K
    scales[n, b], zero_points[n, :] = pack(z[n, :])  (4-bit zero points packed low nibble first per row n)

MatMulBnb4 (com.microsoft, NF4/FP4) wants W^T flattened row-major, cut into blocks of ``block_size`` elements
with one absmax each, and packs the FIRST element of each pair in the HIGH nibble (bitsandbytes' order).

NF4 (Dettmers et al., QLoRA, 2023): 16 values that are quantiles of N(0, 1) rescaled to [-1, 1], with an exact
zero: 8 positive quantiles Φ⁻¹(p) for 9 p evenly spaced in [δ, 0.5] (the last, 0, dropped) and 7 negative ones
-Φ⁻¹(p) for 8 p in [δ, 0.5], δ = ½((1 − 1/32) + (1 − 1/30)) = 0.9677083, normalised by the largest. ``nf4_code_book`` derives them with math.erf.
"""

from __future__ import annotations

import math

import numpy as np

INT4_MIN, INT4_MAX = -8, 7
UINT4_MAX = 15


def pack_4bit(codes: np.ndarray) -> np.ndarray:
    """Flattened codes (int in -8..7 or 0..15) -> uint8 bytes, first of each pair in the low nibble."""
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < INT4_MIN or flat.max() > UINT4_MAX):
        raise ValueError("4-bit codes must lie in [-8, 15]")
    nibbles = (flat & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_4bit(packed: np.ndarray, count: int, *, signed: bool) -> np.ndarray:
    """Inverse of ``pack_4bit``: ``count`` codes as int8 (signed, two's complement) or uint8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if not 0 <= count <= 2 * packed.size:
        raise ValueError(f"{packed.size} bytes hold at most {2 * packed.size} codes, asked for {count}")
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2] = packed & 0xF
    nibbles[1::2] = packed >> 4
    nibbles = nibbles[:count]
    if signed:
        return np.where(nibbles >= 8, nibbles.astype(np.int16) - 16, nibbles).astype(np.int8)
    return nibbles


def pack_4bit_high_first(codes: np.ndarray) -> np.ndarray:
    """Flattened 0..15 codes -> bytes with the first of each pair in the HIGH nibble (MatMulBnb4's order)."""
    flat = np.asarray(codes).reshape(-1).astype(np.uint8)
    if flat.size and flat.max() > UINT4_MAX:
        raise ValueError("4-bit codes must lie in [0, 15]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8)


def unpack_4bit_high_first(packed: np.ndarray, count: int) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    nibbles = np.empty(2 * packed.size, dtype=np.uint8)
    nibbles[0::2] = packed >> 4
    nibbles[1::2] = packed & 0xF
    return nibbles[:count]


def num_blocks(length: int, block_size: int) -> int:
    return -(-length // block_size)


def matmul_nbits_weight(codes_kn: np.ndarray, block_size: int, bits: int) -> np.ndarray:
    """Unsigned codes of W [K, N] -> MatMulNBits B [N, k_blocks, block_size·bits/8] (uint8)."""
    k, n = codes_kn.shape
    blocks = num_blocks(k, block_size)
    padded = np.zeros((n, blocks * block_size), dtype=np.uint8)
    padded[:, :k] = np.asarray(codes_kn, dtype=np.uint8).T
    if bits == 8:
        return padded.reshape(n, blocks, block_size)
    if bits != 4:
        raise ValueError(f"MatMulNBits packing supports 4 or 8 bits, not {bits}")
    return pack_4bit(padded).reshape(n, blocks, block_size // 2)


def matmul_nbits_zero_points(zero_points_bn: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned zero points [k_blocks, N] -> MatMulNBits layout [N, ceil(k_blocks·bits/8)] (uint8)."""
    blocks, n = zero_points_bn.shape
    transposed = np.asarray(zero_points_bn, dtype=np.uint8).T
    if bits == 8:
        return np.ascontiguousarray(transposed)
    per_row = num_blocks(blocks, 2)
    padded = np.zeros((n, 2 * per_row), dtype=np.uint8)
    padded[:, :blocks] = transposed
    return pack_4bit(padded).reshape(n, per_row)


def unpack_matmul_nbits_weight(b: np.ndarray, k: int, bits: int) -> np.ndarray:
    """MatMulNBits B [N, k_blocks, blob] -> unsigned codes [K, N]."""
    n = b.shape[0]
    if bits == 8:
        return b.reshape(n, -1)[:, :k].T.copy()
    return unpack_4bit(b, b.size * 2, signed=False).reshape(n, -1)[:, :k].T.copy()


# ---- NF4 -----------------------------------------------------------------------------------------------

_NF4_OFFSET = 0.9677083  # QLoRA's choice: ½((1 − 1/32) + (1 − 1/30))


def _normal_ppf(p: float) -> float:
    """Φ⁻¹(p) by bisection on Φ(x) = (1 + erf(x/√2)) / 2; exact to float64 rounding for p in (0, 1)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def nf4_code_book() -> np.ndarray:
    """The 16 NF4 values, ascending, in [-1, 1] with an exact 0 (see the module docstring)."""
    positive = [_normal_ppf(p) for p in np.linspace(_NF4_OFFSET, 0.5, 9)[:-1]]
    negative = [-_normal_ppf(p) for p in np.linspace(_NF4_OFFSET, 0.5, 8)[:-1]]
    values = np.array(sorted(positive + [0.0] + negative), dtype=np.float64)
    return (values / np.abs(values).max()).astype(np.float32)


def nf4_quantize(values: np.ndarray, absmax: np.ndarray, code_book: np.ndarray) -> np.ndarray:
    """Nearest code of values/absmax (absmax broadcast to values); a zero absmax maps to the code of 0."""
    safe = np.where(absmax > 0, absmax, 1.0)
    normalised = np.clip(np.asarray(values, dtype=np.float32) / safe, -1.0, 1.0)
    midpoints = (code_book[1:] + code_book[:-1]) / 2
    return np.searchsorted(midpoints, normalised).astype(np.uint8)

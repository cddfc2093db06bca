"""Weight-only quantisation of one MatMul weight W [K, N] (y = x·W) in blocks along K: pure numpy, no graph.

Block b of column n holds W[b·bs : (b+1)·bs, n]. Codes, scales and zero points per block:

    symmetric    s = r·max|w| / q⁺            q = clip(round(w/s), -q⁺-1, q⁺)        ŵ = s·q        (q⁺ = 2^(bits-1)-1)
    asymmetric   s = r·(max w - min w)/(2^bits - 1), z = round(-r·min w / s)   (range widened to hold 0)
                 q = clip(round(w/s) + z, 0, 2^bits - 1)                      ŵ = s·(q - z)
    nf4          s = r·max|w|                 q = nearest code c_q of w/s        ŵ = s·c_q

with r = 1, or r from a clip search. The error of a quantised Ŵ on the calibration inputs X (rows) is

    E(Ŵ) = (1/n)‖X(W - Ŵ)‖²_F = tr(ΔWᵀ H ΔW),  H = (1/n) XᵀX                            (``output_error``)

* RTN rounds each weight to its nearest code.
* Clip search picks r per block from a grid in [0.5, 1] minimising Σ_k d_k (w_k - ŵ_k)² with d = diag(H) (or 1
  without data): the diagonal part of E, so each block is searched independently.
* GPTQ (Frantar et al., 2022) quantises K in order (or by decreasing diag(H) with act_order), and after each
  column k spreads its error onto the columns not yet quantised:  W[:, j] -= (w_k - ŵ_k)·U[k, j] / U[k, k]
  (U the upper Cholesky factor of (H + λI)⁻¹, λ = damping·mean diag H), lazily in batches of columns. Block
  parameters are fixed when GPTQ reaches a block (from the updated weights); with act_order they are fixed up
  front from W ("static groups") so every block keeps one scale however K is visited.
* AWQ (Lin et al., 2023) scales input channel k by s_k = a_k^α / √(max a^α · min a^α) (a = mean |x_k|),
  quantises diag(s)·W and divides the input by s; α from a grid minimising E summed over the MatMuls that read
  the same input. The caller folds 1/s into the op producing the input, or inserts a Mul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompile.numerics.packing import nf4_code_book, nf4_quantize, num_blocks

CLIP_RATIOS = np.linspace(1.0, 0.5, 11)


@dataclass(frozen=True)
class BlockSpec:
    bits: int
    block_size: int
    symmetric: bool
    nf4: bool = False

    @property
    def q_max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1


@dataclass(frozen=True, eq=False)
class BlockQuantized:
    """codes [K, N] (signed for symmetric, unsigned otherwise, NF4 indices), scales/zero_points [blocks, N]."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    spec: BlockSpec

    def dequantize(self) -> np.ndarray:
        k = self.codes.shape[0]
        scales = np.repeat(self.scales, self.spec.block_size, axis=0)[:k]
        if self.spec.nf4:
            return (nf4_code_book()[self.codes] * scales).astype(np.float32)
        codes = self.codes.astype(np.float32)
        if self.zero_points is not None:
            codes = codes - np.repeat(self.zero_points, self.spec.block_size, axis=0)[:k]
        return (codes * scales).astype(np.float32)


def _blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """W [K, N] -> [blocks, bs, N], zero padded along K."""
    k, n = w.shape
    padded = np.zeros((num_blocks(k, block_size) * block_size, n), dtype=np.float64)
    padded[:k] = w
    return padded.reshape(-1, block_size, n)


def _params(blocks: np.ndarray, spec: BlockSpec, ratio) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (and zero points) [blocks, N] for blocks [blocks, bs, N]; ``ratio`` scalar or [blocks, N]."""
    if spec.nf4 or spec.symmetric:
        absmax = np.abs(blocks).max(axis=1) * ratio
        scale = absmax if spec.nf4 else absmax / spec.q_max
        return np.where(scale > 0, scale, 1.0), None
    lo = np.minimum(blocks.min(axis=1), 0.0) * ratio
    hi = np.maximum(blocks.max(axis=1), 0.0) * ratio
    scale = (hi - lo) / spec.q_max
    scale = np.where(scale > 0, scale, 1.0)
    return scale, np.clip(np.rint(-lo / scale), 0, spec.q_max)


def _quantize(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, spec: BlockSpec) -> np.ndarray:
    """Codes for blocks [..., bs, N] (or columns [.., N]) given per-(block, N) parameters broadcast on axis -2."""
    if spec.nf4:
        return nf4_quantize(blocks, scale, nf4_code_book())
    if zero is None:
        return np.clip(np.rint(blocks / scale), -spec.q_max - 1, spec.q_max)
    return np.clip(np.rint(blocks / scale) + zero, 0, spec.q_max)


def _dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, spec: BlockSpec) -> np.ndarray:
    if spec.nf4:
        return nf4_code_book().astype(np.float64)[codes] * scale
    return (codes - (0 if zero is None else zero)) * scale


def block_params(w: np.ndarray, spec: BlockSpec, *, clip_search: bool = False,
                 importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-block scales (and zero points) of W [K, N]; with ``clip_search`` the ratio r minimising the
    importance-weighted squared error of each block (importance [K], e.g. diag(H); None = uniform)."""
    blocks = _blocks(w, spec.block_size)
    if not clip_search:
        return _params(blocks, spec, 1.0)
    weights = np.ones(blocks.shape[:2], dtype=np.float32) if importance is None else \
        _blocks(np.asarray(importance, dtype=np.float64)[:, None], spec.block_size)[..., 0].astype(np.float32)
    # the search compares errors of one grid of ratios: float32 is exact enough to rank them and twice as fast
    blocks32 = blocks.astype(np.float32)
    best_err = best_scale = best_zero = None
    for ratio in CLIP_RATIOS:
        scale, zero = _params(blocks, spec, ratio)
        s3 = scale[:, None, :].astype(np.float32)
        z3 = None if zero is None else zero[:, None, :].astype(np.float32)
        err = np.einsum("kbn,kb->kn", (blocks32 - _dequantize(_quantize(blocks32, s3, z3, spec), s3, z3, spec)) ** 2,
                        weights)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
            continue
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        if zero is not None:
            best_zero = np.where(better, zero, best_zero)
    return best_scale, best_zero


def _finish(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, spec: BlockSpec) -> BlockQuantized:
    dtype = np.uint8 if (spec.nf4 or not spec.symmetric) else np.int8
    return BlockQuantized(codes.astype(dtype), scale.astype(np.float32),
                          None if zero is None else zero.astype(np.uint8), spec)


def rtn(w: np.ndarray, spec: BlockSpec, *, clip_search: bool = False,
        importance: np.ndarray | None = None) -> BlockQuantized:
    """Round to nearest in blocks along K (see the module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    scale, zero = block_params(w, spec, clip_search=clip_search, importance=importance)
    blocks = _blocks(w, spec.block_size)
    codes = _quantize(blocks, scale[:, None, :], None if zero is None else zero[:, None, :], spec)
    return _finish(codes.reshape(-1, w.shape[1])[: w.shape[0]], scale, zero, spec)


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """tr(ΔWᵀ H ΔW): the mean squared output error on the calibration rows."""
    delta = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.sum((hessian @ delta) * delta))


def relative_output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    reference = float(np.sum((hessian @ w) * w))
    return output_error(w, w_hat, hessian) / reference if reference > 0 else 0.0


def _damped_inverse_factor(hessian: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + λI)⁻¹ (U ᵀU = (H + λI)⁻¹), raising λ until H + λI is positive definite."""
    k = hessian.shape[0]
    diag_mean = float(np.mean(np.diag(hessian))) or 1.0
    lam = damping * diag_mean
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(hessian + lam * np.eye(k))
            break
        except np.linalg.LinAlgError:
            lam *= 10.0
    else:
        raise np.linalg.LinAlgError("Hessian is not positive definite even with heavy damping")
    inverse_lower = np.linalg.solve(lower, np.eye(k))            # L⁻¹
    inverse = inverse_lower.T @ inverse_lower                     # (L Lᵀ)⁻¹
    return np.linalg.cholesky(inverse).T


def gptq(w: np.ndarray, hessian: np.ndarray, spec: BlockSpec, *, damping: float = 0.01, batch: int = 128,
         act_order: bool = False, clip_search: bool = False) -> BlockQuantized:
    """GPTQ with lazy batch updates (see the module docstring). W [K, N], H [K, K]."""
    w = np.asarray(w, dtype=np.float64)
    k, n = w.shape
    hessian = np.array(hessian, dtype=np.float64)
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    work = w.T.copy()                                             # [N, K]: columns are input channels
    work[:, dead] = 0.0
    bs = spec.block_size
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(k)
    importance = np.diag(hessian)
    static = block_params(work.T, spec, clip_search=clip_search, importance=importance) if act_order else None
    work, hessian = work[:, order], hessian[np.ix_(order, order)]
    factor = _damped_inverse_factor(hessian, damping)
    batch = max(batch // bs, 1) * bs                              # block boundaries fall inside one batch
    codes = np.zeros((n, k))
    scales = np.zeros((num_blocks(k, bs), n))
    zeros = None if (spec.symmetric or spec.nf4) else np.zeros_like(scales)
    for start in range(0, k, batch):
        stop = min(start + batch, k)
        block = work[:, start:stop].copy()
        errors = np.zeros_like(block)
        for i in range(stop - start):
            col = start + i
            group = order[col] // bs
            if static is not None:
                scale, zero = static[0][group], None if static[1] is None else static[1][group]
            elif col % bs == 0:
                scale, zero = block_params(block[:, i:i + bs].T, spec, clip_search=clip_search,
                                           importance=importance[order[col:col + bs]])
                scale, zero = scale[0], None if zero is None else zero[0]
            if static is None and col % bs == 0:
                scales[group] = scale
                if zeros is not None:
                    zeros[group] = zero
            q = _quantize(block[:, i], scale, zero, spec)
            codes[:, col] = q
            err = (block[:, i] - _dequantize(q, scale, zero, spec)) / factor[col, col]
            block[:, i:] -= np.outer(err, factor[col, col:stop])
            errors[:, i] = err
        work[:, stop:] -= errors @ factor[start:stop, stop:]
    if static is not None:
        scales, zeros = static
    inverse_order = np.argsort(order)
    return _finish(codes[:, inverse_order].T, scales, zeros, spec)


def awq_channel_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """s = a^α / √(max a^α · min a^α), with a floored at 1e-5·max a so silent channels stay finite."""
    a = np.asarray(abs_mean, dtype=np.float64)
    a = np.maximum(a, max(float(a.max()), 1e-12) * 1e-5)
    s = a ** alpha
    return s / np.sqrt(s.max() * s.min())


def awq(weights: list[np.ndarray], hessian: np.ndarray, abs_mean: np.ndarray, spec: BlockSpec, *,
        grid: int = 20, clip_search: bool = False) -> tuple[np.ndarray, float, list[BlockQuantized]]:
    """AWQ for the MatMuls reading one input: (s [K], α, quantised diag(s)·W_i for each W_i)."""
    best = None
    for alpha in np.arange(grid) / grid:
        s = awq_channel_scales(abs_mean, alpha)
        err = sum(output_error(w, rtn(w * s[:, None], spec).dequantize() / s[:, None], hessian) for w in weights)
        if best is None or err < best[0]:
            best = (err, s, float(alpha))
    _, s, alpha = best
    importance = np.diag(hessian) / s ** 2                     # diag of H' = diag(1/s) H diag(1/s)
    quantized = [rtn(w * s[:, None], spec, clip_search=clip_search, importance=importance) for w in weights]
    return s, alpha, quantized

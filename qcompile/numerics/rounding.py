"""Learned rounding of integer weights: floor or ceil per weight, chosen to minimise the layer's output error.

A weight row w ∈ R^K (one output channel) with scale s and zero point z is stored as levels q = code − z and
read back as ŵ = s·q. On inputs x with second moment H = E[x xᵀ] the row's mean squared output error is

    f(q) = E[(ŵ·x − w·x)²] = (s q − w)ᵀ H (s q − w)

Nearest rounding ignores H. Learned rounding (AdaRound's search space, Nagel et al., 2020) keeps every level
within one step of w/s, q_j ∈ {⌊w_j/s⌋, ⌈w_j/s⌉} ∩ [q_min − z, q_max − z], and minimises f there:

  1. error feedback (GPTQ's update with a fixed scale, i.e. Babai's nearest-plane rounding): go through the
     columns in order; round the updated target t_j to the nearer allowed level, and push its error onto the
     columns not yet rounded along row j of U, the upper Cholesky factor of (H + λI)⁻¹:
         t_{j+1:} −= (t_j − s q_j) / U_jj · U_{j, j+1:}
  2. coordinate descent: with g = H (s q − w), flipping q_j to its other level (δ = ±s) changes f by
         Δf = 2 δ g_j + δ² H_jj;
     take every flip with Δf < 0 (then g += δ H_{:, j}) and sweep again until none is left.
  3. per row, keep the nearest levels where they score at least as well (so learned ≤ nearest on f, always).

Rows are independent; they share H (a Conv's output channels) or carry one each (a depthwise Conv's channels).
With bias correction the mean error is removed by the bias (b' = b − (ŵ − w)·μ, computed afterwards from
the chosen levels), so the objective is the covariance Σ = H − μμᵀ instead of H (``centred``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 0.01          # λ = 1 % of mean(diag H): GPTQ's default, keeps (H + λI)⁻¹ defined on dead inputs
BLOCK = 64              # columns updated one by one; the rest of the row gets a block's changes in one product


@dataclass(frozen=True)
class RoundingResult:
    """Levels per weight and the objective f per row, for nearest rounding and for the learned levels."""

    levels: np.ndarray            # [R, K] int64, q = code − zero point
    nearest_error: np.ndarray     # [R] f(q_nearest)
    learned_error: np.ndarray     # [R] f(q)
    flips: int                    # weights whose level differs from nearest


def level_bounds(w: np.ndarray, scale: np.ndarray, low: np.ndarray, high: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nearest, floor, ceil) levels of w [R, K] for per-row scales and level limits [R], all clipped
    (a row of scale 0, which qparams never gives, is read with scale 1)."""
    ratio = w / np.where(scale > 0, scale, 1.0)[:, None]
    clip = (low[:, None], high[:, None])
    nearest = np.clip(np.rint(ratio), *clip)
    return nearest, np.clip(np.floor(ratio), *clip), np.clip(np.ceil(ratio), *clip)


def rounding_error(w: np.ndarray, scale: np.ndarray, levels: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """f per row: (s q − w)ᵀ H (s q − w); ``hessian`` [K, K] shared or [R, K, K] per row."""
    e = scale[:, None] * levels - w
    return np.einsum("rk,rk->r", _times_h(e, hessian), e)


def centred(hessian: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Covariance Σ = H − μμᵀ (the objective left once the bias absorbs the mean error)."""
    return hessian - mean[..., :, None] * mean[..., None, :]


def learned_levels(w: np.ndarray, scale: np.ndarray, low: np.ndarray, high: np.ndarray, hessian: np.ndarray,
                   max_sweeps: int = 8) -> RoundingResult:
    """Levels in {floor, ceil} of w/s minimising f (module docstring); w [R, K], scale/low/high [R].
    Internally f(q) = (s q)ᵀ H (s q) − 2 (s q)ᵀ b + wᵀ H w with b = H w."""
    w = w.astype(np.float64)
    scale = scale.astype(np.float64)
    hessian = hessian.astype(np.float64)
    nearest, lo, hi = level_bounds(w, scale, low, high)
    usable = scale > 0
    linear = _times_h(w, hessian)
    constant = np.einsum("rk,rk->r", linear, w)
    levels = _error_feedback(w, scale, lo, hi, hessian)
    _coordinate_descent(scale, lo, hi, hessian, linear, levels, max_sweeps)
    nearest_error = _objective(scale, nearest, hessian, linear) + constant
    learned_error = _objective(scale, levels, hessian, linear) + constant
    keep_nearest = ~usable | (learned_error >= nearest_error)
    levels[keep_nearest] = nearest[keep_nearest]
    learned_error = np.where(keep_nearest, nearest_error, learned_error)
    return RoundingResult(levels.astype(np.int64), nearest_error, learned_error,
                          int(np.count_nonzero(levels != nearest)))


def _objective(scale: np.ndarray, levels: np.ndarray, hessian: np.ndarray, linear: np.ndarray) -> np.ndarray:
    v = scale[:, None] * levels
    return np.einsum("rk,rk->r", _times_h(v, hessian) - 2.0 * linear, v)


def _times_h(e: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    return e @ hessian if hessian.ndim == 2 else np.einsum("rk,rkl->rl", e, hessian)


def _rows_times(steps: np.ndarray, matrix: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """steps [R, b] times matrix[rows, cols] (shared [K, K] or per row [R, K, K])."""
    if matrix.ndim == 2:
        return steps @ matrix[rows, cols]
    return np.einsum("rb,rbk->rk", steps, matrix[:, rows, cols])


def _inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """Upper U with Uᵀ U = (H + λI)⁻¹, λ = DAMPING · mean(diag H) (per matrix)."""
    k = hessian.shape[-1]
    diag_mean = np.mean(np.diagonal(hessian, axis1=-2, axis2=-1), axis=-1)
    damp = DAMPING * np.where(diag_mean > 0, diag_mean, 1.0)
    damped = hessian + damp[..., None, None] * np.eye(k)
    inverse = np.linalg.inv(damped)
    lower = np.linalg.cholesky((inverse + np.swapaxes(inverse, -1, -2)) / 2)   # A = L Lᵀ, so U = Lᵀ
    return np.swapaxes(lower, -1, -2)


def _error_feedback(w, scale, lo, hi, hessian) -> np.ndarray:
    """Round the target w column by column in blocks of BLOCK (GPTQ's lazy update: a block's errors reach later columns at once)."""
    u = _inverse_cholesky(hessian)
    u3 = u[None] if u.ndim == 2 else u
    target = w.copy()
    levels = np.empty_like(w)
    safe_scale = np.where(scale > 0, scale, 1.0)
    k = w.shape[1]
    for j0 in range(0, k, BLOCK):
        j1 = min(j0 + BLOCK, k)
        errors = np.empty((w.shape[0], j1 - j0))
        for j in range(j0, j1):
            q = np.clip(np.rint(target[:, j] / safe_scale), lo[:, j], hi[:, j])
            levels[:, j] = q
            err = (target[:, j] - q * safe_scale) / u3[:, j, j]
            target[:, j + 1:j1] -= err[:, None] * u3[:, j, j + 1:j1]
            errors[:, j - j0] = err
        if j1 < k:
            target[:, j1:] -= _rows_times(errors, u, slice(j0, j1), slice(j1, k))
    return levels


def _coordinate_descent(scale, lo, hi, hessian, linear, levels, max_sweeps: int) -> None:
    """Flip sweeps in blocks of BLOCK columns: g = H s q − b is exact inside a block, brought up to date after it."""
    grad = _times_h(scale[:, None] * levels, hessian) - linear
    h3 = hessian[None] if hessian.ndim == 2 else hessian
    diag = np.broadcast_to(np.diagonal(hessian, axis1=-2, axis2=-1), levels.shape)
    k = levels.shape[1]
    for _ in range(max_sweeps):
        flipped = 0
        for j0 in range(0, k, BLOCK):
            j1 = min(j0 + BLOCK, k)
            steps = np.zeros((levels.shape[0], j1 - j0))
            for j in range(j0, j1):
                other = np.where(levels[:, j] == lo[:, j], hi[:, j], lo[:, j])
                step = scale * (other - levels[:, j])
                take = 2.0 * step * grad[:, j] + step * step * diag[:, j] < 0
                if not take.any():
                    continue
                step = np.where(take, step, 0.0)
                levels[:, j] = np.where(take, other, levels[:, j])
                grad[:, j0:j1] += step[:, None] * h3[:, j, j0:j1]
                steps[:, j - j0] = step
                flipped += int(np.count_nonzero(take))
            if steps.any():
                if j0 > 0:
                    grad[:, :j0] += _rows_times(steps, hessian, slice(j0, j1), slice(0, j0))
                if j1 < k:
                    grad[:, j1:] += _rows_times(steps, hessian, slice(j0, j1), slice(j1, k))
        if not flipped:
            break

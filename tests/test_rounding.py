"""Properties of numerics/rounding.py (learned floor/ceil rounding) against explicit numpy references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.numerics.rounding import _inverse_cholesky, centred, learned_levels, rounding_error


def _layer(seed: int, rows: int, k: int, n: int, correlated: bool):
    """Weights [rows, k], per-row int8 scales and inputs X [n, k] (correlated, with a mean, some dead columns)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k)) * rng.uniform(0.05, 3.0, size=k) + rng.normal(size=k)
    if correlated:
        x = x @ (np.eye(k) + rng.normal(size=(k, k)) / np.sqrt(k))
    x[:, rng.random(k) < 0.1] = 0.0
    w = rng.normal(size=(rows, k)) * rng.uniform(0.01, 1.0, size=(rows, 1))
    scale = np.abs(w).max(axis=1) / 127.0
    return w, scale, x


layers = st.tuples(st.integers(0, 2 ** 31 - 1), st.integers(1, 12), st.integers(1, 80), st.integers(1, 300),
                   st.booleans())


@settings(max_examples=40, deadline=None)
@given(layers)
def test_learned_never_worse_than_nearest_and_within_one_level(case):
    w, scale, x = _layer(*case)
    rows, k = w.shape
    h = x.T @ x / x.shape[0]
    low, high = np.full(rows, -128.0), np.full(rows, 127.0)
    result = learned_levels(w, scale, low, high, h)
    nearest = np.clip(np.rint(w / scale[:, None]), -128, 127)
    # the objective it optimises, per row, never above nearest (tolerance: float64 summation order)
    assert np.all(result.learned_error <= result.nearest_error * (1 + 1e-9) + 1e-15)
    assert np.all(np.abs(result.levels - nearest) <= 1)
    assert result.levels.min() >= -128 and result.levels.max() <= 127
    # levels stay on floor/ceil of w/s
    ratio = w / scale[:, None]
    assert np.all((result.levels == np.floor(ratio)) | (result.levels == np.ceil(ratio)) |
                  (result.levels == nearest))
    assert result.flips == int(np.count_nonzero(result.levels != nearest))


@settings(max_examples=25, deadline=None)
@given(layers)
def test_rounding_error_is_the_mean_squared_output_error(case):
    w, scale, x = _layer(*case)
    h = x.T @ x / x.shape[0]
    levels = np.rint(w / scale[:, None])
    explicit = np.mean(((scale[:, None] * levels - w) @ x.T) ** 2, axis=1)
    np.testing.assert_allclose(rounding_error(w, scale, levels, h), explicit, rtol=1e-9, atol=1e-18)


@settings(max_examples=25, deadline=None)
@given(layers)
def test_centred_objective_is_the_output_error_variance(case):
    """With Σ = H − μμᵀ, f is the variance of the output error: what is left once the bias removes its mean."""
    w, scale, x = _layer(*case)
    sigma = centred(x.T @ x / x.shape[0], x.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(x.T, bias=True).reshape(sigma.shape), atol=1e-9)
    levels = np.rint(w / scale[:, None])
    error = (scale[:, None] * levels - w) @ x.T
    np.testing.assert_allclose(rounding_error(w, scale, levels, sigma), error.var(axis=1), rtol=1e-6, atol=1e-15)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 6), st.integers(1, 30))
def test_per_row_hessians_match_rows_rounded_one_by_one(seed, rows, k):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, k))
    scale = np.abs(w).max(axis=1) / 127.0
    hessians = []
    for _ in range(rows):
        x = rng.normal(size=(50, k)) + rng.normal(size=k)
        hessians.append(x.T @ x / 50)
    stacked = np.stack(hessians)
    low, high = np.full(rows, -127.0), np.full(rows, 127.0)
    together = learned_levels(w, scale, low, high, stacked)
    for r in range(rows):
        alone = learned_levels(w[r:r + 1], scale[r:r + 1], low[:1], high[:1], hessians[r])
        np.testing.assert_array_equal(together.levels[r], alone.levels[0])


def test_learned_rounding_lowers_the_error_on_correlated_inputs():
    """Not only never worse: on a layer with correlated inputs it removes a clear share of the error."""
    w, scale, x = _layer(7, rows=16, k=64, n=2000, correlated=True)
    h = x.T @ x / x.shape[0]
    result = learned_levels(w, scale, np.full(16, -127.0), np.full(16, 127.0), h)
    assert result.learned_error.sum() < 0.8 * result.nearest_error.sum()


def test_clipped_limits_and_zero_scale_rows_keep_nearest():
    w = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    scale = np.array([0.01, 0.0])
    h = np.eye(3)
    result = learned_levels(w, scale, np.full(2, -63.0), np.full(2, 63.0), h)   # reduce_range limits
    assert result.levels.min() >= -63 and result.levels.max() <= 63
    np.testing.assert_array_equal(result.levels[1], 0)


def test_inverse_cholesky_factor():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 8))
    h = x.T @ x / 40
    u = _inverse_cholesky(h)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(8)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-8, atol=1e-10)
    assert np.allclose(u, np.triu(u))

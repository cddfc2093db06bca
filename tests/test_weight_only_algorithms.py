"""RTN / clip search / GPTQ / AWQ on random weights and correlated inputs: codes in range, dequantisation matches
the block formula, and the output error tr(ΔWᵀHΔW) orders as the algorithms promise (GPTQ and AWQ never worse
than RTN by more than noise; clip search never worse on its own objective)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.numerics.weight_only import (BlockSpec, awq, awq_channel_scales, block_params, gptq, output_error,
                                             relative_output_error, rtn)


def _problem(seed: int, k: int = 96, n: int = 24, rows: int = 600):
    rng = np.random.default_rng(seed)
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((rows, k)) @ mix * np.exp(0.7 * rng.standard_normal(k))
    w = rng.standard_normal((k, n)) * 0.05
    return w, x.T @ x / rows, np.abs(x).mean(axis=0)


specs = st.sampled_from([BlockSpec(4, 16, True), BlockSpec(4, 32, False), BlockSpec(8, 32, True),
                         BlockSpec(4, 16, True, nf4=True)])


@settings(max_examples=20, deadline=None)
@given(specs, st.integers(1, 70), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_rtn_codes_and_dequantisation(spec, k, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)) * rng.uniform(0.01, 10)
    q = rtn(w, spec)
    lo, hi = (0, 15) if spec.nf4 else ((-spec.q_max - 1, spec.q_max) if spec.symmetric else (0, spec.q_max))
    assert q.codes.shape == (k, n) and q.codes.min() >= lo and q.codes.max() <= hi
    assert q.scales.shape == (-(-k // spec.block_size), n)
    w_hat = q.dequantize()
    step = np.repeat(q.scales, spec.block_size, axis=0)[:k]
    # uniform grids: within half a step; NF4: within half the widest code gap (0.28) of the block absmax
    bound = step * (0.28 if spec.nf4 else 0.5) * (1 + 1e-5) + 1e-6
    assert np.all(np.abs(w - w_hat) <= bound)


def test_clip_search_never_worse_on_its_objective():
    w, h, _ = _problem(1)
    spec = BlockSpec(4, 32, True)
    d = np.diag(h)
    plain = ((w - rtn(w, spec).dequantize()) ** 2 * d[:, None]).sum()
    clipped = ((w - rtn(w, spec, clip_search=True, importance=d).dequantize()) ** 2 * d[:, None]).sum()
    assert clipped <= plain * (1 + 1e-9)
    scale, zero = block_params(w, spec, clip_search=True, importance=d)
    assert zero is None and scale.shape == (3, w.shape[1])


@pytest.mark.parametrize("spec", [BlockSpec(4, 32, True), BlockSpec(4, 32, False), BlockSpec(4, 16, True, nf4=True)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_beats_rtn_on_output_error(spec, seed):
    w, h, _ = _problem(seed)
    base = output_error(w, rtn(w, spec).dequantize(), h)
    assert output_error(w, gptq(w, h, spec).dequantize(), h) < base
    assert output_error(w, gptq(w, h, spec, act_order=True).dequantize(), h) < base


def test_gptq_lazy_batches_do_not_change_the_result():
    w, h, _ = _problem(3)
    spec = BlockSpec(4, 16, False)
    a = gptq(w, h, spec, batch=16)
    b = gptq(w, h, spec, batch=96)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.scales, b.scales)


def test_gptq_with_identity_hessian_is_rtn():
    """With H = I (uncorrelated unit inputs) error feedback has nothing to exploit beyond damping: same codes."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 8))
    spec = BlockSpec(4, 32, True)
    np.testing.assert_array_equal(gptq(w, np.eye(64), spec).codes, rtn(w, spec).codes)


def test_awq_never_worse_than_rtn_and_alpha_zero_is_rtn():
    w, h, a = _problem(5)
    spec = BlockSpec(4, 32, False)
    np.testing.assert_allclose(awq_channel_scales(a, 0.0), 1.0)
    scale, alpha, (q,) = awq([w], h, a, spec, grid=10)
    assert 0.0 <= alpha < 1.0 and scale.shape == (w.shape[0],)
    effective = q.dequantize() / scale[:, None]
    assert output_error(w, effective, h) <= output_error(w, rtn(w, spec).dequantize(), h) * (1 + 1e-9)
    assert 0 < relative_output_error(w, effective, h) < 0.05


def test_dead_input_channels():
    w, h, _ = _problem(6, k=32)
    h[3, :] = 0
    h[:, 3] = 0
    q = gptq(w, h, BlockSpec(4, 16, True))
    assert np.all(np.isfinite(q.dequantize())) and q.dequantize()[3].tolist() == [0.0] * w.shape[1]

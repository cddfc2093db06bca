"""SplitOutlierChannelsPass: X'W' = XW (hypothesis), the greedy choices, the budget, and the rewritten FP32 graph
equal to the original within 1e-5 relative (tiny_transformer, with and without SmoothQuant before it)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qcompile.config import CompileConfig, Granularity, OutlierSplitConfig, QuantSpec, SmoothQuantConfig, SmoothScope
from qcompile.passes.transform.split_outlier_channels import (activation_range, choose_activation_splits,
                                                    choose_weight_splits, split_budget, split_weight)
from qcompile.numerics.qparams import QuantDType
from tests.passes.fp32_equivalence import assert_same_function, transform

finite = st.floats(-100, 100, allow_nan=False, width=32)


@given(x=arrays(np.float32, (5, 6), elements=finite), w=arrays(np.float32, (6, 4), elements=finite),
       data=st.data())
@settings(max_examples=80, deadline=None)
def test_split_keeps_the_product(x, w, data):
    rows = data.draw(st.lists(st.integers(0, 5), unique=True, max_size=4))
    weight_rows, act_rows = rows[: len(rows) // 2], rows[len(rows) // 2:]
    halve = np.ones(6, np.float32)
    halve[act_rows] = 0.5
    x_split = np.concatenate([x * halve, x[:, weight_rows], (x * halve)[:, act_rows]], axis=1)
    w_split = split_weight(w, weight_rows, act_rows)
    assert w_split.shape == (6 + len(rows), 4)
    np.testing.assert_allclose(x_split.astype(np.float64) @ w_split, x.astype(np.float64) @ w,
                               rtol=1e-5, atol=1e-3)


def test_weight_split_picks_the_row_that_sets_the_column_maxima():
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (32, 8))
    w[7] *= 10.0                                               # row 7 sets every column's max
    assert choose_weight_splits([w], 1, per_channel=True) == [7]
    # once halved, row 7 still dominates: a second split must pick another row, and only if it helps
    assert choose_weight_splits([w], 3, per_channel=True)[0] == 7
    flat = np.ones((4, 3))                                     # ties everywhere: halving one row gains nothing
    assert choose_weight_splits([flat], 2, per_channel=True) == []


def test_activation_split_halves_the_range_setting_channels():
    lo = np.array([-1.0, -1.0, -8.0, -1.0])
    hi = np.array([1.0, 20.0, 1.0, 1.0])
    chosen = choose_activation_splits(lo, hi, 3)
    assert chosen[:2] == [1, 2]                                # 20 -> 10 first, then -8 -> -4
    assert activation_range(lo, hi) == 28.0
    assert choose_activation_splits(np.full(3, -1.0), np.full(3, 1.0), 2) == []


@pytest.mark.parametrize("channels, ratio, expected", [(384, 0.02, 7), (1536, 0.02, 30), (10, 0.02, 1)])
def test_budget(channels, ratio, expected):
    assert split_budget(channels, ratio) == expected


def _tiny():
    from models.generate import make_samples, tiny_transformer
    return tiny_transformer(), make_samples("tiny_transformer", 6)


@pytest.mark.parametrize("smooth, weights, activations, per_tensor", [
    (False, True, False, True), (False, False, True, False), (True, True, True, False)])
def test_tiny_transformer_fp32_equivalence_and_budget(smooth, weights, activations, per_tensor):
    model, samples = _tiny()
    config = CompileConfig(
        smoothquant=SmoothQuantConfig(scope=SmoothScope.ALL if smooth else SmoothScope.OFF, alpha=0.5),
        outlier_split=OutlierSplitConfig(weights=weights, activations=activations, expand_ratio=0.05),
        weight=QuantSpec(dtype=QuantDType.INT8, symmetric=True,
                         granularity=Granularity.TENSOR if per_tensor else Granularity.CHANNEL))
    rewritten, ctx = transform(model, config, samples)
    assert_same_function(model, rewritten, samples[:3])
    split = {d.name: d.detail["outlier_split"] for d in ctx.decisions.values() if "outlier_split" in d.detail}
    assert split, "the tiny transformer has outlier channels (LayerNorm γ) to split"
    for detail in split.values():
        extra = detail["weight_channels"] + detail["activation_channels"]
        assert 1 <= extra <= split_budget(detail["input_channels"], 0.05)
        assert (detail["weight_channels"] > 0) <= weights and (detail["activation_channels"] > 0) <= activations
    gathers = [n for n in rewritten.graph.node if n.op_type == "Gather" and n.name.endswith("_split_Gather")]
    assert len(gathers) == len({d["group"] for d in split.values()})         # one Gather per split group


def test_off_by_default_changes_nothing():
    model, samples = _tiny()
    _, ctx = transform(model, CompileConfig(), samples[:2])
    assert not any("outlier_split" in d.detail for d in ctx.decisions.values())

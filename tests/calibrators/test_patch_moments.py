"""PatchMomentsCalibrator and numerics/patches: Conv patches reproduce ORT's Conv, streaming == all at once,
merge is associative with the empty identity, the row cap holds, state round-trips, the collector serves it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from qcompile.calibrators.collector import collect_statistics
from qcompile.calibrators.patch_moments import PatchMomentsCalibrator
from qcompile.errors import CalibrationError
from qcompile.numerics.patches import PatchGeometry, conv_patches, conv_positions
from qcompile.pass_infra import StatKind, StatRequest


def _conv_model(x_shape, w: np.ndarray, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


GEOMETRIES = [
    dict(kernel=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=1),
    dict(kernel=(3, 3), strides=(2, 1), dilations=(1, 2), pads=(1, 0, 1, 2), group=2),
    dict(kernel=(5, 5), strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0), group=4, auto_pad="SAME_UPPER"),
    dict(kernel=(1, 1), strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1),
    dict(kernel=(3,), strides=(2,), dilations=(1,), pads=(1, 1), group=1),
]


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_patches_times_weight_rows_is_the_conv(spec):
    rng = np.random.default_rng(0)
    rank = len(spec["kernel"])
    x = rng.normal(size=(2, 4) + (9, 11)[:rank] if rank == 2 else (2, 4, 13)).astype(np.float32)
    group = spec["group"]
    w = rng.normal(size=(8, 4 // group, *spec["kernel"])).astype(np.float32)
    geometry = PatchGeometry(**spec)
    attrs = {"strides": list(spec["strides"]), "dilations": list(spec["dilations"]), "group": group}
    attrs.update({"auto_pad": spec["auto_pad"]} if "auto_pad" in spec else {"pads": list(spec["pads"])})
    y = ort.InferenceSession(_conv_model(list(x.shape), w, **attrs).SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows = conv_patches(x, geometry)                                 # [N·positions, group, K]
    assert rows.shape[0] == conv_positions(x.shape, geometry) == y.shape[0] * int(np.prod(y.shape[2:]))
    group_of = np.arange(8) // (8 // group)
    ours = np.einsum("pok,ok->po", rows[:, group_of, :], w.reshape(8, -1))
    expected = np.moveaxis(y, 1, -1).reshape(-1, 8)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    some = np.array([0, 3, rows.shape[0] - 1])
    np.testing.assert_array_equal(conv_patches(x, geometry, some), rows[some])


def _batches(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(1, 3)), 4, 6, 5)).astype(np.float32) for _ in range(count)]


GEOMETRY = PatchGeometry(kernel=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=2)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5))
def test_streaming_equals_all_at_once(seed, count):
    batches = _batches(seed, count)
    cal = PatchMomentsCalibrator(GEOMETRY, max_rows=10 ** 6)
    for batch in batches:
        cal.update(batch)
    rows = np.concatenate([conv_patches(b, GEOMETRY) for b in batches]).astype(np.float64)   # [P, G, K]
    stat = cal.compute()
    np.testing.assert_allclose(stat.hessian, np.einsum("pgk,pgl->gkl", rows, rows) / len(rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stat.mean, rows.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert stat.rows == len(rows) and stat.hessian.shape == (2, 18, 18)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 32 - 1))
def test_merge_is_associative_with_empty_identity(seed):
    cals = [PatchMomentsCalibrator(GEOMETRY) for _ in range(3)]
    for cal, batch in zip(cals, _batches(seed, 3)):
        cal.update(batch)
    left, right = (PatchMomentsCalibrator.from_state(c.get_state()) for c in cals[:2])
    left.merge(cals[1])
    left.merge(cals[2])                                     # (a + b) + c
    tail = PatchMomentsCalibrator.from_state(cals[2].get_state())
    right = PatchMomentsCalibrator.from_state(cals[0].get_state())
    tail.merge(PatchMomentsCalibrator())
    inner = PatchMomentsCalibrator.from_state(cals[1].get_state())
    inner.merge(tail)
    right.merge(inner)                                      # a + (b + c)
    a, b = left.compute(), right.compute()
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-12)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    assert a.rows == b.rows


def test_row_cap_samples_each_batch():
    cal = PatchMomentsCalibrator(GEOMETRY, max_rows=16)
    for batch in _batches(1, 4):
        cal.update(batch)
    assert cal.compute().rows == 16 * 4


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(2, 6))
def test_sampled_positions_do_not_depend_on_the_shard(seed, count):
    """With the row cap active, a batch contributes the same positions whichever shard sees it and after
    whatever batches: two shards merged give one stream's moments (up to float64 summation order)."""
    batches = _batches(seed, count)
    whole = PatchMomentsCalibrator(GEOMETRY, max_rows=7)
    for batch in batches:
        whole.update(batch)
    first, second = PatchMomentsCalibrator(GEOMETRY, max_rows=7), PatchMomentsCalibrator(GEOMETRY, max_rows=7)
    for batch in batches[:count // 2]:
        first.update(batch)
    for batch in batches[count // 2:]:
        second.update(batch)
    second.merge(first)
    a, b = whole.compute(), second.compute()
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12, atol=1e-12)
    assert a.rows == b.rows == 7 * count


def test_matrix_rows_and_errors():
    cal = PatchMomentsCalibrator(None)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    cal.update(x)
    rows = x.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(cal.compute().hessian[0], rows.T @ rows / 6)
    with pytest.raises(CalibrationError):
        PatchMomentsCalibrator(None).compute()
    with pytest.raises(CalibrationError, match="NaN|Inf|finite"):
        cal.update(np.full((1, 4), np.nan, np.float32))
    three_d = PatchGeometry((1, 1, 1), (1, 1, 1), (1, 1, 1), (0,) * 6)
    with pytest.raises(CalibrationError, match="3-d Conv"):
        PatchMomentsCalibrator(three_d).update(np.zeros((1, 2, 3, 3, 3), np.float32))


def test_collector_serves_patch_moments():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    graph = gs.import_onnx(_conv_model([1, 4, 6, 5], w, pads=[1, 1, 1, 1], group=2))
    request = StatRequest(tensor="x", kind=StatKind.PATCH_MOMENTS, sample_rows=1000, patch=GEOMETRY)
    feeds = [{"x": b[:1]} for b in _batches(3, 3)]
    stat = collect_statistics(graph, [request], feeds)[request]
    rows = np.concatenate([conv_patches(f["x"], GEOMETRY) for f in feeds]).astype(np.float64)
    np.testing.assert_allclose(stat.mean, rows.mean(axis=0), rtol=1e-6, atol=1e-7)

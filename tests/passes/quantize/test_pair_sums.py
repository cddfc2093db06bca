"""passes/quantize/pair_sums.py: int8 codes whose u8·s8 pair sums cannot saturate int16, and the per-channel grid
choice. The math by property; the effect in ONNX Runtime on weights and activations built to saturate: the
fused integer kernels (ORT_ENABLE_ALL) must then compute what the Q/DQ graph says (ORT_DISABLE_ALL)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.api import compile_model
from qcompile.config import CompileConfig, CpuFeatures, Target
from qcompile.passes.quantize.pair_sums import (GRID_ENDS, PAIR_LIMIT, from_rows, limit_pair_rows, to_rows,
                                                 pair_safe_row_scales)
from qcompile.runtime_ext.target import resolve_profile
from tests.passes.ort_reference import run_unoptimized

NO_VNNI = CpuFeatures(arch="x86_64", avx2=True, vnni=False)


def _pairs_ok(codes: np.ndarray) -> bool:
    padded = np.pad(codes.astype(np.int64), ((0, 0), (0, codes.shape[1] % 2)))
    a, b = padded[:, 0::2], padded[:, 1::2]
    return bool((np.maximum(a, 0) + np.maximum(b, 0) <= PAIR_LIMIT).all()
                and (np.maximum(-a, 0) + np.maximum(-b, 0) <= PAIR_LIMIT).all())


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 9), st.integers(1, 17), st.sampled_from(["normal", "uniform"]))
@settings(max_examples=60, deadline=None)
def test_limited_codes_never_saturate_and_move_only_offending_pairs(seed, rows, k, kind):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, k)) if kind == "normal" else rng.uniform(-1, 1, size=(rows, k))
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-9) / 127
    targets = w / scale
    codes = np.clip(np.rint(targets), -127, 127).astype(np.int8)
    limited = limit_pair_rows(codes, targets)
    assert limited.dtype == np.int8 and _pairs_ok(limited) and np.abs(limited.astype(np.int32)).max() <= 127
    padded = np.pad(codes.astype(np.int64), ((0, 0), (0, k % 2)))
    offending = np.repeat(~_pair_fits(padded), 2, axis=1)[:, :k]
    np.testing.assert_array_equal(limited[~offending], codes[~offending])


def _pair_fits(padded: np.ndarray) -> np.ndarray:
    a, b = padded[:, 0::2], padded[:, 1::2]
    return (np.maximum(a, 0) + np.maximum(b, 0) <= PAIR_LIMIT) & (np.maximum(-a, 0) + np.maximum(-b, 0) <= PAIR_LIMIT)


@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(["normal", "uniform", "laplace"]), st.booleans())
@settings(max_examples=40, deadline=None)
def test_chosen_grid_is_never_worse_than_7_bits(seed, kind, per_channel):
    rng = np.random.default_rng(seed)
    w = getattr(rng, kind)(size=(6, 24))
    base = np.abs(w).max(axis=1) / 127 if per_channel else np.abs(w).max() / 127
    chosen = pair_safe_row_scales(w, base, per_channel)
    assert np.all(chosen >= np.asarray(base, np.float32) * (1 - 1e-6))            # scales only grow
    assert np.all(chosen <= np.asarray(base, np.float32) * 127 / GRID_ENDS[-1] * (1 + 1e-6))
    s = np.broadcast_to(np.asarray(chosen, np.float64).reshape(-1, 1), (6, 1))
    codes = limit_pair_rows(np.clip(np.rint(w / s), -127, 127).astype(np.int64), w / s)
    seven = np.broadcast_to(np.asarray(base, np.float64).reshape(-1, 1) * 127 / 63, (6, 1))
    seven_error = ((np.clip(np.rint(w / seven), -63, 63) * seven - w) ** 2).sum()
    assert _pairs_ok(codes) and ((codes * s - w) ** 2).sum() <= seven_error * (1 + 1e-5)   # float32 scales


def gemm_rows(op: str, shape: tuple[int, ...], trans_b: bool = False) -> np.ndarray:
    """Flat indices of a weight of ``shape`` in to_rows' [output channels, K] layout."""
    return to_rows(op, np.arange(int(np.prod(shape))).reshape(shape), trans_b)


def test_gemm_rows_follow_ort_packing_order():
    # Conv W [M, C, kh, kw]: K = kernel position · C + channel
    conv = gemm_rows("Conv", (2, 3, 2, 2))
    w = np.arange(24).reshape(2, 3, 2, 2)
    assert conv.shape == (2, 12)
    assert w.reshape(-1)[conv][0, :4].tolist() == [w[0, 0, 0, 0], w[0, 1, 0, 0], w[0, 2, 0, 0], w[0, 0, 0, 1]]
    matmul = gemm_rows("MatMul", (4, 3))          # B [K, N]: rows are output columns
    assert np.arange(12).reshape(4, 3).reshape(-1)[matmul].tolist() == np.arange(12).reshape(4, 3).T.tolist()
    assert gemm_rows("Gemm", (3, 4), trans_b=True).tolist() == np.arange(12).reshape(3, 4).tolist()
    for op, shape, trans_b in (("Conv", (2, 3, 2, 2), False), ("Conv", (4, 2, 3), False), ("MatMul", (4, 3), False),
                               ("Gemm", (4, 3), False), ("Gemm", (3, 4), True)):
        weight = np.arange(int(np.prod(shape))).reshape(shape)
        np.testing.assert_array_equal(from_rows(op, to_rows(op, weight, trans_b), shape, trans_b), weight)


def _saturating_model(op: str) -> tuple[onnx.ModelProto, dict]:
    """x ≥ 0 (uint8 codes near 255) times weights whose neighbours along K share a sign and sit near the
    channel's maximum: plain 8-bit codes push many u8·s8 pair sums past 32767."""
    rng = np.random.default_rng(0)
    k, n = 64, 16
    # magnitudes near each channel's maximum, one sign per channel: most pairs sum far above 128 in codes
    w = rng.uniform(0.6, 1.0, size=(n, k)).astype(np.float32) * np.sign(rng.normal(size=(n, 1))).astype(np.float32)
    x = rng.uniform(0.8, 1.0, size=(4, k)).astype(np.float32)
    if op == "Conv":
        weight, xshape, yshape = w.reshape(n, k, 1, 1), [1, k, 2, 2], [1, n, 2, 2]
        x = np.ascontiguousarray(x.T.reshape(1, k, 2, 2))
        node = helper.make_node("Conv", ["x", "w"], ["y"], name="node")
    else:
        weight, xshape, yshape = np.ascontiguousarray(w.T), [4, k], [4, n]
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": x}


def _fused(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_fused_kernels_compute_the_graph_on_a_saturating_case(op, monkeypatch):
    """Compiled as for an AVX2 host without VNNI: the fused ORT kernels on this host agree with the Q/DQ
    graph run op by op (on a VNNI host they agree whatever the codes; on an AVX2 host they would not without
    the limit: see the next test)."""
    monkeypatch.setattr("qcompile.runtime_ext.target.detect_cpu_features", lambda: NO_VNNI)
    model, feed = _saturating_model(op)
    result = compile_model(model, [feed] * 4, CompileConfig(fidelity_samples=0, quantize_classifier=True))
    entry = next(n for n in result.report.data["nodes"] if n["name"] == "node")
    assert entry["status"] == "quantized" and "pair_limited_codes" in entry
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    codes = next(v for name, v in inits.items() if v.dtype == np.int8)
    assert _pairs_ok(codes.reshape(-1)[gemm_rows(op, codes.shape)])
    reference = run_unoptimized(result.model, feed)[0]
    np.testing.assert_allclose(_fused(result.model, feed), reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())


@pytest.mark.skipif(not resolve_profile(Target.CPU).saturating_pair_sums,
                    reason="this host's int8 GEMM does not saturate (VNNI or not x86): nothing to show")
def test_plain_8_bit_codes_do_saturate_on_this_host():
    """The control: the same case with plain 8-bit codes (a VNNI host's compile) diverges here."""
    from unittest import mock
    model, feed = _saturating_model("MatMul")
    with mock.patch("qcompile.runtime_ext.target.detect_cpu_features",
                    lambda: CpuFeatures(arch="x86_64", avx2=True, avx512=True, vnni=True)):
        result = compile_model(model, [feed] * 4, CompileConfig(fidelity_samples=0, quantize_classifier=True))
    reference = run_unoptimized(result.model, feed)[0]
    assert np.abs(_fused(result.model, feed) - reference).max() > 0.05 * np.abs(reference).max()


@pytest.mark.skipif(not resolve_profile(Target.CPU).saturating_pair_sums,
                    reason="this host's int8 GEMM does not saturate (VNNI or not x86): fused == op by op here")
def test_fidelity_of_a_non_cpu_target_is_measured_op_by_op():
    """measure_fidelity(fused=False), the TensorRT target's verify step, reads the Q/DQ graph as written: on
    this host the fused kernels saturate the plain codes, the op-by-op run does not."""
    from unittest import mock
    from qcompile.accuracy.fidelity import measure_fidelity
    model, feed = _saturating_model("MatMul")
    with mock.patch("qcompile.runtime_ext.target.detect_cpu_features",
                    lambda: CpuFeatures(arch="x86_64", avx2=True, avx512=True, vnni=True)):
        result = compile_model(model, [feed] * 4, CompileConfig(fidelity_samples=0, quantize_classifier=True))
    fused = measure_fidelity(model, result.model, [feed], 1)
    op_by_op = measure_fidelity(model, result.model, [feed], 1, fused=False)
    reference = run_unoptimized(model, feed)[0]
    graph = run_unoptimized(result.model, feed)[0]
    expected = 10 * np.log10((reference.astype(np.float64) ** 2).sum() / ((graph - reference) ** 2).sum())
    assert op_by_op["outputs"]["y"]["sqnr_db"] == pytest.approx(expected, abs=0.05)
    assert fused["outputs"]["y"]["sqnr_db"] < op_by_op["outputs"]["y"]["sqnr_db"] - 10

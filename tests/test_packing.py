"""4-bit packing and the NF4 code book, proven against onnx's INT4 tensors and ORT's own kernels:
DequantizeLinear (INT4/UINT4, blocked), MatMulNBits (4 and 8 bits, with and without zero points) and
MatMulBnb4 (NF4), on random shapes including odd K and odd element counts. Exact equality for integer data;
kernels that multiply in float are compared with a float64 numpy reference at 1e-5 relative to max |y|."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.numerics.packing import (matmul_nbits_weight, matmul_nbits_zero_points, nf4_code_book, nf4_quantize, num_blocks,
                              pack_4bit, pack_4bit_high_first, unpack_4bit, unpack_4bit_high_first,
                              unpack_matmul_nbits_weight)

# QLoRA's published NF4 values (bitsandbytes), to check the derivation
NF4_PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]

SETTINGS = settings(max_examples=25, deadline=None)


def _run(nodes, inits, inputs, outputs, feed, contrib=False):
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=opsets)
    model.ir_version = 10
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _int4_proto(name, codes, signed):
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = TensorProto.INT4 if signed else TensorProto.UINT4
    proto.dims.extend(codes.shape)
    proto.raw_data = pack_4bit(codes).tobytes()
    return proto


shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))


@SETTINGS
@given(st.integers(0, 101), st.booleans(), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(count, signed, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-8, 8, count) if signed else rng.integers(0, 16, count)
    packed = pack_4bit(codes)
    assert packed.size == (count + 1) // 2
    np.testing.assert_array_equal(unpack_4bit(packed, count, signed=signed), codes)
    np.testing.assert_array_equal(unpack_4bit_high_first(pack_4bit_high_first(codes & 0xF), count), codes & 0xF)


@SETTINGS
@given(shapes, st.booleans(), st.integers(0, 2**32 - 1))
def test_pack_matches_onnx_int4_tensors(shape, signed, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-8, 8, shape) if signed else rng.integers(0, 16, shape)
    reference = numpy_helper.from_array(codes.astype(ml_dtypes.int4 if signed else ml_dtypes.uint4), "w")
    assert pack_4bit(codes).tobytes() == reference.raw_data


@SETTINGS
@given(shapes, st.sampled_from([16, 32]), st.booleans(), st.integers(0, 2**32 - 1))
def test_blocked_dequantize_linear_in_ort(shape, block_size, signed, seed):
    rng = np.random.default_rng(seed)
    k, n = shape[0] * 7, shape[1]                       # K often odd and not a multiple of the block
    blocks = num_blocks(k, block_size)
    codes = rng.integers(-8, 8, (k, n)) if signed else rng.integers(0, 16, (k, n))
    scales = rng.uniform(0.01, 1.0, (blocks, n)).astype(np.float32)
    zeros = rng.integers(-8, 8, (blocks, n)) if signed else rng.integers(0, 16, (blocks, n))
    inits = [_int4_proto("q", codes, signed), numpy_helper.from_array(scales, "s"), _int4_proto("z", zeros, signed)]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, block_size=block_size)
    got = _run([node], inits, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])], {})
    expect = (codes - np.repeat(zeros, block_size, 0)[:k]) * np.repeat(scales, block_size, 0)[:k]
    np.testing.assert_array_equal(got, expect.astype(np.float32))


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 12), st.sampled_from([16, 32, 64]), st.sampled_from([4, 8]),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_matmul_nbits_layout_in_ort(k, n, block_size, bits, with_zero_points, seed):
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    blocks = num_blocks(k, block_size)
    codes = rng.integers(0, top + 1, (k, n)).astype(np.uint8)
    scales = rng.uniform(0.01, 1.0, (blocks, n)).astype(np.float32)
    zeros = rng.integers(0, top + 1, (blocks, n)).astype(np.uint8) if with_zero_points else \
        np.full((blocks, n), 1 << (bits - 1), np.uint8)
    b = matmul_nbits_weight(codes, block_size, bits)
    np.testing.assert_array_equal(unpack_matmul_nbits_weight(b, k, bits), codes)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.ascontiguousarray(scales.T), "S")]
    inputs = ["x", "B", "S"]
    if with_zero_points:
        inits.append(numpy_helper.from_array(matmul_nbits_zero_points(zeros, bits), "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block_size, accuracy_level=0)
    x = rng.standard_normal((3, k)).astype(np.float32)
    got = _run([node], inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])], {"x": x}, contrib=True)
    weight = (codes.astype(np.float64) - np.repeat(zeros, block_size, 0)[:k]) * np.repeat(scales, block_size, 0)[:k]
    expect = x.astype(np.float64) @ weight
    assert np.abs(got - expect).max() <= 1e-5 * max(np.abs(expect).max(), 1.0)


def test_nf4_code_book_matches_qlora():
    book = nf4_code_book()
    assert book.shape == (16,) and book[7] == 0.0 and book[0] == -1.0 and book[-1] == 1.0
    np.testing.assert_allclose(book, NF4_PUBLISHED, atol=2e-7)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from([16, 32]), st.integers(0, 2**32 - 1))
def test_matmul_bnb4_nf4_in_ort(k_blocks, n, block_size, seed):
    rng = np.random.default_rng(seed)
    k = k_blocks * block_size
    codes_t = rng.integers(0, 16, (n, k)).astype(np.uint8)         # W^T layout, blocks along K
    absmax = rng.uniform(0.1, 2.0, n * k_blocks).astype(np.float32)
    node = helper.make_node("MatMulBnb4", ["x", "B", "A"], ["y"], domain="com.microsoft", K=k, N=n,
                            block_size=block_size, quant_type=1)
    inits = [numpy_helper.from_array(pack_4bit_high_first(codes_t), "B"), numpy_helper.from_array(absmax, "A")]
    x = rng.standard_normal((2, k)).astype(np.float32)
    got = _run([node], inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], {"x": x}, contrib=True)
    weight_t = nf4_code_book().astype(np.float64)[codes_t] * np.repeat(absmax, block_size).reshape(n, k)
    expect = x.astype(np.float64) @ weight_t.T
    assert np.abs(got - expect).max() <= 1e-5 * max(np.abs(expect).max(), 1.0)


def test_nf4_quantize_picks_the_nearest_code():
    book = nf4_code_book()
    values = np.linspace(-1.2, 1.2, 1001).astype(np.float32)
    codes = nf4_quantize(values, np.float32(1.0), book)
    nearest = np.abs(np.clip(values, -1, 1)[:, None] - book[None, :]).argmin(axis=1)
    assert np.all(np.abs(book[codes] - np.clip(values, -1, 1)) <= np.abs(book[nearest] - np.clip(values, -1, 1)) + 1e-7)
    assert nf4_quantize(np.zeros(3, np.float32), np.zeros(3, np.float32), book).tolist() == [7, 7, 7]


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        pack_4bit(np.array([16]))
    with pytest.raises(ValueError):
        unpack_4bit(np.zeros(1, np.uint8), 3, signed=False)

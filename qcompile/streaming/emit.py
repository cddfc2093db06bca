"""The quantised nodes of the streaming path, written straight into ONNX protos (tensors through a TensorSink).

For a node y = x·W (+ b) with Ŵ = ``BlockQuantized`` (codes, scales s, zero points z over blocks along K):

    MATMUL_NBITS        y = MatMulNBits(x, B, s[, z][, b]; K, N, bits, block_size, accuracy_level)  com.microsoft
    DEQUANTIZE_LINEAR   y = MatMul(x, DequantizeLinear(W_q, s[, z]; axis=0, block_size)) (+ Add b)  opset 21
    NF4                 y = MatMulBnb4(x, B_nf4, absmax)                                           com.microsoft

and for an embedding table E [V, D] at int8 per row (s_v = max|E_v|/127, the rule of
passes/quantize/weight_only_embedding.py):

    opset >= 21   y = DequantizeLinear(Gather(E_q, ids), Gather(s, ids); axis=-1, block_size=D)
    otherwise     y = Mul(Cast(Gather(E_q, ids), float), Gather(s, ids))          (same values, any opset)

Layouts are those of qcompile.numerics.packing; node names are the original node's name (the compute node) plus
suffixes, like the graph pipeline's passes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from qcompile.config import ScaleDType, WeightOnlyForm
from qcompile.numerics.packing import matmul_nbits_weight, matmul_nbits_zero_points, pack_4bit, pack_4bit_high_first
from qcompile.numerics.weight_only import BlockQuantized
from qcompile.runtime_ext.matmul_nbits import CONTRIB_DOMAIN, fp16_safe_scales
from qcompile.streaming.sink import TensorSink

BLOCKED_DQ_MIN_OPSET = 21


def _scales(sink: TensorSink, name: str, scales: np.ndarray, scale_dtype: ScaleDType,
            nodes: list[onnx.NodeProto]) -> str:
    """float32 scales, or float16 ones Cast to float32 (ORT folds the Cast at load)."""
    if scale_dtype is ScaleDType.FLOAT32:
        return sink.add_array(name, np.asarray(scales, dtype=np.float32))
    stored = sink.add_array(f"{name}_fp16", np.asarray(scales, dtype=np.float16))
    nodes.append(helper.make_node("Cast", [stored], [name], name=f"{name}_Cast", to=onnx.TensorProto.FLOAT))
    return name


def quantized_matmul_nodes(sink: TensorSink, name: str, x: str, y: str, q: BlockQuantized, form: WeightOnlyForm,
                           accuracy_level: int | None, bias: str | None, scale_dtype: ScaleDType
                           ) -> tuple[list[onnx.NodeProto], str]:
    """(nodes computing y = x·Ŵ (+ bias), the compute op's form label) for one quantised weight."""
    q = dataclasses.replace(q, scales=fp16_safe_scales(q.scales, scale_dtype))
    spec, (k, n) = q.spec, q.codes.shape
    nodes: list[onnx.NodeProto] = []
    if spec.nf4:
        packed = pack_4bit_high_first(np.ascontiguousarray(q.codes.T))
        absmax = np.ascontiguousarray(q.scales.T, dtype=np.float32).reshape(-1)
        out = f"{name}_matmul_out" if bias else y
        nodes.append(helper.make_node("MatMulBnb4", [x, sink.add_array(f"{name}_B", packed),
                                                      sink.add_array(f"{name}_absmax", absmax)], [out], name=name,
                                      domain=CONTRIB_DOMAIN, K=k, N=n, block_size=spec.block_size, quant_type=1))
        if bias:
            nodes.append(helper.make_node("Add", [out, bias], [y], name=f"{name}_bias"))
        return nodes, "MatMulBnb4"
    if form is WeightOnlyForm.MATMUL_NBITS:
        codes = q.codes.astype(np.int16)
        if q.zero_points is None:
            codes = codes + (1 << (spec.bits - 1))     # symmetric: the op's default zero point is 2^(bits-1)
        inputs = [x, sink.add_array(f"{name}_B", matmul_nbits_weight(codes.astype(np.uint8), spec.block_size,
                                                                      spec.bits)),
                  _scales(sink, f"{name}_scales", np.ascontiguousarray(q.scales.T), scale_dtype, nodes)]
        if q.zero_points is not None:
            inputs.append(sink.add_array(f"{name}_zero_points", matmul_nbits_zero_points(q.zero_points, spec.bits)))
        if bias:
            inputs += [""] * (5 - len(inputs)) + [bias]
        nodes.append(helper.make_node("MatMulNBits", inputs, [y], name=name, domain=CONTRIB_DOMAIN, K=k, N=n,
                                      bits=spec.bits, block_size=spec.block_size, accuracy_level=int(accuracy_level)))
        return nodes, "MatMulNBits"
    inputs = [_codes(sink, f"{name}_W_q", q.codes, spec.bits, spec.symmetric),
              _scales(sink, f"{name}_W_scale", q.scales, scale_dtype, nodes)]
    if q.zero_points is not None:
        inputs.append(_codes(sink, f"{name}_W_zp", q.zero_points, spec.bits, False))
    nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}_W_dq"], name=f"{name}_W_DQ", axis=0,
                                  block_size=spec.block_size))
    out = f"{name}_matmul_out" if bias else y
    nodes.append(helper.make_node("MatMul", [x, f"{name}_W_dq"], [out], name=name))
    if bias:
        nodes.append(helper.make_node("Add", [out, bias], [y], name=f"{name}_bias"))
    return nodes, "DequantizeLinear+MatMul"


def _codes(sink: TensorSink, name: str, codes: np.ndarray, bits: int, symmetric: bool) -> str:
    """int8/uint8 codes as they are; 4-bit codes packed two per byte as INT4/UINT4."""
    if bits == 8:
        return sink.add_array(name, codes.astype(np.int8 if symmetric else np.uint8))
    data_type = onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4
    return sink.add_raw(name, data_type, codes.shape, pack_4bit(codes).tobytes())


def embedding_nodes(sink: TensorSink, name: str, codes_name: str, scale_name: str, ids: str, y: str, width: int,
                    opset: int) -> list[onnx.NodeProto]:
    """Gather on the int8 table and its row scales, then dequantise the gathered rows (module docstring)."""
    rows, row_scales = f"{name}_rows_q", f"{name}_rows_scale"
    nodes = [helper.make_node("Gather", [codes_name, ids], [rows], name=name, axis=0),
             helper.make_node("Gather", [scale_name, ids], [row_scales], name=f"{name}_scale", axis=0)]
    if opset >= BLOCKED_DQ_MIN_OPSET:
        nodes.append(helper.make_node("DequantizeLinear", [rows, row_scales], [y], name=f"{name}_DQ", axis=-1,
                                      block_size=int(width)))
    else:
        nodes += [helper.make_node("Cast", [rows], [f"{name}_rows_f"], name=f"{name}_Cast", to=onnx.TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}_rows_f", row_scales], [y], name=f"{name}_DQ")]
    return nodes

"""check_fusion on small QDQ models built inline: which kernel ORT's CPU EP made of each quantized node."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.runtime_ext.fusion import INTEGER_KERNELS, REMOVED, FusionReport, check_fusion, kernel_of_nodes
from qcompile.runtime_ext.session import GraphOptimization, make_session

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def _act_qparams(signed: bool, prefix: str, scale: float) -> list[onnx.TensorProto]:
    zp = np.array(0, np.int8) if signed else np.array(128, np.uint8)
    return [_init(f"{prefix}s", np.array(scale, np.float32)), _init(f"{prefix}z", zp)]


def _model(nodes, inits, x_shape, y_shape, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x_shape)],
        [helper.make_tensor_value_info("y", F, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def qdq_conv(*, signed_act: bool = False, per_channel: bool = True, bias: bool = True) -> onnx.ModelProto:
    """Q(x) -> DQ -> Conv 'conv0' (DQ int8 weights, DQ int32 bias) -> Q -> DQ."""
    cout = 4
    inits = _act_qparams(signed_act, "x", 0.02) + _act_qparams(signed_act, "y", 0.05)
    ws = np.full(cout, 0.01, np.float32) if per_channel else np.array(0.01, np.float32)
    inits += [
        _init("w_q", RNG.integers(-127, 128, (cout, 3, 3, 3)).astype(np.int8)),
        _init("ws", ws),
        _init("wz", np.zeros(ws.shape, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w_dq"], name="w_dequant", axis=0),
    ]
    conv_in = ["x_dq", "w_dq"]
    if bias:
        inits += [
            _init("b_q", RNG.integers(-100, 100, cout).astype(np.int32)),
            _init("bs", (0.02 * ws).astype(np.float32)),
            _init("bz", np.zeros(ws.shape, np.int32)),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "bs", "bz"], ["b_dq"], name="b_dequant", axis=0))
        conv_in.append("b_dq")
    nodes += [
        helper.make_node("Conv", conv_in, ["conv_out"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv_out", "ys", "yz"], ["y_q"], name="y_quant"),
        helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["y"], name="y_dequant"),
    ]
    return _model(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8])


def qdq_matmul(*, signed_act: bool = False, quantized_output: bool = True, gemm: bool = False) -> onnx.ModelProto:
    """Q(x) -> DQ -> MatMul 'mm0' | Gemm 'gemm0' (DQ int8 weight [, DQ int32 bias]) [-> Q -> DQ]."""
    inits = _act_qparams(signed_act, "x", 0.02) + [
        _init("w_q", RNG.integers(-127, 128, (16, 8)).astype(np.int8)),
        _init("ws", np.array(0.01, np.float32)),
        _init("wz", np.array(0, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w_dq"], name="w_dequant"),
    ]
    out = "mm_out" if quantized_output else "y"
    if gemm:
        inits += [
            _init("b_q", RNG.integers(-100, 100, 8).astype(np.int32)),
            _init("bs", np.array(0.0002, np.float32)),
            _init("bz", np.array(0, np.int32)),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "bs", "bz"], ["b_dq"], name="b_dequant"))
        nodes.append(helper.make_node("Gemm", ["x_dq", "w_dq", "b_dq"], [out], name="gemm0"))
    else:
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_dq"], [out], name="mm0"))
    if quantized_output:
        inits += _act_qparams(signed_act, "y", 0.05)
        nodes += [
            helper.make_node("QuantizeLinear", [out, "ys", "yz"], ["y_q"], name="y_quant"),
            helper.make_node("DequantizeLinear", ["y_q", "ys", "yz"], ["y"], name="y_dequant"),
        ]
    return _model(nodes, inits, [2, 16], [2, 8])


def float_conv(relu: bool = False) -> onnx.ModelProto:
    inits = [
        _init("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _init("b", RNG.standard_normal(4).astype(np.float32)),
    ]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if relu else "y"], name="conv0", pads=[1, 1, 1, 1])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu0"))
    return _model(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8])


# --- QDQ groups that ORT fuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_qdq_conv_becomes_qlinearconv(per_channel: bool, bias: bool) -> None:
    report = check_fusion(qdq_conv(per_channel=per_channel, bias=bias), ["conv0"])
    assert report.node_kernels == {"conv0": "QLinearConv"}
    assert report.unfused == ()
    assert report.all_fused and report.fused == ("conv0",)
    assert report.optimized_op_counts.get("Conv", 0) == 0
    # input Q and output DQ stay at the float boundary; the weight/bias DQs are gone
    assert report.leftover_qdq == 2
    assert report.leftover_dq_on_constants == 0


def test_int8_activations_conv_still_fuse_on_this_cpu() -> None:
    """On x86 ORT rewrites s8 activations to u8 (QDQS8ToU8Transformer) and fuses; on ARM s8 is kept."""
    report = check_fusion(qdq_conv(signed_act=True), ["conv0"])
    assert report.node_kernels == {"conv0": "QLinearConv"}
    # ... also when the session allows s8s8 kernels (no conversion at all)
    allowed = check_fusion(qdq_conv(signed_act=True), ["conv0"], config_entries={"session.qdqisint8allowed": "1"})
    assert allowed.node_kernels == {"conv0": "QLinearConv"}


def test_int8_activations_are_converted_to_uint8_on_x86(tmp_path: Path) -> None:
    out = tmp_path / "opt.onnx"
    make_session(qdq_conv(signed_act=True), optimization=GraphOptimization.ALL, optimized_model_path=out)
    opt = onnx.ModelProto.FromString(out.read_bytes())
    inits = {t.name: t for t in opt.graph.initializer}
    (q,) = [n for n in opt.graph.node if n.op_type == "QuantizeLinear"]
    zp_type = inits[q.input[2]].data_type
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert zp_type == TensorProto.UINT8
        assert q.input[2].startswith("qdq_s8_to_u8")
    elif platform.machine().lower() in ("aarch64", "arm64"):
        assert zp_type == TensorProto.INT8


@pytest.mark.parametrize("signed_act", [False, True])
def test_qdq_matmul_becomes_qlinearmatmul(signed_act: bool) -> None:
    report = check_fusion(qdq_matmul(signed_act=signed_act), ["mm0"])
    assert report.node_kernels == {"mm0": "QLinearMatMul"}
    assert report.unfused == ()


def test_dq_matmul_float_output_becomes_matmulintegertofloat() -> None:
    report = check_fusion(qdq_matmul(quantized_output=False), ["mm0"])
    assert report.node_kernels == {"mm0": "MatMulIntegerToFloat"}
    assert report.unfused == ()
    assert report.leftover_qdq == 1  # the activation's QuantizeLinear only
    assert report.optimized_op_counts == {"QuantizeLinear": 1, "MatMulIntegerToFloat": 1}


@pytest.mark.parametrize("quantized_output", [True, False])
def test_qdq_gemm_becomes_qgemm(quantized_output: bool) -> None:
    report = check_fusion(qdq_matmul(gemm=True, quantized_output=quantized_output), ["gemm0"])
    assert report.node_kernels == {"gemm0": "QGemm"}
    assert report.unfused == ()


def test_weight_only_int4_blocked_becomes_matmulnbits() -> None:
    k, n, block = 32, 8, 16
    wq = helper.make_tensor("w_q", TensorProto.INT4, [k, n], RNG.integers(-8, 8, k * n).tolist())
    ws = _init("ws", np.full((k // block, n), 0.1, np.float32))
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "ws"], ["w_dq"], name="w_dequant", axis=0, block_size=block),
        helper.make_node("MatMul", ["x", "w_dq"], ["y"], name="mm_int4"),
    ]
    model = _model(nodes, [wq, ws], [2, k], [2, n], opset=21)
    model.ir_version = 10
    report = check_fusion(model, ["mm_int4"])
    assert report.node_kernels == {"mm_int4": "MatMulNBits"}
    assert report.leftover_qdq == 0


# --- what stays float ------------------------------------------------------------------------------------


def test_plain_float_conv_is_unfused() -> None:
    report = check_fusion(float_conv(), ["conv0"])
    assert report.node_kernels == {"conv0": "Conv"}  # com.microsoft.nchwc Conv on x86
    assert report.unfused == ("conv0",)
    assert not report.all_fused
    assert report.leftover_qdq == 0


def test_float_conv_with_fused_relu_is_traced_through_its_activation() -> None:
    report = check_fusion(float_conv(relu=True), ["conv0"])
    assert report.node_kernels["conv0"] in ("Conv", "FusedConv")  # nchwc Conv + ReorderOutput on x86
    assert report.node_kernels["conv0"] not in INTEGER_KERNELS
    assert report.unfused == ("conv0",)


def test_int16_activations_conv_stays_float_with_dq_on_weights() -> None:
    """No int16 QLinearConv on ORT's CPU EP: the Conv stays float and its weight DQ runs every call."""
    inits = [
        _init("xs", np.array(0.02, np.float32)),
        _init("xz", np.array(0, np.int16)),
        _init("ys", np.array(0.05, np.float32)),
        _init("yz", np.array(0, np.int16)),
        _init("w_q", RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)),
        _init("ws", np.array(0.01, np.float32)),
        _init("wz", np.array(0, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "xs", "xz"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w_dq"], name="w_dequant"),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["c"], name="conv16", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["c_q"], name="y_quant"),
        helper.make_node("DequantizeLinear", ["c_q", "ys", "yz"], ["y"], name="y_dequant"),
    ]
    report = check_fusion(_model(nodes, inits, [1, 3, 8, 8], [1, 4, 8, 8], opset=21), ["conv16"])
    assert report.node_kernels == {"conv16": "Conv"}
    assert report.unfused == ("conv16",)
    assert report.leftover_qdq == 5
    assert report.leftover_dq_on_constants == 1


def test_mixed_model_reports_each_node_in_order() -> None:
    """QDQ Conv followed by a float Conv: one fused, one not."""
    model = qdq_conv()
    w2 = _init("w2", RNG.standard_normal((2, 4, 1, 1)).astype(np.float32))
    model.graph.initializer.append(w2)
    model.graph.node[-1].output[0] = "y_mid"
    model.graph.node.append(helper.make_node("Conv", ["y_mid", "w2"], ["y"], name="conv1"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    report = check_fusion(model, ["conv1", "conv0"])
    assert report.node_kernels == {"conv1": "Conv", "conv0": "QLinearConv"}
    assert report.unfused == ("conv1",)
    assert report.fused == ("conv0",)


def test_quantized_matmul_inside_if_subgraph() -> None:
    flat = qdq_matmul()
    y_info = helper.make_tensor_value_info("y", F, [2, 8])
    then_branch = helper.make_graph(list(flat.graph.node)[1:], "then", [], [y_info])
    else_out = helper.make_tensor_value_info("y_else", F, [2, 16])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [], [else_out])
    if_node = helper.make_node("If", ["cond"], ["out"], name="if0", then_branch=then_branch, else_branch=else_branch)
    graph = helper.make_graph(
        [flat.graph.node[0], if_node],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 16]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", F, None)],
        list(flat.graph.initializer),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    report = check_fusion(model, ["mm0"])
    assert report.node_kernels == {"mm0": "QLinearMatMul"}
    assert report.optimized_op_counts["If"] == 1


# --- report and matcher details ----------------------------------------------------------------------------


def test_as_json_round_trips() -> None:
    report = check_fusion(qdq_conv(), ["conv0"])
    data = json.loads(json.dumps(report.as_json()))
    assert data["node_kernels"] == {"conv0": "QLinearConv"}
    assert data["unfused"] == []
    assert data["num_quantized"] == 1 and data["num_fused"] == 1
    assert data["leftover_qdq"] == 2 and data["leftover_dq_on_constants"] == 0
    assert data["optimized_op_counts"]["QLinearConv"] == 1
    assert data["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(AttributeError):
        report.unfused = ()  # type: ignore[misc]  # frozen


def test_unknown_node_name_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="not_there"):
        check_fusion(qdq_conv(), ["not_there"])


def _graph_of(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    x_info, y_info = helper.make_tensor_value_info("x", F, None), helper.make_tensor_value_info("y", F, None)
    graph = helper.make_graph(nodes, "g", [x_info], [y_info])
    return helper.make_model(graph)


def test_matcher_name_conventions_without_ort() -> None:
    original = _graph_of(
        [
            helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
            helper.make_node("Conv", ["a", "w"], ["b"], name="c10"),
            helper.make_node("MatMul", ["b", "w"], ["c"], name="m1"),
            helper.make_node("MatMul", ["c", "w"], ["y"], name="gone"),
        ]
    )
    optimized = _graph_of(
        [
            helper.make_node("Transpose", ["x"], ["t0"], name="Transpose"),
            helper.make_node("QLinearConv", ["t0"], ["n1"], name="c1_token_3", domain="com.microsoft"),  # new output
            helper.make_node("Conv", ["n1"], ["n2"], name="c10_token_4"),  # 'c1' pattern must not match c10
            helper.make_node("QLinearMatMul", ["n2"], ["q"], name="m1"),  # exact name
            helper.make_node("Identity", ["q"], ["y"], name="gone_but_identity"),
        ]
    )
    kernels = kernel_of_nodes(original, optimized, ["c1", "c10", "m1", "gone"])
    assert kernels == {"c1": "QLinearConv", "c10": "Conv", "m1": "QLinearMatMul", "gone": "QLinearMatMul"}


def test_matcher_output_tensor_through_layout_ops_and_removed() -> None:
    original = _graph_of(
        [
            helper.make_node("Conv", ["x", "w"], ["conv_out"], name="conv0"),
            helper.make_node("QuantizeLinear", ["conv_out", "s"], ["q_out"], name="q0"),
            helper.make_node("MatMul", ["q_out", "w"], ["dead"], name="folded"),
        ]
    )
    optimized = _graph_of(
        [
            helper.make_node("QLinearConv", ["x"], ["tmp"], name="unrelated_name", domain="com.microsoft"),
            helper.make_node("Transpose", ["tmp"], ["q_out"], name="Transpose_token_0"),
        ]
    )
    kernels = kernel_of_nodes(original, optimized, ["conv0", "folded"])
    assert kernels == {"conv0": "QLinearConv", "folded": REMOVED}


def test_report_defaults() -> None:
    r = FusionReport(node_kernels={"a": "Conv"}, unfused=("a",), leftover_qdq=0, leftover_dq_on_constants=0)
    assert r.as_json()["num_fused"] == 0 and not r.all_fused

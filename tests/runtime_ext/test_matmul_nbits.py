"""The CPU target's weight-only form choice and the per-node exceptions where ORT does not fuse the standard
form (checked against ORT's optimised graph), plus the MatMulNBits builder's layout on symmetric codes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from qcompile.config import Target, WeightOnlyConfig, WeightOnlyForm
from qcompile.runtime_ext.matmul_nbits import FormChoice, choose_form, form_for_node, matmul_nbits_nodes
from qcompile.numerics.weight_only import BlockSpec, rtn


def test_choose_form():
    auto = choose_form(Target.CPU, WeightOnlyConfig())
    assert auto.form is WeightOnlyForm.MATMUL_NBITS and auto.accuracy_level == 4
    standard = choose_form(Target.CPU, WeightOnlyConfig(form=WeightOnlyForm.DEQUANTIZE_LINEAR))
    assert standard.form is WeightOnlyForm.DEQUANTIZE_LINEAR and standard.accuracy_level is None
    level = choose_form(Target.CPU, WeightOnlyConfig(accuracy_level=0))
    assert level.form is WeightOnlyForm.MATMUL_NBITS and level.accuracy_level == 0
    asked = choose_form(Target.CPU, WeightOnlyConfig(form=WeightOnlyForm.MATMUL_NBITS))
    assert asked.form is WeightOnlyForm.MATMUL_NBITS and asked.accuracy_level == 4


@pytest.mark.parametrize("consumers, rank, expect", [
    (["Relu"], 3, WeightOnlyForm.MATMUL_NBITS),
    (["Add"], 2, WeightOnlyForm.MATMUL_NBITS),
    (["Add"], 3, WeightOnlyForm.DEQUANTIZE_LINEAR),
    (["Sigmoid", "Mul"], 2, WeightOnlyForm.DEQUANTIZE_LINEAR),
])
def test_form_for_node(consumers, rank, expect):
    config = WeightOnlyConfig()
    standard = FormChoice(WeightOnlyForm.DEQUANTIZE_LINEAR, None, "a target that picks the standard form")
    assert form_for_node(standard, config, consumers, rank).form is expect
    forced = WeightOnlyConfig(form=WeightOnlyForm.DEQUANTIZE_LINEAR)
    assert form_for_node(choose_form(Target.CPU, forced), forced, consumers, rank).form \
        is WeightOnlyForm.DEQUANTIZE_LINEAR


@pytest.mark.parametrize("bits, k", [(4, 70), (8, 33)])
def test_matmul_nbits_symmetric_codes_use_the_default_zero_point(bits, k):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, 12)).astype(np.float32)
    q = rtn(w, BlockSpec(bits, 16, True))
    x = gs.Variable("x", dtype=np.float32, shape=[2, k])
    y = gs.Variable("y", dtype=np.float32, shape=[2, 12])
    bias = gs.Constant("bias", rng.standard_normal(12).astype(np.float32))
    graph = gs.Graph(nodes=matmul_nbits_nodes("mm", x, y, q, 0, bias, WeightOnlyConfig().scale_dtype),
                     inputs=[x], outputs=[y], opset=21, import_domains=None)
    model = gs.export_onnx(graph)
    model.opset_import.add(domain="com.microsoft", version=1)
    feed = rng.standard_normal((2, k)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]
    expect = feed.astype(np.float64) @ q.dequantize() + bias.values
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)

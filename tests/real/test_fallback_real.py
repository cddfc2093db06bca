"""Accuracy-budgeted fallback on the real EfficientNet-Lite0 (QCOMPILE_EVAL_DIR): budgets checked on the
held-out eval.npz (100 crops) against FP32 in ONNX Runtime with full graph optimisation.

The budget is met and the report holds the fallback list, every fallen-back node is float in ORT (its weight
is the float initializer, its input not a DequantizeLinear), and the report renders as HTML.
"""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest

from qcompile import compile_model
from qcompile.config import AccuracyBudget, CompileConfig
from qcompile.report.html import render_html
from real_helpers import eval_case

pytestmark = pytest.mark.slow


def _top1(model, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return np.array([session.run(None, {"input": images[i:i + 1]})[0].argmax() for i in range(len(images))])


@pytest.mark.parametrize("budget", [AccuracyBudget(min_cosine=0.99), AccuracyBudget(min_top1_agreement=0.97)],
                         ids=["min_cosine_0.99", "min_top1_0.97"])
def test_effnet_budget(eval_dir, budget):
    folder = eval_case(eval_dir, "effnet_lite0")
    result = compile_model(folder / "model.onnx", folder / "calib", CompileConfig(accuracy_budget=budget),
                           eval_data=folder / "eval.npz")
    data = result.report.data
    fallback = data["fallback"]
    assert fallback["met"] and fallback["eval"]["held_out"] and fallback["eval"]["items"] == 100
    after = fallback["after"]
    if budget.min_cosine is not None:
        assert after["cosine_mean"] >= budget.min_cosine
    if budget.min_top1_agreement is not None:
        assert after["top1_agreement"] >= budget.min_top1_agreement
        images = np.load(folder / "eval.npz")["input"]
        agreement = np.mean(_top1(folder / "model.onnx", images) == _top1(result.model, images))
        assert agreement == pytest.approx(after["top1_agreement"])       # the report's number is the model's
    fell_back = {n["name"] for n in fallback["nodes"]}
    assert len(fell_back) < data["summary"]["quantized_nodes"] + len(fell_back)
    produced_by = {o: n for n in result.model.graph.node for o in n.output}
    for node in result.model.graph.node:
        if node.name in fell_back:
            assert produced_by.get(node.input[1]) is None                 # float initializer weight
            source = produced_by.get(node.input[0])
            assert source is None or source.op_type != "DequantizeLinear"
    # 49 Convs, and the Gemm classifier unless its measured precision is float
    classifier_quantized = data["classifier"] is not None and data["classifier"]["decision"] != "float"
    assert data["layers"]["mode"] == "sensitivity" and len(data["layers"]["nodes"]) == 49 + classifier_quantized
    page = render_html(data)
    assert all(name in page for name in fell_back)

"""The real models of the eval folder (QCOMPILE_EVAL_DIR), compiled with default settings and their calib/.

Fidelity is measured on each case's held-out eval.npz against FP32 in ONNX Runtime (graph optimisations on,
so the integer kernels ORT fuses are what is measured). Thresholds are the acceptance criteria of the
end-to-end issue; latency is measured in benchmarks/, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompile import compile_model
from qcompile.runtime_ext.fusion import INTEGER_KERNELS
from real_helpers import cpu_session, eval_case

pytestmark = pytest.mark.slow


def _compile(folder: Path):
    result = compile_model(folder / "model.onnx", folder / "calib")
    summary = result.report.data["summary"]
    assert summary["quantized_nodes"] > 0
    assert summary["unfused_nodes"] == 0, result.report.data["ort"]["unfused"]
    for node in result.report.data["nodes"]:
        if node["status"] == "quantized":   # an integer kernel, or a Gather moving int8 table rows
            assert node["ort_kernel"] in INTEGER_KERNELS or (node["op_type"] == "Gather" and node["fused"]), node
    onnx.checker.check_model(result.model)
    return result


def test_fmnist_cnn_agreement_and_size(eval_dir):
    folder = eval_case(eval_dir, "fmnist_cnn")
    result = _compile(folder)
    data = np.load(folder / "eval.npz")
    x, labels = data["x"][:4000], data["y"][:4000]
    reference = cpu_session(folder / "model.onnx").run(None, {"input": x})[0].argmax(1)
    quantized = cpu_session(result.model).run(None, {"input": x})[0].argmax(1)
    assert np.mean(reference == quantized) >= 0.995
    assert np.mean(quantized == labels) >= np.mean(reference == labels) - 0.005
    assert result.report.data["summary"]["size_ratio"] <= 0.30


def test_minilm_sentence_embedding_cosine(eval_dir):
    folder = eval_case(eval_dir, "minilm")
    result = _compile(folder)
    data = np.load(folder / "eval.npz")
    reference, quantized = cpu_session(folder / "model.onnx"), cpu_session(result.model)
    cosines = []
    for row in range(data["input_ids"].shape[0]):
        length = int(data["attention_mask"][row].sum())
        feed = {k: data[k][row:row + 1, :length] for k in ("input_ids", "attention_mask", "token_type_ids")}
        a = reference.run(["sentence_embedding"], feed)[0].ravel()
        b = quantized.run(["sentence_embedding"], feed)[0].ravel()
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    assert np.mean(cosines) >= 0.99, np.mean(cosines)


def test_effnet_lite0_top1_agreement(eval_dir):
    folder = eval_case(eval_dir, "effnet_lite0")
    result = _compile(folder)
    images = np.load(folder / "eval.npz")["input"]
    reference, quantized = cpu_session(folder / "model.onnx"), cpu_session(result.model)
    agree = []
    for start in range(0, images.shape[0], 20):
        batch = {"input": images[start:start + 20]}
        agree.extend(reference.run(None, batch)[0].argmax(1) == quantized.run(None, batch)[0].argmax(1))
    assert np.mean(agree) >= 0.90, np.mean(agree)

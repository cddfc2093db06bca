"""Weight-only presets on the real MiniLM encoder (../shared/eval/minilm): w4a16 with the default algorithm keeps
the sentence embedding (cosine >= 0.98 on 60 held-out rows, each run alone without padding) at <= 0.25x the FP32
file size with every quantised node on an ORT integer kernel; GPTQ keeps the embeddings closer to FP32
than RTN on the same calibration data. Skips when the eval folder is absent; slow (~2-4 min)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from qcompile import compile_model
from qcompile.config import config_from_mapping
from real_helpers import cpu_session

pytestmark = pytest.mark.slow

EVAL_ROWS = 60
CALIB_ITEMS = 32


def _cosines(reference: ort.InferenceSession, quantized: ort.InferenceSession, eval_path: Path) -> np.ndarray:
    data = np.load(eval_path)
    cosines = []
    for i in range(EVAL_ROWS):
        length = int(data["attention_mask"][i].sum())
        feed = {k: data[k][i:i + 1, :length].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}
        a = reference.run(["sentence_embedding"], feed)[0].ravel().astype(np.float64)
        b = quantized.run(["sentence_embedding"], feed)[0].ravel().astype(np.float64)
        cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return np.array(cosines)


def _compile(case: Path, table: dict):
    config = config_from_mapping({"preset": "w4a16", "weight_only": table, "fidelity_samples": 0,
                                  "calibration": {"num_samples": CALIB_ITEMS}})
    return compile_model(case / "model.onnx", case / "calib", config)


@pytest.fixture(scope="module")
def minilm_default():
    """(case folder, result) of the default w4a16 compile (GPTQ), compiled once for this module's tests.
    The folder is found like tests/conftest.py's eval_dir (QCOMPILE_EVAL_DIR, default ../shared/eval)."""
    eval_dir = Path(os.environ.get("QCOMPILE_EVAL_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "eval"))
    case = eval_dir / "minilm"
    if not (case / "model.onnx").is_file():
        pytest.skip(f"{case} not found: set QCOMPILE_EVAL_DIR to the folder holding the real models")
    return case, _compile(case, {})


def test_minilm_w4a16_default(minilm_default):
    case, result = minilm_default
    summary = result.report.data["summary"]
    assert summary["size_ratio"] <= 0.25
    assert summary["unfused_nodes"] == 0
    kinds = {n["ort_kernel"] for n in result.report.data["nodes"] if n["status"] == "quantized"}
    assert kinds <= {"MatMulNBits", "Gather"}
    cos = _cosines(cpu_session(case / "model.onnx"), cpu_session(result.model), case / "eval.npz")
    assert cos.mean() >= 0.98, cos.mean()


def test_minilm_gptq_beats_rtn_on_output_error(minilm_default):
    """GPTQ reports its layer-wise error tr(ΔWᵀHΔW)/tr(WᵀHW) for all 36 MatMuls; RTN is data-free on the streaming
    path (no Hessian, so no such figure); GPTQ's sentence embeddings are closer to FP32 than RTN's."""
    case, gptq = minilm_default
    assert gptq.report.data["config"]["weight_only"]["algorithm"] == "gptq"
    rtn = _compile(case, {"algorithm": "rtn"})
    errors = np.array([n["relative_output_error"] for n in gptq.report.data["nodes"] if "relative_output_error" in n])
    assert errors.size == 36 and np.all((errors > 0) & (errors < 0.05)), errors
    assert not any("relative_output_error" in n for n in rtn.report.data["nodes"])
    reference = cpu_session(case / "model.onnx")
    cos_gptq = _cosines(reference, cpu_session(gptq.model), case / "eval.npz")
    cos_rtn = _cosines(reference, cpu_session(rtn.model), case / "eval.npz")
    assert cos_gptq.mean() > cos_rtn.mean(), (cos_gptq.mean(), cos_rtn.mean())
    assert np.mean(cos_gptq >= cos_rtn) >= 0.6, np.mean(cos_gptq >= cos_rtn)   # per row, mostly

"""Smoke tests of benchmarks/compare.py on the generated tiny models (a few seconds each: one compile subprocess
per method). The INC test needs the separate venv of benchmarks/README.md at /tmp/incvenv and skips without it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import onnx
import pytest

from models import generate

REPO = Path(__file__).resolve().parents[1]
INC_PYTHON = Path("/tmp/incvenv/bin/python")


def _load_compare():
    spec = importlib.util.spec_from_file_location("benchmarks_compare", REPO / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _number(cell: str) -> float:
    cell = re.sub(r"\s*\(\+-?\d+\)$", "", cell.strip())  # "86 (+13)" -> "86"
    return float(cell)


def _write_case(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    model = tmp_path / f"{name}.onnx"
    onnx.save(getattr(generate, name)(), str(model))
    calib = tmp_path / "calib"
    generate.write_calibration(name, calib, 8)
    eval_path = generate.write_eval(name, tmp_path / "eval.npz", 16)  # each input [16, 1, ...]
    return model, calib, eval_path


def _run(compare, tmp_path: Path, case: tuple[Path, Path, Path], *extra: str) -> tuple[list[str], dict]:
    """main() on one model; returns (header, {method label: {column: cell}})."""
    model, calib, eval_path = case
    out = tmp_path / "results.md"
    rc = compare.main(["--model", str(model), "--calib", str(calib), "--eval", str(eval_path), "--runs", "3",
                       "--warmup", "1", "--rounds", "2", "--threads", "1,0", "--out", str(out),
                       "--work-dir", str(tmp_path / "work"), *extra])
    assert rc == 0
    text = out.read_text()
    assert "onnxruntime" in text and "UTC" in text and "AVX512-VNNI" in text
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "method" and "size ratio" in header
    assert "latency 1 thread ms" in header and "latency all threads ms" in header
    assert header[-2:] == ["compile s", "compile peak RSS MB"]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells))
    return header, rows


def _check_measured(label: str, row: dict, metric: str, max_size_ratio: float) -> None:
    assert not any("FAILED" in v or "not available" in v for v in row.values()), row
    assert 0.0 <= _number(row[metric]) <= 1.0 + 1e-9
    for key in ("latency 1 thread ms", "ratio 1 thread", "latency all threads ms", "ratio all threads"):
        assert _number(row[key]) > 0, (label, key)
    if label == "FP32":
        assert _number(row[metric]) == 1.0 and _number(row["size ratio"]) == 1.0
        assert _number(row["ratio 1 thread"]) == 1.0
        assert row["compile s"] == "—"
    else:
        assert 0 < _number(row["size ratio"]) < max_size_ratio, label
        assert _number(row["compile s"]) >= 0
        assert 20 < _number(row["compile peak RSS MB"]) < 4000, label


def test_default_methods_follow_constant_weight_matmuls(tmp_path: Path) -> None:
    compare = _load_compare()
    cnn, transformer = tmp_path / "cnn.onnx", tmp_path / "transformer.onnx"
    onnx.save(generate.tiny_cnn(), str(cnn))            # its only dense layer is a Gemm
    onnx.save(generate.tiny_transformer(), str(transformer))
    assert not compare.has_constant_weight_matmul(cnn)
    assert compare.has_constant_weight_matmul(transformer)
    assert set(compare.default_methods(transformer)) == set(compare.METHODS)
    assert set(compare.default_methods(cnn)) == set(compare.METHODS) - compare.WEIGHT_MATMUL_METHODS


def test_compare_tiny_cnn(tmp_path: Path) -> None:
    """Default methods on a CNN, no --inc-python: INT8 peers measured, inc_static reported as not available."""
    compare = _load_compare()
    header, rows = _run(compare, tmp_path, _write_case(tmp_path, "tiny_cnn"))
    assert "top-1 agreement" in header
    expected = [m for m in compare.METHODS if m not in compare.WEIGHT_MATMUL_METHODS]
    assert set(rows) == {compare.METHOD_LABELS[m] for m in expected}
    inc_row = rows.pop(compare.METHOD_LABELS["inc_static"])
    assert inc_row["top-1 agreement"].startswith("not available: no --inc-python")
    assert all(v == "—" for k, v in inc_row.items() if k not in ("method", "top-1 agreement"))
    for label, row in rows.items():
        _check_measured(label, row, "top-1 agreement", 0.6)  # int8 weights
    assert _number(rows["qcompile (default config)"]["top-1 agreement"]) >= 0.75


def test_compare_tiny_transformer_int4(tmp_path: Path) -> None:
    """INT4 weight-only methods on a transformer; an --inc-python that cannot import INC (this venv: numpy 2)
    makes the INC method 'not available', not a crash."""
    compare = _load_compare()
    header, rows = _run(compare, tmp_path, _write_case(tmp_path, "tiny_transformer"),
                        "--methods", "qcompile_w4a16,ort_matmulnbits,inc_static", "--inc-python", sys.executable)
    assert "cosine mean" in header and "cosine min" in header
    labels = compare.METHOD_LABELS
    assert set(rows) == {labels[m] for m in ("fp32", "qcompile_w4a16", "ort_matmulnbits", "inc_static")}
    assert rows[labels["inc_static"]]["cosine mean"].startswith("not available: cannot import onnx_neural_compressor")
    measured = ["fp32", "qcompile_w4a16"]
    if importlib.util.find_spec("onnx_ir") is None:   # the [bench] extra; CI installs only [test,distributed]
        assert rows[labels["ort_matmulnbits"]]["cosine mean"].startswith("not available: MatMulNBitsQuantizer needs onnx-ir")
    else:
        measured.append("ort_matmulnbits")
    for method in measured:
        # 16 of the model's MatMuls are 4-bit; its embedding table stays 8-bit or float
        _check_measured(labels[method], rows[labels[method]], "cosine mean", 0.5)
    for method in measured[1:]:
        assert _number(rows[labels[method]]["cosine mean"]) > 0.9, method


@pytest.mark.skipif(not INC_PYTHON.exists(),
                    reason=f"no Intel Neural Compressor venv at {INC_PYTHON} (see benchmarks/README.md; not in CI)")
def test_compare_inc_tiny_transformer(tmp_path: Path) -> None:
    compare = _load_compare()
    _, rows = _run(compare, tmp_path, _write_case(tmp_path, "tiny_transformer"),
                   "--methods", "inc_static,inc_smoothquant", "--inc-python", str(INC_PYTHON))
    labels = compare.METHOD_LABELS
    assert set(rows) == {labels[m] for m in ("fp32", "inc_static", "inc_smoothquant")}
    for method in ("fp32", "inc_static", "inc_smoothquant"):
        _check_measured(labels[method], rows[labels[method]], "cosine mean", 1.0)  # size: only checked < FP32

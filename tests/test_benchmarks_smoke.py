"""Smoke test of benchmarks/compare.py on the generated tiny_cnn (a few seconds: 4 compile subprocesses)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import onnx

from models import generate

REPO = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("benchmarks_compare", REPO / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _number(cell: str) -> float:
    cell = re.sub(r"\s*\(\+-?\d+\)$", "", cell.strip())  # "86 (+13)" -> "86"
    return float(cell)


def test_compare_tiny_cnn(tmp_path: Path) -> None:
    compare = _load_compare()
    model = tmp_path / "tiny_cnn.onnx"
    onnx.save(generate.tiny_cnn(), str(model))
    calib = tmp_path / "calib"
    generate.write_calibration("tiny_cnn", calib, 8)
    eval_path = generate.write_eval("tiny_cnn", tmp_path / "eval.npz", 16)  # input [16, 1, 3, 32, 32]
    out = tmp_path / "results.md"

    rc = compare.main(["--model", str(model), "--calib", str(calib), "--eval", str(eval_path), "--runs", "3",
                       "--warmup", "1", "--rounds", "2", "--threads", "1,0", "--out", str(out),
                       "--work-dir", str(tmp_path / "work")])
    assert rc == 0
    text = out.read_text()
    assert "onnxruntime" in text and "UTC" in text and "AVX512-VNNI" in text

    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "method" and "top-1 agreement" in header and "size ratio" in header
    assert "latency 1 thread ms" in header and "latency all threads ms" in header
    assert header[-2:] == ["compile s", "compile peak RSS MB"]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells))
    assert set(rows) == set(compare.METHOD_LABELS.values())

    for label, row in rows.items():
        assert not any("FAILED" in v for v in row.values()), row
        agreement = _number(row["top-1 agreement"])
        assert 0.0 <= agreement <= 1.0
        assert _number(row["size ratio"]) > 0
        for key in ("latency 1 thread ms", "ratio 1 thread", "latency all threads ms", "ratio all threads"):
            assert _number(row[key]) > 0, (label, key)
        if label == "FP32":
            assert agreement == 1.0 and _number(row["size ratio"]) == 1.0
            assert _number(row["ratio 1 thread"]) == 1.0
            assert row["compile s"] == "—"
        else:
            assert _number(row["size ratio"]) < 0.6, label  # int8 weights
            assert _number(row["compile s"]) >= 0
            assert 20 < _number(row["compile peak RSS MB"]) < 4000, label
    assert _number(rows["qcompile (default config)"]["top-1 agreement"]) >= 0.75

"""A model over protobuf's 2 GB limit compiles end to end (load, shape inference, calibration, Q/DQ, fusion
check, fidelity, save) through the CLI, in a subprocess whose peak memory is bounded.

The model is models.generate.large_external_model: 2.06 GiB of float32 MatMul weights in an external data
file. Marked slow; skipped where the machine has too little free memory to run it safely."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from models.generate import large_external_model, write_calibration

MODEL_BYTES = 2**31 + 2**26          # beyond protobuf's 2 GiB serialisation limit
HIDDEN = 4096
PEAK_RSS_LIMIT = 5.0                 # x the model's bytes; measured 4.2x (9.3 GB for 2.21 GB) on 2026-12-06


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", 0)
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.skipif(_available_bytes() < (PEAK_RSS_LIMIT + 1) * MODEL_BYTES,
                    reason="needs about 16 GB of free memory to compile a 2 GiB model")
def test_compile_model_over_2gib(tmp_path: Path) -> None:
    model_path = large_external_model(tmp_path / "in", MODEL_BYTES, hidden=HIDDEN)
    write_calibration("large_external", tmp_path / "calib", n=4, hidden=HIDDEN)
    output = tmp_path / "out" / "q.onnx"
    output.parent.mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-m", "qcompile", str(model_path), "--calib", str(tmp_path / "calib"),
                           "-o", str(output), "--no-progress", "--fidelity-samples", "2"],
                          capture_output=True, text=True, timeout=1500)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    report = json.loads((tmp_path / "out" / "q.report.json").read_text())
    layers = -(-MODEL_BYTES // (HIDDEN * HIDDEN * 4))
    assert report["summary"]["quantized_nodes"] == layers
    assert report["summary"]["unfused_nodes"] == 0
    assert report["summary"]["input_bytes"] > 2**31
    # int8 weights: a quarter of the bytes, plus scales and activation Q/DQ
    assert 0.24 < report["summary"]["size_ratio"] < 0.27
    # one int8 layer costs 1 - cosine ~ 1e-4; at gain 1 the errors of the 33 layers add (see the generator)
    assert report["fidelity"]["outputs"]["y"]["cosine_mean"] > 0.99
    assert sorted(p.name for p in output.parent.iterdir()) == ["q.onnx", "q.report.json"]
    if before * 1024 < peak:   # this child set the high-water mark of the test process's children
        assert peak < PEAK_RSS_LIMIT * MODEL_BYTES, f"peak RSS {peak / 2**30:.1f} GiB"

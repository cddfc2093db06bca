"""ONNX Runtime's own log lines never reach the user's terminal: a model that makes ORT warn (an unused
initializer, a declared output shape the run contradicts) is compiled by the CLI in a subprocess whose fd 2 is
captured; qcompile's own warnings may appear, ORT's may not. A check that ORT does warn on this model keeps the
test from passing vacuously."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.passes.test_weight_only import _calib, tiny_lm

ORT_MARK = "onnxruntime:"


def _noisy_model(folder: Path) -> tuple[Path, Path]:
    model = tiny_lm()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(300, np.float32), "unused_weight"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7      # the run gives 5
    path = folder / "noisy.onnx"
    onnx.save(model, str(path))
    calib = folder / "calib"
    calib.mkdir()
    for i, item in enumerate(_calib(4)):
        np.savez(calib / f"{i}.npz", **item)
    return path, calib


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr


def test_ort_warns_on_the_model_by_default(tmp_path):
    path, _ = _noisy_model(tmp_path)
    err = _stderr(f"import onnxruntime as ort; ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])")
    assert ORT_MARK in err


@pytest.mark.parametrize("flags", [
    ["--preset", "w4a16", "--algorithm", "rtn"],
    pytest.param(["--preset", "w4a16"], marks=pytest.mark.slow),     # a subprocess each: ~10 s on 2 cores
    pytest.param([], marks=pytest.mark.slow),
], ids=["w4a16-rtn", "w4a16-gptq", "w8a8"])
def test_compile_keeps_ort_quiet(tmp_path, flags):
    path, calib = _noisy_model(tmp_path)
    args = [str(path), "--calib", str(calib), "-o", str(tmp_path / "out.onnx"), "--no-progress", *flags]
    err = _stderr(f"import sys; from qcompile.cli import main; sys.argv = ['qcompile'] + {args!r}; main()")
    assert (tmp_path / "out.onnx").exists(), err
    assert ORT_MARK not in err, err

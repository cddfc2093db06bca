"""Shared fixtures: the repo root on sys.path (for ``models.generate``), small generated models with
calibration folders, and the real-model evaluation folder for tests/real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

N_CALIB = 16


def _write_case(tmp_path: Path, name: str) -> tuple[Path, Path]:
    import onnx

    from models import generate

    model = getattr(generate, name)()
    model_path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(model_path))
    calib_dir = tmp_path / f"{name}_calib"
    generate.write_calibration(name, calib_dir, N_CALIB)
    return model_path, calib_dir


@pytest.fixture
def tiny_cnn_case(tmp_path: Path) -> tuple[Path, Path]:
    """(tiny_cnn.onnx, folder of 16 batch-1 .npz calibration samples) under tmp_path."""
    return _write_case(tmp_path, "tiny_cnn")


@pytest.fixture
def tiny_transformer_case(tmp_path: Path) -> tuple[Path, Path]:
    """(tiny_transformer.onnx, folder of 16 batch-1 .npz calibration samples) under tmp_path."""
    return _write_case(tmp_path, "tiny_transformer")


@pytest.fixture
def eval_dir() -> Path:
    """The real-model evaluation folder (QCOMPILE_EVAL_DIR, default <repo>/../shared/eval)."""
    path = Path(os.environ.get("QCOMPILE_EVAL_DIR", REPO.parent / "shared" / "eval"))
    if not path.is_dir():
        pytest.skip(f"real-model eval folder {path} not found: set QCOMPILE_EVAL_DIR to the folder holding "
                    "the real models and their data")
    return path

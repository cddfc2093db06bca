"""Shared by the real-model tests (and benchmarks/targets.py): CPU sessions and the eval cases."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest


def cpu_session(model, threads: int = 0, optimized: bool = True) -> ort.InferenceSession:
    """An ORT CPU session for a ModelProto or a path; ``threads`` 0 = ORT's default; ``optimized=False``: the
    graph op by op (no fusion)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def eval_case(eval_dir: Path, name: str) -> Path:
    """eval_dir/name, skipping the test when its model is missing."""
    folder = eval_dir / name
    if not (folder / "model.onnx").is_file():
        pytest.skip(f"{folder} has no model.onnx: the eval folder is incomplete")
    return folder

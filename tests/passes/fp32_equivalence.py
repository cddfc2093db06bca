"""Helpers for the channel-rewrite tests: run the prepare + transform steps and compare FP32 functions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile.calibrators.collector import collect_statistics
from qcompile.config import CompileConfig
from qcompile.pass_infra import PassContext, run_steps
from qcompile.pipeline import build_steps
from qcompile.runtime_ext.target import resolve_profile
from tests.passes.ort_reference import run_unoptimized

REL_TOL = 1e-5


def transform(model: onnx.ModelProto, config: CompileConfig, samples) -> tuple[onnx.ModelProto, PassContext]:
    """The graph after the prepare and transform steps (FP32, before quantisation)."""
    graph = gs.import_onnx(model)
    ctx = PassContext(config=config, target=resolve_profile(config.target))
    steps = [s for s in build_steps(config) if s.name in ("prepare", "transform")]
    run_steps(graph, steps, ctx, lambda g, requests: collect_statistics(g, requests, samples))
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.opset_import[0].version = model.opset_import[0].version
    return out, ctx


def assert_same_function(original, rewritten, feeds) -> None:
    """Every output within REL_TOL relative (L2) of the original's, on every feed."""
    for feed in feeds:
        for a, b in zip(run_unoptimized(original, feed), run_unoptimized(rewritten, feed)):
            assert np.linalg.norm(a - b) <= REL_TOL * np.linalg.norm(a), np.linalg.norm(a - b) / np.linalg.norm(a)

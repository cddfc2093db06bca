"""KeepFloatPass: a Conv/Gemm left float behind a DequantizeLinear stays float in ONNX Runtime (its output
under full graph optimisation equals the graph as written), and quantised nodes are not touched."""

from __future__ import annotations

import numpy as np

from qcompile import compile_model
from qcompile.config import AnalysisConfig, CompileConfig, LayerAnalysis
from qcompile.runtime_ext.session import GraphOptimization, make_session
from tests._analysis_models import SENSITIVE_NODE, outlier_cnn, outlier_samples

QUICK = dict(analysis=AnalysisConfig(layers=LayerAnalysis.NONE), fidelity_samples=0)


def _outputs(model, optimization, feeds):
    session = make_session(model, optimization=optimization)
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def test_an_excluded_conv_behind_a_dq_runs_float_in_ort():
    feeds = outlier_samples(6, 2)
    result = compile_model(outlier_cnn(), outlier_samples(8, 1), CompileConfig(exclude=(SENSITIVE_NODE,), **QUICK))
    stats = next(p["stats"] for p in result.report.data["passes"] if p["name"] == "KeepFloatPass")
    assert stats == {"guarded": 1, "guarded_Conv": 1}
    produced_by = {o: n for n in result.model.graph.node for o in n.output}
    conv = next(n for n in result.model.graph.node if n.name == SENSITIVE_NODE)
    assert produced_by[conv.input[0]].op_type == "Max" and conv.input[1] == "wb"
    # without the guard ORT would quantise the float weight (outlier 50 -> per-tensor scale) and diverge
    as_written = _outputs(result.model, GraphOptimization.DISABLED, feeds)
    optimised = _outputs(result.model, GraphOptimization.ALL, feeds)
    fp32 = _outputs(outlier_cnn(), GraphOptimization.ALL, feeds)
    assert np.linalg.norm(optimised - as_written) < 0.01 * np.linalg.norm(as_written - fp32) + 1e-6


def test_nothing_to_guard_when_every_conv_is_quantised():
    result = compile_model(outlier_cnn(), outlier_samples(8, 1), CompileConfig(**QUICK))
    stats = next(p["stats"] for p in result.report.data["passes"] if p["name"] == "KeepFloatPass")
    assert stats == {}
    assert not any(n.op_type == "Max" for n in result.model.graph.node)

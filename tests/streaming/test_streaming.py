"""The streaming weight-only path: inline weights read in place from the model file (wire walker), segment cuts
and segment-by-segment execution equal to the whole model, the same codes as the graph pipeline, external data
in and out, and one-line errors for bad files."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models.llama_shaped import llama_shaped
from qcompile import compile_model
from qcompile.config import AnalysisConfig, CompileConfig, LayerAnalysis, Preset, WeightOnlyAlgorithm, WeightOnlyConfig
from qcompile.config import WeightOnlyForm
from qcompile.errors import ModelLoadError
from qcompile.io.lazy import open_model_lazily
from qcompile.streaming.capture import SegmentRunner, value_types
from qcompile.streaming.plan import name_nodes, plan_streaming
from qcompile.streaming.segments import live_sets, split_segments
from qcompile.streaming.store import detach
from tests.passes.test_weight_only import _calib, tiny_lm


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    path, _ = llama_shaped(folder, layers=2, dim=64, ffn=160, heads=4, kv_heads=2, vocab=300, seq=8)
    calib = [dict(np.load(p)) for p in sorted((folder / "calib").glob("*.npz"))]
    return path, calib


def _logits(model, feed) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_inline_weights_become_references_into_the_model_file(tmp_path):
    model = tiny_lm()
    path = tmp_path / "lm.onnx"
    onnx.save(model, str(path))
    lazy = open_model_lazily(path)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    big = {n for n, a in originals.items() if a.nbytes >= 1024}
    assert {r.tensor.name for r in lazy.refs} == big and all(r.file == path for r in lazy.refs)
    for ref in lazy.refs:
        np.testing.assert_array_equal(np.frombuffer(ref.read(), np.float32).reshape(originals[ref.tensor.name].shape),
                                      originals[ref.tensor.name])
    assert lazy.model.ByteSize() < 4096 < path.stat().st_size        # the skeleton holds no weight


def test_truncated_file_is_one_line_error(tmp_path):
    path = tmp_path / "lm.onnx"
    onnx.save(tiny_lm(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    config = CompileConfig(preset=Preset.W4A16)
    with pytest.raises(ModelLoadError) as info:
        compile_model(path, _calib(2), config)
    assert "\n" not in str(info.value)


def test_cuts_fall_between_blocks_and_segments_reproduce_the_model(llama):
    path, calib = llama
    skeleton, store = detach(open_model_lazily(path))
    name_nodes(skeleton)
    plan = plan_streaming(skeleton, CompileConfig(preset=Preset.W4A16))
    segments = split_segments(skeleton.graph, {t.node for t in plan.matmuls})
    # 2 layers × (attention, MLP) halves, then the final norm + lm_head: the residual stream is all that is alive
    assert len(segments) == 5 and segments[-1].targets == ("lm_head",)
    live = live_sets(skeleton.graph)
    assert all(len(live[s.stop]) == 1 for s in segments[:-1])
    assert sum(len(s.targets) for s in segments) == len(plan.matmuls) == 2 * 7 + 1
    runner = SegmentRunner(skeleton, store, value_types(skeleton))
    items = [dict(c) for c in calib[:2]]
    for segment in segments:
        items = [dict(item, **out) for item, out in zip(items, runner.run(segment, items, segment.outputs))]
    for item, feed in zip(items, calib[:2]):
        np.testing.assert_allclose(item["logits"], _logits(path, feed), rtol=1e-4, atol=1e-4)


def test_external_data_in_and_out(llama, tmp_path):
    path, calib = llama
    config = CompileConfig(preset=Preset.W4A16, weight_only=WeightOnlyConfig(algorithm=WeightOnlyAlgorithm.GPTQ))
    result = compile_model(path, calib, config, inline_weights=False)
    assert result.external_data is not None and result.report.data["pipeline"] == "streaming"
    nodes = [n for n in result.report.data["nodes"] if n["status"] == "quantized" and n["op_type"] == "MatMul"]
    assert len(nodes) == 15 and all(0 < n["relative_output_error"] < 0.2 for n in nodes)
    out = tmp_path / "q.onnx"
    result.save(out)
    assert out.with_name("q.onnx.data").stat().st_size > 0
    ref, got = _logits(path, calib[0]), _logits(out, calib[0])
    assert np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.98
    # by default the weights (which fit protobuf's 2 GB) are read back: the result runs from bytes, same logits
    inline = compile_model(path, calib, config)
    assert inline.external_data is None
    assert not any(t.external_data for t in inline.model.graph.initializer)
    session = ort.InferenceSession(inline.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], calib[0])[0], got, rtol=1e-5, atol=1e-5)


def test_same_codes_as_the_graph_pipeline():
    """RTN in the standard form: the streaming path and the graph pipeline (which sensitivity analysis selects)
    store the same codes and scales."""
    weight_only = WeightOnlyConfig(algorithm=WeightOnlyAlgorithm.RTN, form=WeightOnlyForm.DEQUANTIZE_LINEAR,
                                   clip_search=False)   # the graph pipeline weighs its search by diag(H)
    streamed = compile_model(tiny_lm(), _calib(), CompileConfig(preset=Preset.W4A16, weight_only=weight_only))
    classic = compile_model(tiny_lm(), _calib(), CompileConfig(preset=Preset.W4A16, weight_only=weight_only,
                                                               analysis=AnalysisConfig(layers=LayerAnalysis.SENSITIVITY)))
    assert streamed.report.data["pipeline"] == "streaming" and "pipeline" not in classic.report.data
    ours = {t.name: t for t in streamed.model.graph.initializer}
    theirs = {t.name: t for t in classic.model.graph.initializer}
    for name in ("down_W_q", "down_W_scale", "down_W_zp", "lm_head_W_q", "E_q", "E_scale"):
        assert ours[name].raw_data == theirs[name].raw_data or np.array_equal(
            numpy_helper.to_array(ours[name]), numpy_helper.to_array(theirs[name])), name

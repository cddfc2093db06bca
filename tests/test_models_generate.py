"""Tests for models/generate.py: every generated model is valid ONNX, runs in ORT CPU on its calibration data
with finite outputs that vary across samples, is byte-for-byte deterministic, and the CLI writes its files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models import generate as g  # noqa: E402

N_CALIB = 6


def _session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, build in g.MODELS.items()}


@pytest.mark.parametrize("name", list(g.MODELS))
def test_model_valid_runs_and_varies(name, built, tmp_path):
    model = built[name]
    onnx.checker.check_model(model, full_check=True)
    g.write_calibration(name, tmp_path / "calib", N_CALIB)
    feeds = g.read_calibration(tmp_path / "calib")
    assert len(feeds) == N_CALIB
    sess = _session(model)
    assert sorted(i.name for i in sess.get_inputs()) == sorted(feeds[0])
    results = [sess.run(None, f) for f in feeds]
    for j, out in enumerate(sess.get_outputs()):
        vals = [r[j] for r in results]
        assert all(np.isfinite(v).all() for v in vals), out.name
        # compare a per-sample summary that does not depend on S (transformer samples differ in length)
        summary = np.stack([v.reshape(v.shape[0], -1, v.shape[-1]).mean(axis=1)[0] for v in vals])
        assert summary.std(axis=0).mean() > 1e-2 * (np.abs(summary).mean() + 1e-3), out.name


@pytest.mark.parametrize("name", list(g.MODELS))
def test_deterministic(name, built):
    assert g.MODELS[name]().SerializeToString() == built[name].SerializeToString()
    a, b = g.make_samples(name, 3), g.make_samples(name, 3)
    for fa, fb in zip(a, b):
        assert fa.keys() == fb.keys()
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
    ev = g.make_samples(name, 3, seed=g.EVAL_SEED)
    assert any(not np.array_equal(a[0][k], ev[0][k]) for k in a[0])  # held-out set differs


def test_io_signatures(built):
    def sig(model):
        return {v.name: (v.type.tensor_type.elem_type,
                         [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in model.graph.input}, {v.name: [d.dim_param or d.dim_value
                                                       for d in v.type.tensor_type.shape.dim]
                                              for v in model.graph.output}

    F, I64, I32, B = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL
    assert sig(built["tiny_cnn"]) == ({"input": (F, ["batch", 3, 32, 32])}, {"logits": ["batch", 10]})
    assert sig(built["tiny_transformer"]) == (
        {"input_ids": (I64, ["batch", "sequence"]), "attention_mask": (I64, ["batch", "sequence"])},
        {"last_hidden_state": ["batch", "sequence", 64], "sentence_embedding": ["batch", 64]})
    assert sig(built["if_subgraph_model"]) == ({"x": (F, ["batch", 16]), "use_a": (B, [])}, {"y": ["batch", 8]})
    assert sig(built["multi_dtype_inputs"]) == (
        {"tokens": (I32, ["batch", "sequence"]), "state": (F, ["batch", 16]), "temperature": (F, [])},
        {"logits": ["batch", 8], "new_state": ["batch", 16]})
    assert sig(built["loop_scan_model"]) == ({"seq": (F, ["batch", "time", 8])},
                                             {"y": ["batch", 4], "states": ["time", "batch", 16]})
    opsets = {n: m.opset_import[0].version for n, m in built.items()}
    assert opsets == {"tiny_cnn": 17, "tiny_transformer": 17, "constant_weights_cnn": 13, "opset11_cnn": 11,
                      "if_subgraph_model": 17, "multi_dtype_inputs": 17, "shape_computed_pad_cnn": 13,
                      "loop_scan_model": 17}


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def test_tiny_cnn_structure_and_live_channels(built):
    model = built["tiny_cnn"]
    c = _op_counts(model)
    assert c["Conv"] == 4 and c["BatchNormalization"] == 1 and c["Clip"] == 1 and c["Add"] == 1
    assert c["MaxPool"] == 1 and c["GlobalAveragePool"] == 1 and c["Flatten"] == 1 and c["Gemm"] == 1
    acts = ["relu1_out", "relu6_out", "res_relu1_out", "res_relu2_out"]
    sess = _session(_with_outputs(model, acts))
    x = np.concatenate([f["input"] for f in g.make_samples("tiny_cnn", 16, seed=g.EVAL_SEED)])
    outs = dict(zip(["logits", *acts], sess.run(None, {"input": x})))
    for name in acts:  # no dead channel: every channel fires somewhere
        assert (outs[name].max(axis=(0, 2, 3)) > 0).all(), name
    assert 0 < (outs["relu6_out"] >= 6.0).mean() < 0.1  # ReLU6 clips now and then, not everywhere
    for name in ("relu1_out", "res_relu1_out"):  # diverse channel ranges (per-channel quantization matters)
        per_channel = outs[name].max(axis=(0, 2, 3))
        assert per_channel.max() / per_channel.min() > 3, name
    assert len(np.unique(outs["logits"].argmax(axis=1))) >= 4


def test_tiny_transformer_structure_dynamic_shapes_and_padding(built):
    model = built["tiny_transformer"]
    c = _op_counts(model)
    assert c["LayerNormalization"] == 5 and c["Softmax"] == 2 and c["Erf"] == 2 and c["Gather"] == 1
    assert c["MatMul"] == 2 * (4 + 2 + 2)  # q,k,v,out + QK^T, PV + 2 FFN per layer
    sess = _session(model)
    rng = np.random.default_rng(0)
    for n, s in [(1, 8), (3, 24)]:
        ids = rng.integers(3, 100, size=(n, s)).astype(np.int64)
        hidden, pooled = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert hidden.shape == (n, s, 64) and pooled.shape == (n, 64)
    # padding invariance: extra padding (mask 0) changes neither real positions nor the pooled embedding
    feed = g.make_samples("tiny_transformer", 1)[0]
    s = feed["input_ids"].shape[1]
    padded = {k: np.pad(v, ((0, 0), (0, 7))) for k, v in feed.items()}
    h1, p1 = sess.run(None, feed)
    h2, p2 = sess.run(None, padded)
    np.testing.assert_allclose(p1, p2, atol=1e-4)
    real = feed["attention_mask"][0].astype(bool)
    np.testing.assert_allclose(h1[0, real], h2[0, :s][real], atol=1e-4)
    # calibration lengths and padding vary
    samples = g.make_samples("tiny_transformer", 32)
    lengths = {f["input_ids"].shape[1] for f in samples}
    assert min(lengths) >= 8 and max(lengths) <= 24 and len(lengths) > 4
    assert any(f["attention_mask"].min() == 0 for f in samples)


def test_constant_weights_cnn_structure(built):
    model = built["constant_weights_cnn"]
    assert len(model.graph.initializer) == 0
    c = _op_counts(model)
    assert c["Constant"] == 6 and c["Identity"] == 2 and c["Conv"] == 2 and c["MatMul"] == 1
    conv2 = [n for n in model.graph.node if n.op_type == "Conv"][1]
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer[conv2.input[1]].op_type == "Identity"
    assert producer[producer[conv2.input[1]].input[0]].op_type == "Identity"


def test_if_subgraph_model_branches(built):
    model = built["if_subgraph_model"]
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    for attr in if_node.attribute:
        sub = attr.g
        assert len(sub.initializer) >= 2 and any(n.op_type == "MatMul" for n in sub.node)
        assert "h" in {i for n in sub.node for i in n.input}  # outer-scope tensor
    sess = _session(model)
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    ya = sess.run(None, {"x": x, "use_a": np.array(True)})[0]
    yb = sess.run(None, {"x": x, "use_a": np.array(False)})[0]
    assert ya.shape == yb.shape == (2, 8) and not np.allclose(ya, yb)
    assert {bool(f["use_a"]) for f in g.make_samples("if_subgraph_model", 16)} == {True, False}


def test_shape_computed_pad(built):
    model = built["shape_computed_pad_cnn"]
    c = _op_counts(model)
    for op in ("Shape", "Gather", "Sub", "Concat", "Cast", "Pad"):
        assert c.get(op, 0) >= 1, op
    assert c["Pad"] == 2 and any(a.name == "group" and a.i == 16 for n in model.graph.node for a in n.attribute)
    assert len(model.graph.initializer) > 0 and not any(i.name.startswith("pad") and i.dims == [8]
                                                        for i in model.graph.initializer)


def test_multi_dtype_samples():
    f = g.make_samples("multi_dtype_inputs", 1)[0]
    assert f["tokens"].dtype == np.int32 and f["state"].dtype == np.float32
    assert f["temperature"].shape == () and f["temperature"].dtype == np.float32


def test_large_external_model(tmp_path):
    size = 8 * 1024 * 1024
    path = g.large_external_model(tmp_path, size, hidden=512)
    data = tmp_path / "large_external.onnx.data"
    assert path == tmp_path / "large_external.onnx" and data.exists()
    assert path.stat().st_size < 10_000  # weights are not inline
    skeleton = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in skeleton.graph.initializer)
    model = onnx.load(str(path), load_external_data=True)
    assert sum(len(t.raw_data) for t in model.graph.initializer) >= size
    onnx.checker.check_model(str(path), full_check=True)
    sess = _session(path)
    feeds = g.make_samples("large_external", 4, hidden=512)
    ys = np.concatenate([sess.run(None, f)[0] for f in feeds])
    assert ys.shape == (4, 512) and np.isfinite(ys).all() and ys.std(axis=0).mean() > 0.1
    # numpy reference from the loaded weights
    x = feeds[0]["x"]
    for t in model.graph.initializer:
        x = np.tanh(x @ onnx.numpy_helper.to_array(t))
    np.testing.assert_allclose(ys[:1], x, atol=1e-4)
    # deterministic: a second generation gives identical files
    path2 = g.large_external_model(tmp_path / "again", size, hidden=512)
    assert path2.read_bytes() == path.read_bytes()
    assert (tmp_path / "again" / "large_external.onnx.data").read_bytes() == data.read_bytes()


def _expected_files(out: Path, name: str) -> list[Path]:
    files = [out / f"{name}.onnx", out / f"{name}_eval.npz"]
    if name == "large_external":
        files.append(out / "large_external.onnx.data")
    return files


def test_cli_in_process_all_models(tmp_path):
    assert g.main([str(tmp_path), "--calib-samples", "3", "--eval-samples", "4",
                   "--large-bytes", str(2 * 1024 * 1024)]) == 0
    for name in g.ALL_NAMES:
        for f in _expected_files(tmp_path, name):
            assert f.is_file(), f
        calib = sorted((tmp_path / f"{name}_calib").glob("*.npz"))
        assert [p.name for p in calib] == ["sample_0000.npz", "sample_0001.npz", "sample_0002.npz"]
        ev = g.read_eval(tmp_path / f"{name}_eval.npz")
        assert len(ev) == 4
        sess = _session(tmp_path / f"{name}.onnx")
        for feed in ev[:2]:
            assert all(np.isfinite(o).all() for o in sess.run(None, feed))
    for name, build in g.MODELS.items():
        assert (tmp_path / f"{name}.onnx").read_bytes() == build().SerializeToString()


def test_cli_only_and_unknown(tmp_path):
    assert g.main([str(tmp_path), "--only", "opset11_cnn", "--only", "tiny_cnn", "--calib-samples", "2",
                   "--eval-samples", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["opset11_cnn.onnx", "opset11_cnn_calib", "opset11_cnn_eval.npz",
         "tiny_cnn.onnx", "tiny_cnn_calib", "tiny_cnn_eval.npz"])
    with pytest.raises(SystemExit):
        g.main([str(tmp_path), "--only", "no_such_model"])
    with pytest.raises(ValueError):
        g.make_samples("no_such_model", 1)


def test_cli_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "models" / "generate.py"), str(tmp_path / "out"),
                           "--only", "tiny_transformer", "--calib-samples", "4", "--eval-samples", "5"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # logging only (stderr), no print
    assert "generated 1 models" in proc.stderr
    out = tmp_path / "out"
    for f in _expected_files(out, "tiny_transformer"):
        assert f.is_file()
    assert len(list((out / "tiny_transformer_calib").glob("*.npz"))) == 4
    with np.load(out / "tiny_transformer_eval.npz") as z:
        assert z["input_ids"].shape == (5, 1, 24) and z["attention_mask"].shape == (5, 1, 24)
    assert (out / "tiny_transformer.onnx").read_bytes() == g.tiny_transformer().SerializeToString()

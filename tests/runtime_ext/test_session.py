"""make_session: model sources, options, error wrapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import ConfigError, ModelLoadError, QCompileError, UnsupportedModelError
from qcompile.runtime_ext import session as session_mod
from qcompile.runtime_ext.session import (
    GraphOptimization,
    available_providers,
    has_cuda,
    make_session,
    ort_error_line,
)

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


def _matmul_add() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm0"),
            helper.make_node("Add", ["h", "b"], ["y"], name="add0"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _check_runs(sess: ort.InferenceSession) -> None:
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ W + B, rtol=1e-5, atol=1e-5)


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(_matmul_add().SerializeToString())  # test fixture: raw bytes, not onnx.save
    return path


def test_from_model_proto() -> None:
    _check_runs(make_session(_matmul_add()))


def test_from_bytes() -> None:
    _check_runs(make_session(_matmul_add().SerializeToString()))


def test_from_str_and_path(model_path: Path) -> None:
    _check_runs(make_session(model_path))
    _check_runs(make_session(str(model_path)))


def test_threads_set_intra_and_single_inter() -> None:
    sess = make_session(_matmul_add(), threads=2)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert make_session(_matmul_add()).get_session_options().intra_op_num_threads == 0  # ORT default


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_threads(bad: object) -> None:
    with pytest.raises(ConfigError):
        make_session(_matmul_add(), threads=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("level", "ort_level"),
    [
        (GraphOptimization.DISABLED, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        (GraphOptimization.BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        (GraphOptimization.EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        (GraphOptimization.ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_optimization_level(level: GraphOptimization, ort_level: ort.GraphOptimizationLevel) -> None:
    assert level.to_ort() == ort_level
    sess = make_session(_matmul_add(), optimization=level)
    assert sess.get_session_options().graph_optimization_level == ort_level


def test_optimized_model_path(tmp_path: Path) -> None:
    off, on = tmp_path / "off.onnx", tmp_path / "on.onnx"
    make_session(_matmul_add(), optimization=GraphOptimization.DISABLED, optimized_model_path=off)
    make_session(_matmul_add(), optimization=GraphOptimization.ALL, optimized_model_path=on)
    ops_off = [n.op_type for n in onnx.ModelProto.FromString(off.read_bytes()).graph.node]
    ops_on = [n.op_type for n in onnx.ModelProto.FromString(on.read_bytes()).graph.node]
    assert ops_off == ["MatMul", "Add"]
    assert ops_on == ["Gemm"]  # MatMulAddFusion


def test_config_entries_reach_the_session() -> None:
    sess = make_session(_matmul_add(), config_entries={"session.qdqisint8allowed": "1"})
    assert sess.get_session_options().get_session_config_entry("session.qdqisint8allowed") == "1"


def _assert_one_line(err: QCompileError) -> str:
    msg = str(err)
    assert msg and "\n" not in msg
    assert "[ONNXRuntimeError]" not in msg
    return msg


def test_corrupt_bytes_is_model_load_error() -> None:
    with pytest.raises(ModelLoadError) as info:
        make_session(b"\x08\x07this is not an onnx model\xff\xfe")
    assert "protobuf" in _assert_one_line(info.value)


def test_missing_file_is_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        make_session(tmp_path / "nope.onnx")
    assert "nope.onnx" in _assert_one_line(info.value)


def test_invalid_graph_is_unsupported_model_error() -> None:
    model = _matmul_add()
    model.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(UnsupportedModelError) as info:
        make_session(model)
    assert isinstance(info.value, QCompileError)
    _assert_one_line(info.value)


def test_unknown_op_is_unsupported_model_error() -> None:
    model = _matmul_add()
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(UnsupportedModelError):
        make_session(model)


def test_model_over_2gb_gets_its_weights_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _matmul_add()
    feed = {i.name: np.ones([d if isinstance(d, int) else 2 for d in i.shape], dtype=np.float32)
            for i in make_session(model).get_inputs()}
    expected = make_session(model).run(None, feed)
    monkeypatch.setattr(session_mod, "LARGE_MODEL_BYTES", 16)
    monkeypatch.setattr(session_mod, "_IN_MEMORY_INITIALIZER_BYTES", 4)
    skeleton, large = session_mod._weightless_copy(model, 4)
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in skeleton.graph.initializer
                         if t.name in {w.name for w in large})
    session = make_session(model)
    for got, want in zip(session.run(None, feed), expected):
        np.testing.assert_array_equal(got, want)


def test_unavailable_provider_is_config_error() -> None:
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        make_session(_matmul_add(), providers=["NoSuchExecutionProvider"])
    with pytest.raises(ConfigError):
        make_session(_matmul_add(), providers="CPUExecutionProvider")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make_session(_matmul_add(), providers=())


def test_bad_model_type() -> None:
    with pytest.raises(TypeError):
        make_session(42)  # type: ignore[arg-type]


def test_providers_helpers() -> None:
    assert "CPUExecutionProvider" in available_providers()
    assert has_cuda() == ("CUDAExecutionProvider" in ort.get_available_providers())


def test_ort_error_line() -> None:
    exc = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed: bad\nmore detail\n")
    assert ort_error_line(exc) == "Load model failed: bad"
    assert ort_error_line(RuntimeError("")) == "RuntimeError"

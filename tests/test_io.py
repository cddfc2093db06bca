"""Tests for qcompile.io: loading (validation, hostile external data), sizes, atomic saving."""

from __future__ import annotations

import gc
import os
import resource

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile.io as qio
import qcompile.io.save as qio_save
import qcompile.io.staging as qio_staging
import qcompile.io.tensors as qio_tensors
from qcompile.errors import ModelLoadError, ModelSaveError
from qcompile.io import LoadedModel, load_model, model_size_bytes, save_model, write_text_atomic
from qcompile.io.sparse import densify_sparse_initializers

# ------------------------------------------------------------------------------------------------------------
# fixtures


def _add_model(w: np.ndarray | None = None, *, name: str = "W") -> onnx.ModelProto:
    """Y = X + W with W an initializer."""
    if w is None:
        w = np.arange(1024, dtype=np.float32)
    n = w.size
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", name], ["Y"], name="add")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])],
        [numpy_helper.from_array(w.reshape(-1), name)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _if_model(then_w: np.ndarray) -> onnx.ModelProto:
    """An If whose then-branch reads an initializer of its own subgraph."""
    n = then_w.size
    then_g = helper.make_graph(
        [helper.make_node("Add", ["X", "TW"], ["T"])], "then", [],
        [helper.make_tensor_value_info("T", TensorProto.FLOAT, [n])],
        [numpy_helper.from_array(then_w, "TW")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["E"])], "else", [],
        [helper.make_tensor_value_info("E", TensorProto.FLOAT, [n])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["C"], ["Y"], then_branch=then_g, else_branch=else_g, name="if")],
        "g",
        [helper.make_tensor_value_info("C", TensorProto.BOOL, []),
         helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _then_branch(m: onnx.ModelProto) -> onnx.GraphProto:
    return next(a.g for a in m.graph.node[0].attribute if a.name == "then_branch")


def _rich_model() -> onnx.ModelProto:
    """Subgraph initializers, sparse initializer, Constant attribute tensor, function, metadata, 4-bit tensor."""
    rng = np.random.default_rng(0)
    m = _if_model(rng.standard_normal(300).astype(np.float32))
    g = m.graph
    g.initializer.append(numpy_helper.from_array(rng.standard_normal((64, 33)).astype(np.float32), "big"))
    g.initializer.append(numpy_helper.from_array(np.arange(5, dtype=np.int64), "small"))
    g.initializer.append(helper.make_tensor("i4", TensorProto.INT4, [7], [1, -2, 3, -4, 5, 6, 7]))
    g.initializer.append(numpy_helper.from_array(rng.standard_normal(2000).astype(np.float16), "half"))
    g.initializer.append(helper.make_tensor("typed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    values = numpy_helper.from_array(np.ones(400, dtype=np.float32), "sp")
    indices = numpy_helper.from_array(np.arange(400, dtype=np.int64), "sp_idx")
    g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1000]))
    const = numpy_helper.from_array(rng.standard_normal(700).astype(np.float32), "c")
    g.node.append(helper.make_node("Constant", [], ["K"], value=const, name="const"))
    m.functions.append(helper.make_function(
        "local", "f", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(600, np.float32))),
         helper.make_node("Add", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 17)],
    ))
    helper.set_model_props(m, {"author": "test", "x" * 200: "y" * 300})
    m.doc_string = "d" * 1000
    return m


def _write_ext_model(folder, location: str, *, offset="0", length=None, data=None, model=None,
                     tensor_getter=None) -> str:
    """Write model.onnx into folder whose tensor W points at external data (fields set verbatim)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else _add_model()
    t = tensor_getter(model) if tensor_getter else model.graph.initializer[0]
    raw = t.raw_data
    if data is not None:
        (folder / "w.bin").write_bytes(data if isinstance(data, bytes) else raw)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", offset))
    entries.append(("length", str(len(raw)) if length is None else length))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _assert_load_error(source, *, match: str | None = None, **kw) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(source, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("cannot load model ")
    if match:
        assert match in msg, msg
    return msg


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ------------------------------------------------------------------------------------------------------------
# load: round trips


def test_round_trip_path_bytes_proto(tmp_path):
    m = _add_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    from_path = load_model(path)
    from_str = load_model(str(path))
    from_bytes = load_model(m.SerializeToString())
    from_proto = load_model(m)
    assert from_path.path == path and from_str.path == path
    assert from_bytes.path is None and from_proto.path is None
    expected = m.SerializeToString()
    for lm in (from_path, from_str, from_bytes, from_proto):
        assert isinstance(lm, LoadedModel)
        assert lm.model.SerializeToString() == expected
        assert lm.size_bytes == len(expected)
        assert lm.external_data_files == ()
    assert from_path.source_files == (path,)


def test_proto_source_is_copied():
    m = _add_model()
    before = m.SerializeToString()
    lm = load_model(m)
    lm.model.graph.node[0].op_type = "Mul"
    lm.model.graph.initializer[0].raw_data = b""
    assert m.SerializeToString() == before


# ------------------------------------------------------------------------------------------------------------
# load: corrupt inputs


def test_missing_file(tmp_path):
    _assert_load_error(tmp_path / "nope.onnx", match="no such file")


def test_directory(tmp_path):
    _assert_load_error(tmp_path, match="directory")


def test_empty_file_and_bytes(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    _assert_load_error(tmp_path / "e.onnx", match="empty")
    _assert_load_error(b"", match="empty")


def test_truncated(tmp_path):
    data = _add_model().SerializeToString()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    _assert_load_error(tmp_path / "t.onnx")
    _assert_load_error(data[: len(data) // 2])


def test_garbage_bytes(tmp_path):
    rng = np.random.default_rng(1)
    data = bytes([0xFF]) + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "g.onnx").write_bytes(data)
    _assert_load_error(tmp_path / "g.onnx")
    _assert_load_error(data)


def test_png(tmp_path):
    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15"
           b"\xc4\x89\x00\x00\x00\nIDATx\x9cc\x00\x01\x00\x00\x05\x00\x01\r\n-\xb4\x00\x00\x00\x00IEND\xaeB`\x82")
    (tmp_path / "x.onnx").write_bytes(png)
    assert "PNG" in _assert_load_error(tmp_path / "x.onnx")
    assert "PNG" in _assert_load_error(png)


@pytest.mark.parametrize("text", ["hello world, this is not a model\n", "ir_version: 8\ngraph {\n}\n", "{}"])
def test_text(tmp_path, text):
    (tmp_path / "x.onnx").write_text(text)
    _assert_load_error(tmp_path / "x.onnx", match="not an ONNX model")
    _assert_load_error(text.encode(), match="not an ONNX model")


def test_no_graph_and_no_nodes(tmp_path):
    no_graph = onnx.ModelProto(ir_version=8)
    no_graph.opset_import.add().version = 17
    _assert_load_error(no_graph, match="no graph")
    _assert_load_error(no_graph.SerializeToString(), match="no graph")
    no_nodes = _add_model()
    del no_nodes.graph.node[:]
    _assert_load_error(no_nodes, match="no nodes")
    (tmp_path / "n.onnx").write_bytes(no_nodes.SerializeToString())
    _assert_load_error(tmp_path / "n.onnx", match="no nodes")


def test_too_big(tmp_path):
    m = _add_model()
    data = m.SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data)
    limit = len(data) - 1
    _assert_load_error(tmp_path / "m.onnx", max_bytes=limit, match="limit")
    _assert_load_error(data, max_bytes=limit, match="limit")
    _assert_load_error(m, max_bytes=limit, match="limit")


def test_external_data_counts_toward_limit(tmp_path):
    path = _write_ext_model(tmp_path / "m", "w.bin", data=True)
    onnx_size = os.path.getsize(path)
    _assert_load_error(path, max_bytes=onnx_size + 100, match="external data")


def test_unsupported_source_type():
    with pytest.raises(TypeError):
        load_model(12)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# load: external data


def test_external_data_happy_path(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(5000).astype(np.float32)
    m = _add_model(w)
    m.graph.initializer.append(numpy_helper.from_array(np.arange(10, dtype=np.int64), "tiny"))
    expected = m.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.data",
                    size_threshold=1024)  # (moves m's data out too)
    assert (tmp_path / "w.data").exists()
    lm = load_model(path)
    t = lm.model.graph.initializer[0]
    assert t.data_location == TensorProto.DEFAULT and len(t.external_data) == 0
    np.testing.assert_array_equal(numpy_helper.to_array(t), w)
    np.testing.assert_array_equal(numpy_helper.to_array(lm.model.graph.initializer[1]), np.arange(10))
    assert lm.external_data_files == (tmp_path.resolve() / "w.data",)
    assert lm.source_files == (path, tmp_path.resolve() / "w.data")
    assert lm.size_bytes == len(expected)
    # the loaded proto is self-contained
    assert load_model(lm.model.SerializeToString()).model.SerializeToString() == expected


def test_external_data_in_subfolder_and_inside_symlink(tmp_path):
    m = _add_model()
    raw = m.graph.initializer[0].raw_data
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "real.bin").write_bytes(raw)
    os.symlink("sub/real.bin", tmp_path / "link.bin")
    path = _write_ext_model(tmp_path, "sub/real.bin")
    assert load_model(path).model.graph.initializer[0].raw_data == raw
    path = _write_ext_model(tmp_path, "./link.bin")
    assert load_model(path).model.graph.initializer[0].raw_data == raw


def test_external_data_in_subgraph(tmp_path):
    w = np.arange(300, dtype=np.float32)
    m = _if_model(w)
    get = lambda mm: _then_branch(mm).initializer[0]  # noqa: E731
    path = _write_ext_model(tmp_path / "ok", "w.bin", data=True, model=m, tensor_getter=get)
    lm = load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(get(lm.model)), w)
    _assert_load_error(_write_ext_model(tmp_path / "bad", "../ok/w.bin", model=_if_model(w), tensor_getter=get),
                       match="leaves the model's folder")


def test_external_data_in_sparse_initializer_is_checked(tmp_path):
    m = _add_model()
    values = numpy_helper.from_array(np.ones(4, dtype=np.float32), "sv")
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "si")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10]))
    path = _write_ext_model(tmp_path, "/etc/passwd", model=m,
                            tensor_getter=lambda mm: mm.graph.sparse_initializer[0].values)
    _assert_load_error(path, match="absolute")


def test_external_data_in_constant_attribute_is_checked(tmp_path):
    m = _add_model()
    m.graph.node.append(helper.make_node(
        "Constant", [], ["K"], value=numpy_helper.from_array(np.ones(4, np.float32), "k")))
    path = _write_ext_model(tmp_path, "../k.bin", model=m, tensor_getter=lambda mm: mm.graph.node[1].attribute[0].t)
    _assert_load_error(path, match="leaves the model's folder")


@pytest.mark.parametrize("location", ["/etc/passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\w.bin"])
def test_external_absolute_path(tmp_path, location):
    _assert_load_error(_write_ext_model(tmp_path, location), match="absolute")


@pytest.mark.parametrize("location", ["../w.bin", "sub/../../w.bin", "..\\w.bin", "a/./../../w.bin"])
def test_external_traversal(tmp_path, location):
    (tmp_path / "w.bin").write_bytes(_add_model().graph.initializer[0].raw_data)
    _assert_load_error(_write_ext_model(tmp_path / "m", location), match="leaves the model's folder")


def test_external_symlink_out_of_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(_add_model().graph.initializer[0].raw_data)
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(outside / "secret.bin", folder / "w.bin")
    _assert_load_error(_write_ext_model(folder, "w.bin"), match="outside the model's folder")
    os.symlink(outside, folder / "dirlink")  # a symlinked folder on the way
    _assert_load_error(_write_ext_model(folder, "dirlink/secret.bin"), match="outside the model's folder")


def test_external_hard_link(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(_add_model().graph.initializer[0].raw_data)
    (tmp_path / "m").mkdir()
    os.link(outside, tmp_path / "m" / "w.bin")
    _assert_load_error(_write_ext_model(tmp_path / "m", "w.bin"), match="hard links")


def test_external_not_regular_or_missing(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "d").mkdir()
    _assert_load_error(_write_ext_model(folder, "fifo"), match="not a regular file")
    _assert_load_error(_write_ext_model(folder, "d"), match="not a regular file")
    _assert_load_error(_write_ext_model(folder, "missing.bin"), match="not found")
    _assert_load_error(_write_ext_model(folder, "."), match="names no file")
    _assert_load_error(_write_ext_model(folder, ""), match="without a location")


def test_external_ort_memory_marker(tmp_path):
    _assert_load_error(_write_ext_model(tmp_path, "*/_ORT_MEM_ADDR_/*", offset="140737488355328"),
                       match="in-memory marker")


@pytest.mark.parametrize(
    "offset,length,match",
    [
        ("999999", None, "past the end"),
        ("8", None, "runs past the end"),
        ("0", "-4", "not a non-negative integer"),
        ("-4", None, "not a non-negative integer"),
        ("1.5", None, "not a non-negative integer"),
        ("0x10", None, "not a non-negative integer"),
        ("0", "abc", "not a non-negative integer"),
        ("0", "16", "shape needs 4096"),
    ],
)
def test_external_bad_offset_length(tmp_path, offset, length, match):
    _assert_load_error(_write_ext_model(tmp_path, "w.bin", offset=offset, length=length, data=True), match=match)


def test_external_length_missing_reads_to_end(tmp_path):
    m = _add_model()
    raw = m.graph.initializer[0].raw_data
    path = _write_ext_model(tmp_path, "w.bin", offset="16", data=b"\0" * 16 + raw)
    t = load_model(path).model.graph.initializer[0]
    # no 'length': _write_ext_model always writes one, so drop it and rewrite
    mm = onnx.load(path, load_external_data=False)
    del mm.graph.initializer[0].external_data[2]
    (tmp_path / "model.onnx").write_bytes(mm.SerializeToString())
    assert load_model(path).model.graph.initializer[0].raw_data == raw == t.raw_data


def test_external_duplicate_key(tmp_path):
    path = _write_ext_model(tmp_path, "w.bin", data=True)
    mm = onnx.load(path, load_external_data=False)
    e = mm.graph.initializer[0].external_data.add()
    e.key, e.value = "location", "/etc/passwd"
    (tmp_path / "model.onnx").write_bytes(mm.SerializeToString())
    _assert_load_error(path, match="duplicate")


def test_external_refs_without_folder(tmp_path):
    path = _write_ext_model(tmp_path, "w.bin", data=True)
    load_model(path)  # fine from its path
    data = (tmp_path / "model.onnx").read_bytes()
    _assert_load_error(data, match="external data")
    _assert_load_error(onnx.load_from_string(data), match="external data")


# ------------------------------------------------------------------------------------------------------------
# model_size_bytes


def test_model_size_bytes_small_models():
    for m in (_add_model(), _rich_model()):
        assert model_size_bytes(m) == len(m.SerializeToString())


def test_model_size_bytes_piecewise_path_is_exact(monkeypatch):
    """The > 2 GiB code path (measure shells + shapes) must agree with protobuf byte for byte."""
    monkeypatch.setattr(qio_tensors, "BYTESIZE_DIRECT_LIMIT", 0)
    for m in (_add_model(), _rich_model(), _add_model(np.zeros(300_000, np.float32))):
        assert model_size_bytes(m) == len(m.SerializeToString())


# ------------------------------------------------------------------------------------------------------------
# save


def test_save_small_model(tmp_path):
    m = _add_model()
    out = tmp_path / "out.onnx"
    files = save_model(m, out)
    assert files == [out]
    assert _listing(tmp_path) == ["out.onnx"]
    assert out.read_bytes() == m.SerializeToString()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    save_model(_add_model(np.ones(1024, np.float32)), str(out))  # overwrite
    np.testing.assert_array_equal(numpy_helper.to_array(load_model(out).model.graph.initializer[0]), 1.0)


def test_save_refuses_protected(tmp_path):
    inp = tmp_path / "in.onnx"
    m = _add_model()
    inp.write_bytes(m.SerializeToString())
    before = (inp.read_bytes(), inp.stat().st_mtime_ns)
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(_add_model(np.ones(1024, np.float32)), inp, protected=[inp])
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(m, str(tmp_path / "." / "in.onnx"), protected=[str(inp)])
    os.symlink(inp, tmp_path / "alias.onnx")
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(m, tmp_path / "alias.onnx", protected=[inp])
    os.link(inp, tmp_path / "hard.onnx")
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(m, tmp_path / "hard.onnx", protected=[inp])
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        write_text_atomic(inp, "{}", protected=[inp])
    assert (inp.read_bytes(), inp.stat().st_mtime_ns) == before
    assert _listing(tmp_path) == ["alias.onnx", "hard.onnx", "in.onnx"]


def test_save_refuses_protected_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(qio_save, "EXTERNAL_DATA_THRESHOLD", 100)
    data = tmp_path / "out.onnx.data"
    data.write_bytes(b"precious")
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(_add_model(), tmp_path / "out.onnx", protected=[data])
    assert data.read_bytes() == b"precious"
    assert _listing(tmp_path) == ["out.onnx.data"]


def test_save_needs_existing_folder(tmp_path):
    with pytest.raises(ModelSaveError, match="does not exist"):
        save_model(_add_model(), tmp_path / "missing" / "out.onnx")
    with pytest.raises(ModelSaveError, match="directory"):
        save_model(_add_model(), tmp_path)
    with pytest.raises(ModelSaveError, match="does not exist"):
        write_text_atomic(tmp_path / "missing" / "r.json", "{}")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_save_failure_leaves_no_trace(tmp_path, monkeypatch, exc):
    out = tmp_path / "out.onnx"

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(qio_staging.os, "fsync", boom)
    expected = ModelSaveError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        save_model(_add_model(), out)
    assert _listing(tmp_path) == []
    # an existing destination stays as it was
    out.write_bytes(b"old model")
    with pytest.raises(expected):
        save_model(_add_model(), out)
    with pytest.raises(expected):
        write_text_atomic(out, "new")
    assert out.read_bytes() == b"old model"
    assert _listing(tmp_path) == ["out.onnx"]


def test_save_failure_mid_external_write(tmp_path, monkeypatch):
    """Interrupted while the data file is half written: no temp files, no output."""
    monkeypatch.setattr(qio_save, "EXTERNAL_DATA_THRESHOLD", 100)
    m = _add_model()
    m.graph.initializer.append(numpy_helper.from_array(np.ones(4096, np.float32), "W2"))
    calls = {"n": 0}
    real_hook = qio_save._copy_tensor_meta

    def interrupting(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_hook(src, dst)

    monkeypatch.setattr(qio_save, "_copy_tensor_meta", interrupting)
    with pytest.raises(KeyboardInterrupt):
        save_model(m, tmp_path / "out.onnx")
    assert calls["n"] == 2
    assert _listing(tmp_path) == []


def test_save_large_model_path(tmp_path, monkeypatch):
    monkeypatch.setattr(qio_save, "EXTERNAL_DATA_THRESHOLD", 100)
    rng = np.random.default_rng(3)
    w = rng.standard_normal(70_000).astype(np.float32)  # over the alignment size
    m = _add_model(w)
    m.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "tiny"))
    m.graph.initializer.append(numpy_helper.from_array(np.arange(600, dtype=np.int32), "mid"))
    m.graph.node.append(helper.make_node("Identity", ["tiny"], ["T"]))
    m.graph.output.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, [4]))
    before = m.SerializeToString()
    out = tmp_path / "model.qdq.onnx"
    files = save_model(m, out)
    data = tmp_path / "model.qdq.onnx.data"
    assert files == [out, data]
    assert _listing(tmp_path) == ["model.qdq.onnx", "model.qdq.onnx.data"]
    assert m.SerializeToString() == before  # caller's proto untouched
    raw = onnx.load(out, load_external_data=False)
    locs = {t.name: {e.key: e.value for e in t.external_data} for t in raw.graph.initializer}
    assert locs["W"]["location"] == locs["mid"]["location"] == "model.qdq.onnx.data"
    assert int(locs["W"]["offset"]) % 4096 == 0
    assert locs["tiny"] == {}  # under 1 KiB: inline
    # reloads equal, through our loader, onnx's loader and onnxruntime
    assert load_model(out).model.SerializeToString() == before
    assert onnx.load(out).SerializeToString() != b""
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ones(w.size, np.float32)
    y, t = sess.run(None, {"X": x})
    np.testing.assert_array_equal(y, x + w)
    np.testing.assert_array_equal(t, np.arange(4, dtype=np.float32))


def test_save_large_rich_model_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(qio_save, "EXTERNAL_DATA_THRESHOLD", 100)
    m = _rich_model()
    files = save_model(m, tmp_path / "r.onnx")
    assert len(files) == 2
    raw = onnx.load(files[0], load_external_data=False)
    then_init = _then_branch(raw).initializer[0]
    assert then_init.data_location == TensorProto.EXTERNAL  # subgraph initializers move too
    expected = onnx.ModelProto()
    expected.CopyFrom(m)
    densify_sparse_initializers(expected, "rich", 1 << 30)   # loading densifies sparse initializers
    assert load_model(files[0]).model.SerializeToString() == expected.SerializeToString()


def test_save_from_external_input_uses_fresh_data_name(tmp_path, monkeypatch):
    """Saving a model loaded from external data never reuses the input's location."""
    w = np.arange(5000, dtype=np.float32)
    src = tmp_path / "in"
    src.mkdir()
    onnx.save_model(_add_model(w), src / "in.onnx", save_as_external_data=True, location="in.data")
    lm = load_model(src / "in.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert save_model(lm.model, out_dir / "small.onnx", protected=lm.source_files) == [out_dir / "small.onnx"]
    monkeypatch.setattr(qio_save, "EXTERNAL_DATA_THRESHOLD", 100)
    files = save_model(lm.model, out_dir / "big.onnx", protected=lm.source_files)
    assert files == [out_dir / "big.onnx", out_dir / "big.onnx.data"]
    raw = onnx.load(files[0], load_external_data=False)
    assert {e.key: e.value for e in raw.graph.initializer[0].external_data}["location"] == "big.onnx.data"
    assert _listing(out_dir) == ["big.onnx", "big.onnx.data", "small.onnx"]
    with pytest.raises(ModelSaveError, match="refusing"):
        save_model(lm.model, src / "in.onnx", protected=lm.source_files)
    with pytest.raises(ModelSaveError, match="refusing"):  # in.data would be clobbered by <stem>.onnx.data
        save_model(lm.model, src / "in.data", protected=lm.source_files)


def test_save_drops_stale_external_references(tmp_path):
    m = _add_model()
    t = m.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL  # data in memory, stale pointer to a file that does not exist
    e = t.external_data.add()
    e.key, e.value = "location", "old.data"
    out = tmp_path / "out.onnx"
    assert save_model(m, out) == [out]
    saved = onnx.load(out, load_external_data=False)
    assert saved.graph.initializer[0].data_location == TensorProto.DEFAULT
    assert len(saved.graph.initializer[0].external_data) == 0
    assert len(t.external_data) == 1  # caller's proto untouched
    np.testing.assert_array_equal(numpy_helper.to_array(load_model(out).model.graph.initializer[0]),
                                  np.arange(1024, dtype=np.float32))
    t.ClearField("raw_data")  # now the data is really missing
    with pytest.raises(ModelSaveError, match="not loaded"):
        save_model(m, tmp_path / "out2.onnx")
    assert _listing(tmp_path) == ["out.onnx"]


def test_write_text_atomic(tmp_path):
    p = tmp_path / "r.json"
    write_text_atomic(p, '{"a": "é"}')
    assert p.read_text(encoding="utf-8") == '{"a": "é"}'
    write_text_atomic(str(p), "{}")
    assert p.read_text() == "{}"
    assert _listing(tmp_path) == ["r.json"]


# ------------------------------------------------------------------------------------------------------------
# a real > 2 GiB model


@pytest.mark.slow
def test_model_over_2gib(tmp_path):
    nbytes = 2**31 + 2**26  # 2.06 GiB of float32: beyond protobuf's serialization limit
    n = nbytes // 4
    folder = tmp_path / "in"
    folder.mkdir()
    with open(folder / "w.bin", "wb") as f:  # sparse file: zeros with a marker at both ends, no RAM used
        f.truncate(nbytes)
        f.write(np.float32(1.5).tobytes())
        f.seek(nbytes - 4)
        f.write(np.float32(-2.0).tobytes())
    path = _write_ext_model(folder, "w.bin", length=str(nbytes), model=_add_model(np.zeros(1, np.float32)))
    mm = onnx.load(path, load_external_data=False)  # fix the shape to the big tensor's
    mm.graph.initializer[0].dims[:] = [n]
    for vi in (mm.graph.input[0], mm.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = n
    (folder / "model.onnx").write_bytes(mm.SerializeToString())

    lm = load_model(path)
    assert lm.size_bytes > 2**31
    assert model_size_bytes(lm.model) == lm.size_bytes
    copied = load_model(lm.model)  # a > 2 GiB ModelProto source: deep copy, no serialization
    assert copied.size_bytes == lm.size_bytes and copied.model is not lm.model
    del copied
    gc.collect()
    out = tmp_path / "out.onnx"
    files = save_model(lm.model, out, protected=lm.source_files)
    assert files == [out, tmp_path / "out.onnx.data"]
    del lm
    gc.collect()

    lm2 = load_model(out)
    assert lm2.size_bytes > 2**31
    assert list(lm2.model.graph.initializer[0].dims) == [n]
    del lm2
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak < 3.5 * nbytes, f"peak RSS {peak / 2**30:.2f} GiB"

    saved = onnx.load(out, load_external_data=False)
    info = {e.key: e.value for e in saved.graph.initializer[0].external_data}
    assert info["location"] == "out.onnx.data" and int(info["length"]) == nbytes
    with open(tmp_path / "out.onnx.data", "rb") as f:
        f.seek(int(info["offset"]))
        assert np.frombuffer(f.read(4), np.float32)[0] == 1.5
        f.seek(int(info["offset"]) + nbytes - 4)
        assert np.frombuffer(f.read(4), np.float32)[0] == -2.0


# ------------------------------------------------------------------------------------------------ staged commits


def _stage(folder, names):
    staging = qio.StagedFiles()
    for name in names:
        with staging.open(folder / name) as f:
            f.write(name.encode())
    return staging


def test_staged_files_commit_places_all(tmp_path):
    _stage(tmp_path, ["a.onnx", "a.report.json"]).commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.report.json"]
    assert (tmp_path / "a.onnx").read_bytes() == b"a.onnx"


def test_staged_files_sigterm_with_its_default_action_is_held_until_the_files_are_in_place(tmp_path):
    import signal
    import subprocess
    import sys
    # a library caller that left SIGTERM at SIG_DFL: the process dies, but only after every rename
    script = f"""
import os, signal, pathlib, qcompile.io.staging as qio
folder = pathlib.Path({str(tmp_path)!r})
staging = qio.StagedFiles()
for name in ("a.onnx", "a.report.json"):
    with staging.open(folder / name) as f:
        f.write(b"x")
real = os.replace
def replace(src, dst):
    os.kill(os.getpid(), signal.SIGTERM)
    real(src, dst)
qio.os.replace = replace
staging.commit()
print("not reached")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and "not reached" not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.report.json"]


def test_staged_files_failed_rename_removes_what_was_placed(tmp_path, monkeypatch):
    staging = _stage(tmp_path, ["a.onnx", "a.report.json"])
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C hit between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(qio_staging.os, "replace", replace_then_fail)
    with pytest.raises(KeyboardInterrupt):
        staging.commit()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("other_thread", [False, True])
def test_staged_files_sigint_during_commit_is_held_then_rolls_back(tmp_path, monkeypatch, other_thread):
    import signal
    import threading
    # another live thread (as ORT's pool threads are in the CLI) may be the one the kernel hands the signal to
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    if other_thread:
        worker.start()
    staging = _stage(tmp_path, ["a.onnx", "a.report.json"])
    real_replace, calls = os.replace, []

    def replace_with_sigint(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # held back until every rename is done
        real_replace(src, dst)
        calls.append(dst)

    monkeypatch.setattr(qio_staging.os, "replace", replace_with_sigint)
    with pytest.raises(KeyboardInterrupt):
        staging.commit()
    release.set()
    if other_thread:
        worker.join()
    assert len(calls) == 2                  # the signal did not cut the renames short...
    assert list(tmp_path.iterdir()) == []   # ...and once delivered, it undid them


def test_staged_files_discard_drops_one_file(tmp_path):
    staging = _stage(tmp_path, ["a.onnx", "a.onnx.data"])
    staging.discard(tmp_path / "a.onnx.data")
    staging.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]

"""Tests for qcompile.data: calibration sources (folders of .npz/.npy/images, iterables) and their validation."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from PIL import Image

from qcompile.config import ImageLayout, ImageOptions
from qcompile.data import CalibrationSource, InputSpec, open_calibration_source
from qcompile.errors import CalibrationDataError

X = InputSpec("x", np.float32, ("batch", 3))
IDS = InputSpec("ids", np.int64, ("batch", 4))
TWO = [X, IDS]


def _item(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3)).astype(np.float32),
            "ids": rng.integers(0, 100, (n, 4)).astype(np.int64)}


def _write_npz(folder: Path, items: list[dict[str, np.ndarray]]) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, item in enumerate(items):
        path = folder / f"s{i:03d}.npz"
        np.savez(path, **item)
        paths.append(path)
    return paths


def _raises(calib, inputs=TWO, phrase: str = "", **kwargs) -> str:
    """Open and fully iterate; assert a one-line CalibrationDataError containing ``phrase``."""
    with pytest.raises(CalibrationDataError) as info:
        list(open_calibration_source(calib, inputs, **kwargs))
    message = str(info.value)
    assert "\n" not in message
    assert phrase in message, message
    return message


# ---- InputSpec ----------------------------------------------------------------------------------------

def test_input_spec_from_value_info():
    vi = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 128, None])
    spec = InputSpec.from_value_info(vi)
    assert spec == InputSpec("ids", np.dtype(np.int64), ("batch", 128, None))
    assert isinstance(spec.dtype, np.dtype)
    half = InputSpec.from_value_info(helper.make_tensor_value_info("h", TensorProto.FLOAT16, [1, 2]))
    assert half.dtype == np.float16 and half.shape == (1, 2)
    flag = InputSpec.from_value_info(helper.make_tensor_value_info("b", TensorProto.BOOL, []))
    assert flag.dtype == np.bool_ and flag.shape == ()


def test_input_spec_from_parsed_model():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, 224, 224] image, int32[N] k) => (float[N, 3, 224, 224] y) { y = Relu(image) }""")
    specs = [InputSpec.from_value_info(vi) for vi in model.graph.input]
    assert specs[0] == InputSpec("image", np.float32, ("N", 3, 224, 224))
    assert specs[1] == InputSpec("k", np.int32, ("N",))


# ---- folders ------------------------------------------------------------------------------------------

def test_npz_folder_round_trip(tmp_path):
    items = [_item(2, seed) for seed in range(3)]
    _write_npz(tmp_path / "data", items)
    source = open_calibration_source(tmp_path / "data", TWO)
    assert isinstance(source, CalibrationSource)
    got = list(source)
    assert len(got) == 3
    for feed, item in zip(got, items):
        assert set(feed) == {"x", "ids"}
        for name in item:
            assert feed[name].dtype == item[name].dtype
            np.testing.assert_array_equal(feed[name], item[name])
    assert source.num_samples == 6
    assert source.description.startswith("folder ") and "(3 .npz files)" in source.description


def test_npz_folder_string_path_and_sorting(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for name, value in [("b.npz", 2.0), ("a.npz", 1.0), ("c.npz", 3.0)]:
        np.savez(folder / name, x=np.full((1, 3), value, np.float32), ids=np.zeros((1, 4), np.int64))
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub").mkdir()
    np.savez(folder / "sub" / "0.npz", y=np.zeros(1))  # subfolders are ignored
    got = [feed["x"][0, 0] for feed in open_calibration_source(str(folder), TWO)]
    assert got == [1.0, 2.0, 3.0]


def test_npy_folder_single_input(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3) + i for i in range(2)]
    for i, arr in enumerate(arrays):
        np.save(folder / f"{i}.npy", arr)
    source = open_calibration_source(folder, [X])
    got = list(source)
    assert [list(f) for f in got] == [["x"], ["x"]]
    for feed, arr in zip(got, arrays):
        np.testing.assert_array_equal(feed["x"], arr)
    assert source.num_samples == 4
    assert "2 .npy files" in source.description


def test_npy_folder_multi_input_is_error(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "0.npy", np.zeros((1, 3), np.float32))
    _raises(folder, TWO, "single-input")


def _png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


def test_image_folder_nchw_normalisation(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pngs = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(2)]
    _png(folder / "a.png", pngs[0])
    _png(folder / "b.png", pngs[1])
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(folder / "c.jpeg")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    spec = InputSpec("image", np.float32, ("N", 3, 4, 5))
    source = open_calibration_source(folder, [spec], image=ImageOptions(mean=mean, std=std))
    got = list(source)
    assert source.num_samples == 3 and "3 image files" in source.description
    assert [f["image"].shape for f in got] == [(1, 3, 4, 5)] * 3
    assert all(f["image"].dtype == np.float32 for f in got)
    for feed, pixels in zip(got, pngs):
        expected = ((pixels / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None]
        np.testing.assert_allclose(feed["image"], expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got[2]["image"]).all()  # the JPEG was resized from 8x10 to the model's 4x5


def test_image_folder_nhwc_resize_and_grayscale(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    pixels = np.full((6, 6, 3), 51, np.uint8)  # 51/255 = 0.2 everywhere, survives any resize
    _png(folder / "a.png", pixels)
    spec = InputSpec("image", np.float32, ("N", "H", "W", 3))
    opts = ImageOptions(size=(2, 3), layout=ImageLayout.NHWC)
    (feed,) = open_calibration_source(folder, [spec], image=opts)
    assert feed["image"].shape == (1, 2, 3, 3)
    np.testing.assert_allclose(feed["image"], 0.2, atol=1e-6)

    gray = InputSpec("image", np.float32, (1, 1, 6, 6))
    (feed,) = open_calibration_source(folder, [gray])
    assert feed["image"].shape == (1, 1, 6, 6)
    np.testing.assert_allclose(feed["image"], 0.2, atol=1e-6)


def test_image_folder_needs_size_and_single_float_input(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    _png(folder / "a.png", np.zeros((4, 4, 3), np.uint8))
    _raises(folder, [InputSpec("image", np.float32, ("N", 3, "H", "W"))], "--image-size")
    _raises(folder, TWO, "one float input of rank 4")
    _raises(folder, [InputSpec("image", np.float32, ("N", 4, 4, 4))], "channels")


def test_corrupt_image_is_error(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png at all")
    _raises(folder, [InputSpec("image", np.float32, (1, 3, 4, 4))], "a.png")


# ---- iterables ----------------------------------------------------------------------------------------

def test_list_of_dicts_and_reiteration():
    items = [_item(2, 0), _item(3, 1)]
    source = open_calibration_source(items, TWO)
    first, second = list(source), list(source)
    assert len(first) == len(second) == 2
    for a, b, item in zip(first, second, items):
        for name in item:
            np.testing.assert_array_equal(a[name], item[name])
            np.testing.assert_array_equal(a[name], b[name])
    assert source.num_samples == 5
    assert "list of 2 items" == source.description
    assert not first[0]["x"].flags.writeable  # feeds are read-only views: the user's arrays stay intact


def test_folder_reiteration_identical(tmp_path):
    _write_npz(tmp_path / "d", [_item(1, s) for s in range(3)])
    source = open_calibration_source(tmp_path / "d", TWO, num_samples=2)
    a, b = list(source), list(source)
    assert len(a) == len(b) == 2
    for fa, fb in zip(a, b):
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name])


def test_bare_array_items():
    arr = np.ones((2, 3), np.float32)
    (feed,) = open_calibration_source([arr], [X])
    np.testing.assert_array_equal(feed["x"], arr)
    (feed,) = open_calibration_source(arr, [X])  # a single array is one item
    assert feed["x"].shape == (2, 3)
    _raises([arr], TWO, "single-input")
    _raises([[1.0, 2.0, 3.0]], [X], "expected a mapping")


def test_generator_is_lazy_and_one_shot():
    pulled = []

    def gen():
        for i in range(3):
            pulled.append(i)
            yield _item(1, i)

    source = open_calibration_source(gen(), TWO)
    assert source.num_samples is None
    assert "one-shot" in source.description
    it = iter(source)
    next(it)
    assert pulled == [0]  # nothing is read ahead
    assert len(list(it)) == 2
    with pytest.raises(CalibrationDataError) as info:
        iter(source)
    assert "one-shot" in str(info.value) and "\n" not in str(info.value)


def test_cap_stops_infinite_generator():
    def forever():
        i = 0
        while True:
            i += 1
            yield _item(4, i)

    got = list(open_calibration_source(forever(), TWO, num_samples=10))
    assert [f["x"].shape[0] for f in got] == [4, 4, 2]
    assert [f["ids"].shape[0] for f in got] == [4, 4, 2]


# ---- num_samples --------------------------------------------------------------------------------------

def test_num_samples_cap_across_files_and_inside_batch(tmp_path):
    items = [_item(8, 0), _item(8, 1), _item(8, 2)]
    _write_npz(tmp_path / "d", items)
    source = open_calibration_source(tmp_path / "d", TWO, num_samples=11)
    got = list(source)
    assert [f["x"].shape[0] for f in got] == [8, 3]
    np.testing.assert_array_equal(got[1]["x"], items[1]["x"][:3])
    np.testing.assert_array_equal(got[1]["ids"], items[1]["ids"][:3])
    assert source.num_samples == 11
    assert open_calibration_source(tmp_path / "d", TWO, num_samples=100).num_samples == 24
    assert [f["x"].shape[0] for f in open_calibration_source(tmp_path / "d", TWO, num_samples=5)] == [5]


def test_fixed_batch_item_is_not_cut():
    spec = InputSpec("x", np.float32, (2, 3))
    got = list(open_calibration_source([np.zeros((2, 3), np.float32)] * 3, [spec], num_samples=3))
    assert [f["x"].shape for f in got] == [(2, 3), (2, 3)]


def test_num_samples_must_be_positive():
    _raises([_item(1)], TWO, "num_samples", num_samples=0)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.integers(1, 6), min_size=1, max_size=6), cap=st.integers(1, 40))
def test_cap_yields_min_of_cap_and_total(batches, cap):
    items = [{"x": np.full((b, 3), i, np.float32), "ids": np.zeros((b, 4), np.int64)} for i, b in enumerate(batches)]
    source = open_calibration_source(items, TWO, num_samples=cap)
    rows = [f["x"].shape[0] for f in source]
    assert sum(rows) == min(cap, sum(batches))
    assert source.num_samples == min(cap, sum(batches))
    assert all(r > 0 for r in rows)
    # the rows are a prefix of the data, in order
    flat = np.concatenate([f["x"][:, 0] for f in source])
    expected = np.concatenate([it["x"][:, 0] for it in items])[:len(flat)]
    np.testing.assert_array_equal(flat, expected)


# ---- lazy loading -------------------------------------------------------------------------------------

def test_files_are_loaded_one_at_a_time(tmp_path, monkeypatch):
    _write_npz(tmp_path / "d", [_item(1, s) for s in range(5)])
    calls = []
    real_load = np.load

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        assert kwargs.get("allow_pickle") is False
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    source = open_calibration_source(tmp_path / "d", TWO)
    assert calls == []  # opening loads nothing
    it = iter(source)
    next(it)
    assert len(calls) == 1
    next(it)
    assert len(calls) == 2
    assert source.num_samples == 5  # counted from headers, without np.load
    assert len(calls) == 2


# ---- casts --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("have, want", [
    (np.float64, np.float32), (np.float16, np.float32), (np.int32, np.int64), (np.int64, np.int32),
    (np.int64, np.float32), (np.uint8, np.float32), (np.uint8, np.int64), (np.float32, np.float16),
])
def test_safe_casts(have, want):
    spec = InputSpec("x", want, ("batch", 3))
    values = np.array([[1, 2, 3], [4, 5, 6]], dtype=have)
    (feed,) = open_calibration_source([{"x": values}], [spec])
    assert feed["x"].dtype == np.dtype(want)
    np.testing.assert_array_equal(feed["x"], values.astype(want))


def test_exact_dtype_is_not_copied():
    values = np.ones((1, 3), np.float32)
    (feed,) = open_calibration_source([{"x": values}], [X])
    assert np.shares_memory(feed["x"], values)


def test_bool_input():
    spec = InputSpec("m", np.bool_, ("batch",))
    (feed,) = open_calibration_source([{"m": np.array([True, False])}], [spec])
    assert feed["m"].dtype == np.bool_
    _raises([{"m": np.array([1, 0], np.int64)}], [spec], "expected dtype bool")
    _raises([{"x": np.ones((1, 3), np.bool_)}], [X], "expected dtype float32")


# ---- validation errors --------------------------------------------------------------------------------

def test_folder_errors(tmp_path):
    _raises(tmp_path / "nope", TWO, "does not exist")
    (tmp_path / "file.npz").write_bytes(b"")
    _raises(tmp_path / "file.npz", TWO, "not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _raises(tmp_path / "empty", TWO, "is empty")
    mixed = tmp_path / "mixed"
    _write_npz(mixed, [_item(1)])
    np.save(mixed / "z.npy", np.zeros((1, 3), np.float32))
    _raises(mixed, TWO, "mixes file kinds")


def test_corrupt_npz(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "bad.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
    msg = _raises(folder, TWO, "bad.npz")
    assert "corrupt" in msg


def test_truncated_npy(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((4, 3), np.float32))
    raw = (folder / "a.npy").read_bytes()
    (folder / "a.npy").write_bytes(raw[:-10])
    _raises(folder, [X], "a.npy")


def test_object_array_npz_fails_without_pickle(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    obj = np.empty((1, 3), dtype=object)
    obj[:] = [[1.0, "a", None]]
    np.savez(folder / "obj.npz", x=obj, ids=np.zeros((1, 4), np.int64))
    msg = _raises(folder, TWO, "obj.npz")
    assert "pickle" in msg and "'x'" in msg


def test_missing_and_extra_inputs(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    np.savez(folder / "m.npz", x=np.zeros((1, 3), np.float32))
    msg = _raises(folder, TWO, "missing input(s) ['ids']")
    assert "m.npz" in msg and "has ['x']" in msg
    msg = _raises([{**_item(1), "extra": np.zeros(1)}], TWO, "unexpected name(s) ['extra']")
    assert msg.startswith("item 0")


@pytest.mark.parametrize("feed, phrase", [
    ({"x": np.ones((1, 3), np.float32), "ids": np.ones((1, 4), np.float32)}, "float data cannot feed an integer"),
    ({"x": np.ones((1, 3), np.float32), "ids": np.full((1, 4), 2**40, np.int64)}, None),  # fits int64: ok
    ({"x": np.ones((1, 3, 1), np.float32), "ids": np.ones((1, 4), np.int64)}, "rank 3 != model rank 2"),
    ({"x": np.ones((1, 2), np.float32), "ids": np.ones((1, 4), np.int64)}, "dim 1 is 2, model fixes it to 3"),
    ({"x": np.ones((0, 3), np.float32), "ids": np.ones((0, 4), np.int64)}, "empty batch"),
    ({"x": np.ones((2, 3), np.float32), "ids": np.ones((3, 4), np.int64)}, "share batch dim 'batch'"),
    ({"x": np.array([[np.nan, 1, np.inf]], np.float32), "ids": np.ones((1, 4), np.int64)}, "2 non-finite"),
    ({"x": np.array([[1e300, 1, 1]]), "ids": np.ones((1, 4), np.int64)}, "overflow float32"),
])
def test_item_validation(feed, phrase):
    if phrase is None:
        assert len(list(open_calibration_source([feed], TWO))) == 1
        return
    msg = _raises([feed], TWO, phrase)
    assert msg.startswith("item 0: ")
    assert "'x'" in msg or "'ids'" in msg


def test_int64_to_int32_must_fit():
    spec = InputSpec("k", np.int32, ("batch",))
    msg = _raises([{"k": np.array([1, 2**33], np.int64)}], [spec], "do not fit int32")
    assert "'k'" in msg


def test_symbolic_dim_zero_and_nan_in_file(tmp_path):
    spec = InputSpec("x", np.float32, ("batch", "seq"))
    _raises([{"x": np.ones((1, 0), np.float32)}], [spec], "dim 1 is 0, must be > 0")
    folder = tmp_path / "d"
    folder.mkdir()
    bad = np.ones((2, 3), np.float32)
    bad[1, 1] = np.nan
    np.savez(folder / "nan.npz", x=bad, ids=np.ones((2, 4), np.int64))
    msg = _raises(folder, TWO, "1 non-finite")
    assert "nan.npz" in msg and "'x'" in msg


def test_batch_mismatch_only_for_shared_dim_name():
    a = InputSpec("a", np.float32, ("n", 2))
    b = InputSpec("b", np.float32, ("m", 2))
    feeds = list(open_calibration_source([{"a": np.ones((2, 2), np.float32), "b": np.ones((3, 2), np.float32)}],
                                         [a, b], num_samples=1))
    assert feeds[0]["a"].shape == (2, 2)  # indivisible item: disagreeing axis 0 is one sample, never cut


def test_empty_data():
    _raises([], TWO, "calibration data is empty")
    _raises(iter([]), TWO, "calibration data is empty")
    _raises(42, TWO, "folder path or an iterable")


def test_npz_header_count_matches_iteration(tmp_path):
    items = [_item(b, i) for i, b in enumerate([3, 1, 5])]
    _write_npz(tmp_path / "d", items)
    for cap in (None, 1, 4, 9, 50):
        source = open_calibration_source(tmp_path / "d", TWO, num_samples=cap)
        assert source.num_samples == sum(f["x"].shape[0] for f in source)


def test_zip_with_npy_payload_named_npz(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((1, 3), np.float32))
    (folder / "a.npy").rename(folder / "a.npz")
    _raises(folder, TWO, "not a .npz archive")
    assert not zipfile.is_zipfile(folder / "a.npz")

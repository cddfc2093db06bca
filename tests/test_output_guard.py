"""The output guard (qcompile/io/output_guard.py) and the API's save(overwrite=...): no run writes a file it reads,
by any name, and an existing output is replaced only when asked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile import CompileConfig, compile_model
from qcompile.errors import ModelSaveError
from qcompile.io.output_guard import OutputGuard


def _files(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        paths.append(path)
    return paths


def test_every_alias_of_a_read_file_is_refused(tmp_path):
    (model,) = _files(tmp_path, "m.onnx")
    guard = OutputGuard(overwrite=True).reading("input model", [model])
    (tmp_path / "sym.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    (tmp_path / "sub").mkdir()
    for alias in (model, tmp_path / "sym.onnx", tmp_path / "hard.onnx", tmp_path / "sub" / ".." / "m.onnx"):
        with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
            guard.check([(alias, "output model")])
    assert model.read_bytes() == b"m.onnx"


def test_existing_outputs_need_overwrite_and_outputs_differ(tmp_path):
    (existing,) = _files(tmp_path, "q.onnx")
    with pytest.raises(ModelSaveError, match="exists; pass --overwrite"):
        OutputGuard().check([(existing, "output model")])
    OutputGuard(overwrite=True).check([(existing, "output model")])
    OutputGuard().check([(tmp_path / "new.onnx", "output model")])
    with pytest.raises(ModelSaveError, match="must be different files"):
        OutputGuard().check([(tmp_path / "a.onnx", "output model"), (tmp_path / "x" / ".." / "a.onnx", "report")])


@settings(max_examples=40, deadline=None)
@given(reads=st.sets(st.sampled_from(["a.npz", "b.npz", "r.toml", "m.onnx", "d/e.npz"]), min_size=1),
       target=st.sampled_from(["a.npz", "b.npz", "r.toml", "m.onnx", "d/e.npz", "out.onnx", "d/out.json"]))
def test_guard_refuses_exactly_the_files_read(tmp_path_factory, reads, target):
    root = tmp_path_factory.mktemp("guard")
    paths = _files(root, *sorted(reads))
    guard = OutputGuard(overwrite=True).reading("input", paths)
    (root / "d").mkdir(exist_ok=True)
    if target in reads:
        with pytest.raises(ModelSaveError):
            guard.check([(root / target, "output")])
    else:
        guard.check([(root / target, "output")])


def test_save_refuses_calibration_files_and_needs_overwrite(tiny_cnn_case, tmp_path):
    model_path, calib_dir = tiny_cnn_case
    result = compile_model(model_path, calib_dir, CompileConfig(fidelity_samples=1))
    calib_file = sorted(calib_dir.iterdir())[0]
    before = calib_file.read_bytes()
    with pytest.raises(ModelSaveError, match="calibration file"):
        result.save(tmp_path / "q.onnx", calib_file, overwrite=True)
    assert calib_file.read_bytes() == before and not (tmp_path / "q.onnx").exists()
    result.save(tmp_path / "q.onnx")
    with pytest.raises(ModelSaveError, match="exists"):
        result.save(tmp_path / "q.onnx")
    result.save(tmp_path / "q.onnx", overwrite=True)
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")))


def test_compile_model_checks_outputs_once_the_external_data_is_known(tmp_path):
    from models import generate
    model = generate.tiny_cnn()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, sample in enumerate(generate.make_samples("tiny_cnn", 2)):
        np.savez(calib / f"s{i}.npz", **sample)
    with pytest.raises(ModelSaveError, match="external data file"):
        compile_model(path, calib, CompileConfig(fidelity_samples=0), outputs=[(tmp_path / "w.bin", "output model")],
                      guard=OutputGuard(overwrite=True))

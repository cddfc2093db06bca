"""Tests for qcompile.cli: the happy path and its options through click's CliRunner, user errors (exit 2, one
`error:` line, nothing written), and one run of the installed `qcompile` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qcompile.cli import main


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def _report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- happy path


def test_default_outputs_beside_the_model(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--no-progress")
    assert result.exit_code == 0, result.output
    out = model.with_name("tiny_cnn.qdq.onnx")
    report = model.with_name("tiny_cnn.qdq.report.json")
    assert out.is_file() and report.is_file()
    onnx.checker.check_model(onnx.load(str(out)))
    data = _report(report)
    # four Convs, and the Gemm classifier unless its measured precision is float
    assert data["summary"]["quantized_nodes"] == 4 + (data["classifier"]["decision"] != "float")
    assert data["input"]["path"] == str(model.resolve())
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {out}") and lines[1] == f"report {report}"
    assert f"{data['summary']['quantized_nodes']} nodes quantised" in lines[0]
    assert result.stderr == ""


def test_output_option(tiny_cnn_case, tmp_path):
    model, calib = tiny_cnn_case
    out = tmp_path / "sub" / "custom.onnx"
    out.parent.mkdir()
    result = _invoke(model, "--calib", calib, "-o", out, "--no-progress", "-q")
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "sub" / "custom.report.json").is_file()
    assert not model.with_name("tiny_cnn.qdq.onnx").exists()
    assert result.stdout == ""  # -q


def test_report_option(tiny_cnn_case, tmp_path):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "-o", tmp_path / "m.onnx", "--report", tmp_path / "rep.json",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "rep.json").is_file()


def test_config_recipe(tiny_cnn_case, tmp_path):
    model, calib = tiny_cnn_case
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('op_types = ["Conv", "Gemm"]\nquantize_classifier = true\nfidelity_samples = 2\n'
                      '[calibration]\nnum_samples = 5\n', encoding="utf-8")
    result = _invoke(model, "--calib", calib, "--config", recipe, "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    assert data["config"]["op_types"] == ["Conv", "Gemm"]
    assert data["config"]["quantize_classifier"] is True
    assert data["summary"]["quantized_nodes"] == 5  # 4 Conv + the classifier Gemm
    assert data["input"]["calibration"]["samples"] == 5
    assert data["fidelity"]["items"] == 2


def test_flags_override_the_recipe(tiny_cnn_case, tmp_path):
    model, calib = tiny_cnn_case
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('op_types = ["Conv", "Gemm"]\nquantize_classifier = true\n', encoding="utf-8")
    result = _invoke(model, "--calib", calib, "--config", recipe, "--op-types", "Gemm", "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    assert data["config"]["op_types"] == ["Gemm"]
    assert data["summary"]["quantized_nodes"] == 1


def test_op_types(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--op-types", "Conv", "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    assert data["config"]["op_types"] == ["Conv"]
    gemm = next(n for n in data["nodes"] if n["op_type"] == "Gemm")
    assert gemm["status"] == "skipped" and "op_types" in gemm["reason"]
    assert {n["op_type"] for n in data["nodes"] if n["status"] == "quantized"} == {"Conv"}


def test_exclude(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--exclude", "Conv_0", "--exclude", "Conv_3", "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["Conv_0"]["status"] == nodes["Conv_3"]["status"] == "skipped"
    assert "exclude" in nodes["Conv_0"]["reason"]
    assert data["summary"]["quantized_nodes"] == 2
    assert data["config"]["exclude"] == ["Conv_0", "Conv_3"]


def test_exclude_comma_separated(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--exclude", "Conv_1,Conv_2", "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    assert data["summary"]["quantized_nodes"] == 2 + (data["classifier"]["decision"] != "float")


def test_version_and_help():
    result = _invoke("--version")
    assert result.exit_code == 0 and "qcompile" in result.stdout
    result = _invoke("compile", "--help")
    assert result.exit_code == 0 and "--calib" in result.stdout


# ---------------------------------------------------------------------------------------------- errors


def _assert_user_error(result, folder: Path, before: set[Path], fragment: str | None = None) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    assert _files(folder) == before, sorted(map(str, _files(folder) - before))
    return lines[0]


def test_missing_model(tmp_path, tiny_cnn_case):
    _, calib = tiny_cnn_case
    before = _files(tmp_path)
    result = _invoke(tmp_path / "nope.onnx", "--calib", calib, "--no-progress")
    _assert_user_error(result, tmp_path, before, "nope.onnx")


def test_corrupt_model(tmp_path, tiny_cnn_case):
    _, calib = tiny_cnn_case
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    before = _files(tmp_path)
    result = _invoke(bad, "--calib", calib, "--no-progress")
    _assert_user_error(result, tmp_path, before, "bad.onnx")


def test_empty_calib_folder(tmp_path, tiny_cnn_case):
    model, _ = tiny_cnn_case
    empty = tmp_path / "empty"
    empty.mkdir()
    before = _files(tmp_path)
    result = _invoke(model, "--calib", empty, "--no-progress")
    _assert_user_error(result, tmp_path, before, "empty")


def test_missing_calib_folder(tmp_path, tiny_cnn_case):
    model, _ = tiny_cnn_case
    before = _files(tmp_path)
    result = _invoke(model, "--calib", tmp_path / "no_such_dir", "--no-progress")
    _assert_user_error(result, tmp_path, before)


def test_calib_with_wrong_input_name(tmp_path, tiny_cnn_case):
    model, _ = tiny_cnn_case
    calib = tmp_path / "wrong"
    calib.mkdir()
    np.savez(calib / "s0.npz", images=np.zeros((1, 3, 32, 32), np.float32))
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--no-progress")
    line = _assert_user_error(result, tmp_path, before)
    assert "input" in line


def test_nan_in_calib(tmp_path, tiny_cnn_case):
    model, _ = tiny_cnn_case
    calib = tmp_path / "nan"
    calib.mkdir()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.savez(calib / "s0.npz", input=x)
    x[0, 1, 2, 3] = np.nan
    np.savez(calib / "s1.npz", input=x)
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--no-progress")
    line = _assert_user_error(result, tmp_path, before)
    assert "NaN" in line or "nan" in line.lower()


def test_output_equal_to_input(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    original = model.read_bytes()
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "-o", model, "--no-progress")
    _assert_user_error(result, tmp_path, before, "overwrite")
    assert model.read_bytes() == original


def test_output_equal_to_input_through_another_spelling(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    before = _files(tmp_path)
    other = model.parent / "." / model.name
    result = _invoke(model, "--calib", calib, "-o", other, "--no-progress")
    _assert_user_error(result, tmp_path, before)


def test_unknown_toml_key(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[activation]\nsymetric = true\n", encoding="utf-8")
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--config", recipe, "--no-progress")
    _assert_user_error(result, tmp_path, before, "symetric")


def test_exclude_matching_nothing(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--exclude", "conv_typo", "--no-progress")
    _assert_user_error(result, tmp_path, before, "conv_typo")


def test_unknown_op_type_flag(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--op-types", "Softmax", "--no-progress")
    _assert_user_error(result, tmp_path, before, "Softmax")


def test_error_is_one_clean_line_without_no_progress(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--exclude", "conv_typo")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, repr(result.stderr)


def test_scalar_image_size_in_recipe_is_user_error(tmp_path, tiny_cnn_case):
    model, calib = tiny_cnn_case
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[calibration.image]\nsize = 224\n", encoding="utf-8")
    before = _files(tmp_path)
    result = _invoke(model, "--calib", calib, "--config", recipe, "--no-progress")
    _assert_user_error(result, tmp_path, before, "size")


# ---------------------------------------------------------------------------------------------- console script


def test_console_script(tiny_cnn_case):
    model, calib = tiny_cnn_case
    script = Path(sys.executable).parent / "qcompile"
    if not script.exists():
        pytest.skip(f"console script {script} is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(script), str(model), "--calib", str(calib), "--no-progress",
                           "--fidelity-samples", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = model.with_name("tiny_cnn.qdq.onnx")
    assert out.is_file() and model.with_name("tiny_cnn.qdq.report.json").is_file()
    onnx.checker.check_model(onnx.load(str(out)))
    assert proc.stdout.startswith(f"wrote {out}")


def test_classifier_flags_contradicting_each_other_are_refused(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--quantize-classifier", "--keep-classifier-float", "--no-progress")
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not model.with_name("tiny_cnn.qdq.onnx").exists()


def test_keep_classifier_float_skips_the_measurement(tiny_cnn_case):
    model, calib = tiny_cnn_case
    result = _invoke(model, "--calib", calib, "--keep-classifier-float", "--no-progress")
    assert result.exit_code == 0, result.output
    data = _report(model.with_name("tiny_cnn.qdq.report.json"))
    assert data["classifier"] is None
    gemm = next(n for n in data["nodes"] if n["op_type"] == "Gemm")
    assert gemm["status"] == "skipped" and "final classifier" in gemm["reason"]

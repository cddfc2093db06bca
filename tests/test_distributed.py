"""Tests for qcompile/distributed.py and the shard plan in qcompile/data.py.

Without Ray: shard plans reproduce the source row for row (hypothesis), states survive the .npz wire format,
shards collected apart and merged equal one single-process pass (the protocol run in-process), config/CLI
validation, and `--workers ray` failing with one line (exit 2) before any work when Ray is missing.
With Ray (a local cluster of 2 CPUs, skipped when Ray is not installed): the same ranges as the single-process
run, a worker killed mid-run retried without changing the result, worker errors re-raised as they are, and a
driver whose peak memory does not grow with the number of shards.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.generate import make_samples, tiny_cnn
from qcompile.api import compile_model, model_input_specs
from qcompile.calibrators.collector import collect_statistics, compute_ranges, empty_calibrators
from qcompile.cli import main
from qcompile.config import (CalibrationConfig, CalibrationMethod, CompileConfig, RoundingConfig, WeightRounding,
                             WorkersConfig, config_from_mapping)
from qcompile.data import InputSpec, open_calibration_shard, open_calibration_source, plan_shards
from qcompile.calibrators.distributed import (RAY_MISSING, RayCluster, collect_distributed, collect_shard, connect,
                                  merge_states, pack_states, unpack_states)
from qcompile.errors import CalibrationDataError, CalibrationError, ConfigError
from qcompile.pass_infra import StatKind, StatRequest

N_FILES = 16
RAY_SKIP = "Ray is not installed (pip install 'qcompile[distributed]'): distributed calibration tests skipped"


# ---- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_cnn()


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for i, feed in enumerate(make_samples("tiny_cnn", N_FILES)):
        np.savez(folder / f"sample_{i:04d}.npz", **feed)
    return folder


@pytest.fixture(scope="module")
def requests_all(model) -> list[StatRequest]:
    """Every float activation of tiny_cnn under every range method, per-channel statistics and Hessians."""
    graph = gs.import_onnx(model)
    names = [t.name for t in graph.tensors().values() if isinstance(t, gs.Variable)]
    ranges = [StatRequest(n, method=m, percentile=99.9) for n in names for m in CalibrationMethod]
    channels = [StatRequest(n, kind=kind, axis=1) for n in ("relu1_out", "res_add_out", "logits")
                for kind in (StatKind.CHANNEL_ABSMAX, StatKind.CHANNEL_MEAN)]
    hessians = [StatRequest(n, kind=StatKind.HESSIAN) for n in ("flatten_out", "res_add_out")]
    return ranges + channels + hessians


@pytest.fixture(scope="module")
def reference(model, calib_dir, requests_all):
    """The single-process result the distributed runs must reproduce."""
    source = open_calibration_source(calib_dir, model_input_specs(model))
    return collect_statistics(gs.import_onnx(model), requests_all, source)


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason=RAY_SKIP)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _close(a, b) -> None:
    """Equal up to float64 rounding of sums taken in another order."""
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(float(np.abs(b).max()), 1.0))


def _assert_same(got, reference) -> None:
    """Bit-exact for min/max, histograms and |max| (exact merges); float64 rounding for means and Hessians."""
    assert set(got) == set(reference)
    for request, expected in reference.items():
        if request.kind is StatKind.HESSIAN:
            _close(got[request].hessian, expected.hessian)
            _close(got[request].abs_mean, expected.abs_mean)
            assert got[request].rows == expected.rows
        elif request.kind is StatKind.CHANNEL_MEAN:
            _close(got[request].max, expected.max)
        else:
            assert np.array_equal(got[request].min, expected.min), request
            assert np.array_equal(got[request].max, expected.max), request


def _source(model, folder, **kwargs):
    return open_calibration_source(folder, model_input_specs(model), **kwargs)


# ---- shard plans (no Ray) -------------------------------------------------------------------------------

ROWS_SPEC = InputSpec("x", np.float32, ("batch", 2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.integers(1, 5), min_size=1, max_size=9), count=st.integers(1, 12),
       cap=st.none() | st.integers(1, 40))
def test_shards_reproduce_the_source_row_for_row(tmp_path_factory, rows, count, cap):
    folder = tmp_path_factory.mktemp("rows")
    start = 0
    for i, n in enumerate(rows):  # rows numbered 0, 1, 2 ... across files, so order and cuts show
        np.savez(folder / f"f{i:02d}.npz", x=np.arange(start, start + n, dtype=np.float32)[:, None].repeat(2, 1))
        start += n
    source = open_calibration_source(folder, [ROWS_SPEC], num_samples=cap)
    shards = plan_shards(source, count)

    expected = np.concatenate([feed["x"] for feed in source])
    got = np.concatenate([feed["x"] for shard in shards for feed in open_calibration_shard(shard)])
    np.testing.assert_array_equal(got, expected)
    assert 1 <= len(shards) <= count
    assert all(shard.files and shard.num_samples >= 1 for shard in shards)
    assert sum(shard.num_samples for shard in shards) == len(expected) == source.num_samples


def test_equal_files_split_evenly(model, calib_dir):
    shards = plan_shards(_source(model, calib_dir), 4)
    assert [s.num_samples for s in shards] == [4, 4, 4, 4]
    assert [f for s in shards for f in s.files] == sorted(p.name for p in calib_dir.glob("*.npz"))


def test_only_folders_can_be_sharded(model):
    source = open_calibration_source(make_samples("tiny_cnn", 2), model_input_specs(model))
    with pytest.raises(CalibrationDataError, match="calibration folder that every worker can read"):
        plan_shards(source, 2)


def test_a_shard_whose_files_are_gone_says_where(model, calib_dir, tmp_path):
    (shard,) = plan_shards(_source(model, calib_dir, num_samples=2), 1)
    moved = shard.__class__(str(tmp_path), shard.files, shard.num_samples, shard.inputs, shard.image)
    with pytest.raises(CalibrationDataError, match="every worker must see the calibration folder"):
        open_calibration_shard(moved)


# ---- the wire format and the merge protocol (no Ray) ----------------------------------------------------

def test_states_survive_the_wire_format(model, calib_dir, requests_all):
    """Every calibrator kind, filled and empty: packed, unpacked, rebuilt -> the same state and statistic."""
    filled = collect_shard(gs.export_onnx(gs.import_onnx(model)).SerializeToString(), requests_all,
                           plan_shards(_source(model, calib_dir, num_samples=3), 1)[0], threads=1,
                           memory_budget_bytes=1 << 30)
    states = unpack_states(filled, len(requests_all))
    for request, state in zip(requests_all, states):
        fresh = empty_calibrators([request])[request]
        rebuilt = type(fresh).from_state(state)
        again = unpack_states(pack_states([rebuilt.get_state()]), 1)[0]
        assert again.keys() == state.keys()
        for key in state:
            assert np.array_equal(np.asarray(again[key]), np.asarray(state[key])), (request, key)
        empty = unpack_states(pack_states([fresh.get_state()]), 1)[0]
        rebuilt.merge(type(fresh).from_state(empty))  # the empty state is the merge identity
        assert rebuilt.get_state().keys() == state.keys()
        for key, value in rebuilt.get_state().items():
            assert np.array_equal(np.asarray(value), np.asarray(state[key])), (request, key)


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_shards_merged_in_process_equal_one_pass(model, calib_dir, requests_all, reference, shards):
    """The protocol without Ray: each shard collected by the task body, merged in reverse order."""
    graph = gs.import_onnx(model)
    payload = gs.export_onnx(graph).SerializeToString()
    merged = empty_calibrators(requests_all)
    for shard in reversed(plan_shards(_source(model, calib_dir), shards)):
        packed = collect_shard(payload, requests_all, shard, threads=1, memory_budget_bytes=1 << 30)
        merge_states(merged, requests_all, unpack_states(packed, len(requests_all)))
    _assert_same(compute_ranges(graph, merged), reference)


# ---- configuration and the command line (no Ray) --------------------------------------------------------

def test_workers_config_validation_and_toml():
    assert config_from_mapping({"calibration": {"workers": "ray://head:10001"}}).calibration.workers == \
        WorkersConfig(address="ray://head:10001")
    table = {"calibration": {"workers": {"address": "ray", "shards": 8, "threads": 2, "max_retries": 1}}}
    assert config_from_mapping(table).calibration.workers == WorkersConfig("ray", 8, 2, 1)
    assert CompileConfig().calibration.workers is None
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_mapping({"calibration": {"workers": {"adress": "ray"}}})
    for bad in ({"address": "spark://x:1"}, {"address": "ray://host"}, {"shards": 0}, {"threads": 0},
                {"max_retries": -1}):
        with pytest.raises(ConfigError):
            WorkersConfig(**bad)


def test_cli_workers_without_ray_fails_in_one_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    missing_model = tmp_path / "nowhere.onnx"  # the Ray check must come first: no load, no calibration
    result = CliRunner().invoke(main, [str(missing_model), "--calib", str(tmp_path), "--workers", "ray"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {RAY_MISSING}"


def test_cli_rejects_a_malformed_workers_address(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--calib", str(tmp_path), "--workers", "ray:/x"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "ray://HOST:PORT" in result.output


# ---- on a local Ray cluster -----------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [2, 5])
def test_ray_ranges_equal_the_single_process_run(ray_runtime, model, calib_dir, requests_all, reference, shards):
    with connect(WorkersConfig(shards=shards)) as cluster:
        assert cluster.parallelism == 2
        got = collect_distributed(gs.import_onnx(model), requests_all, _source(model, calib_dir), cluster)
    assert ray_runtime.is_initialized()  # a runtime this process had already started is left running
    _assert_same(got, reference)


def test_ray_killed_worker_is_retried_and_the_result_is_unchanged(ray_runtime, model, calib_dir, requests_all,
                                                                   reference, tmp_path):
    markers = tmp_path / "crashed"
    markers.mkdir()

    def crash_on_first_attempt(model_bytes, requests, shard, **kwargs):
        marker = markers / shard.files[0]
        if not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-run, as on an OOM kill or a lost node
        return collect_shard(model_bytes, requests, shard, **kwargs)

    cluster = RayCluster(WorkersConfig(shards=4, max_retries=2), parallelism=2)
    got = collect_distributed(gs.import_onnx(model), requests_all, _source(model, calib_dir), cluster,
                              shard_task=crash_on_first_attempt)
    assert len(list(markers.iterdir())) == 4  # every shard's first attempt really died
    _assert_same(got, reference)


def test_ray_worker_deaths_past_max_retries_are_a_calibration_error(ray_runtime, model, calib_dir, requests_all):
    def always_crash(model_bytes, requests, shard, **kwargs):
        os._exit(1)

    cluster = RayCluster(WorkersConfig(shards=2, max_retries=0), parallelism=2)
    with pytest.raises(CalibrationError, match="failed after 0 retries"):
        collect_distributed(gs.import_onnx(model), requests_all[:2], _source(model, calib_dir), cluster,
                            shard_task=always_crash)


def test_ray_worker_data_errors_surface_as_themselves(ray_runtime, model, calib_dir, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for path in sorted(calib_dir.glob("*.npz"))[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "sample_0003.npz").write_bytes(b"not a zip")
    cluster = RayCluster(WorkersConfig(shards=2), parallelism=2)
    with pytest.raises(CalibrationDataError, match="sample_0003.npz.*corrupt"):
        collect_distributed(gs.import_onnx(model), [StatRequest("relu1_out")], _source(model, folder), cluster)


def test_ray_cluster_smaller_than_a_task_is_refused(ray_runtime):
    with pytest.raises(CalibrationError, match="has 2 CPU"):
        with connect(WorkersConfig(threads=3)):
            pass


def test_ray_merge_order_does_not_depend_on_timing(ray_runtime, model, calib_dir):
    """Hessian sums merged in arrival order would differ in the last bits when another shard finishes first."""
    requests = [StatRequest("flatten_out", kind=StatKind.HESSIAN),
                StatRequest("relu1_out", kind=StatKind.CHANNEL_MEAN, axis=1)]
    shards = plan_shards(_source(model, calib_dir), 4)

    def slowing(slow_file: str):
        def task(model_bytes, requests, shard, **kwargs):
            if shard.files[0] == slow_file:
                time.sleep(1.5)  # this shard finishes last
            return collect_shard(model_bytes, requests, shard, **kwargs)
        return task

    cluster = RayCluster(WorkersConfig(shards=4), parallelism=2)
    runs = [collect_distributed(gs.import_onnx(model), requests, _source(model, calib_dir), cluster,
                                shard_task=slowing(shards[k].files[0])) for k in (0, 3)]
    assert np.array_equal(runs[0][requests[0]].hessian, runs[1][requests[0]].hessian)
    assert np.array_equal(runs[0][requests[1]].max, runs[1][requests[1]].max)


def test_ray_row_sample_ranges_are_exact(ray_runtime, model, calib_dir):
    """SmoothQuant's row sample: per-channel min/max and the row count merge exactly (the sampled rows
    themselves depend on the sharding, see the module docstring)."""
    requests = [StatRequest("flatten_out", kind=StatKind.ROW_SAMPLE, axis=-1, sample_rows=5)]
    single = collect_statistics(gs.import_onnx(model), requests, _source(model, calib_dir))[requests[0]]
    cluster = RayCluster(WorkersConfig(shards=3), parallelism=2)
    got = collect_distributed(gs.import_onnx(model), requests, _source(model, calib_dir), cluster)[requests[0]]
    assert np.array_equal(got.min, single.min) and np.array_equal(got.max, single.max)
    assert got.rows_seen == single.rows_seen == N_FILES
    assert got.rows.shape == single.rows.shape == (5, 32)


def test_ray_driver_memory_does_not_grow_with_shards(ray_runtime, model, calib_dir, requests_all):
    """Peak traced Python memory of the driver for 16 shards vs 2. Each shard ships ~1 MB of histogram
    states here; the driver keeps at most a window of 2 results per parallel task (4 here), while one that
    held every shard's result would peak ~12 MB higher at 16 shards."""
    graph = gs.import_onnx(model)
    histograms = [r for r in requests_all if r.method is not CalibrationMethod.MINMAX and r.kind is StatKind.RANGE]
    shipped = len(pack_states([empty_calibrators([r])[r].get_state() for r in histograms]))
    peaks = {}
    for shards in (2, 16, 2, 16):  # interleaved: the first run also warms the workers
        cluster = RayCluster(WorkersConfig(shards=shards), parallelism=2)
        tracemalloc.start()
        try:
            collect_distributed(graph, histograms, _source(model, calib_dir), cluster)
            peaks[shards] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert shipped > 500_000  # the check is meaningful: 14 extra results would add > 7 MB
    assert peaks[16] < peaks[2] + 4 * shipped, peaks


def test_ray_compile_model_and_cli_give_the_same_model(ray_runtime, tiny_cnn_case, tmp_path):
    """Bit for bit with nearest rounding. The learned-rounding search is greedy: float32 activations computed
    by ORT sessions with other thread counts differ in their last bits, and that can move a code (measured on
    an AVX2 host: a few codes of one Conv); its statistics' sampling is shard-independent (tests/calibrators)."""
    model_path, calib = tiny_cnn_case
    nearest = RoundingConfig(method=WeightRounding.NEAREST)
    plain = compile_model(model_path, calib, CompileConfig(fidelity_samples=0, rounding=nearest))
    sharded = compile_model(model_path, calib, CompileConfig(
        fidelity_samples=0, rounding=nearest, calibration=CalibrationConfig(workers=WorkersConfig(shards=3))))
    assert sharded.report.data["tensor_ranges"] == plain.report.data["tensor_ranges"]
    assert sharded.model.SerializeToString() == plain.model.SerializeToString()

    out = tmp_path / "cli.qdq.onnx"
    result = CliRunner().invoke(main, [str(model_path), "--calib", str(calib), "-o", str(out), "--workers", "ray",
                                       "--fidelity-samples", "0", "--no-progress", "--weight-rounding", "nearest"])
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).SerializeToString() == plain.model.SerializeToString()

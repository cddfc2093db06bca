"""Calibration sharded over Ray tasks: each task fills fresh calibrators on its shard of the calibration folder
and ships their states back; the driver merges them.

Every calibrator's ``merge`` is associative with the empty calibrator as identity, so for shards S_1..S_k of
the data

    merge(c(S_1), ..., c(S_k)) = c(S_1 ∪ ... ∪ S_k):

min/max, per-channel |max| and the histograms behind percentile/entropy/MSE merge exactly, so the ranges equal a
single-process run bit for bit; float64 sums (per-channel means, GPTQ's Hessians XᵀX) agree to rounding. The
row sample (SmoothQuant's α search) keeps exact per-channel min/max, but its sampling keys come from a
generator seeded per calibrator, which each shard restarts: its sampled rows differ from a single-process run.

The protocol knows nothing of calibrator kinds, only the ``get_state``/``from_state``/``merge`` contract:

    driver  graph -> ONNX bytes, put once in Ray's object store; the folder -> shards (file names + sample cap)
    task    open its shard itself, ``collect_calibrators`` on it, return every request's ``get_state()`` packed
            into one .npz byte string (numpy arrays and scalars, no pickle)
    driver  in shard order, as results arrive (at most 2 per parallel slot running or waiting): unpack,
            rebuild each state as the type of a fresh calibrator for that request (``from_state``), ``merge``
            into the running one, drop it

so the driver holds at most a window of packed results plus the running calibrators, whatever the number of
shards, and the merge order (hence float rounding) depends only on the shard plan, not on timing. A task
is pure (same shard -> same states): when its worker process dies, Ray re-runs it (``max_retries``) and the
result does not change. Errors a task raises on purpose (``QCompileError``) are not retried; the driver
re-raises them as they are.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.calibrators.base import Calibrator, State
from qcompile.calibrators.collector import collect_calibrators, compute_ranges, empty_calibrators
from qcompile.config import LOCAL_RAY, WorkersConfig
from qcompile.data import CalibrationShard, CalibrationSource, open_calibration_shard, plan_shards
from qcompile.errors import CalibrationError, ConfigError, QCompileError
from qcompile.io import PROTOBUF_MAX_BYTES, load_model, model_size_bytes
from qcompile.pass_infra import StatRequest
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)

RAY_MISSING = ("distributed calibration (--workers, calibration.workers) needs Ray, which is not installed; "
               "install it with: pip install 'qcompile[distributed]'")
_IN_FLIGHT_PER_SLOT = 2  # one running, one queued: a slot never waits on the driver


def require_ray():
    """The ``ray`` module, or ConfigError with the install hint."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class RayCluster:
    """A connected Ray runtime as calibration uses it: ``parallelism`` tasks of ``workers.threads`` CPUs at once."""

    workers: WorkersConfig
    parallelism: int


@contextlib.contextmanager
def connect(workers: WorkersConfig | None) -> Iterator[RayCluster | None]:
    """Join (or start) the cluster ``workers`` names for the duration of the block; None when not configured.

    A runtime that is already initialised in this process is used as it is and left running; one started
    here is shut down on exit.
    """
    if workers is None:
        yield None
        return
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        address = None if workers.address == LOCAL_RAY else workers.address
        try:
            with warnings.catch_warnings():  # a failed connect warns, then raises: one line says it all
                warnings.simplefilter("ignore", UserWarning)
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, grpc errors ...
            raise CalibrationError(f"cannot start or reach the Ray cluster {workers.address!r}: "
                                   f"{_first_line(exc)}") from exc
    else:
        logger.info("calibrating on the Ray runtime this process already joined")
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < workers.threads:
            raise CalibrationError(f"the Ray cluster has {cpus} CPU(s); a calibration task needs "
                                   f"workers.threads = {workers.threads}")
        yield RayCluster(workers, cpus // workers.threads)
    finally:
        if started:
            ray.shutdown()


# ---- the wire format of calibrator states ---------------------------------------------------------------

def pack_states(states: Sequence[State]) -> bytes:
    """Every state in one .npz byte string, keys "<index>/<state key>"; scalars travel as 0-d arrays."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{i}/{key}": np.asarray(value) for i, state in enumerate(states)
                        for key, value in state.items()})
    return buffer.getvalue()


def unpack_states(data: bytes, count: int) -> list[State]:
    """``pack_states``' inverse (0-d arrays back to Python scalars), read without pickle."""
    states: list[State] = [{} for _ in range(count)]
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        for key in archive.files:
            index, _, name = key.partition("/")
            value = archive[key]
            states[int(index)][name] = value.item() if value.ndim == 0 else value
    return states


def merge_states(into: Mapping[StatRequest, Calibrator], requests: Sequence[StatRequest],
                 states: Sequence[State]) -> None:
    """Fold shipped states (in ``requests`` order) into the running calibrators, rebuilt as their types."""
    for request, state in zip(requests, states, strict=True):
        running = into[request]
        running.merge(type(running).from_state(state))


# ---- worker and driver ----------------------------------------------------------------------------------

def collect_shard(model: bytes, requests: Sequence[StatRequest], shard: CalibrationShard, *, threads: int,
                  memory_budget_bytes: int) -> bytes:
    """The task body, run in a Ray worker: this shard's calibrator states, packed in ``requests`` order."""
    graph = gs.import_onnx(load_model(model).model)
    calibrators = collect_calibrators(graph, requests, open_calibration_shard(shard), threads=threads,
                                      memory_budget_bytes=memory_budget_bytes)
    return pack_states([calibrators[request].get_state() for request in requests])


ShardTask = Callable[..., bytes]  # collect_shard's signature


def collect_distributed(graph: gs.Graph, requests: Sequence[StatRequest], source: CalibrationSource,
                        cluster: RayCluster, *, progress=None, memory_budget_bytes: int = 1 << 30,
                        shard_task: ShardTask = collect_shard) -> dict[StatRequest, TensorRange]:
    """``collect_statistics``' result, gathered by Ray tasks over shards of ``source`` (module docstring).

    ``shard_task`` runs in the workers; it must behave as ``collect_shard`` (tests wrap it to kill workers).
    """
    ray = require_ray()
    requests = list(dict.fromkeys(requests))
    workers = cluster.workers
    shards = plan_shards(source, workers.shards or cluster.parallelism)
    task = ray.remote(num_cpus=workers.threads, max_retries=workers.max_retries,
                      retry_exceptions=False)(shard_task)
    model_ref = ray.put(_graph_bytes(graph))
    logger.info("calibrating %d statistic(s) on Ray: %d shard(s), %d task(s) at once, %d ORT thread(s) each",
                len(requests), len(shards), cluster.parallelism, workers.threads)

    def submit(shard: CalibrationShard):
        return task.remote(model_ref, requests, shard, threads=workers.threads,
                           memory_budget_bytes=memory_budget_bytes)

    merged = empty_calibrators(requests)
    window = _IN_FLIGHT_PER_SLOT * cluster.parallelism
    pending: dict = {}                 # running task -> shard index
    finished: dict[int, bytes] = {}    # results that arrived before their turn
    submitted = merged_count = 0
    try:
        while merged_count < len(shards):
            # running + waiting results never exceed the window, so neither does the driver's memory
            while submitted < len(shards) and submitted < merged_count + window:
                pending[submit(shards[submitted])] = submitted
                submitted += 1
            if merged_count not in finished:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done)
                finished[index] = _shard_result(ray, done, shards[index], workers.max_retries)
                del done  # the last reference: Ray frees the stored result
                continue
            # merged in shard order: float sums (means, Hessians) come out the same on every run
            packed = finished.pop(merged_count)
            merge_states(merged, requests, unpack_states(packed, len(requests)))
            del packed
            if progress is not None:
                progress.update(shards[merged_count].num_samples)
            merged_count += 1
    finally:
        for ref in pending:  # an error left tasks running: stop them, keeping the error that got us here
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return compute_ranges(graph, merged)


def _graph_bytes(graph: gs.Graph) -> bytes:
    model = gs.export_onnx(graph, do_type_check=False)
    if model_size_bytes(model) > PROTOBUF_MAX_BYTES:
        raise CalibrationError("distributed calibration ships the graph as one ONNX message, which protobuf "
                               "limits to 2 GiB; this model is larger: calibrate without workers")
    return model.SerializeToString()


def _shard_result(ray, ref, shard: CalibrationShard, max_retries: int) -> bytes:
    where = f"calibration shard {shard.files[0]}..{shard.files[-1]} ({len(shard.files)} file(s))"
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, QCompileError):
            raise cause from None  # the worker's one-line diagnosis (bad file, NaN in the model ...)
        raise
    except ray.exceptions.RayError as exc:  # worker or node died more often than max_retries allowed
        raise CalibrationError(f"{where} failed after {max_retries} retries: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

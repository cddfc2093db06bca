"""The statistics collector: run the float graph on calibration data and stream tensors into calibrators.

For requested tensors T_1..T_k the collector makes a copy of the graph whose outputs are exactly those
tensors, runs ONNX Runtime batch by batch, feeds each output array to its calibrators and drops it, so peak
memory is one batch of activations plus O(bins) per calibrator, whatever the number of samples. Tensors that
are graph inputs are read from the feed itself. Requested tensors are split into groups so that one run
never holds more than ``memory_budget_bytes`` of activations (estimated from the first batch); each group is
a separate streaming pass over the data.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from qcompile.calibrators.base import Calibrator
from qcompile.calibrators.channel import ChannelAbsMaxCalibrator
from qcompile.calibrators.channel_mean import ChannelMeanCalibrator
from qcompile.calibrators.hessian import HessianCalibrator
from qcompile.calibrators.factory import make_calibrator
from qcompile.calibrators.patch_moments import PatchMomentsCalibrator
from qcompile.calibrators.range_rules import apply_range_rules
from qcompile.calibrators.row_sample import RowSampleCalibrator
from qcompile.calibrators.subgraph_outputs import (conditional_in_stacking_names, expose_subgraph_tensors,
                                                   merge_stacked_axes, subgraph_tensor_names)
from qcompile.errors import CalibrationDataError, CalibrationError, QCompileError
from qcompile.pass_infra import StatKind, StatRequest
from qcompile.graph.weights import total_constant_bytes, weightless_model
from qcompile.runtime_ext.run_limit import DEFAULT_SAMPLE_TIME_LIMIT_S, run_limited
from qcompile.runtime_ext.session import LARGE_MODEL_BYTES, GraphOptimization, make_session
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)


def _make_calibrator(request: StatRequest):
    if request.kind is StatKind.HESSIAN:
        return HessianCalibrator()
    if request.kind is StatKind.CHANNEL_ABSMAX:
        return ChannelAbsMaxCalibrator(axis=request.axis if request.axis is not None else -1)
    if request.kind is StatKind.CHANNEL_MEAN:
        return ChannelMeanCalibrator(axis=request.axis if request.axis is not None else -1)
    if request.kind is StatKind.PATCH_MOMENTS:
        return PatchMomentsCalibrator(request.patch, max_rows=max(request.sample_rows, 1))
    if request.kind is StatKind.ROW_SAMPLE:
        return RowSampleCalibrator(axis=request.axis if request.axis is not None else -1,
                                   capacity=max(request.sample_rows, 1))
    return make_calibrator(request.method, percentile=request.percentile, symmetric=request.symmetric,
                           unsigned=request.unsigned, num_bits=request.num_bits)


def _output_model(graph: gs.Graph, tensor_names: Sequence[str]):
    """A copy of the graph whose outputs are the named tensors, and {output name: (tensor, stacked axes)}
    for the tensors that live in If/Loop/Scan bodies and are threaded out under another name."""
    copy = graph.copy()
    tensors = copy.tensors()
    outputs = []
    in_subgraphs = [name for name in tensor_names if name not in tensors]
    copy.outputs = []
    exposed = expose_subgraph_tensors(copy, in_subgraphs) if in_subgraphs else {}
    missing = [name for name in in_subgraphs if name not in exposed]
    if missing:
        raise CalibrationError(f"tensor(s) {missing[:3]} requested for calibration are not in the graph")
    for name in tensor_names:
        tensor = tensors[name] if name in tensors else exposed[name].output
        if tensor.dtype is None:
            tensor.dtype = np.float32
        outputs.append(tensor)
    copy.outputs = outputs
    copy.cleanup().toposort()   # graphsurgeon's sort, bodies included: exposure appends nodes to them
    aliases = {e.output.name: (e.requested, e.stacked_axes) for e in exposed.values()}
    if total_constant_bytes(copy) > LARGE_MODEL_BYTES:
        # over protobuf's 2 GB limit: export the structure only, the weights go to ORT from memory
        return weightless_model(copy, load=True), aliases
    return (gs.export_onnx(copy, do_type_check=False), {}), aliases


def _session(model_and_weights, providers: Sequence[str], threads: int | None,
             custom_op_library: str | None = None) -> ort.InferenceSession:
    # no graph optimisation: ranges are those of the graph as written, whatever tensors a group exposes
    # (with fusions on, Conv+BN fuse only when the Conv output is not requested, changing the rounding)
    model, weights = model_and_weights
    try:
        return make_session(model, providers=tuple(providers), threads=threads or None,
                            optimization=GraphOptimization.DISABLED, initializers=weights or None,
                            custom_op_library=custom_op_library)
    except QCompileError as exc:
        raise CalibrationError(f"cannot build the calibration session: {exc}") from exc


def collect_statistics(graph: gs.Graph, requests: Sequence[StatRequest], source: Iterable[Mapping[str, np.ndarray]],
                       *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                       memory_budget_bytes: int = 1 << 30, progress=None,
                       custom_op_library: str | None = None,
                       sample_time_limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S) -> dict[StatRequest, TensorRange]:
    """Streaming statistics for ``requests`` over ``source`` (see module docstring); ``providers`` are the ORT
    execution providers the float graph runs on (CUDA when asked: same ranges within float tolerance)."""
    calibrators = collect_calibrators(graph, requests, source, providers=providers, threads=threads,
                                      memory_budget_bytes=memory_budget_bytes, progress=progress,
                                      custom_op_library=custom_op_library, sample_time_limit_s=sample_time_limit_s)
    return compute_ranges(graph, calibrators)


def empty_calibrators(requests: Sequence[StatRequest]) -> dict[StatRequest, Calibrator]:
    """A fresh calibrator per request: what a shard fills, and the type its shipped state is rebuilt as."""
    return {request: _make_calibrator(request) for request in requests}


def compute_ranges(graph: gs.Graph, calibrators: Mapping[StatRequest, Calibrator]) -> dict[StatRequest, TensorRange]:
    """The statistic of each (possibly merged) calibrator (see ``_results``), activation ranges after the
    rules of calibrators/range_rules.py (bounded producers; no histogram method worse than min-max)."""
    return apply_range_rules(graph, calibrators, _results(calibrators, subgraph_tensor_names(graph)))


def collect_calibrators(graph: gs.Graph, requests: Sequence[StatRequest],
                        source: Iterable[Mapping[str, np.ndarray]], *,
                        providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                        memory_budget_bytes: int = 1 << 30, progress=None,
                        custom_op_library: str | None = None,
                        sample_time_limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S) -> dict[StatRequest, Calibrator]:
    """The calibrators of ``requests`` after streaming ``source`` through them, not yet computed, so that
    shards of the data can be collected apart and merged (``compute_ranges`` finishes)."""
    by_tensor: dict[str, list[StatRequest]] = defaultdict(list)
    for request in requests:
        by_tensor[request.tensor].append(request)
    input_names = {t.name for t in graph.inputs}
    unstackable = conditional_in_stacking_names(graph)  # no statistics: the bodies holding them stay float
    computed = [name for name in by_tensor if name not in input_names and name not in unstackable]
    calibrators = empty_calibrators(requests)

    groups, sizing_session = _plan_groups(graph, computed, source, memory_budget_bytes, providers, threads,
                                          custom_op_library, sample_time_limit_s)
    for index, group in enumerate(groups):
        if len(groups) == 1:
            session, aliases = sizing_session  # one group = every tensor: the sizing session exposes them
        else:
            session, aliases = _exposing_session(graph, group, providers, threads, custom_op_library) \
                if group else (None, {})
        output_names = [o.name for o in session.get_outputs()] if session else []
        first = index == 0
        seen = 0
        for feed in source:
            if session is not None:
                try:
                    arrays = run_limited(session, output_names, feed, sample_time_limit_s)
                except Exception as exc:
                    raise CalibrationDataError(
                        f"the model failed on calibration sample {seen}: {str(exc).splitlines()[0]}") from exc
                for output, array in zip(output_names, arrays):
                    name, stacked_axes = aliases[output]
                    array = merge_stacked_axes(array, stacked_axes)
                    for request in by_tensor[name]:
                        _update(calibrators[request], name, array)
                del arrays
            if first:
                for name in by_tensor:
                    if name in input_names:
                        for request in by_tensor[name]:
                            _update(calibrators[request], name, np.asarray(feed[name]))
            seen += 1
            if progress is not None:
                progress.update(1)
        if seen == 0:
            raise CalibrationDataError("calibration data is empty")
    return calibrators


def _results(calibrators, in_subgraphs: set[str]) -> dict[StatRequest, TensorRange]:
    """Each request's statistic. A tensor inside a body that never ran (an If branch not taken on this data)
    has none: it is left out, and the pass that asked decides (the body stays float)."""
    results = {}
    for request, calibrator in calibrators.items():
        try:
            results[request] = calibrator.compute()
        except CalibrationError:
            if request.tensor not in in_subgraphs:
                raise
            logger.info("tensor %r inside a subgraph never ran on the calibration data", request.tensor)
    return results


def _exposing_session(graph: gs.Graph, names: Sequence[str], providers, threads, custom_op_library=None):
    """A session whose outputs are ``names`` and {output name: (requested name, stacked axes)}."""
    model, exposed = _output_model(graph, names)
    session = _session(model, providers, threads, custom_op_library)
    aliases = {o.name: exposed.get(o.name, (o.name, 0)) for o in session.get_outputs()}
    return session, aliases


def _update(calibrator, name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        raise CalibrationError(f"tensor {name!r} is {array.dtype}, not float: it cannot be calibrated")
    if array.size == 0:
        return
    try:
        calibrator.update(array.astype(np.float32, copy=False))  # every calibrator rejects NaN/Inf
    except CalibrationError as exc:
        raise CalibrationError(f"tensor {name!r} on calibration data: {exc} (the FP32 model overflows there, or its weights hold NaN/Inf)") from exc


def _plan_groups(graph: gs.Graph, names: list[str], source, budget: int, providers, threads,
                 custom_op_library: str | None = None,
                 sample_time_limit_s: float | None = DEFAULT_SAMPLE_TIME_LIMIT_S,
                 ) -> tuple[list[list[str]], tuple[ort.InferenceSession | None, dict]]:
    """Split tensors into groups whose activations fit the budget; sizes measured on the first sample.

    Also returns the sizing session (all tensors as outputs), which serves as-is when one group suffices.
    """
    if not names:
        return [[]], (None, {})
    first_feed = next(iter(source), None)
    if first_feed is None:
        raise CalibrationDataError("calibration data is empty")
    session, aliases = _exposing_session(graph, names, providers, threads, custom_op_library)
    output_names = [o.name for o in session.get_outputs()]
    try:
        arrays = run_limited(session, output_names, first_feed, sample_time_limit_s)
    except Exception as exc:
        raise CalibrationDataError(f"the model failed on calibration sample 0: {str(exc).splitlines()[0]}") from exc
    sizes = {aliases[n][0]: a.nbytes for n, a in zip(output_names, arrays)}
    del arrays
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        if groups[-1] and used + sizes[name] > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += sizes[name]
    if len(groups) > 1:
        logger.info("activations exceed the %d MiB budget: calibrating in %d passes over the data",
                    budget >> 20, len(groups))
        return groups, (None, {})  # drop the all-tensor session before the grouped ones are built
    return groups, (session, aliases)

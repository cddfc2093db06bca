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

from qcompile.calibrators.channel import ChannelAbsMaxCalibrator
from qcompile.calibrators.channel_mean import ChannelMeanCalibrator
from qcompile.calibrators.factory import make_calibrator
from qcompile.errors import CalibrationDataError, CalibrationError
from qcompile.pass_infra import StatKind, StatRequest
from qcompile.qparams import TensorRange

logger = logging.getLogger(__name__)


def _make_calibrator(request: StatRequest):
    if request.kind is StatKind.CHANNEL_ABSMAX:
        return ChannelAbsMaxCalibrator(axis=request.axis if request.axis is not None else -1)
    if request.kind is StatKind.CHANNEL_MEAN:
        return ChannelMeanCalibrator(axis=request.axis if request.axis is not None else -1)
    return make_calibrator(request.method, percentile=request.percentile, symmetric=request.symmetric,
                           unsigned=request.unsigned)


def _output_model(graph: gs.Graph, tensor_names: Sequence[str]):
    copy = graph.copy()
    tensors = copy.tensors()
    outputs = []
    for name in tensor_names:
        tensor = tensors[name]
        if tensor.dtype is None:
            tensor.dtype = np.float32
        outputs.append(tensor)
    copy.outputs = outputs
    copy.cleanup()
    return gs.export_onnx(copy, do_type_check=False)


def _session(model, providers: Sequence[str], threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # no graph optimisation: ranges are those of the graph as written, whatever tensors a group exposes
    # (with fusions on, Conv+BN fuse only when the Conv output is not requested, changing the rounding)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types
        raise CalibrationError(f"cannot build the calibration session: {str(exc).splitlines()[0]}") from exc


def collect_statistics(graph: gs.Graph, requests: Sequence[StatRequest], source: Iterable[Mapping[str, np.ndarray]],
                       *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                       memory_budget_bytes: int = 1 << 30, progress=None) -> dict[StatRequest, TensorRange]:
    """Streaming statistics for ``requests`` over ``source`` (see module docstring)."""
    by_tensor: dict[str, list[StatRequest]] = defaultdict(list)
    for request in requests:
        by_tensor[request.tensor].append(request)
    input_names = {t.name for t in graph.inputs}
    computed = [name for name in by_tensor if name not in input_names]
    calibrators = {request: _make_calibrator(request) for request in requests}

    groups, sizing_session = _plan_groups(graph, computed, source, memory_budget_bytes, providers, threads)
    for index, group in enumerate(groups):
        if len(groups) == 1:
            session = sizing_session  # one group = every tensor: the sizing session already exposes them
        else:
            session = _session(_output_model(graph, group), providers, threads) if group else None
        output_names = [o.name for o in session.get_outputs()] if session else []
        first = index == 0
        seen = 0
        for feed in source:
            if session is not None:
                try:
                    arrays = session.run(output_names, dict(feed))
                except Exception as exc:
                    raise CalibrationDataError(
                        f"the model failed on calibration sample {seen}: {str(exc).splitlines()[0]}") from exc
                for name, array in zip(output_names, arrays):
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
    return {request: calibrators[request].compute() for request in requests}


def _update(calibrator, name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        raise CalibrationError(f"tensor {name!r} is {array.dtype}, not float: it cannot be calibrated")
    if array.size == 0:
        return
    try:
        calibrator.update(array.astype(np.float32, copy=False))  # every calibrator rejects NaN/Inf
    except CalibrationError as exc:
        raise CalibrationError(f"tensor {name!r} on calibration data: {exc} (the FP32 model overflows there)") from exc


def _plan_groups(graph: gs.Graph, names: list[str], source, budget: int, providers, threads
                 ) -> tuple[list[list[str]], ort.InferenceSession | None]:
    """Split tensors into groups whose activations fit the budget; sizes measured on the first sample.

    Also returns the sizing session (all tensors as outputs), which serves as-is when one group suffices.
    """
    if not names:
        return [[]], None
    first_feed = next(iter(source), None)
    if first_feed is None:
        raise CalibrationDataError("calibration data is empty")
    session = _session(_output_model(graph, names), providers, threads)
    output_names = [o.name for o in session.get_outputs()]
    sizes = {n: a.nbytes for n, a in zip(output_names, session.run(output_names, dict(first_feed)))}
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
        return groups, None  # drop the all-tensor session before the grouped ones are built
    return groups, session

"""Re-emit a compiled model with more nodes kept float, reusing the statistics its compile gathered.

An accuracy search compiles one model many times, each time with a different set F of nodes kept float.
Calibration dominates compile time, and a statistic depends only on the request and on the graph it was
gathered on. So statistics are cached under (fingerprint of the graph at collection time, StatRequest):

    stat(F, step, r) = cache[(H(G_step(F)), r)]   if present, else gathered on the calibration data

where H is a SHA-256 of the serialised graph. While the steps before quantisation do not depend on F (today's
prepare step does not), every emission finds all its statistics in the cache and runs no calibration; if a
future transform does depend on F, the graphs differ, the fingerprints differ, and the missing statistics are
gathered as usual — never a stale one.

The recorder also keeps the graph the last collection ran on (the graph right before quantisation, with the
tensor names the quantised graph keeps): the FP32 reference for per-layer analysis (qcompile/accuracy/sensitivity.py).
Graphs whose constants pass 2 GB are neither copied nor fingerprinted (memory; ORT cannot take them from
memory anyway): no reuse and no reference for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompile.config import CompileConfig, TargetProfile
from qcompile.io import SERIALISABLE_BYTES
from qcompile.pass_infra import Collector, PassContext, PassRecord, StatRequest, run_steps
from qcompile.pipeline import build_steps
from qcompile.numerics.qparams import TensorRange

logger = logging.getLogger(__name__)

Exporter = Callable[[gs.Graph, onnx.ModelProto], onnx.ModelProto]


def constant_bytes(graph: gs.Graph) -> int:
    """Bytes of the graph's constants, from their shapes (lazily loaded external data stays unloaded)."""
    total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.shape is not None and tensor.dtype is not None:
            total += int(np.prod(tensor.shape, dtype=np.int64)) * np.dtype(tensor.dtype).itemsize
    return total


def graph_fingerprint(model: onnx.ModelProto) -> str | None:
    """SHA-256 of the serialised model, or None when it is too large to serialise in one piece."""
    if model.ByteSize() > SERIALISABLE_BYTES:
        return None
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


@dataclass
class StatisticsRecorder:
    """Wraps a collector: keeps the graph of the latest collection and, with ``reuse``, caches statistics."""

    reuse: bool = False
    entries: dict[tuple[str, StatRequest], TensorRange] = field(default_factory=dict)
    last_graph: onnx.ModelProto | None = None
    reused: int = 0
    gathered: int = 0

    def wrap(self, collect: Collector) -> Collector:
        def recording_collect(graph: gs.Graph, requests: Sequence[StatRequest]) -> Mapping[StatRequest, TensorRange]:
            if constant_bytes(graph) > SERIALISABLE_BYTES:    # no copy of a model this large, no reuse
                self.last_graph = None
                self.gathered += len(requests)
                return collect(graph, requests)
            snapshot = gs.export_onnx(graph, do_type_check=False)
            self.last_graph = snapshot
            fingerprint = graph_fingerprint(snapshot) if self.reuse else None
            if fingerprint is None:
                self.gathered += len(requests)
                return collect(graph, requests)
            missing = [r for r in requests if (fingerprint, r) not in self.entries]
            if missing:
                for request, value in collect(graph, missing).items():
                    self.entries[(fingerprint, request)] = value
            self.gathered += len(missing)
            self.reused += len(requests) - len(missing)
            # the collector leaves out what it could not observe (a body no calibration item runs), so does this
            return {r: self.entries[(fingerprint, r)] for r in requests if (fingerprint, r) in self.entries}
        return recording_collect


@dataclass(frozen=True)
class Emission:
    """One run of the pipeline: the exported model and what the passes decided."""

    model: onnx.ModelProto
    ctx: PassContext
    records: tuple[PassRecord, ...]
    config: CompileConfig
    kept_float: tuple[str, ...]


def keep_float_config(config: CompileConfig, names: Collection[str]) -> CompileConfig:
    """``config`` with each named node excluded (an exact-name pattern: node names may hold regex syntax)."""
    extra = tuple(re.escape(name) for name in names)
    return dataclasses.replace(config, exclude=config.exclude + tuple(p for p in extra if p not in config.exclude))


@dataclass
class Emitter:
    """Runs the compile pipeline again on the model compile_model prepared, with extra nodes kept float.

    working: the model as compile_model handed it to the pipeline (after the opset preparation);
    collect: the compile's collector wrapped by a StatisticsRecorder with reuse on;
    export: compile_model's graph exporter (cleanup, opset/metadata restore, onnx.checker).
    """

    working: onnx.ModelProto
    config: CompileConfig
    profile: TargetProfile
    collect: Collector
    export: Exporter

    def emit(self, keep_float: Collection[str] = ()) -> Emission:
        names = tuple(keep_float)
        config = keep_float_config(self.config, names)
        graph = gs.import_onnx(self.working)
        ctx = PassContext(config=config, target=self.profile)
        records = run_steps(graph, build_steps(config), ctx, self.collect)
        return Emission(model=self.export(graph, self.working), ctx=ctx, records=tuple(records), config=config,
                        kept_float=names)

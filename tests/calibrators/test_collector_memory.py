"""Peak memory of calibration must not grow with the number of samples (streaming, O(bins) state)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx_graphsurgeon as gs

from qcompile.calibrators.collector import collect_statistics
from qcompile.config import CalibrationMethod
from qcompile.pass_infra import StatKind, StatRequest


def _graph():
    from models.generate import tiny_cnn
    return gs.import_onnx(tiny_cnn())


def _peak_bytes(graph, requests, n_samples: int) -> int:
    rng = np.random.default_rng(0)

    def samples():
        for _ in range(n_samples):
            yield {"input": rng.standard_normal((1, 3, 32, 32), dtype=np.float32)}

    class Source:  # re-iterable, lazily generated: nothing is held between items
        def __iter__(self):
            return samples()

    tracemalloc.start()
    try:
        collect_statistics(graph, requests, Source())
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_flat_from_20_to_400_samples():
    graph = _graph()
    tensors = [t.name for n in graph.nodes if n.op in ("Conv", "Relu", "Add") for t in n.outputs]
    requests = [StatRequest(name, StatKind.RANGE, m) for name in tensors
                for m in (CalibrationMethod.MINMAX, CalibrationMethod.PERCENTILE)]
    requests += [StatRequest(tensors[0], StatKind.CHANNEL_MEAN, axis=1)]
    small = _peak_bytes(graph, requests, 20)
    large = _peak_bytes(graph, requests, 400)
    # 20x the samples; allow 20% for allocator noise — O(samples) growth would be ~20x
    assert large <= 1.2 * small, (small, large)

"""ORT on the graph exactly as written (no graph optimisation, one thread): the reference for exact rewrites."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def run_unoptimized(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feed)

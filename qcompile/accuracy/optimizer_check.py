"""Does ONNX Runtime's graph optimiser keep a Q/DQ model's function? A check for formats no ORT kernel fuses.

For a model whose Q/DQ run as Q/DQ kernels around float ops (the fp8 and a16w8 presets on the CPU EP), ORT
with every optimisation on must compute what the graph as written computes, up to float32 rounding of
reordered float kernels. The check runs both on the first calibration item and reports

    divergence = ‖y_all − y_disabled‖₂ / ‖y_disabled‖₂        over every float output

(ORT's optimiser has dropped a Relu before, and failed on a Clip before, an FP8 QuantizeLinear:
passes/lower/activation_before_float_q.py). Integer-kernel models (w8a8) are not checked this way: their
fused kernels round the requantisation differently by design.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from qcompile.errors import QCompileError
from qcompile.runtime_ext.session import GraphOptimization, make_session

logger = logging.getLogger(__name__)

DIVERGENCE_TOLERANCE = 1e-3      # float32 reordering measured < 1e-5 relative on the eval models


def optimizer_divergence(model: onnx.ModelProto, items: Iterable[Mapping[str, np.ndarray]], *,
                         custom_op_library: str | None = None) -> tuple[float | None, str]:
    """(divergence on the first item, "" or why it could not be measured)."""
    feed = next(iter(items), None)
    if feed is None:
        return None, "no calibration item"
    try:
        outputs = []
        for level in (GraphOptimization.DISABLED, GraphOptimization.ALL):
            session = make_session(model, optimization=level, custom_op_library=custom_op_library)
            names = [o.name for o in session.get_outputs()]
            outputs.append(session.run(names, dict(feed)))
    except QCompileError as exc:
        return None, str(exc)
    except Exception as exc:  # ORT's run-time errors, reported rather than raised: the fidelity check says more
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    signal = noise = 0.0
    for written, optimised in zip(*outputs):
        written, optimised = np.asarray(written), np.asarray(optimised)
        if written.dtype.kind != "f":
            continue
        signal += float(np.sum(np.square(written.astype(np.float64))))
        noise += float(np.sum(np.square(optimised.astype(np.float64) - written.astype(np.float64))))
    return (float(np.sqrt(noise / signal)) if signal > 0 else 0.0), ""

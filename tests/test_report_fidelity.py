"""qcompile/report.py's fidelity accumulator: numbers against numpy, and outputs holding Inf/NaN."""

from __future__ import annotations

import math
import warnings

import numpy as np

from qcompile.accuracy.fidelity import FidelityAccumulator


def test_metrics_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 10)).astype(np.float32)
    app = ref + 0.01 * rng.standard_normal((4, 10)).astype(np.float32)
    acc = FidelityAccumulator()
    acc.add("y", ref[:2], app[:2])
    acc.add("y", ref[2:], app[2:])          # streamed in two batches
    entry = acc.summary()["y"]
    r, a = ref.astype(np.float64), app.astype(np.float64)
    cosines = (r * a).sum(1) / np.linalg.norm(r, axis=1) / np.linalg.norm(a, axis=1)
    assert math.isclose(entry["cosine_mean"], cosines.mean(), rel_tol=1e-12)
    assert math.isclose(entry["sqnr_db"], 10 * np.log10((r ** 2).sum() / ((r - a) ** 2).sum()), rel_tol=1e-9)
    assert math.isclose(entry["max_abs_error"], np.abs(r - a).max(), rel_tol=1e-12)
    assert entry["top1_agreement"] == np.mean(ref.argmax(1) == app.argmax(1))


def test_outputs_with_inf_give_nan_metrics_without_warnings() -> None:
    ref = np.array([[1.0, np.inf, 2.0]], np.float32)
    app = np.array([[1.0, np.inf, 2.5]], np.float32)
    acc = FidelityAccumulator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a RuntimeWarning would fail here
        acc.add("y", ref, app)
        entry = acc.summary()["y"]
    assert math.isnan(entry["cosine_mean"]) and entry["sqnr_db"] == "nan"

"""Per-layer error and sensitivity, measured on the switchable graph S (qcompile/accuracy/switchable.py).

On the first ``samples`` calibration items, with Y the model outputs, y_n node n's output and G(n) its group:

    output SQNR(n) = 10·log10(Σ y_n(off)² / Σ (y_n(off) − y_n(all on))²)        error accumulated up to n
    input SQNR(n)  = 10·log10(Σ x² / Σ (x − DQ(Q(x; s, z)))²), x = n's FP32 input  error of the range alone
    clipped(n)     = fraction of x whose code rint(x/s) + z falls outside [q_min, q_max]
    weight SQNR(n) = 10·log10(Σ W² / Σ (W − Ŵ)²)
    sensitivity(n) = sqrt(Σ ‖Y(off) − Y(G(n) on)‖² / Σ ‖Y(off)‖²)                only n quantised

and the ranking by decreasing sensitivity. SQNR costs two runs of S per item; sensitivity one more run per
node and item. (SQNR and relative error as defined in qcompile/numerics/metrics.py.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from qcompile.accuracy.fidelity import FidelityAccumulator
from qcompile.accuracy.switchable import SwitchableModel, SwitchedLayer
from qcompile.numerics.fp8 import fake_quantize_fp8
from qcompile.numerics.metrics import power_sums, relative_error_from_power, sqnr_db_from_power

HISTOGRAM_BINS = 64            # bins of consecutive integer codes shown per histogram
HISTOGRAM_TENSORS = 8          # histograms kept in the report: the inputs of the layers with the lowest SQNR


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(DQ(Q(x)), codes before saturation rint(x/s) + z) as ONNX's QuantizeLinear computes them in float32."""
    codes = np.rint(np.asarray(x, np.float32) / np.float32(scale)) + np.float32(zero_point)
    return (np.clip(codes, qmin, qmax) - np.float32(zero_point)) * np.float32(scale), codes


def code_histogram(codes: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Counts per integer code qmin..qmax of the codes inside the range, then [below, above] the range."""
    below, above = int(np.count_nonzero(codes < qmin)), int(np.count_nonzero(codes > qmax))
    counts = np.bincount((np.clip(codes, qmin, qmax) - qmin).astype(np.int64).ravel(), minlength=qmax - qmin + 1)
    counts[0] -= below
    counts[-1] -= above
    return np.concatenate([counts, [below, above]])


@dataclass
class _Stats:
    signal: float = 0.0
    noise: float = 0.0


def analyse_layers(model: SwitchableModel, items: Iterable[Mapping[str, np.ndarray]],
                   sensitivity: bool) -> dict[str, Any]:
    """Per-layer SQNRs, and with ``sensitivity`` each layer's sensitivity and rank, over ``items``."""
    start = time.perf_counter()
    outputs = {layer.name: _Stats() for layer in model.layers}
    inputs = {layer.name: _Stats() for layer in model.layers}
    clipped = {layer.name: [0, 0] for layer in model.layers}
    histograms: dict[str, np.ndarray] = {}
    weights = {layer.name: _weight_sqnr(layer) for layer in model.layers}
    single = {layer.name: FidelityAccumulator() for layer in model.layers}
    layer_outputs = [layer.output for layer in model.layers]
    input_names = [layer.input_point.x.name for layer in model.layers if layer.input_point is not None]
    count = rows = 0
    for feed in items:
        off = model.run(model.output_names + layer_outputs + input_names, feed, ())
        on = model.run(model.output_names + layer_outputs, feed, model.switches)
        for layer in model.layers:
            _accumulate(outputs[layer.name], off[layer.output], on[layer.output])
            point = layer.input_point
            if point is not None and point.scale:
                x = off[point.x.name]
                if point.float_codes:      # FP8: saturation instead of integer clipping, no code histogram
                    dequantized, saturated = fake_quantize_fp8(x, point.scale)
                    clipped[layer.name][0] += int(round(saturated * x.size))
                else:
                    dequantized, codes = fake_quantize(x, point.scale, point.zero_point, point.qmin, point.qmax)
                    counts = code_histogram(codes, point.qmin, point.qmax)
                    histograms[layer.name] = histograms.get(layer.name, 0) + counts
                    clipped[layer.name][0] += int(counts[-2] + counts[-1])
                _accumulate(inputs[layer.name], x, dequantized)
                clipped[layer.name][1] += x.size
        if sensitivity:
            for layer in model.layers:
                single_out = model.run(model.output_names, feed, layer.group)
                for name in model.output_names:
                    single[layer.name].add(name, off[name], single_out[name])
        count += 1
        rows += _rows(feed)
    nodes = []
    for layer in model.layers:
        output = outputs[layer.name]
        entry: dict[str, Any] = {"name": layer.name, "op_type": layer.op, "output": layer.output,
                                 "output_sqnr_db": sqnr_db_from_power(output.signal, output.noise),
                                 "weight_sqnr_db": weights.get(layer.name)}
        if layer.input_point is not None and layer.input_point.scale:
            stats = inputs[layer.name]
            entry.update(input=layer.input_point.x.name,
                         input_sqnr_db=sqnr_db_from_power(stats.signal, stats.noise),
                         input_clipped_fraction=clipped[layer.name][0] / max(clipped[layer.name][1], 1))
        if sensitivity:
            entry["sensitivity"] = _sensitivity(single[layer.name])
        nodes.append(entry)
    if sensitivity:
        ranked = sorted(nodes, key=lambda e: -e["sensitivity"]["relative_error"])
        for rank, entry in enumerate(ranked, start=1):
            entry["sensitivity_rank"] = rank
    return {
        "items": count, "rows": rows, "seconds": round(time.perf_counter() - start, 3),
        "nodes": nodes, "unmeasured": list(model.unmeasured),
        "histograms": _histogram_json(model, nodes, histograms),
    }


def output_sqnr(model: SwitchableModel, items: Iterable[Mapping[str, np.ndarray]],
                quantized: Iterable[str]) -> dict[str, Any]:
    """Output SQNR of every layer with only the named layers quantised (after a fallback)."""
    on = model.group_switches(quantized)
    stats = {layer.name: _Stats() for layer in model.layers}
    names = [layer.output for layer in model.layers]
    for feed in items:
        off, later = model.run(names, feed, ()), model.run(names, feed, on)
        for layer in model.layers:
            _accumulate(stats[layer.name], off[layer.output], later[layer.output])
    return {name: sqnr_db_from_power(s.signal, s.noise) for name, s in stats.items()}


def _histogram_json(model: SwitchableModel, nodes: list[dict],
                    histograms: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    def worst(entry: dict) -> float:
        value = entry.get("output_sqnr_db")
        return math.inf if value is None or value == "inf" else float(value)
    chosen = [e for e in sorted(nodes, key=worst) if e["name"] in histograms][:HISTOGRAM_TENSORS]
    layers = {layer.name: layer for layer in model.layers}
    out = []
    for entry in chosen:
        point = layers[entry["name"]].input_point
        counts = histograms[entry["name"]]
        bins = [int(c.sum()) for c in np.array_split(counts[:-2], min(HISTOGRAM_BINS, len(counts) - 2))]
        out.append({"node": entry["name"], "tensor": point.x.name, "scale": point.scale,
                    "zero_point": point.zero_point,
                    "low": point.scale * (point.qmin - point.zero_point),
                    "high": point.scale * (point.qmax - point.zero_point),
                    "counts": bins, "below": int(counts[-2]), "above": int(counts[-1])})
    return out


def _weight_sqnr(layer: SwitchedLayer) -> float | str | None:
    """SQNR of the weight (input 1) alone: a bias would dominate the signal without saying much."""
    values, dequantized = layer.weights.get(1, (None, None))
    if values is None or dequantized is None or dequantized.shape != values.shape:
        return None
    stats = _Stats()
    _accumulate(stats, values, dequantized)
    return sqnr_db_from_power(stats.signal, stats.noise)


def _accumulate(stats: _Stats, reference: np.ndarray, approx: np.ndarray) -> None:
    signal, noise = power_sums(reference, approx)
    stats.signal += signal
    stats.noise += noise


def _rows(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if first is not None and np.ndim(first) > 0 else 1


def _sensitivity(accumulator: FidelityAccumulator) -> dict[str, Any]:
    signal, noise = sum(accumulator.signal.values()), sum(accumulator.noise.values())
    summary = accumulator.summary()
    result: dict[str, Any] = {"relative_error": relative_error_from_power(signal, noise),
                              "sqnr_db": sqnr_db_from_power(signal, noise),
                              "cosine_mean": min((s["cosine_mean"] for s in summary.values()), default=None)}
    top1 = [s["top1_agreement"] for s in summary.values() if "top1_agreement" in s]
    if top1:
        result["top1_agreement"] = min(top1)
    return result


def ranking(layers: Mapping[str, Any]) -> list[str]:
    """Measured nodes by decreasing sensitivity (rank 1 first)."""
    ranked = [e for e in layers.get("nodes", []) if "sensitivity_rank" in e]
    return [e["name"] for e in sorted(ranked, key=lambda e: e["sensitivity_rank"])]

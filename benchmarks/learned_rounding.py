"""Learned vs nearest rounding of static INT8 weights, next to onnxruntime.quantization, on the eval models.

    python benchmarks/learned_rounding.py [--eval-dir DIR] [--cases effnet_lite0,fmnist_cnn] [--eval-items 1000]
                                          [--solvers] [--layers 3]

Per case, in one process and on the same calibration folder and eval data:

    fp32                 the input model
    qcompile nearest     compile_model(..., CompileConfig(rounding=RoundingConfig(method=NEAREST)))
    qcompile learned     compile_model(..., CompileConfig())  (learned rounding is the default)
    ort per-channel      quantize_static(QDQ, MinMax, per_channel=True)  (u8 activations, s8 weights)

Columns: top-1 agreement with FP32 (and accuracy where eval.npz has labels ``y``), mean cosine of the first
output vs FP32, model size relative to FP32, compile seconds (wall; the machine may be shared, so noisy)
and the CPU seconds of the compile process. ORT sessions use 1 thread.

``--solvers`` also compares, on ``--layers`` Conv layers of effnet_lite0 (patch moments of the float inputs),
what each rounding solver reaches on f(q) = (s q − w)ᵀ H (s q − w) relative to nearest and in how many CPU
seconds: error feedback, coordinate descent, both (qcompile's), and AdaRound's rectified-sigmoid relaxation
with Adam (numpy, as in Nagel et al. 2020: ζ = 1.1, γ = −0.1, λ = 0.01, β annealed 20 → 2, lr 1e-2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qcompile import compile_model  # noqa: E402
from qcompile.calibrators.collector import collect_statistics  # noqa: E402
from qcompile.config import CompileConfig, RoundingConfig, WeightRounding  # noqa: E402
from qcompile.data import model_input_specs, open_calibration_source  # noqa: E402
from qcompile.numerics import rounding  # noqa: E402
from qcompile.passes.quantize.weight_rounding import rounding_request, weight_rows  # noqa: E402

DEFAULT_EVAL_DIR = Path(os.environ.get("QCOMPILE_EVAL_DIR", REPO.parent / "shared" / "eval"))


def _session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _eval_feeds(case: Path, items: int, names: list[str]) -> tuple[list[dict], np.ndarray | None]:
    with np.load(case / "eval.npz") as data:
        arrays = {k: data[k] for k in data.files}
    if len(names) == 1 and names[0] not in arrays:   # one input, stored under its own key (fmnist_cnn: x)
        arrays[names[0]] = arrays["x"]
    count = min(items, len(arrays[names[0]]))
    feeds = [{n: arrays[n][i:i + 25] for n in names} for i in range(0, count, 25)]
    labels = arrays.get("y")
    return feeds, None if labels is None else labels[:count]


def _outputs(model, feeds) -> np.ndarray:
    session = _session(model)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def _fidelity(reference: np.ndarray, candidate: np.ndarray, labels) -> dict:
    a, b = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
    cosine = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    row = {"agreement": float(np.mean(a.argmax(1) == b.argmax(1))), "cosine": float(np.mean(cosine))}
    if labels is not None:
        row["accuracy"] = float(np.mean(b.argmax(1) == labels))
    return row


def _ort_per_channel(model_path: Path, calib: Path, out: Path, names: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._files = iter(sorted(calib.glob("*.npz")))

        def get_next(self):
            path = next(self._files, None)
            if path is None:
                return None
            with np.load(path) as z:
                return {k: z[k] for k in names}

    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    calibrate_method=CalibrationMethod.MinMax, per_channel=True)


def run_case(case: Path, items: int) -> list[dict]:
    model_path = case / "model.onnx"
    model = onnx.load(str(model_path))
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feeds, labels = _eval_feeds(case, items, names)
    reference = _outputs(model_path, feeds)
    fp32_size = model_path.stat().st_size
    rows = [{"method": "fp32", **_fidelity(reference, reference, labels), "size": 1.0}]
    for label, method in (("qcompile nearest", WeightRounding.NEAREST), ("qcompile learned", WeightRounding.LEARNED)):
        wall, cpu = time.perf_counter(), time.process_time()
        result = compile_model(model_path, case / "calib", CompileConfig(rounding=RoundingConfig(method=method)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({"method": label, **_fidelity(reference, _outputs(result.model, feeds), labels),
                     "size": result.model.ByteSize() / fp32_size, "seconds": wall, "cpu_seconds": cpu})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ort.onnx"
        wall, cpu = time.perf_counter(), time.process_time()
        _ort_per_channel(model_path, case / "calib", out, names)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({"method": "ort quantize_static per-channel", **_fidelity(reference, _outputs(out, feeds), labels),
                     "size": out.stat().st_size / fp32_size, "seconds": wall, "cpu_seconds": cpu})
    return rows


def _adaround(w, scale, hessian, iterations: int, lam: float = 0.01, lr: float = 1e-2) -> np.ndarray:
    """AdaRound's relaxation with Adam; levels in {floor, ceil} (hard-rounded at the end)."""
    zeta, gamma = 1.1, -0.1
    floor = np.floor(w / scale[:, None])
    rest = np.clip(w / scale[:, None] - floor, 1e-4, 1 - 1e-4)
    v = -np.log((zeta - gamma) / (rest - gamma) - 1)          # h(v) = rest at the start
    m, s2 = np.zeros_like(v), np.zeros_like(v)
    warmup = iterations // 5
    for t in range(1, iterations + 1):
        sig = 1 / (1 + np.exp(-v))
        h_raw = sig * (zeta - gamma) + gamma
        h = np.clip(h_raw, 0, 1)
        dh = np.where((h_raw > 0) & (h_raw < 1), sig * (1 - sig) * (zeta - gamma), 0.0)
        err = scale[:, None] * (floor + h) - w
        grad = 2 * (err @ hessian if hessian.ndim == 2 else np.einsum("rk,rkl->rl", err, hessian)) * scale[:, None]
        if t > warmup:
            beta = 20 + (2 - 20) * (t - warmup) / max(iterations - warmup, 1)
            u = 2 * h - 1
            grad = grad + lam * (-beta * np.abs(u) ** (beta - 1) * np.sign(u) * 2)
        grad = grad * dh
        m = 0.9 * m + 0.1 * grad
        s2 = 0.999 * s2 + 0.001 * grad ** 2
        v -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(s2 / (1 - 0.999 ** t)) + 1e-8)
    h = np.clip((1 / (1 + np.exp(-v))) * (zeta - gamma) + gamma, 0, 1)
    return np.clip(floor + (h >= 0.5), -127, 127)


def compare_solvers(case: Path, layers: int) -> list[dict]:
    """Objective reached (relative to nearest) and CPU seconds per solver on some Conv layers."""
    model = onnx.load(str(case / "model.onnx"))
    graph = gs.import_onnx(model)
    convs = [n for n in graph.nodes if n.op == "Conv" and isinstance(n.inputs[1], gs.Constant)]
    picks = [convs[i] for i in np.linspace(len(convs) // 4, len(convs) - 2, layers).astype(int)]
    config = CompileConfig()
    requests = {node.name: rounding_request(node, config)[1] for node in picks}
    source = open_calibration_source(case / "calib", model_input_specs(model))
    stats = collect_statistics(graph, list(requests.values()), source)
    rows = []
    for node in picks:
        moments = stats[requests[node.name]]
        w = weight_rows(node, node.inputs[1].values.astype(np.float64))
        scale = np.abs(w).max(axis=1) / 127
        groups = moments.hessian.shape[0]
        h = moments.hessian[0] if groups == 1 else np.repeat(moments.hessian, len(w) // groups, axis=0)
        low, high = np.full(len(w), -127.0), np.full(len(w), 127.0)
        nearest, lo, hi = rounding.level_bounds(w, scale, low, high)
        base = rounding.rounding_error(w, scale, nearest, h).sum()
        linear = w @ h if h.ndim == 2 else np.einsum("rkl,rl->rk", h, w)

        def timed(solve):
            start = time.process_time()
            levels = solve()
            return rounding.rounding_error(w, scale, levels, h).sum() / base, time.process_time() - start

        def descent(start_levels):
            levels = start_levels.copy()
            rounding._coordinate_descent(scale, lo, hi, h, linear, levels, 8)
            return levels

        solvers = {
            "error feedback": lambda: rounding._error_feedback(w, scale, lo, hi, h),
            "coordinate descent": lambda: descent(nearest),
            "error feedback + descent (qcompile)": lambda: rounding.learned_levels(w, scale, low, high, h).levels,
            "AdaRound 500 it": lambda: _adaround(w, scale, h, 500),
            "AdaRound 2000 it": lambda: _adaround(w, scale, h, 2000),
        }
        for label, solve in solvers.items():
            ratio, seconds = timed(solve)
            rows.append({"layer": f"{node.name} ({len(w)}x{w.shape[1]}, groups {groups})", "solver": label,
                         "error_vs_nearest": ratio, "cpu_seconds": seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    parser.add_argument("--cases", default="effnet_lite0,fmnist_cnn")
    parser.add_argument("--eval-items", type=int, default=1000)
    parser.add_argument("--solvers", action="store_true")
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args(argv)
    print("| case | method | top-1 agreement | accuracy | cosine | size vs FP32 | compile s (wall) | compile CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in filter(None, args.cases.split(",")):
        for row in run_case(args.eval_dir / name, args.eval_items):
            acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "-"
            secs = f"{row['seconds']:.1f}" if "seconds" in row else "-"
            cpu = f"{row['cpu_seconds']:.1f}" if "cpu_seconds" in row else "-"
            print(f"| {name} | {row['method']} | {row['agreement']:.3f} | {acc} | {row['cosine']:.5f} | "
                  f"{row['size']:.3f}x | {secs} | {cpu} |", flush=True)
    if args.solvers:
        print("\n| layer | solver | f / f(nearest) | CPU s |\n|---|---|---|---|")
        for row in compare_solvers(args.eval_dir / "effnet_lite0", args.layers):
            print(f"| {row['layer']} | {row['solver']} | {row['error_vs_nearest']:.3f} | {row['cpu_seconds']:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The real-model zoo table: qcompile defaults vs FP32 vs onnxruntime.quantization, task metrics.

    python benchmarks/zoo.py [--cases a,b] [--cache DIR] [--runs 20] [--threads 1] [--ablate] [--out zoo.md]

Per case (models/zoo/cases.py; built from its wheel on first use): the task metric of each method against FP32
(decoded with the model's own postprocessing), size vs the FP32 file, latency (mean of ``--runs`` batch-1 runs
of the first eval sample after 3 warm-ups, median of 3 rounds in which the models take turns, ``--threads``
intra-op threads), compile time.  Methods:
  qcompile     compile_model(model, calib/, CompileConfig())
  ort_static   quantize_static(QDQ, MinMax, per_channel=True), the same calib/ files, no pre-processing
  ort_dynamic  quantize_dynamic(weight_type=QInt8)
``--ablate`` also compiles qcompile, for cases below the metric floor, once per kind of quantised layer with
that kind kept in float (depthwise, 1x1 and kxk Conv, ConvTranspose, MatMul, Gemm, the first layer, and head
layers whose output is a graph output), scored on the first ``--ablate-samples`` eval items: the kinds whose
exclusion recovers the metric are the ones that were hard.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.zoo.build import build_case, read_eval, session  # noqa: E402
from models.zoo.cases import CASES, CASES_BY_NAME, MAX_SIZE_RATIO, ZooCase  # noqa: E402
from models.zoo.evaluate import (CaseScore, reference_outputs, score_model, score_qcompile,  # noqa: E402
                                 without_nodes)
from qcompile import CompileConfig  # noqa: E402

LOG = logging.getLogger("zoo")
WARMUP = 3


class _NpzReader(CalibrationDataReader):
    def __init__(self, calib: Path):
        self._files = iter(sorted(calib.glob("*.npz")))

    def get_next(self):
        path = next(self._files, None)
        return None if path is None else dict(np.load(path))


def ort_static(folder: Path, out: Path) -> Path:
    quantize_static(str(folder / "model.onnx"), str(out), _NpzReader(folder / "calib"), quant_format=QuantFormat.QDQ,
                    calibrate_method=CalibrationMethod.MinMax, per_channel=True)
    return out


def ort_dynamic(folder: Path, out: Path) -> Path:
    quantize_dynamic(str(folder / "model.onnx"), str(out), weight_type=QuantType.QInt8)
    return out


def latencies_ms(models: dict[str, object], feed: dict, threads: int, runs: int, rounds: int = 3) -> dict[str, float]:
    """Per model, the median over ``rounds`` of the mean of ``runs`` runs; the models take turns each round, so
    a load change on a shared machine hits them alike."""
    runners = {name: session(model, threads) for name, model in models.items()}
    for runner in runners.values():
        for _ in range(WARMUP):
            runner.run(None, feed)
    means: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            started = time.perf_counter()
            for _ in range(runs):
                runner.run(None, feed)
            means[name].append((time.perf_counter() - started) / runs * 1000)
    return {name: float(np.median(values)) for name, values in means.items()}


def layer_kinds(model: onnx.ModelProto, quantised: list[str]) -> dict[str, list[str]]:
    """Quantised node names grouped by kind of layer (a node can be in several: 'first layer' and 'Conv kxk')."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update({n.output[0]: list(a.t.dims) for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})          # Paddle exports keep weights in Constants
    outputs = {o.name for o in model.graph.output}
    wanted = set(quantised)
    kinds: dict[str, list[str]] = {}
    first = True
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        kind = node.op_type
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            shape = shapes[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind = "Conv depthwise" if group > 1 and shape[1] == 1 else (
                "Conv 1x1" if shape[2:] == [1, 1] else "Conv kxk")
        kinds.setdefault(kind, []).append(node.name)
        if first:
            kinds.setdefault("first layer", []).append(node.name)
            first = False
        if outputs & set(node.output):
            kinds.setdefault("head (output layer)", []).append(node.name)
    return kinds


def ablate(case: ZooCase, folder: Path, reference, result, samples: int) -> list[str]:
    """'kind: metric with that kind in float (n nodes)' for every kind, largest recovery first, on the first
    ``samples`` eval items (the first entry is the all-default baseline on the same items)."""
    model = onnx.load(str(folder / "model.onnx"))
    quantised = [n["name"] for n in result.report.data["nodes"] if n["status"] == "quantized"]
    reference = reference[:samples]
    baseline = score_model(case, folder, result.model, reference).metric
    rows = [(float("inf"), f"defaults on {len(reference)} items: {baseline:.4f}")]
    for kind, names in layer_kinds(model, quantised).items():
        scored, _ = score_qcompile(case, folder, reference, without_nodes(CompileConfig(), names))
        rows.append((scored.metric - baseline, f"{kind} float ({len(names)}): {scored.metric:.4f}"))
        LOG.info("%s ablation: %s", case.name, rows[-1][1])
    return [text for _, text in sorted(rows, reverse=True)]


def run_case(case: ZooCase, cache: Path | None, work: Path, args: argparse.Namespace) -> dict:
    folder = build_case(case, cache)
    reference = reference_outputs(case, folder)
    scores: dict[str, CaseScore] = {}
    errors: dict[str, str] = {}
    models: dict[str, object] = {"fp32": folder / "model.onnx"}
    scores["qcompile"], result = score_qcompile(case, folder, reference)
    models["qcompile"] = result.model
    for method, quantise in (("ort_static", ort_static), ("ort_dynamic", ort_dynamic)):
        started = time.perf_counter()
        try:
            path = quantise(folder, work / f"{case.name}_{method}.onnx")
            seconds = time.perf_counter() - started
            scores[method] = score_model(case, folder, path, reference, seconds)
        except Exception as exc:   # a peer that cannot quantise this model, or writes one ORT refuses: a row
            errors[method] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
            continue
        models[method] = path
    latency = latencies_ms(models, read_eval(folder, case)[0], args.threads, args.runs)
    rows = {method: (scores.get(method), latency.get(method), errors.get(method, ""))
            for method in ("qcompile", "ort_static", "ort_dynamic")}
    qc = scores["qcompile"]
    hard = ablate(case, folder, reference, result, args.ablate_samples) \
        if args.ablate and qc.metric < case.floor else []
    return {"case": case, "fp32_ms": latency["fp32"], "rows": rows, "hard": hard}


def _cell(score: CaseScore | None, ms: float | None, fp32_ms: float, error: str) -> list[str]:
    if score is None:
        return [f"failed: {error}", "", "", ""]
    extras = ", ".join(f"{k} {v:.3f}" for k, v in list(score.metrics.items())[1:])
    metric = f"{score.metric:.4f}" + (f" ({extras})" if extras else "")
    return [metric, f"{score.size_ratio:.3f}", f"{fp32_ms / ms:.2f}x", f"{score.compile_s:.1f}"]


def table(results: list[dict], threads: int) -> str:
    lines = ["| model | task metric | method | metric vs FP32 | size | speed-up vs FP32 "
             f"({threads} thr) | compile s | floors |", "|---|---|---|---|---|---|---|---|"]
    for item in results:
        case = item["case"]
        for method, (score, ms, error) in item["rows"].items():
            meets = "" if score is None else ("meets" if score.meets_floors else "misses")
            lines.append(f"| {case.name} | {case.metric_name} >= {case.floor} | {method} | "
                         + " | ".join(_cell(score, ms, item["fp32_ms"], error)) + f" | {meets} |")
    lines += ["", f"Floors: metric >= floor and size <= {MAX_SIZE_RATIO}.", "", "| model | FP32 ms | hard layers "
              "(qcompile metric with that kind in float) |", "|---|---|---|"]
    for item in results:
        hard = "; ".join(item["hard"][:5]) or "-"
        lines.append(f"| {item['case'].name} | {item['fp32_ms']:.1f} | {hard} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablate", action="store_true", help="per layer kind, for cases missing a floor")
    parser.add_argument("--ablate-samples", type=int, default=16, help="eval items per ablation compile")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("qcompile", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CASES_BY_NAME))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {sorted(CASES_BY_NAME)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="qcompile-zoo-") as work:
        for name in names:
            LOG.info("== %s", name)
            results.append(run_case(CASES_BY_NAME[name], args.cache, Path(work), args))
            if args.out:   # after every case, so a long run's finished rows survive an interruption
                args.out.write_text(table(results, args.threads) + "\n")
    print(table(results, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())

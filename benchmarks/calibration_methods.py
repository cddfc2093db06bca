"""Every activation calibration method on the eval models, beside onnxruntime.quantization, in one run.

    python benchmarks/calibration_methods.py [--eval-dir ../shared/eval] [--cases effnet_lite0,fmnist_cnn,minilm]
                                             [--variants minmax,entropy,percentile,mse,ort_static_pc]
                                             [--out benchmarks/calibration_methods.md]

Variants (all on the case's calib/ folder, measured on its eval.npz):

    minmax / entropy / percentile / mse   qcompile.compile_model with CompileConfig(activation method = that)
                                          and every other setting at its default
    <method>+classifier                   the same with quantize_classifier=True (classifier forced to int8)
    <method>+measured                     the same with the classifier's precision measured (classifier.measure)
    <method>+cle / <method>+nocle         the same with cross-layer equalisation forced on / off
    <method>+pertensor                    the same with per-tensor weights (where CLE matters most)
    ort_static_pc                         onnxruntime.quantization.quantize_static, QDQ, MinMax,
                                          per_channel=True (weights QInt8, activations QUInt8 defaults)

Metric: top-1 agreement with FP32 on eval.npz for the classifiers (effnet_lite0: 100 images, fmnist_cnn: 10000),
mean cosine of sentence_embedding vs FP32 for minilm (200 sentences); output SQNR of that output over the whole eval
set (finer than agreement, where one of effnet's 100 images is 0.01). Size is the saved model's bytes over the
FP32 model's. The classifier column is the compile's measured decision (report "classifier": output SQNR
drop and top-1 agreement drop from quantising the final classifier, on calibration items). Compile time is wall-clock around compile (load + calibrate + emit, in this process) on this
machine, shared with other jobs: noisy. Eval sessions use 1 intra-op thread.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization import CalibrationMethod as OrtMethod

from qcompile import compile_model
from qcompile.config import CalibrationMethod, ClassifierConfig, CompileConfig, Granularity, QuantSpec

METHODS = {m.value: m for m in CalibrationMethod}
DEFAULT_VARIANTS = ("minmax", "entropy", "percentile", "mse", "minmax+measured", "entropy+measured",
                    "percentile+measured", "mse+measured", "ort_static_pc")
EVAL_BATCH = 50


@dataclass(frozen=True)
class Row:
    case: str
    variant: str
    metric: float
    size_ratio: float
    compile_s: float
    sqnr_db: float
    classifier: str = "-"


def _session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _eval_feeds(folder: Path, inputs: list[str]) -> list[dict[str, np.ndarray]]:
    data = np.load(folder / "eval.npz")
    # fmnist_cnn's eval.npz names its one input x (and its labels y)
    arrays = {n: data[n] for n in inputs if n in data.files} or {inputs[0]: data["x"]}
    count = next(iter(arrays.values())).shape[0]
    return [{n: a[i:i + EVAL_BATCH] for n, a in arrays.items()} for i in range(0, count, EVAL_BATCH)]


def _outputs(session: ort.InferenceSession, feeds, output: str) -> np.ndarray:
    return np.concatenate([session.run([output], feed)[0] for feed in feeds])


def _metric(case: str, reference: np.ndarray, approx: np.ndarray) -> float:
    if case == "minilm":
        ref, app = reference.reshape(len(reference), -1), approx.reshape(len(approx), -1)
        cos = np.sum(ref * app, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(app, axis=1) + 1e-30)
        return float(np.mean(cos))
    return float(np.mean(reference.argmax(-1) == approx.argmax(-1)))


def _sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10·log10(Σ y² / Σ (ŷ − y)²) over the whole eval set: finer-grained than agreement on 100 images."""
    ref, app = reference.astype(np.float64), approx.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((app - ref) ** 2), 1e-300)))


def _output_name(case: str, model: onnx.ModelProto) -> str:
    names = [o.name for o in model.graph.output]
    return "sentence_embedding" if case == "minilm" and "sentence_embedding" in names else names[0]


def _qcompile_config(variant: str) -> CompileConfig:
    method, *flags = variant.split("+")
    config = CompileConfig(activation=QuantSpec(method=METHODS[method]))
    for flag in flags:
        if flag == "classifier":
            config = replace(config, quantize_classifier=True)
        elif flag == "measured":
            config = replace(config, classifier=ClassifierConfig(measure=True))
        elif flag in ("cle", "nocle"):
            config = replace(config, cross_layer_equalization=flag == "cle")
        elif flag == "pertensor":
            config = replace(config, weight=replace(config.weight, granularity=Granularity.TENSOR))
        else:
            raise SystemExit(f"unknown variant flag {flag!r} in {variant!r}")
    return config


def _ort_static_pc(model: Path, calib: Path, out: Path, inputs: list[str]) -> None:
    files = sorted(calib.glob("*.npz"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(files)

        def get_next(self):
            path = next(self._it, None)
            if path is None:
                return None
            with np.load(path) as z:
                return {k: z[k] for k in inputs if k in z.files}

    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    calibrate_method=OrtMethod.MinMax, per_channel=True)


def _classifier_cell(section) -> str:
    """The measured classifier decision: int8/float (SQNR drop dB, top-1 agreement drop on calib items)."""
    if not section or not section.get("outputs"):
        return "-"
    cost = next(iter(section["outputs"].values()))
    drop, agree = cost.get("sqnr_drop_db"), cost.get("top1_agreement_drop")
    return (f"{section['decision']} ({drop:.2f} dB" if drop is not None else f"{section['decision']} (n/a") + (
        f", {agree:+.3f})" if agree is not None else ")")


def run_case(case: str, folder: Path, variants: list[str], log: Callable[[str], None]) -> list[Row]:
    model_path = folder / "model.onnx"
    model = onnx.load(str(model_path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    output = _output_name(case, model)
    feeds = _eval_feeds(folder, inputs)
    reference = _outputs(_session(str(model_path)), feeds, output)
    fp32_bytes = model_path.stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            out = Path(tmp) / f"{variant}.onnx"
            started = time.perf_counter()
            classifier = "-"
            if variant == "ort_static_pc":
                _ort_static_pc(model_path, folder / "calib", out, inputs)
            else:
                result = compile_model(model_path, folder / "calib", _qcompile_config(variant))
                result.save(out, Path(tmp) / f"{variant}.report.json")
                classifier = _classifier_cell(result.report.data.get("classifier"))
            seconds = time.perf_counter() - started
            approx = _outputs(_session(str(out)), feeds, output)
            row = Row(case, variant, _metric(case, reference, approx), out.stat().st_size / fp32_bytes, seconds,
                      _sqnr_db(reference, approx), classifier)
            log(f"| {row.case} | {row.variant} | {row.metric:.4f} | {row.sqnr_db:.2f} | {row.size_ratio:.3f}x "
                f"| {row.compile_s:.1f} | {row.classifier} |")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "eval")
    parser.add_argument("--cases", default="effnet_lite0,fmnist_cnn,minilm")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="also append the table to this markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    lines = ["| case | variant | agreement / cosine | output SQNR dB | size vs FP32 | compile s "
             "| classifier (SQNR drop, agreement drop) |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    for case in args.cases.split(","):
        folder = args.eval_dir / case
        if not (folder / "model.onnx").is_file():
            print(f"skipping {case}: {folder} has no model.onnx", file=sys.stderr)
            continue
        run_case(case, folder, args.variants.split(","), log)
    if args.out is not None:
        with args.out.open("a") as handle:
            handle.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

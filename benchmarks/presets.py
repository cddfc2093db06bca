"""The static presets (w8a8, fp8, a16w8) side by side with onnxruntime.quantization's A16W8, on the real models.

    python benchmarks/presets.py [--eval-dir ../shared/eval] [--cases effnet_lite0,minilm,fmnist_cnn]
                                 [--rounds 3] [--runs 10] [--minilm-rows 200] [--fmnist-rows 2000]

Methods, all calibrated on the case's calib/ folder (every file) in one process:

    fp32         the input model
    w8a8         compile_model(..., CompileConfig())                     qcompile's default (reference)
    fp8          compile_model(..., CompileConfig(preset=Preset.FP8))
    a16w8        compile_model(..., CompileConfig(preset=Preset.A16W8))
    ort_a16w8    onnxruntime.quantization.quantize_static(QDQ, MinMax, activation_type=QUInt16,
                 weight_type=QInt8, per_channel=True), the model first upgraded to opset 21 (16-bit Q/DQ);
                 everything else ORT's default (every op it knows is quantised)

Fidelity on the held-out eval.npz (never the calibration data): effnet_lite0 top-1 agreement with FP32 (all 100
images), minilm mean cosine of sentence_embedding (each row at its unpadded length), fmnist_cnn top-1
agreement and accuracy. Size: model bytes / FP32 bytes. Compile: wall seconds of the quantiser call (qcompile:
compile_model with its default fidelity and per-layer analysis; ORT: quantize_static). Latency: batch 1, CPU EP,
1 thread, ORT_ENABLE_ALL, interleaved rounds (qcompile.accuracy.latency), ratio to FP32: noisy on a shared
machine. The fp8 and a16w8 models have no fused CPU kernel (ORT runs DQ → float op), so their CPU latency is
that of a validation run, not of the GPU/NPU they are for.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnx_graphsurgeon.logger import G_LOGGER
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

from qcompile import compile_model
from qcompile.accuracy.latency import interleaved_latency
from qcompile.config import CompileConfig, Preset
from qcompile.io import model_size_bytes

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
QCOMPILE_PRESETS = {"w8a8": Preset.W8A8, "fp8": Preset.FP8, "a16w8": Preset.A16W8}


class FolderReader(CalibrationDataReader):
    """One feed per calib/*.npz file, restricted to the model's inputs (ORT's reader protocol)."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        self._files = sorted(folder.glob("*.npz"))
        self._names = names
        self._it = iter(self._files)

    def get_next(self):
        path = next(self._it, None)
        if path is None:
            return None
        with np.load(path) as data:
            return {k: data[k] for k in self._names if k in data.files}

    def rewind(self) -> None:
        self._it = iter(self._files)


def session(model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_a16w8(model_path: Path, calib: Path, work: Path) -> tuple[onnx.ModelProto, float]:
    """ORT's A16W8 (module docstring) and its quantize_static seconds."""
    model = onnx.load(model_path)
    upgraded = work / f"{model_path.parent.name}.op21.onnx"
    onnx.save(version_converter.convert_version(model, 21), upgraded)
    out = work / f"{model_path.parent.name}.ort_a16w8.onnx"
    names = [i.name for i in model.graph.input]
    start = time.perf_counter()
    quantize_static(str(upgraded), str(out), FolderReader(calib, names), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt16, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return onnx.load(out), time.perf_counter() - start


def fidelity(case: str, reference: ort.InferenceSession, candidate: ort.InferenceSession, eval_path: Path,
             args: argparse.Namespace) -> str:
    data = np.load(eval_path)
    if case == "minilm":
        cosines = []
        for i in range(min(args.minilm_rows, len(data["input_ids"]))):
            length = int(data["attention_mask"][i].sum())
            feed = {k: data[k][i:i + 1, :length].astype(np.int64) for k in TEXT_INPUTS}
            a = reference.run(["sentence_embedding"], feed)[0].ravel().astype(np.float64)
            b = candidate.run(["sentence_embedding"], feed)[0].ravel().astype(np.float64)
            cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        return f"cosine {np.mean(cosines):.4f} (min {np.min(cosines):.4f})"
    if case == "fmnist_cnn":
        x, labels = data["x"][:args.fmnist_rows], data["y"][:args.fmnist_rows]
        ref = np.concatenate([reference.run(None, {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
        out = np.concatenate([candidate.run(None, {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
        return (f"agreement {np.mean(ref.argmax(1) == out.argmax(1)):.4f}, "
                f"accuracy {np.mean(out.argmax(1) == labels):.4f} (FP32 {np.mean(ref.argmax(1) == labels):.4f})")
    images = data["input"]
    agree = [reference.run(None, {"input": x[None]})[0].argmax() == candidate.run(None, {"input": x[None]})[0].argmax()
             for x in images]
    return f"agreement {np.mean(agree):.3f}"


def latency_feed(case: str, eval_path: Path) -> dict[str, np.ndarray]:
    data = np.load(eval_path)
    if case == "minilm":
        length = int(data["attention_mask"][0].sum())
        return {k: data[k][:1, :length].astype(np.int64) for k in TEXT_INPUTS}
    return {"input": (data["x"] if case == "fmnist_cnn" else data["input"])[:1]}


def run_case(case: str, folder: Path, work: Path, args: argparse.Namespace) -> list[str]:
    model_path, calib, eval_path = folder / "model.onnx", folder / "calib", folder / "eval.npz"
    fp32_bytes = model_path.stat().st_size
    sessions = {"fp32": session(model_path)}
    rows: dict[str, tuple[str, float, float]] = {}
    for name, preset in QCOMPILE_PRESETS.items():
        start = time.perf_counter()
        result = compile_model(model_path, calib, CompileConfig(preset=preset))
        seconds = time.perf_counter() - start
        sessions[name] = session(result.model)
        rows[name] = (fidelity(case, sessions["fp32"], sessions[name], eval_path, args),
                      model_size_bytes(result.model) / fp32_bytes, seconds)
    try:
        model, seconds = ort_a16w8(model_path, calib, work)
        sessions["ort_a16w8"] = session(model)
        rows["ort_a16w8"] = (fidelity(case, sessions["fp32"], sessions["ort_a16w8"], eval_path, args),
                             model_size_bytes(model) / fp32_bytes, seconds)
    except Exception as exc:   # report the peer's failure as a row, keep the other results
        rows["ort_a16w8"] = (f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", float("nan"),
                             float("nan"))
    timings = interleaved_latency(sessions, latency_feed(case, eval_path), rounds=args.rounds, runs=args.runs,
                                  warmup=2)
    lines = []
    for name, (fid, size, seconds) in rows.items():
        ratio = timings[name]["ratio"] if name in timings else float("nan")
        lines.append(f"| {case} | {name} | {fid} | {size:.3f} | {seconds:.1f} | {ratio:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--cases", default="effnet_lite0,minilm,fmnist_cnn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--minilm-rows", type=int, default=200)
    parser.add_argument("--fmnist-rows", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    G_LOGGER.severity = G_LOGGER.CRITICAL + 1     # graphsurgeon's notes on float8 constants, as the CLI does
    print("| case | method | fidelity vs FP32 (eval.npz) | size ratio | compile s | CPU latency ratio (1 thread, noisy) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="qcompile-presets-") as work:
        for case in args.cases.split(","):
            for line in run_case(case, args.eval_dir / case, Path(work), args):
                print(line, flush=True)


if __name__ == "__main__":
    main()

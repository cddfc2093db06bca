"""Compile a zoo case with qcompile and score it against FP32 with the case's task metric.

score(case) = task metric of decode(quantised outputs) against decode(FP32 outputs) on the case's eval.npz,
batch 1, ORT CPU with graph optimisations on (what a user runs).  size ratio = serialised quantised bytes /
FP32 model file bytes.  A case meets the floors when metric >= case.floor and size ratio <= MAX_SIZE_RATIO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from qcompile import CompileConfig, compile_model
from models.zoo.build import read_eval, run_outputs
from models.zoo.cases import MAX_SIZE_RATIO, Outputs, ZooCase, score


@dataclass(frozen=True)
class CaseScore:
    """One quantised model of one case."""

    metrics: dict[str, float]
    size_ratio: float
    compile_s: float
    floor: float

    @property
    def metric(self) -> float:
        return next(iter(self.metrics.values()))

    @property
    def meets_floors(self) -> bool:
        return self.metric >= self.floor and self.size_ratio <= MAX_SIZE_RATIO


def model_bytes(model) -> int:
    return model.ByteSize() if isinstance(model, onnx.ModelProto) else Path(model).stat().st_size


def reference_outputs(case: ZooCase, folder: Path, threads: int = 0) -> list[Outputs]:
    return run_outputs(folder / "model.onnx", read_eval(folder, case), threads)


def compile_case(folder: Path, config: CompileConfig | None = None):
    """(CompileResult, seconds) of qcompile on the case's model and calib/ folder."""
    started = time.perf_counter()
    result = compile_model(folder / "model.onnx", folder / "calib", config or CompileConfig())
    return result, time.perf_counter() - started


def score_model(case: ZooCase, folder: Path, model, reference: list[Outputs], compile_s: float = 0.0,
                threads: int = 0) -> CaseScore:
    """Scored on the first len(reference) eval items."""
    quantised = run_outputs(model, read_eval(folder, case)[:len(reference)], threads)
    ratio = model_bytes(model) / model_bytes(folder / "model.onnx")
    return CaseScore(score(case, reference, quantised), ratio, compile_s, case.floor)


def score_qcompile(case: ZooCase, folder: Path, reference: list[Outputs],
                   config: CompileConfig | None = None) -> tuple[CaseScore, object]:
    """qcompile's score on the case and its CompileResult."""
    result, seconds = compile_case(folder, config)
    return score_model(case, folder, result.model, reference, seconds), result


def without_nodes(config: CompileConfig, names: list[str]) -> CompileConfig:
    """``config`` with these nodes kept in float (exact-name exclude patterns)."""
    return replace(config, exclude=tuple(config.exclude) + tuple(names))

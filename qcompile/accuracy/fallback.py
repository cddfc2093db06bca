"""Accuracy-budgeted mixed precision: the most sensitive nodes fall back to float until a budget holds.

With the quantised nodes ranked by sensitivity, n_1 first (qcompile/accuracy/sensitivity.py), let ok(k) say that the
model compiled with n_1..n_k kept float meets the budget on the eval data. The search finds the smallest k
with ok(k) by binary search on [0, N], on the premise that ok is monotone in k (keeping more nodes float
rarely lowers fidelity): about log2(N) + 1 trials. ok(0) is the compile itself; ok(N) is evaluated only if
every smaller trial failed. Each trial re-emits through the Emitter (statistics reused, no calibration) and is
run on the eval data with ORT's full graph optimisation, so what is measured is the integer kernels users
get. Only a model that passed is returned: if ok is not monotone the result still meets the budget, though a
smaller k might exist. If even ok(N) fails, AccuracyBudgetError says what was reachable.

Float is the only fallback precision: ORT's CPU EP has no INT16 Conv/MatMul kernels, so an INT16 node would
run as float arithmetic with extra Q/DQ work, slower than float and no more accurate.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import onnx

from qcompile.config import AccuracyBudget, LayerAnalysis
from qcompile.data import CalibrationSource, EvalData, load_eval_data, model_input_specs
from qcompile.emitter import Emission, Emitter, Exporter, StatisticsRecorder
from qcompile.errors import AccuracyBudgetError, QCompileError, UnsupportedModelError
from qcompile.accuracy.budget import (NOT_HELD_OUT_WARNING, budget_json, budget_violations, check_budget_applies,
                                      check_budget_arguments)
from qcompile.accuracy.fidelity import Fidelity, Metric, Outputs, compare_outputs, run_outputs
from qcompile.accuracy.output_roles import infer_output_roles
from qcompile.accuracy.latency import measure_latency
from qcompile.io import model_size_bytes
from qcompile.pass_infra import Collector, NodeDecision, NodeStatus, PassRecord
from qcompile.accuracy.sensitivity import analyse_layers, output_sqnr, ranking
from qcompile.accuracy.switchable import SwitchableModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the analysis produced: the final emission and the report's "layers" and "fallback" sections."""

    emission: Emission
    records: tuple[PassRecord, ...]
    layers: Mapping[str, Any] | None
    fallback: Mapping[str, Any] | None
    warnings: tuple[str, ...] = ()


def analyse_compile(*, reference: onnx.ModelProto, working: onnx.ModelProto, baseline: Emission, profile,
                    calibration: CalibrationSource, recorder: StatisticsRecorder, collect: Collector,
                    export: Exporter, eval_data: Any = None, metric: Metric | None = None) -> Outcome | None:
    """compile_model's hook: per-layer analysis and, with a budget, the fallback; None when none is asked.

    eval_data: folder / .npz / iterable of feed dicts; without it, the first eval_samples calibration items
    stand in for held-out data (and the report says so)."""
    config = baseline.config
    budget = config.accuracy_budget
    check_budget_arguments(config, eval_data, metric)
    if budget is None and config.analysis.layers is LayerAnalysis.NONE:
        return None
    evaluation = None
    if budget is not None:
        if eval_data is not None:
            evaluation = load_eval_data(eval_data, model_input_specs(reference), budget.eval_samples)
        else:
            items = tuple(itertools.islice(calibration, budget.eval_samples))
            evaluation = EvalData(items, f"first {len(items)} calibration item(s) of {calibration.description}",
                                  held_out=False)
    emitter = Emitter(working, config, profile, recorder.wrap(collect), export)
    outcome = analyse_and_fall_back(emitter, baseline, reference, recorder.last_graph, calibration, evaluation,
                                    metric, profile.fusable_activations)
    final = outcome.emission
    if final is not baseline:
        final.ctx.warnings[:0] = [w for w in baseline.ctx.warnings if w not in final.ctx.warnings]
    final.ctx.warnings.extend(outcome.warnings)
    return outcome


def analyse_and_fall_back(emitter: Emitter, baseline: Emission, reference: onnx.ModelProto,
                          reference_graph: onnx.ModelProto | None, calibration: Iterable,
                          eval_data: EvalData | None, metric: Metric | None, fusable: frozenset[str]) -> Outcome:
    """Per-layer analysis of ``baseline`` and, with a budget, the fallback search (see module docstring)."""
    config = baseline.config
    budget = config.accuracy_budget
    mode = LayerAnalysis.SENSITIVITY if budget is not None else config.analysis.layers
    quantized = [n for n, d in baseline.ctx.decisions.items() if d.status is NodeStatus.QUANTIZED]
    if mode is LayerAnalysis.NONE and budget is None:
        return Outcome(baseline, baseline.records, None, None)
    warnings: list[str] = []
    records = list(baseline.records)
    samples = config.analysis.samples
    switchable, layers = _layer_analysis(baseline, quantized, reference_graph, calibration, samples, mode, fusable,
                                         records, warnings)
    if budget is None:
        return Outcome(baseline, tuple(records), layers, None, tuple(warnings))

    start = time.perf_counter()
    order = ranking(layers or {})
    order += [n for n in quantized if n not in order]        # unmeasured nodes last, in graph order
    search = _Search(emitter, budget, metric, reference, eval_data)
    final, fallback = search.run(baseline, order, layers or {})
    if switchable is not None and final.kept_float and layers is not None:
        after = output_sqnr(switchable, itertools.islice(calibration, samples),
                            [n for n in quantized if n not in final.kept_float])
        for entry in layers["nodes"]:
            entry["output_sqnr_db_after"] = after.get(entry["name"])
    records.append(PassRecord("fallback", "AccuracyFallback", time.perf_counter() - start, bool(final.kept_float),
                              {"trials": len(fallback["trials"]), "fallback_nodes": len(final.kept_float)}))
    if not eval_data.held_out:
        warnings.append(NOT_HELD_OUT_WARNING)
    return Outcome(final, tuple(records), layers, fallback, tuple(warnings))


def _layer_analysis(baseline: Emission, quantized: list[str], reference_graph: onnx.ModelProto | None,
                    calibration: Iterable, samples: int, mode: LayerAnalysis, fusable: frozenset[str],
                    records: list[PassRecord], warnings: list[str]) -> tuple[SwitchableModel | None, dict[str, Any] | None]:
    """The switchable model and the report's "layers" section, or (None, None) with a warning saying why;
    with a budget, what prevents the analysis is an error (the fallback needs its ranking)."""
    budget = baseline.config.accuracy_budget
    if quantized and reference_graph is None:
        if budget is not None:
            raise UnsupportedModelError("an accuracy budget needs the model under 2 GB (its per-layer analysis "
                                        "runs from memory)")
        if mode is not LayerAnalysis.NONE:
            warnings.append("per-layer analysis skipped: the model is over 2 GB")
    if mode is LayerAnalysis.NONE or not quantized or reference_graph is None:
        return None, None
    start = time.perf_counter()
    switchable, layers = None, None
    try:
        switchable = SwitchableModel(reference_graph, baseline.model, quantized, fusable)
        layers = analyse_layers(switchable, itertools.islice(calibration, samples),
                                mode is LayerAnalysis.SENSITIVITY)
    except QCompileError as exc:
        if budget is not None:
            raise
        warnings.append(f"per-layer analysis skipped: {exc}")
        logger.warning("per-layer analysis skipped: %s", exc)
    if layers is not None:
        layers.update(mode=mode.value, source=f"first {layers['items']} calibration item(s)",
                      method="Q/DQ simulation in float (ORT, no graph optimisation)")
        records.append(PassRecord("analyse", "LayerAnalysis", time.perf_counter() - start, False,
                                  {"nodes": len(layers["nodes"]), "items": layers["items"]}))
    return switchable, layers


class _Search:
    def __init__(self, emitter: Emitter, budget: AccuracyBudget, metric: Metric | None, reference: onnx.ModelProto,
                 eval_data: EvalData) -> None:
        self.emitter, self.budget, self.metric = emitter, budget, metric
        self.eval_data = eval_data
        self.reference = reference
        self.roles = infer_output_roles(reference)
        self.trials: list[dict[str, Any]] = []
        self.reference_outputs: list[Outputs] = []

    def evaluate(self, model: onnx.ModelProto) -> Fidelity:
        _, outputs = run_outputs(model, self.eval_data.items)
        return compare_outputs(self.reference_outputs, outputs, self.metric, self.roles)

    def trial(self, k: int, order: Sequence[str], baseline: Emission) -> tuple[Emission, Fidelity, bool]:
        start = time.perf_counter()
        emission = baseline if k == 0 else self.emitter.emit(order[:k])
        fidelity = self.evaluate(emission.model)
        missed = budget_violations(self.budget, fidelity)
        self.trials.append({"fallback_nodes": k, "cosine_mean": fidelity.cosine, "relative_error": fidelity.error,
                            "top1_agreement": fidelity.top1_agreement, "metric": fidelity.metric,
                            "passed": not missed, "missed": missed, "seconds": round(time.perf_counter() - start, 3)})
        logger.info("fallback trial k=%d: %s", k, "passed" if not missed else "; ".join(missed))
        return emission, fidelity, not missed

    def run(self, baseline: Emission, order: Sequence[str], layers: Mapping[str, Any]) -> tuple[Emission, dict]:
        start = time.perf_counter()
        _, self.reference_outputs = run_outputs(self.reference, self.eval_data.items)
        first, before, passed = self.trial(0, order, baseline)
        check_budget_applies(self.budget, before)
        best: tuple[Emission, Fidelity] | None = (first, before) if passed else None
        lo, hi = 0, len(order)          # ok(lo) failed; ok(hi) passed once best is set
        while not passed and hi - lo > 1:
            mid = (lo + hi) // 2
            emission, fidelity, ok = self.trial(mid, order, baseline)
            if ok:
                hi, best = mid, (emission, fidelity)
            else:
                lo = mid
        if best is None:                # every k < N failed: N (all ranked nodes float) is the last chance
            emission, fidelity, passed = (self.trial(len(order), order, baseline) if order
                                          else (first, before, False))
            if not passed:
                raise AccuracyBudgetError(
                    f"the accuracy budget cannot be met even with all {len(order)} quantised node(s) in float "
                    f"({'; '.join(self.trials[-1]['missed'])})")
            best = (emission, fidelity)
        final, after = best
        final = _mark_fallback(final, order, layers)
        return final, self._section(baseline, final, before, after, layers, time.perf_counter() - start)

    def _section(self, baseline: Emission, final: Emission, before: Fidelity, after: Fidelity,
                 layers: Mapping[str, Any], seconds: float) -> dict[str, Any]:
        by_name = {e["name"]: e for e in layers.get("nodes", [])}
        models = {"fp32": self.reference, "before": baseline.model}
        if final.kept_float:
            models["after"] = final.model
        latency = measure_latency(models, self.eval_data.items[0])
        latency.setdefault("after", latency["before"])
        sizes = {"fp32_bytes": model_size_bytes(self.reference), "before_bytes": model_size_bytes(baseline.model),
                 "after_bytes": model_size_bytes(final.model)}
        sizes["cost_bytes"] = sizes["after_bytes"] - sizes["before_bytes"]
        return {
            "budget": budget_json(self.budget),
            "eval": {"source": self.eval_data.description, "items": len(self.eval_data.items),
                     "held_out": self.eval_data.held_out},
            "ranked_by": "sensitivity: output error with only that node quantised (see layers)",
            "met": True,
            "nodes": [{"name": n, "op_type": final.ctx.decisions[n].op_type if n in final.ctx.decisions else None,
                       "sensitivity_rank": by_name.get(n, {}).get("sensitivity_rank"),
                       "relative_error": by_name.get(n, {}).get("sensitivity", {}).get("relative_error")}
                      for n in final.kept_float],
            "before": before.as_json(), "after": after.as_json(),
            "size": sizes,
            "latency": {"fp32_ms": latency["fp32"]["median_ms"], "before_ms": latency["before"]["median_ms"],
                        "after_ms": latency["after"]["median_ms"], "before_vs_fp32": latency["before"]["ratio"],
                        "after_vs_fp32": latency["after"]["ratio"],
                        "after_vs_before": latency["after"]["ratio"] / latency["before"]["ratio"],
                        "rounds": latency["fp32"]["rounds"], "runs": latency["fp32"]["runs"], "threads": 1},
            "trials": self.trials,
            "seconds": round(seconds, 3),
        }


def _mark_fallback(emission: Emission, order: Sequence[str], layers: Mapping[str, Any]) -> Emission:
    """Say in each fallen-back node's decision why it is float."""
    ranks = {e["name"]: e.get("sensitivity_rank") for e in layers.get("nodes", [])}
    for name in emission.kept_float:
        decision = emission.ctx.decisions.get(name)
        if decision is None:
            continue
        rank = ranks.get(name)
        reason = "fell back to float to meet the accuracy budget" + (f" (sensitivity rank {rank})" if rank else "")
        emission.ctx.decide(NodeDecision(decision.name, decision.op_type, NodeStatus.SKIPPED, reason,
                                         {**dict(decision.detail), "fallback": True}))
    return emission

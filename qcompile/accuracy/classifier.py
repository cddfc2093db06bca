"""The final classifier's precision, decided by measurement instead of a blanket "stays float" rule.

Let C be the final-classifier nodes (qcompile/selection.py ``classifier_nodes``: compute nodes whose output reaches
a model output through bias adds and data movement only, If branches included) that the compile quantised, and Y the FP32 outputs on
the first n calibration items. The same statistics give two emissions (no second calibration): Ŷ_q with C
quantised and Ŷ_f with C float. Per float output o, with

    SQNR(o) = 10·log10(Σ Y² / Σ (Ŷ − Y)²)        a(o) = agreement with Y of the decision o's consumer reads:
                                                 top-1 for class scores, the collapsed argmax path for sequence
                                                 scores (CTC), confident candidates for detection scores
                                                 (accuracy/output_roles.py)

(qcompile/accuracy/fidelity.py, ORT with full graph optimisation: the kernels users get),

    C stays quantised  iff  for every output o:  SQNR_f(o) − SQNR_q(o) ≤ max_sqnr_drop_db
                                                 and  a_f(o) − a_q(o) ≤ max_agreement_drop

Default 1 dB: the classifier may add at most 10^0.1 − 1 ≈ 26 % to the output's error power, i.e. stay well
below the error the rest of the network already makes, and it must not lose a top-1 decision on the n items
(max_agreement_drop 0). Why measure: the classifier is often the largest weight of a CNN (EfficientNet-Lite0:
28 % of the bytes), and whether its int8 error is visible depends on the model, not on its position.

When static int8 fails the rule, a third emission Ŷ_w keeps C's input float and stores only C's weights as
per-channel int8 (passes/quantize/classifier_weights.py); it is kept under the same rule (SQNR_f − SQNR_w and
a_f − a_w), else C stays float. Order of preference: static int8 (smallest and fastest), int8 weights (as
small, float kernel), float. Measured on EfficientNet-Lite0 (100 held-out images, AVX2 host): classifier float
0.97 top-1 agreement at 0.479x size; static int8 0.95 at 0.273x; int8 weights 0.97 at 0.273x.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import onnx

from qcompile.accuracy.fidelity import Fidelity, compare_outputs, run_outputs
from qcompile.accuracy.output_roles import infer_output_roles
from qcompile.config import ClassifierConfig, CompileConfig
from qcompile.emitter import Emission, Emitter
from qcompile.errors import QCompileError
from qcompile.io.validate import with_unique_node_names
from qcompile.pass_infra import NodeDecision, NodeStatus
from qcompile.passes.quantize.classifier_weights import with_int8_weights
from qcompile.selection import CLASSIFIER_KEPT_FLOAT

logger = logging.getLogger(__name__)

WEIGHT_ONLY_FORM = "int8_weights_float_input"     # a decision's detail "form" (passes/quantize/classifier_weights.py)


@dataclass(frozen=True)
class ClassifierChoice:
    """The emission kept and the report's "classifier" section."""

    emission: Emission
    report: Mapping[str, Any]


def measures_classifier(config: CompileConfig) -> bool:
    """Whether a compile measures the classifier: asked for, not forced to int8, static int8 (the weight-only
    presets give the classifier its own bits, config/weight_only.py)."""
    return config.classifier.measure and not config.quantize_classifier and config.preset.weight_only_bits is None


def rule_changed_nodes(quantized: Emission, kept_float: Emission) -> list[str]:
    """Nodes ``quantized`` quantised and ``kept_float`` skipped: the final classifiers the selection rule keeps
    float, in the main graph or in an If branch computing a model output (passes/quantize/quantize_subgraphs.py)."""
    return sorted(name for name, d in quantized.ctx.decisions.items() if d.status is NodeStatus.QUANTIZED
                  and (f := kept_float.ctx.decisions.get(name)) is not None and f.status is NodeStatus.SKIPPED)


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    return {"inf": float("inf"), "-inf": float("-inf")}.get(value) if isinstance(value, str) else None


AGREEMENT_KEYS = ("sequence_agreement", "candidate_agreement", "top1_agreement")


def classifier_costs(quantized: Fidelity, kept_float: Fidelity) -> dict[str, dict[str, float | None]]:
    """Per output: SQNR drop (dB) and agreement drop (the output role's decision) from quantising the
    classifier."""
    costs = {}
    for name, q in quantized.outputs.items():
        f = kept_float.outputs[name]
        sqnr_q, sqnr_f = _finite(q.get("sqnr_db")), _finite(f.get("sqnr_db"))
        drop = None
        if sqnr_q is not None and sqnr_f is not None:
            drop = 0.0 if sqnr_q == sqnr_f else sqnr_f - sqnr_q     # inf - inf (both exact) is no drop
        # the decision the output's consumer reads (output_roles.py): collapsed sequences for sequence scores,
        # confident candidates for detection scores, else top-1
        key = next((k for k in AGREEMENT_KEYS if k in q and k in f), None)
        agreement = (f[key] - q[key]) if key is not None else None
        costs[name] = {"sqnr_db_quantized": sqnr_q, "sqnr_db_float": sqnr_f, "sqnr_drop_db": drop,
                       "agreement": key, "top1_agreement_quantized": q.get(key) if key else None,
                       "top1_agreement_float": f.get(key) if key else None, "top1_agreement_drop": agreement}
    return costs


def within_tolerance(costs: Mapping[str, Mapping[str, float | None]], settings: ClassifierConfig) -> bool:
    """The rule of the module docstring; an output whose SQNR is not a number (NaN outputs) fails it."""
    for cost in costs.values():
        drop = cost["sqnr_drop_db"]
        if drop is None or drop != drop or drop > settings.max_sqnr_drop_db:
            return False
        agreement = cost["top1_agreement_drop"]
        if agreement is not None and agreement > settings.max_agreement_drop + 1e-12:
            return False
    return True


def choose_classifier_precision(*, reference: onnx.ModelProto, kept_float: Emission, int8_emitter: Emitter,
                                calibration: Iterable, settings: ClassifierConfig,
                                fused: bool = True) -> ClassifierChoice:
    """Keep ``kept_float`` (the compile as the selection rule made it) or the re-emission with the classifier
    int8, by the module docstring's rule. The int8 emission gathers only the statistics the first one lacked
    (the classifier's input range); if they cannot be gathered (NaN on its input), the classifier stays float.
    ``fused=False`` (a target that is not the CPU EP) runs the variants op by op, as measure_fidelity does."""
    try:
        quantized = int8_emitter.emit()
    except QCompileError as exc:
        logger.info("final classifier kept float: the int8 variant failed: %s", exc)
        return ClassifierChoice(kept_float, {"nodes": [], "decision": "float",
                                             "reason": f"the int8 classifier could not be compiled: {exc}"})
    names = rule_changed_nodes(quantized, kept_float)
    if not names:
        return ClassifierChoice(kept_float, {"nodes": [], "decision": "no final classifier to quantise"})
    items = list(itertools.islice(calibration, settings.samples))
    _, ref_outputs = run_outputs(with_unique_node_names(reference), items)
    roles = infer_output_roles(reference)

    def fidelity(model: onnx.ModelProto) -> Fidelity:
        return compare_outputs(ref_outputs, run_outputs(model, items, fused=fused)[1], roles=roles)
    float_fidelity = fidelity(kept_float.model)
    costs = classifier_costs(fidelity(quantized.model), float_fidelity)
    report = {"nodes": names, "samples": len(items), "max_sqnr_drop_db": settings.max_sqnr_drop_db,
              "max_agreement_drop": settings.max_agreement_drop, "outputs": costs}
    if within_tolerance(costs, settings):
        return _chosen(quantized, names, "quantised (static int8)", costs, settings, {**report, "decision": "int8"})
    weight_only_model, changed = with_int8_weights(kept_float.model, names, static=quantized.model)
    if changed:
        weight_only_costs = classifier_costs(fidelity(weight_only_model), float_fidelity)
        report["weight_only_outputs"] = weight_only_costs
        if within_tolerance(weight_only_costs, settings):
            return _chosen(_weight_only_emission(kept_float, weight_only_model, changed), changed,
                           "at int8 weights with a float input (static int8 measured " + _summary(costs) + ")",
                           weight_only_costs, settings, {**report, "decision": "int8_weights", "nodes": changed})
    verdict = "kept float" if "weight_only_outputs" not in report else \
        "kept float (int8 weights measured " + _summary(report["weight_only_outputs"]) + "; static int8 measured)"
    return _chosen(kept_float, names, verdict, costs, settings, {**report, "decision": "float"})


def _summary(costs: Mapping[str, Mapping[str, float | None]]) -> str:
    return "; ".join(f"{o}: SQNR drop {_fmt(c['sqnr_drop_db'])} dB, "
                     f"{(c.get('agreement') or 'top1_agreement').replace('_', ' ')} drop "
                     f"{_fmt(c['top1_agreement_drop'])}" for o, c in costs.items())


def _chosen(emission: Emission, names: list[str], verdict: str, costs, settings: ClassifierConfig,
            report: dict) -> ClassifierChoice:
    """The emission kept, its classifier decisions saying why (the costs of the variant it holds)."""
    summary = _summary(costs)
    logger.info("final classifier %s: %s (on %d calibration items)", verdict, summary, report["samples"])
    for name in names:
        decision = emission.ctx.decisions[name]
        if decision.status is NodeStatus.SKIPPED and decision.reason != CLASSIFIER_KEPT_FLOAT:
            continue        # float for a reason of its own (e.g. a table tied to the classifier): that reason stands
        emission.ctx.decisions[name] = NodeDecision(
            name, decision.op_type, decision.status,
            f"final classifier {verdict}: measured {summary} (tolerance {settings.max_sqnr_drop_db} dB, "
            f"{settings.max_agreement_drop} agreement)", decision.detail)
    return ClassifierChoice(emission, report)


def _weight_only_emission(kept_float: Emission, model: onnx.ModelProto, names: list[str]) -> Emission:
    """``kept_float`` with ``model`` and the named nodes recorded as int8-weight (float-kernel) nodes."""
    ctx = copy.copy(kept_float.ctx)
    ctx.decisions = dict(ctx.decisions)
    for name in names:
        previous = ctx.decisions[name]
        ctx.decisions[name] = NodeDecision(name, previous.op_type, NodeStatus.QUANTIZED, "int8 weights",
                                           {"form": WEIGHT_ONLY_FORM, "weight_dtype": "int8", "per_channel": True,
                                            "activation_dtype": "float"})
    return dataclasses.replace(kept_float, model=model, ctx=ctx)


def float_kernel_by_design(decision: NodeDecision) -> bool:
    """A classifier at int8 weights with a float input: ORT runs its float kernel on the DQ'd weight."""
    return decision.detail.get("form") == WEIGHT_ONLY_FORM


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"

"""The accuracy budget's rules: which arguments it needs, which outputs it can bound, when it holds.

A budget B (qcompile/config: AccuracyBudget, whose own ranges are checked when it is built) holds for a
model's Fidelity F (qcompile/accuracy/fidelity.py, worst float output) when every bound it sets does:

    cosine_mean ≥ min_cosine,  relative_error ≤ max_error,  top1_agreement ≥ min_top1_agreement (the task
    agreement of the output's role: top-1 of class scores, collapsed-sequence agreement of sequence scores,
    confident-candidate class agreement of detections; qcompile/accuracy/output_roles.py),
    metric(fp32 outputs, outputs) ≥ min_metric

A bound whose value could not be measured (None) is missed. It is checked on held-out eval data or, without
it, on the first eval_samples calibration items (then the report warns: NOT_HELD_OUT_WARNING).
"""

from __future__ import annotations

from typing import Any

from qcompile.accuracy.fidelity import Fidelity, Metric
from qcompile.config import AccuracyBudget, CompileConfig
from qcompile.errors import ConfigError

NOT_HELD_OUT_WARNING = ("the accuracy budget was checked on calibration items, not held-out data; "
                        "pass eval data (--eval-data) for an unbiased check")


def budget_violations(budget: AccuracyBudget, fidelity: Fidelity) -> list[str]:
    """What the budget asks that ``fidelity`` misses (empty: the budget holds)."""
    def show(value: float | None) -> str:
        return "none" if value is None else f"{value:.5f}"
    missed = []
    if budget.min_cosine is not None and not (fidelity.cosine is not None and fidelity.cosine >= budget.min_cosine):
        missed.append(f"cosine {show(fidelity.cosine)} < {budget.min_cosine}")
    if budget.max_error is not None and not (fidelity.error is not None and fidelity.error <= budget.max_error):
        missed.append(f"relative error {show(fidelity.error)} > {budget.max_error}")
    if budget.min_top1_agreement is not None and not (fidelity.top1_agreement is not None
                                                      and fidelity.top1_agreement >= budget.min_top1_agreement):
        missed.append(f"top-1 agreement {show(fidelity.top1_agreement)} < {budget.min_top1_agreement}")
    if budget.min_metric is not None and not (fidelity.metric is not None and fidelity.metric >= budget.min_metric):
        missed.append(f"metric {show(fidelity.metric)} < {budget.min_metric}")
    return missed


def check_budget_arguments(config: CompileConfig, eval_data: Any, metric: Metric | None) -> None:
    """Budget arguments that cannot work together, found before any work is done."""
    budget = config.accuracy_budget
    if budget is None and metric is not None:   # eval data alone is fine: fidelity is measured on it
        raise ConfigError("a metric is used by an accuracy budget; set one "
                          "(--min-cosine / --max-error / --min-top1-agreement, or AccuracyBudget)")
    if budget is not None and budget.min_metric is not None and metric is None:
        raise ConfigError("accuracy_budget.min_metric needs a metric function (compile_model(..., metric=fn))")
    if metric is not None and not callable(metric):
        raise ConfigError(f"metric must be a function (fp32 outputs, quantised outputs) -> float, "
                          f"not {type(metric).__name__}")


def check_budget_applies(budget: AccuracyBudget, fidelity: Fidelity) -> None:
    """Bounds the model's outputs cannot be measured against (known after the first evaluation)."""
    if not fidelity.outputs:
        raise ConfigError("the accuracy budget needs a float output to compare with FP32; the model has none")
    if budget.min_top1_agreement is not None and fidelity.top1_agreement is None:
        raise ConfigError("min_top1_agreement needs a class-score [batch, classes], sequence-score [batch, time, "
                          "classes] or detection output; the outputs are "
                          + ", ".join(f"{n} ({o.get('role', '?')})" for n, o in sorted(fidelity.outputs.items())))


def budget_json(budget: AccuracyBudget) -> dict[str, Any]:
    """The bounds and settings the budget sets, for the report's fallback section."""
    return {k: v for k, v in vars(budget).items() if v is not None}

"""The compile report: what went in, what was decided per node and tensor, what came out, and how close it is.

A JSON document (REPORT_VERSION) with the sections input, config, target, summary, fidelity
(qcompile/accuracy/fidelity.py), nodes (node_entries: one per decision, with the reason for each declined
node and the ORT kernel it runs as), tensor_ranges, ort, passes (pass_entries), warnings, layers and fallback
(qcompile/accuracy/). compile_model assembles it (qcompile/api.py); html.py renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qcompile.pass_infra import PassRecord

REPORT_VERSION = 1


@dataclass(frozen=True)
class CompileReport:
    data: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False, default=_json_default)

    @property
    def quantized_nodes(self) -> list[str]:
        return [n["name"] for n in self.data["nodes"] if n["status"] == "quantized"]

    @property
    def fidelity(self) -> Mapping[str, Any]:
        return self.data.get("fidelity", {})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def node_entries(decisions: Mapping[str, Any], kernels: Mapping[str, str], unfused: Sequence[str]) -> list[dict]:
    """The nodes section: status, reason and detail per decision; ORT kernel and fused flag where known."""
    entries = []
    for decision in decisions.values():
        entry = {"name": decision.name, "op_type": decision.op_type, "status": decision.status.value}
        if decision.reason:
            entry["reason"] = decision.reason
        if decision.detail:
            entry.update(dict(decision.detail))
        if decision.name in kernels:
            entry["ort_kernel"] = kernels[decision.name]
            entry["fused"] = decision.name not in unfused
        entries.append(entry)
    return entries


def pass_entries(records: Iterable[PassRecord]) -> list[dict[str, Any]]:
    """The passes section: one entry per pass run (and per analysis / fallback phase)."""
    return [{"step": r.step, "name": r.name, "seconds": round(r.seconds, 4), "modified": r.modified,
             "stats": dict(r.stats)} for r in records]


__all__ = ["CompileReport", "node_entries", "pass_entries", "REPORT_VERSION"]

"""Reading a compile report's JSON under declared limits: size, nesting depth, and the type of every field the
HTML page reads.

    size(file) ≤ MAX_REPORT_BYTES,   depth(value) ≤ MAX_REPORT_DEPTH   (a container is one level deeper than its parent)
    ∀ field f the page reads:  type(report[f]) ∈ SCHEMA[f]     (missing fields are fine: the page shows "–")

A report is untrusted (it may come from elsewhere), so a violation is a one-line ReportError naming the field,
never a TypeError or RecursionError from the renderer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompile.errors import ReportError

MAX_REPORT_BYTES = 256 << 20
MAX_REPORT_DEPTH = 64

_SCALAR = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Scalar:
    """A JSON scalar (the page formats any of them); ``kinds`` narrows it where the page computes with it."""

    kinds: tuple[type, ...] = _SCALAR
    label: str = "a string, number or null"


NUMBER = Scalar((int, float), "a number")
INTEGER = Scalar((int,), "an integer")
RANK = Scalar((int, type(None)), "an integer or null")
TEXT = Scalar((str,), "a string")
ANY = Scalar((str, int, float, bool, type(None), list, dict), "JSON")


@dataclass(frozen=True)
class Obj:
    """An object whose named fields have their own spec; other fields hold any JSON (the page's formatters show
    a value of an unexpected type as "–")."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    other: Any = ANY
    nullable: bool = False           # the page reads it as ``value or {}``


@dataclass(frozen=True)
class ListOf:
    item: Any
    nullable: bool = False


@dataclass(frozen=True)
class MapOf:
    value: Any
    nullable: bool = False


_FIDELITY = Obj(nullable=True)
_FALLBACK = Obj({
    "latency": Obj(), "budget": MapOf(Scalar()), "eval": Obj(), "size": Obj(), "before": _FIDELITY,
    "after": _FIDELITY, "nodes": ListOf(Obj({"sensitivity_rank": RANK, "name": Scalar()})),
    "trials": ListOf(Obj({"missed": ListOf(TEXT), "seconds": Scalar()})),
}, nullable=True)
_LAYER = Obj({"sensitivity_rank": RANK, "sensitivity": Obj(nullable=True), "name": Scalar(),
              "input_clipped_fraction": NUMBER})
_HISTOGRAM = Obj({"counts": ListOf(INTEGER), "below": INTEGER, "above": INTEGER})
SCHEMA = Obj({
    "summary": Obj(),
    "fallback": _FALLBACK,
    "fidelity": Obj({"outputs": MapOf(Obj(), nullable=True)}),
    "latency": Obj(nullable=True),
    "layers": Obj({"nodes": ListOf(_LAYER), "histograms": ListOf(_HISTOGRAM),
                   "unmeasured": ListOf(Obj(), nullable=True)}, nullable=True),
    "nodes": ListOf(Obj()),
    "passes": ListOf(Obj({"seconds": NUMBER}), nullable=True),
    "warnings": ListOf(Scalar(), nullable=True),
    "input": Obj(nullable=True),
    "target": Obj(nullable=True),
})


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def check_shape(value: Any, spec: Any, where: str) -> None:
    """Raise ReportError if ``value`` does not have the shape ``spec`` declares (the module docstring)."""
    if isinstance(spec, Scalar):
        if not isinstance(value, spec.kinds) or (isinstance(value, bool) and bool not in spec.kinds):
            raise ReportError(f"{where} must be {spec.label}, found {_json_type(value)}")
    elif isinstance(spec, Obj):
        if value is None and spec.nullable:
            return
        if not isinstance(value, dict):
            raise ReportError(f"{where} must be an object, found {_json_type(value)}")
        for key, item in value.items():
            check_shape(item, spec.fields.get(key, spec.other), f"{where}.{key}")
    elif isinstance(spec, (ListOf, MapOf)):
        if value is None and spec.nullable:
            return
        container, label = (list, "an array") if isinstance(spec, ListOf) else (dict, "an object")
        if not isinstance(value, container):
            raise ReportError(f"{where} must be {label}, found {_json_type(value)}")
        items = enumerate(value) if isinstance(spec, ListOf) else value.items()
        inner = spec.item if isinstance(spec, ListOf) else spec.value
        for key, item in items:
            check_shape(item, inner, f"{where}[{key!r}]" if isinstance(key, str) else f"{where}[{key}]")


def nesting_depth(value: Any) -> int:
    """Containers nested in ``value`` (0 for a scalar), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_report(path: str | Path) -> dict[str, Any]:
    """A compile report's JSON, checked against the limits and SCHEMA; ReportError (one line) otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ReportError(f"cannot read report {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_REPORT_BYTES:
        raise ReportError(f"report {path} is over {MAX_REPORT_BYTES >> 20} MiB; not a compile report")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ReportError(f"report {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"report {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ReportError(f"report {path} nests arrays or objects deeper than {MAX_REPORT_DEPTH} levels") from None
    if not isinstance(data, dict) or "summary" not in data:
        raise ReportError(f"{path} is not a qcompile compile report (no summary)")
    if nesting_depth(data) > MAX_REPORT_DEPTH:
        raise ReportError(f"report {path} nests arrays or objects deeper than {MAX_REPORT_DEPTH} levels")
    check_shape(data, SCHEMA, "report")
    return data

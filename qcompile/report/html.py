"""The compile report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no network.

    qcompile report model.qdq.report.json        -> model.qdq.report.html

Sections: summary (size, latency when measured, fidelity vs FP32), the accuracy fallback (budget, nodes that
fell back, before/after fidelity, size and latency cost, the search's trials), per-layer output SQNR as a bar
chart, the sensitivity ranking, code histograms of the inputs of the worst layers, every compute node's
decision, the pass timeline and the warnings. Every string from the report (node and tensor names come from
the model, which is untrusted) goes through html.escape; numbers are formatted here.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from qcompile.errors import ReportError

MAX_CHART_ROWS = 160          # layers drawn in the SQNR chart (the lowest SQNRs if there are more)
RANKING_ROWS = 25

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1120px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.sub{color:#5b6474;margin:0 0 16px;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 14px}
.card .k{color:#5b6474;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:2px}.card .d{color:#5b6474;font-size:12px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.name{word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#5b6474}
.chart{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:8px;overflow-x:auto}
.hists{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
details{margin-top:8px}summary{cursor:pointer;color:#1a56b8}ul{margin:4px 0 0 18px;padding:0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else _e(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):   # a report from elsewhere may hold anything (report_schema.py)
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}"


def _db(value: Any) -> float | None:
    if value == "inf":
        return math.inf
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.2f} {unit}"
        value /= 1024
    return "–"


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]]) -> str:
    """rows of (css class, already-escaped html) cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for c, v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(key: str, value: str, detail: str = "") -> str:
    return f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div><div class="d">{detail}</div></div>'


def _summary(data: Mapping[str, Any]) -> str:
    summary = data.get("summary", {})
    fallback = data.get("fallback") or {}
    cards = [
        _card("Quantised nodes", _num(summary.get("quantized_nodes")),
              f"{_num(summary.get('skipped_compute_nodes'))} compute node(s) float, "
              f"{_num(summary.get('unfused_nodes'))} unfused"),
        _card("Size", f"{_num(summary.get('size_ratio'), 3)}×",
              f"{_bytes(summary.get('input_bytes'))} → {_bytes(summary.get('output_bytes'))}"),
    ]
    latency = fallback.get("latency")
    if latency:
        cards.append(_card("Latency vs FP32", f"{_num(latency.get('after_vs_fp32'), 2)}×",
                           f"{_num(latency.get('after_ms'), 2)} ms vs {_num(latency.get('fp32_ms'), 2)} ms, batch 1, "
                           f"{_num(latency.get('threads'))} thread"))
    elif (data.get("latency") or {}).get("ratio") is not None:
        quick = data["latency"]
        cards.append(_card("Latency vs FP32", f"{_num(quick.get('ratio'), 2)}×",
                           f"{_num(quick.get('quantized_ms'), 3)} ms vs {_num(quick.get('fp32_ms'), 3)} ms, batch "
                           f"{_num(quick.get('batch'))}, {_num(quick.get('threads'))} thread, quick check"))
    else:
        reason = (data.get("latency") or {}).get("skipped") or "run qcompile compare"
        cards.append(_card("Latency", "not measured", _e(reason)))
    for name, entry in (data.get("fidelity", {}).get("outputs") or {}).items():
        role = f" ({_e(entry['role'].replace('_', ' '))})" if entry.get("role") else ""
        detail = f"output {_e(name)}{role}: SQNR {_num(entry.get('sqnr_db'), 1)} dB"
        if "sequence_agreement" in entry:
            detail += (f", per-step argmax agreement {_num(entry['top1_agreement'], 3)}, sequence agreement "
                       f"{_num(entry['sequence_agreement'], 3)}")
        elif "candidate_agreement" in entry:
            detail += (f", confident detections agreeing {_num(entry['candidate_agreement'], 3)}, score error "
                       f"{_num(entry.get('score_abs_error'), 3)}"
                       + (f", box error {_num(entry['box_relative_error'], 3)}" if "box_relative_error" in entry else ""))
        elif "top1_agreement" in entry:
            detail += f", top-1 agreement {_num(entry['top1_agreement'], 3)}"
        fidelity = data.get("fidelity") or {}
        kind = "held-out items" if fidelity.get("held_out") else "calibration items, not held out"
        cards.append(_card("Cosine vs FP32", _num(entry.get("cosine_mean")),
                           detail + f", worst {_num(entry.get('cosine_min'))} ({_num(entry.get('samples'))} {kind})"))
    cards.append(_card("Compile time", f"{_num(summary.get('compile_seconds'), 1)} s"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _fidelity_cells(entry: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    entry = entry or {}
    return [("n", _num(entry.get("cosine_mean"), 5)), ("n", _num(entry.get("relative_error"), 5)),
            ("n", _num(entry.get("top1_agreement"), 4)), ("n", _num(entry.get("metric"), 5))]


def _fallback(data: Mapping[str, Any]) -> str:
    fallback = data.get("fallback")
    if not fallback:
        return '<p class="muted">No accuracy budget was set (compile with --min-cosine, --max-error or ' \
               '--min-top1-agreement to let the most sensitive nodes fall back to float).</p>'
    budget = ", ".join(f"{_e(k)} = {_num(v)}" for k, v in fallback.get("budget", {}).items())
    evaluation = fallback.get("eval", {})
    held = "held-out" if evaluation.get("held_out") else '<span class="bad">calibration data, not held out</span>'
    parts = [f"<p>Budget: <b>{budget}</b> on {_num(evaluation.get('items'))} eval item(s) from "
             f"<code>{_e(evaluation.get('source'))}</code> ({held}). "
             f"{_num(len(fallback.get('nodes', [])))} node(s) fell back to float.</p>"]
    parts.append(_table(["", "cosine", "relative error", "top-1 agreement", "metric"],
                        [[("", "before (all quantised)")] + _fidelity_cells(fallback.get("before")),
                         [("", "after fallback")] + _fidelity_cells(fallback.get("after"))]))
    size, latency = fallback.get("size", {}), fallback.get("latency", {})
    parts.append("<p>" + f"Size: {_bytes(size.get('before_bytes'))} → {_bytes(size.get('after_bytes'))} "
                 f"(cost {_bytes(size.get('cost_bytes'))}; FP32 {_bytes(size.get('fp32_bytes'))}). "
                 f"Latency (batch 1, median of {_num(latency.get('rounds'))} interleaved rounds × "
                 f"{_num(latency.get('runs'))} runs): FP32 {_num(latency.get('fp32_ms'), 2)} ms, before "
                 f"{_num(latency.get('before_ms'), 2)} ms ({_num(latency.get('before_vs_fp32'), 2)}×), after "
                 f"{_num(latency.get('after_ms'), 2)} ms ({_num(latency.get('after_vs_fp32'), 2)}×).</p>")
    nodes = fallback.get("nodes", [])
    if nodes:
        parts.append(_table(["sensitivity rank", "node", "op", "output error, alone"],
                            [[("n", _num(n.get("sensitivity_rank"))), ("name", _e(n.get("name"))),
                              ("", _e(n.get("op_type"))), ("n", _num(n.get("relative_error"), 5))] for n in nodes]))
    trials = fallback.get("trials", [])
    parts.append("<details><summary>Search trials</summary>" + _table(
        ["nodes float", "cosine", "relative error", "top-1", "metric", "result", "seconds"],
        [[("n", _num(t.get("fallback_nodes")))] + _fidelity_cells(t)[:4] +
         [("ok" if t.get("passed") else "bad", "meets budget" if t.get("passed") else _e("; ".join(t.get("missed", [])))),
          ("n", _num(t.get("seconds"), 2))] for t in trials]) + "</details>")
    return "".join(parts)


def _sqnr_chart(layers: Mapping[str, Any]) -> str:
    nodes = [n for n in layers.get("nodes", []) if _db(n.get("output_sqnr_db")) is not None]
    if not nodes:
        return '<p class="muted">No per-layer SQNR in this report.</p>'
    note = ""
    if len(nodes) > MAX_CHART_ROWS:
        keep = {id(n) for n in sorted(nodes, key=lambda n: _db(n["output_sqnr_db"]))[:MAX_CHART_ROWS]}
        note = f'<p class="muted">{len(nodes)} layers; the {MAX_CHART_ROWS} with the lowest SQNR are drawn.</p>'
        nodes = [n for n in nodes if id(n) in keep]
    finite = [v for n in nodes for v in (_db(n.get("output_sqnr_db")), _db(n.get("output_sqnr_db_after")))
              if v is not None and math.isfinite(v)]
    top = max(10.0, math.ceil(max(finite, default=40.0) / 10) * 10)
    label_w, bar_w, row_h = 330, 600, 18
    width, height = label_w + bar_w + 90, 34 + row_h * len(nodes)
    ranked = sorted((n.get("sensitivity_rank") for n in nodes if n.get("sensitivity_rank")), key=int)
    worst = set(ranked[:max(1, len(ranked) // 10)]) if ranked else set()
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="per-layer output SQNR">']
    for tick in range(0, int(top) + 1, 10):
        x = label_w + bar_w * tick / top
        out.append(f'<line x1="{x:.1f}" y1="20" x2="{x:.1f}" y2="{height - 4}" stroke="#e3e6eb"/>'
                   f'<text x="{x:.1f}" y="14" font-size="11" text-anchor="middle" fill="#5b6474">{tick} dB</text>')
    for i, node in enumerate(nodes):
        y = 24 + i * row_h
        value = _db(node.get("output_sqnr_db"))
        shown = top if math.isinf(value) else max(value, 0.0)
        colour = "#d9534f" if node.get("sensitivity_rank") in worst else "#4a78c2"
        if node.get("fallback"):
            colour = "#9aa3b2"
        name = str(node.get("name"))
        label = name if len(name) <= 48 else "…" + name[-47:]
        tip = f"{name}: {_num(value, 1)} dB" + (f", sensitivity rank {node['sensitivity_rank']}"
                                                 if node.get("sensitivity_rank") else "")
        out.append(f'<g><title>{_e(tip)}</title>'
                   f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end" '
                   f'font-family="ui-monospace,Menlo,Consolas,monospace">{_e(label)}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{bar_w * shown / top:.1f}" height="{row_h - 5}" '
                   f'fill="{colour}"/>'
                   f'<text x="{label_w + bar_w * shown / top + 4:.1f}" y="{y + 12}" font-size="10" '
                   f'fill="#1d2330">{_num(value, 1)}</text></g>')
        after = _db(node.get("output_sqnr_db_after"))
        if after is not None:
            x = label_w + bar_w * (top if math.isinf(after) else max(after, 0.0)) / top
            out.append(f'<rect x="{x - 1.5:.1f}" y="{y}" width="3" height="{row_h - 1}" fill="#137333">'
                       f'<title>{_e(name)}: {_num(after, 1)} dB after fallback</title></rect>')
    out.append("</svg>")
    legend = ('<p class="legend"><span><i class="sw" style="background:#4a78c2"></i>output SQNR (all nodes '
              'quantised)</span><span><i class="sw" style="background:#d9534f"></i>most sensitive 10 %</span>'
              '<span><i class="sw" style="background:#9aa3b2"></i>fell back to float</span>'
              '<span><i class="sw" style="background:#137333"></i>after fallback</span></p>')
    return note + legend + '<div class="chart">' + "".join(out) + "</div>"


def _ranking(layers: Mapping[str, Any]) -> str:
    nodes = layers.get("nodes", [])
    ranked = sorted((n for n in nodes if n.get("sensitivity_rank")), key=lambda n: n["sensitivity_rank"])
    key = "sensitivity rank"
    if not ranked:
        ranked = sorted(nodes, key=lambda n: _db(n.get("output_sqnr_db")) if _db(n.get("output_sqnr_db")) is not None
                        else math.inf)
        key = "by output SQNR"
    rows = [[("n", _num(n.get("sensitivity_rank") or i + 1)), ("name", _e(n.get("name"))), ("", _e(n.get("op_type"))),
             ("n", _num((n.get("sensitivity") or {}).get("relative_error"), 5)),
             ("n", _num(n.get("output_sqnr_db"), 1)), ("n", _num(n.get("input_sqnr_db"), 1)),
             ("n", _num(100 * n["input_clipped_fraction"], 3) if "input_clipped_fraction" in n else "–"),
             ("n", _num(n.get("weight_sqnr_db"), 1))] for i, n in enumerate(ranked[:RANKING_ROWS])]
    return _table([key, "node", "op", "output error, alone", "output SQNR dB", "input Q SQNR dB", "input clipped %",
                   "weight SQNR dB"], rows)


def _histogram(entry: Mapping[str, Any]) -> str:
    counts = [int(c) for c in entry.get("counts", [])]
    if not counts:
        return ""
    width, height, pad = 340, 150, 28
    peak = max(max(counts), 1)
    bar = (width - 2 * pad) / len(counts)
    bars = "".join(
        f'<rect x="{pad + i * bar:.2f}" y="{height - pad - (height - 2 * pad) * math.log1p(c) / math.log1p(peak):.2f}" '
        f'width="{max(bar - 0.5, 0.5):.2f}" height="{(height - 2 * pad) * math.log1p(c) / math.log1p(peak):.2f}" '
        f'fill="#4a78c2"/>' for i, c in enumerate(counts) if c)
    below, above = int(entry.get("below", 0)), int(entry.get("above", 0))
    clip = "#b3261e" if below or above else "#5b6474"
    return (f'<div class="card"><div class="name" style="font-family:ui-monospace,monospace;font-size:12px;'
            f'word-break:break-all">{_e(entry.get("tensor"))}</div><div class="d">input of {_e(entry.get("node"))}; '
            f'scale {_num(entry.get("scale"), 6)}, zero point {_num(entry.get("zero_point"))}</div>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="code histogram"><line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
            f'stroke="#5b6474"/>{bars}'
            f'<text x="{pad}" y="{height - 10}" font-size="10" fill="#5b6474">{_num(entry.get("low"), 3)}</text>'
            f'<text x="{width - pad}" y="{height - 10}" font-size="10" text-anchor="end" fill="#5b6474">'
            f'{_num(entry.get("high"), 3)}</text>'
            f'<text x="{pad}" y="14" font-size="10" fill="{clip}">clipped below: {below:,}</text>'
            f'<text x="{width - pad}" y="14" font-size="10" text-anchor="end" fill="{clip}">clipped above: '
            f'{above:,}</text></svg></div>')


def _timeline(passes: Sequence[Mapping[str, Any]]) -> str:
    if not passes:
        return '<p class="muted">No pass timeline.</p>'
    total = sum(max(float(p.get("seconds", 0.0)), 0.0) for p in passes) or 1.0
    label_w, bar_w, row_h = 360, 560, 18
    width, height = label_w + bar_w + 80, 10 + row_h * len(passes)
    colours = {"prepare": "#7c8db5", "transform": "#a77bc2", "quantize": "#4a78c2", "lower": "#5aa17f",
               "analyse": "#d49a3a", "fallback": "#d9534f"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="pass timeline">']
    start = 0.0
    for i, record in enumerate(passes):
        seconds = max(float(record.get("seconds", 0.0)), 0.0)
        y = 4 + i * row_h
        x = label_w + bar_w * start / total
        label = f"{record.get('step')} · {record.get('name')}"
        label = label if len(label) <= 52 else label[:51] + "…"
        out.append(f'<g><title>{_e(record.get("name"))}: {seconds:.3f} s {_e(json.dumps(record.get("stats", {})))}'
                   f'</title><text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">{_e(label)}</text>'
                   f'<rect x="{x:.1f}" y="{y + 2}" width="{max(bar_w * seconds / total, 1):.1f}" height="{row_h - 5}" '
                   f'fill="{colours.get(str(record.get("step")), "#8a93a3")}"/>'
                   f'<text x="{x + max(bar_w * seconds / total, 1) + 4:.1f}" y="{y + 12}" font-size="10">'
                   f'{seconds:.2f} s</text></g>')
        start += seconds
    out.append("</svg>")
    return '<div class="chart">' + "".join(out) + "</div>"


def _nodes(data: Mapping[str, Any]) -> str:
    nodes = data.get("nodes", [])
    rows = [[("name", _e(n.get("name"))), ("", _e(n.get("op_type"))),
             ("ok" if n.get("status") == "quantized" else "muted", _e(n.get("status"))),
             ("", _e(n.get("reason", ""))), ("", _e(n.get("ort_kernel", "")))] for n in nodes]
    return (f"<details><summary>{len(nodes)} compute node(s)</summary>"
            + _table(["node", "op", "status", "reason", "ORT kernel"], rows) + "</details>")


def render_html(data: Mapping[str, Any]) -> str:
    """The report page for a compile report's JSON data."""
    if not isinstance(data, Mapping) or "summary" not in data:
        raise ReportError("not a qcompile compile report (no summary)")
    layers = dict(data.get("layers") or {})
    fell_back = {n.get("name") for n in (data.get("fallback") or {}).get("nodes", [])}
    layers["nodes"] = [dict(n, fallback=n.get("name") in fell_back) for n in layers.get("nodes", [])]
    source = (data.get("input") or {}).get("path") or "model"
    analysed = (f"{_num(layers.get('items'))} calibration item(s), {_e(layers.get('method', ''))}, "
                f"{_num(layers.get('seconds'), 1)} s" if layers.get("nodes") else "")
    unmeasured = layers.get("unmeasured") or []
    warnings = data.get("warnings") or []
    sections = [
        f"<h1>qcompile report</h1><p class=\"sub\">{_e(source)} · qcompile {_e(data.get('qcompile_version', '?'))}"
        f" · target {_e((data.get('target') or {}).get('target', '?'))}</p>",
        "<h2>Summary</h2>", _summary(data),
        "<h2>Accuracy fallback</h2>", _fallback(data),
        "<h2>Per-layer output SQNR</h2>",
        f'<p class="muted">Quantised vs FP32 at each node\'s output, error accumulated from the input; {analysed}.</p>'
        if analysed else "", _sqnr_chart(layers),
        "".join(f'<p class="muted">Not measured: {_e(u.get("name"))} ({_e(u.get("reason"))})</p>' for u in unmeasured),
        "<h2>Most sensitive layers</h2>", _ranking(layers) if layers.get("nodes") else
        '<p class="muted">No per-layer analysis in this report.</p>',
        "<h2>Activation ranges of the worst layers</h2>",
        '<p class="muted">Histogram of each input\'s integer codes on the calibration items (log scale); values '
        'outside the range are clipped.</p>' if layers.get("histograms") else "",
        '<div class="hists">' + "".join(_histogram(h) for h in layers.get("histograms", [])) + "</div>",
        "<h2>Nodes</h2>", _nodes(data),
        "<h2>Pass timeline</h2>", _timeline(data.get("passes") or []),
        "<h2>Warnings</h2>", "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>" if warnings
        else '<p class="muted">None.</p>',
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>qcompile report: {_e(Path(str(source)).name)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(sections)}</main></body></html>")


def default_html_path(report_path: Path) -> Path:
    name = report_path.name
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return report_path.with_name(f"{stem}.html")

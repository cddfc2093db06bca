"""The tool commands: `qcompile report` (JSON report -> HTML page), `inspect` (what would be quantised and why
not), `compare` (fidelity and latency of one model against another).

Errors are raised, not printed: main.py turns them into one line and an exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from qcompile.cli.build import CompileFlags, build_config
from qcompile.cli.options import debug_option, image_options, inspect_format_options, json_option, selection_options
from qcompile.cli.guard import report_guard
from qcompile.io import write_text_atomic
from qcompile.report.html import default_html_path, render_html
from qcompile.report.report_schema import load_report
from qcompile.tools.compare_models import compare_models, format_comparison
from qcompile.tools.inspect_model import format_inspection, inspect_model


@click.command("report")
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: REPORT_JSON with .html).")
@click.option("--overwrite", is_flag=True, help="Replace an existing HTML file (never the report or its model).")
@debug_option
def report_command(report_json: Path, output: Path | None, overwrite: bool, debug: bool) -> None:
    """Render a compile report (model.qdq.report.json) as a self-contained HTML page."""
    target = output or default_html_path(report_json)
    data = load_report(report_json)
    described = [p for p in ((data.get("input") or {}).get("path"),) if isinstance(p, str) and p]
    guard = report_guard(report_json, described, overwrite)
    guard.check([(target, "HTML page")])
    write_text_atomic(target, render_html(data), protected=guard.protected)
    click.echo(f"wrote {target}")


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@selection_options
@inspect_format_options
@json_option
@debug_option
def inspect_command(model: Path, as_json: bool, debug: bool, **flags: Any) -> None:
    """Op histogram of MODEL and what would be quantised with the current config (and why not)."""
    result = inspect_model(model, build_config(CompileFlags(**flags)))
    click.echo(json.dumps(result, indent=2) if as_json else format_inspection(result))


@click.command("compare")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, help="Eval data: a folder (like --calib) or an .npz of arrays keyed by input.")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Eval items to use.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True, help="Interleaved rounds.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="ORT intra-op threads.")
@image_options
@json_option
@debug_option
def compare_command(reference: Path, candidate: Path, data: str, samples: int, runs: int, rounds: int, threads: int,
                    image_size: str | None, mean: str | None, std: str | None, layout: Any, as_json: bool,
                    debug: bool) -> None:
    """Fidelity and latency of CANDIDATE (e.g. q.onnx) against REFERENCE (e.g. fp32.onnx) on --data."""
    image = build_config(CompileFlags(image_size=image_size, mean=mean, std=std, layout=layout)).calibration.image
    result = compare_models(reference, candidate, data, samples=samples, rounds=rounds, runs=runs, threads=threads,
                            image=image)
    click.echo(json.dumps(result, indent=2) if as_json else format_comparison(result))

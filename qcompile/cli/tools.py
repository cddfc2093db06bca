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
from qcompile.cli.options import debug_option, inspect_format_options, json_option, selection_options
from qcompile.errors import ModelSaveError
from qcompile.io import write_text_atomic
from qcompile.report.html import default_html_path, load_report, render_html
from qcompile.tools.compare_models import compare_models, format_comparison
from qcompile.tools.inspect_model import format_inspection, inspect_model


@click.command("report")
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write (default: REPORT_JSON with .html).")
@debug_option
def report_command(report_json: Path, output: Path | None, debug: bool) -> None:
    """Render a compile report (model.qdq.report.json) as a self-contained HTML page."""
    target = output or default_html_path(report_json)
    if target.resolve() == report_json.resolve():
        raise ModelSaveError("refusing to overwrite the report with its HTML page; choose another -o")
    write_text_atomic(target, render_html(load_report(report_json)), protected=(report_json,))
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
@json_option
@debug_option
def compare_command(reference: Path, candidate: Path, data: str, samples: int, runs: int, rounds: int, threads: int,
                    as_json: bool, debug: bool) -> None:
    """Fidelity and latency of CANDIDATE (e.g. q.onnx) against REFERENCE (e.g. fp32.onnx) on --data."""
    result = compare_models(reference, candidate, data, samples=samples, rounds=rounds, runs=runs, threads=threads)
    click.echo(json.dumps(result, indent=2) if as_json else format_comparison(result))
